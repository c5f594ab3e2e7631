"""systemd's notification protocol (`sd_notify`) for `Type=notify` and `WatchdogSec=`, with no dependency.

Why: systemd should call the agent started only once it controls the site (the first cycle polled the fleet), and
should kill and restart it when the control cycle stops completing, which a process that is alive but stuck never
shows by itself. The protocol is a datagram of `KEY=VALUE` lines to the UNIX socket named by `$NOTIFY_SOCKET`
(a path, or an abstract name written with a leading '@'); without that variable every call here does nothing, so
the same code runs under systemd, in a container and in a test.

Healthy, for the watchdog, means a control cycle ran to the end: poll, decide, write and every `after_cycle` hook
(`ControlLoop._guarded_cycle` runs the hooks only after a cycle that did not raise). So the ping is sent from the
last `after_cycle` hook, never from a timer: a timer task would go on pinging while a cycle hangs on a read or a
write that never returns, the one failure the watchdog is there to catch. A cycle whose devices all time out still
completes (every request has its timeout): that is a dead site, not a stuck agent, and restarting would not bring
the devices back, so it still pings; the agent meanwhile keeps the envelope and reports itself in `STATUS=`.
A cycle that raises is not healthy and sends no ping; one such cycle among many costs nothing (the next ping comes
a period later), a cycle that raises every time ends in a restart, which is what should happen to it.

With `$WATCHDOG_USEC` set, pings are at most one per half of it (as sd_watchdog_enabled(3) advises; more often
buys nothing). Sending never blocks the event loop (a non-blocking socket: a full queue drops the message) and
never raises: losing a notification must not cost a control cycle.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

from agent.status import Health

log = structlog.get_logger("agent.notify")

STATUS_MAX_CHARS = 200  # what `systemctl status` shows on one line; the full reasons are in the log


class Notifier:
    """Sends READY=1 once, WATCHDOG=1 after healthy cycles, STATUS= on change and STOPPING=1, to one socket."""

    def __init__(
        self,
        address: str | None,
        watchdog_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`address`: $NOTIFY_SOCKET as systemd sets it (None: do nothing); `watchdog_s`: WatchdogSec, if any."""
        self.address = _socket_address(address) if address else None
        self.watchdog_s = watchdog_s
        # pings closer together than half the watchdog interval only cost syscalls
        self.min_ping_gap_s = watchdog_s / 2 if watchdog_s else 0.0
        self.monotonic = monotonic
        self.feeds_watchdog = True  # False when WATCHDOG_PID names another process
        self.ready_sent = False
        self.pings = 0
        self.dropped = 0  # notifications lost to a full socket queue or a socket error
        self._last_ping: float | None = None
        self._status: str | None = None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, period_s: float | None = None) -> Notifier:
        """The notifier systemd asks for through the environment of the main process.

        `WATCHDOG_PID` naming another process means the watchdog belongs to it (sd_watchdog_enabled(3)): no pings
        then. `period_s` (the control period) is checked against the watchdog: pings come at most every half
        interval and only at the end of a cycle, so two can be half an interval plus a period (plus the cycle's
        own time) apart; a period above a quarter of the interval leaves too little margin, and the agent would be
        killed while working as configured.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_s = _watchdog_s(env)
        notifier = cls(address, watchdog_s)
        if address is not None and env.get("WATCHDOG_PID") not in (None, "", str(os.getpid())):
            notifier.feeds_watchdog = False  # not ours to feed
        watchdog_s = notifier.watchdog_s if notifier.feeds_watchdog else None
        if watchdog_s is not None and period_s is not None and period_s > watchdog_s / 4:
            log.warning(
                "notify.watchdog_too_short",
                watchdog_s=watchdog_s,
                poll_period_s=period_s,
                message="WatchdogSec should be at least 4 control periods and above the slowest cycle; raise it",
            )
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def cycle_completed(self, status: str | None = None) -> None:
        """Call at the end of every cycle that completed (the last `after_cycle` hook). The first call says READY=1
        (the fleet has been polled); then WATCHDOG=1 at most every half watchdog interval; STATUS= when it changed."""
        if self.address is None:
            return
        fields: list[str] = []
        if not self.ready_sent:
            fields.append("READY=1")
        now = self.monotonic()
        if self.feeds_watchdog and (self._last_ping is None or now - self._last_ping >= self.min_ping_gap_s):
            fields.append("WATCHDOG=1")
        if status is not None and status != self._status:
            fields.append(f"STATUS={status}")
        if not fields:
            return
        if self.send(*fields):
            self.ready_sent = True
            self._status = status if status is not None else self._status
            if "WATCHDOG=1" in fields:
                self._last_ping = now
                self.pings += 1

    def stopping(self, status: str = "stopping") -> None:
        """At the start of shutdown: systemd then knows the exit that follows is intended, not a crash."""
        if self.address is not None:
            self.send("STOPPING=1", f"STATUS={status}")

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields as one datagram; False (logged once) when it could not be sent. Newlines inside
        a value are flattened: a reason text must never add a line such as READY=1 or MAINPID= of its own."""
        if self.address is None:
            return False
        payload = "\n".join(_one_line(field) for field in fields).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(payload, self.address)
        except OSError as exc:  # BlockingIOError (queue full) included: drop, never wait
            self.dropped += 1
            if not self._warned:
                self._warned = True
                log.warning("notify.failed", socket=_shown(self.address), error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def health_status(health: Health) -> str:
    """One line for `systemctl status`: `online`, or `degraded: source: reason; ...` cut to STATUS_MAX_CHARS."""
    if not health.reasons:
        return health.state
    text = f"{health.state}: " + "; ".join(f"{source}: {reason}" for source, reason in health.reasons.items())
    return text if len(text) <= STATUS_MAX_CHARS else text[: STATUS_MAX_CHARS - 1] + "…"


def _socket_address(value: str) -> str:
    """An abstract socket is written `@name` and addressed with a leading NUL byte (sd_notify(3))."""
    return "\0" + value[1:] if value.startswith("@") else value


def _shown(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address


def _one_line(field: str) -> str:
    return field.replace("\r", " ").replace("\n", " ")


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    """WATCHDOG_USEC in seconds; None when unset or not a positive integer (then no watchdog is assumed)."""
    text = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(text)
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None
