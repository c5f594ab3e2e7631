"""PID 1 of the vpp-agent container: what systemd does for deploy/vpp-agent.service, done for Docker.

Why it exists: the agent tells systemd over `$NOTIFY_SOCKET` (agent/notify.py) that its first control cycle polled
the fleet (READY=1), that cycles still complete (WATCHDOG=1, sent from the end of a completed cycle, never from a
timer), how it is (STATUS=) and that it is stopping on purpose (STOPPING=1). Docker has no such socket, and its own
HEALTHCHECK can only run a command now and then: a process that is alive, or a port that answers, says nothing about
whether the control cycle is stuck. So this init listens where systemd would, and gives Docker both halves of the
unit's watchdog:
- the health check (`--check`, the image's HEALTHCHECK): healthy while READY=1 came and the last WATCHDOG=1 is
  younger than the watchdog interval; it prints the agent's STATUS (online / degraded: reasons), which
  `docker inspect` shows. Devices that do not answer are "degraded", not unhealthy: cycles still complete, and a
  restart would not bring the devices back (agent/notify.py says why);
- the watchdog itself: once READY=1 came, no WATCHDOG=1 for `VPP_WATCHDOG_S` (30 s, the unit's WatchdogSec) aborts
  the agent with SIGABRT (PYTHONFAULTHANDLER=1 puts every thread's traceback in `docker logs`), then SIGKILL after
  ABORT_GRACE_S, and the container exits non-zero, so a restart policy (`on-failure`, `unless-stopped`) starts it
  again, as Restart=on-failure does. Docker alone never restarts an unhealthy container.

As PID 1 it also does an init's job: SIGTERM (`docker stop`), SIGINT and SIGHUP (`docker kill -s HUP`: re-read the
[trust] keys, the unit's ExecReload) go to the agent, orphaned processes are reaped, and the container exits with
the agent's status (0 after a clean stop). Standard library only, one process, ~10 MB.

    container-init.py COMMAND [ARG ...]   run COMMAND as the one child (the image's ENTRYPOINT)
    container-init.py --check              exit 0 if healthy, 1 if not (the image's HEALTHCHECK)

Environment: VPP_WATCHDOG_S (default 30, must be > 0), VPP_RUNTIME_DIR (default /run/vpp-agent: the socket and the
health file; memory-backed there, so the heartbeat never wears a gateway's flash).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RUNTIME_DIR = Path(os.environ.get("VPP_RUNTIME_DIR", "/run/vpp-agent"))
SOCKET_NAME = "notify"
HEALTH_NAME = "health.json"
DEFAULT_WATCHDOG_S = 30.0  # deploy/vpp-agent.service: WatchdogSec=30
ABORT_GRACE_S = 5.0  # SIGABRT, then SIGKILL after this (the unit's TimeoutStopSec, which TimeoutAbortSec defaults to)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class Health:
    """What the health check reads: written by the init (atomically) whenever it changes, in RUNTIME_DIR.

    Times are CLOCK_MONOTONIC, which every process of the container shares: a gateway without a real-time clock
    that steps its wall clock at boot (NTP) must not look stuck, or alive, because of it.
    """

    watchdog_s: float
    ready: bool = False
    last_ping: float | None = None  # monotonic time of the last WATCHDOG=1
    status: str = ""
    stopping: bool = False

    def verdict(self, now: float) -> tuple[bool, str]:
        """(healthy, one line saying why)."""
        if self.stopping:
            return False, f"stopping: {self.status}"
        if not self.ready:
            return False, "starting: no control cycle has completed yet (no READY=1)"
        age = now - (self.last_ping if self.last_ping is not None else 0.0)
        if age > self.watchdog_s:
            return False, f"stuck: no control cycle completed for {age:.0f} s (watchdog {self.watchdog_s:g} s)"
        return True, self.status or "online"


def log(level: str, event: str, **fields: object) -> None:
    """One JSON line on stderr, shaped as the agent's own (structlog: event, level, timestamp)."""
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    line = {"event": event, "level": level, "timestamp": stamp, "logger": "container-init", **fields}
    with contextlib.suppress(OSError):
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()


def watchdog_s(environ: Mapping[str, str]) -> float:
    text = environ.get("VPP_WATCHDOG_S", "")
    if not text:
        return DEFAULT_WATCHDOG_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise SystemExit(f"container-init: VPP_WATCHDOG_S={text!r}: expected seconds > 0 (default 30)")
    return value


def write_health(health: Health) -> None:
    path = RUNTIME_DIR / HEALTH_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(health)))
    tmp.replace(path)


def check() -> int:
    """The HEALTHCHECK: 0 and the agent's status when healthy; 1 and the reason when not."""
    try:
        health = Health(**json.loads((RUNTIME_DIR / HEALTH_NAME).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        print(f"unhealthy: no health file from container-init ({exc})")
        return 1
    healthy, reason = health.verdict(time.monotonic())
    print(reason if healthy else f"unhealthy: {reason}")
    return 0 if healthy else 1


class Init:
    """The child, the notify socket and the watchdog; `run()` returns the exit code for the container."""

    def __init__(self, argv: list[str], watchdog: float) -> None:
        self.argv = argv
        self.health = Health(watchdog_s=watchdog)
        self.child = 0
        self.exit_code: int | None = None
        self.aborted_at: float | None = None
        self.killed = False
        self.pending: list[int] = []  # signals that came before the child existed

    def run(self) -> int:
        address = RUNTIME_DIR / SOCKET_NAME
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            RUNTIME_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
            address.unlink(missing_ok=True)
            write_health(self.health)  # a health file left from the previous start must not say ready
            sock.bind(str(address))
        except OSError as exc:
            print(
                f"container-init: cannot use {RUNTIME_DIR} ({exc.strerror}); with a read-only root file system "
                f"mount a tmpfs there: --tmpfs {RUNTIME_DIR}:uid={os.getuid()},gid={os.getgid()},mode=0700",
                file=sys.stderr,
            )
            return 1
        sock.setblocking(False)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)  # a signal (SIGCHLD included) ends the select() below at once
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for signum in FORWARDED:
            signal.signal(signum, self._forward)
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env["NOTIFY_SOCKET"] = str(address)
        env["WATCHDOG_USEC"] = str(int(self.health.watchdog_s * 1e6))
        try:
            self.child = os.posix_spawnp(self.argv[0], self.argv, env)
        except OSError as exc:
            log("error", "init.spawn_failed", command=self.argv, error=str(exc))
            return 127
        for signum in self.pending:
            self._forward(signum, None)
        while True:
            self._reap()
            if self.exit_code is not None:
                break
            select.select([sock, wake_r], [], [], self._timeout())
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            self._receive(sock)
            self._watch()
        sock.close()
        address.unlink(missing_ok=True)
        if self.exit_code != 0 or self.health.ready:  # a one-off command (`vpp-agent events`) exits quietly
            log("info" if self.exit_code == 0 else "error", "init.exited", command=self.argv[0], code=self.exit_code)
        return self.exit_code

    def _forward(self, signum: int, _frame: object) -> None:
        if not self.child:
            self.pending.append(signum)
        elif self.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signum)

    def _reap(self) -> None:
        """Collect every exited process (orphans are ours as PID 1); note the child's status when it is one."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                code = os.waitstatus_to_exitcode(status)
                self.exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says

    def _timeout(self) -> float | None:
        """Until the watchdog would fire (or the abort's grace ends); None: nothing is due."""
        now = time.monotonic()
        if self.aborted_at is not None:
            return max(0.0, self.aborted_at + ABORT_GRACE_S - now) if not self.killed else None
        if self.health.ready and not self.health.stopping and self.health.last_ping is not None:
            return max(0.0, self.health.last_ping + self.health.watchdog_s - now) + 0.05
        return None

    def _receive(self, sock: socket.socket) -> None:
        changed = False
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            for line in data.decode("utf-8", "replace").split("\n"):
                key, _, value = line.partition("=")
                if key == "READY" and value == "1" and not self.health.ready:
                    self.health.ready = True
                    self.health.last_ping = time.monotonic()  # the watchdog starts at READY, as systemd's does
                    log("info", "init.ready", watchdog_s=self.health.watchdog_s)
                elif key == "WATCHDOG" and value == "1":
                    self.health.last_ping = time.monotonic()
                elif key == "STATUS":
                    self.health.status = value
                elif key == "STOPPING" and value == "1":
                    self.health.stopping = True
                else:
                    continue
                changed = True
        if changed:
            write_health(self.health)

    def _watch(self) -> None:
        """No WATCHDOG=1 for the interval after READY=1: abort the agent, then kill it after the grace period."""
        now = time.monotonic()
        if self.aborted_at is not None:
            if not self.killed and now >= self.aborted_at + ABORT_GRACE_S:
                self.killed = True
                log("error", "init.watchdog_kill", grace_s=ABORT_GRACE_S)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child, signal.SIGKILL)
            return
        healthy, reason = self.health.verdict(now)
        if self.health.ready and not self.health.stopping and not healthy:
            self.aborted_at = now
            log("error", "init.watchdog_timeout", reason=reason, action="SIGABRT")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGABRT)
                os.kill(self.child, signal.SIGCONT)  # a stopped process acts on the abort only once continued


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        return check()
    if not argv or argv[0].startswith("-"):
        print("usage: container-init.py COMMAND [ARG ...] | --check", file=sys.stderr)
        return 2
    return Init(argv, watchdog_s(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
