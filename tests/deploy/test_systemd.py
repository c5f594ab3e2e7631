"""The systemd unit as shipped (deploy/vpp-agent.service) and the agent's side of it (agent/notify.py).

systemd learns three things from the agent over $NOTIFY_SOCKET: that it is ready (READY=1, once the first cycle
polled the fleet), that its control cycle still completes (WATCHDOG=1; none for WatchdogSec and systemd kills and
restarts it) and that it is stopping on purpose (STOPPING=1). These tests stand in for systemd: they bind the
datagram socket, run `vpp-agent run` as its own process against the shipped config's site, served by `vpp-sim` in
another process (so its devices can be frozen with SIGSTOP), and read what arrives.

What can stall the control cycle? Not a device: every Modbus request is bounded by poll_timeout_s, so a site whose
devices all stop answering still completes its cycles, and the agent must go on pinging (a restart would not bring
the devices back; it keeps the envelope and says `degraded`). What does stall it: the event loop blocked in a
system call (here a log write to a stderr nobody drains, as when journald hangs) and an await that never finishes
(a driver or library bug: here a setpoint write that never returns). Both are reproduced for real; in both the
pings stop, and they come back when the stall ends (under systemd the watchdog would have restarted the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sitekit import ROOT, running_site, shipped_config_on_free_ports

from agent.notify import Notifier, health_status
from agent.status import Health

UNIT = ROOT / "deploy" / "vpp-agent.service"
SHIPPED_EXEC = "/opt/vpp-agent/.venv/bin/vpp-agent"
NOBODY = 65534  # what DynamicUser= gives is some unused uid; `nobody` stands for it here
PERIOD_S = 1.0  # the shipped config's poll_period_s
# a stall is shown by this long without a ping: 5 cycles, past what a WatchdogSec of 4 periods would allow
SILENCE_S = 5 * PERIOD_S
WATCHDOG_S = 4.0  # the WatchdogSec the first test runs under: pings at most every 2 s


# -- the socket systemd listens on -------------------------------------------------------------------------------
@dataclass
class Message:
    at: float  # monotonic time the test read it
    lines: list[str]


class NotifySocket:
    """A bound AF_UNIX datagram socket, as systemd's; `name` is what goes into NOTIFY_SOCKET ('@...': abstract)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name[1:] if name.startswith("@") else name)
        self.sock.setblocking(False)
        self.messages: list[Message] = []

    def close(self) -> None:
        self.sock.close()

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            self.messages.append(Message(time.monotonic(), data.decode().split("\n")))

    def with_line(self, line: str) -> list[Message]:
        return [m for m in self.messages if line in m.lines]

    def pings(self) -> list[float]:
        return [m.at for m in self.with_line("WATCHDOG=1")]

    def silent_for(self) -> float:
        pings = self.pings()
        return time.monotonic() - pings[-1] if pings else 0.0

    def statuses(self) -> list[str]:
        return [line[7:] for m in self.messages for line in m.lines if line.startswith("STATUS=")]

    def wait(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Read datagrams until `check` holds; the deadline only bounds a failing test."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.drain()
            if check():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not within {timeout_s} s: {what}; received {[m.lines for m in self.messages]}")
            select.select([self.sock], [], [], min(left, 0.1))

    async def wait_async(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """As `wait`, for a test whose agent runs on this event loop (so it must not block it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.drain()
            if check():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout_s} s: {what}; received {[m.lines for m in self.messages]}")
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def notify_socket(name: str | None = None) -> Iterator[NotifySocket]:
    listener = NotifySocket(name or f"@vpp-agent-test-{uuid.uuid4().hex}")
    try:
        yield listener
    finally:
        listener.close()


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A directory under /tmp that any user may enter: socket paths are limited to 107 bytes, and a test's
    tmp_path (under a root-only 0700 folder) is neither short enough for sure nor open to `nobody`."""
    path = Path(tempfile.mkdtemp(prefix="vppd-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the site and the agent as processes ---------------------------------------------------------------------------
def site_config(folder: Path, mode: str = "dispatch", log_level: str = "info", state_file: str | None = None) -> Path:
    """The shipped config.toml on free ports; `state_file` None keeps each run's state in `folder`."""
    path = shipped_config_on_free_ports(folder)
    text = path.read_text()
    text = text.replace('mode = "dispatch"', f'mode = "{mode}"', 1)
    text = text.replace('log_level = "info"', f'log_level = "{log_level}"', 1)
    if state_file is not None:
        current = tomllib.loads(text)["agent"]["state_file"]
        text = text.replace(f'state_file = "{current}"', f'state_file = "{state_file}"', 1)
    path.write_text(text)
    return path


@contextlib.contextmanager
def simulator(config: Path, folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`vpp-sim` serving the config's [simulation] until the test ends (resumed first if the test froze it)."""
    log_path = folder / "sim.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sim_devices.cli", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=log_file, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while b'"sim.ready"' not in log_path.read_bytes():
            assert proc.poll() is None, f"vpp-sim exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"vpp-sim not ready: {log_path.read_text()}"
            time.sleep(0.05)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        proc.wait(10)


@dataclass
class AgentProcess:
    """`python -m agent.cli run` with NOTIFY_SOCKET set, and the JSON log lines it wrote to stderr. Clear
    `draining` to stop reading its stderr: the pipe (shrunk to one page) then fills and its next log write blocks."""

    proc: subprocess.Popen[bytes]
    events: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # everything, JSON or not (a start-up error is one plain line)
    draining: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def start_reading(self) -> None:
        assert self.proc.stderr is not None
        fcntl.fcntl(self.proc.stderr.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        self.draining.set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip())
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(raw))
            self.draining.wait()

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def log_text(self) -> str:
        return "\n".join(self.lines[-30:])


@contextlib.contextmanager
def agent_process(
    config: Path,
    notify: NotifySocket,
    watchdog_s: float | None = None,
    cwd: Path = ROOT,
    as_user: list[str] | None = None,
) -> Iterator[AgentProcess]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = notify.name
    if watchdog_s is not None:
        env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
    if as_user is not None:
        env.update(HOME="/", PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(ROOT))  # no home, no writes outside state
    proc = subprocess.Popen(
        [*(as_user or []), sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env,
    )  # fmt: skip
    agent = AgentProcess(proc)
    agent.start_reading()
    try:
        yield agent
    finally:
        agent.draining.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if agent.reader is not None:
            agent.reader.join(5)


def wchan(pid: int) -> str:
    """Where the kernel has the process sleeping (empty when the kernel does not say)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/wchan").read_text().strip()
    return ""


# -- (a) ready, then a ping per healthy cycle, then stopping -------------------------------------------------------
def test_ready_once_the_fleet_is_polled_then_watchdog_pings_then_stopping(tmp_path: Path) -> None:
    """The shipped config (dispatch mode) under WatchdogSec=4: READY=1 once, with the first ping, then pings no
    closer than half the watchdog interval; SIGTERM (systemctl stop) sends STOPPING=1 and exits 0."""
    config = site_config(tmp_path)
    with (
        short_dir() as folder,
        notify_socket(str(folder / "notify")) as notify,
        simulator(config, tmp_path),
        agent_process(config, notify, watchdog_s=WATCHDOG_S) as agent,
    ):
        notify.wait(lambda: len(notify.pings()) >= 4, 90, "READY=1 and four WATCHDOG=1")
        # READY=1 comes from the end of the first cycle, when the fleet has been polled: the status in the same
        # datagram is `online`, which it cannot be before the site meter was read ("gives no reading": degraded)
        assert notify.messages[0].lines == ["READY=1", "WATCHDOG=1", "STATUS=online"], agent.log_text()
        assert len(notify.with_line("READY=1")) == 1
        pings = notify.pings()
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # at most one ping per half interval (2 s); 1 s cycles would give 1 s gaps. (Margin: arrival jitter.)
        assert min(gaps) >= WATCHDOG_S / 2 * 0.75, gaps
        agent.proc.send_signal(signal.SIGTERM)
        notify.wait(lambda: bool(notify.with_line("STOPPING=1")), 30, "STOPPING=1 after SIGTERM")
        assert agent.proc.wait(30) == 0, agent.log_text()


# -- (b) stalls: the pings stop; dead devices: they do not --------------------------------------------------------
def test_pings_stop_while_the_event_loop_is_blocked_and_resume_after(tmp_path: Path) -> None:
    """The agent's stderr stops being read (a hung journald does this to every service): with debug logging the
    pipe fills within a cycle and the event loop blocks in a log write. No cycle completes, no ping goes out;
    once stderr drains again the cycles, and the pings, go on. Under systemd the watchdog would have fired."""
    config = site_config(tmp_path, mode="site_target", log_level="debug")
    with (
        notify_socket() as notify,
        simulator(config, tmp_path),
        agent_process(config, notify) as agent,
    ):
        notify.wait(lambda: len(notify.pings()) >= 3, 60, "three pings while cycling")
        agent.draining.clear()
        notify.wait(lambda: notify.silent_for() >= SILENCE_S, 60, f"{SILENCE_S} s without a ping")
        assert agent.proc.poll() is None, "the agent exited: that is not a stall"
        where = wchan(agent.proc.pid)
        assert where in ("", "0") or "pipe" in where, f"blocked in {where!r}, not in a write to the log pipe"
        resumed_from = len(notify.pings())
        agent.draining.set()
        notify.wait(lambda: len(notify.pings()) >= resumed_from + 2, 60, "pings again once stderr drains")


async def test_pings_stop_while_a_cycle_hangs_on_a_write_that_never_returns() -> None:
    """The real loop and drivers on a simulated battery, with the notifier hooked as the app hooks it. One setpoint
    write never returns (a lost future in a driver or library): the event loop runs on (the device still answers a
    read through the same driver), but the cycle does not complete, so there is no ping until the write returns.
    A timer task pinging on its own would have kept the agent alive, stuck, forever."""
    template = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
lease_timeout_s = 5.0
[control]
mode = "site_target"
[[assets]]
id = "bess"
map = "vppsim_battery"
port = {port}
[simulation]
[[simulation.devices]]
id = "bess"
model = "vppsim_battery"
port = {port}
"""
    with notify_socket() as notify:
        notifier = Notifier(notify.name)
        async with running_site(template, 1, start_agent=False) as run:
            loop = run.loop
            loop.after_cycle.append(lambda: notifier.cycle_completed("online"))
            run.task = asyncio.create_task(loop.run(run.stop))
            await notify.wait_async(lambda: len(notify.pings()) >= 3, 30, "pings while cycling")

            driver = loop.drivers["bess"]
            entered = asyncio.Event()
            never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def write_that_never_returns(power_w: float) -> None:
                entered.set()
                await never

            driver.write_setpoint = write_that_never_returns  # type: ignore[method-assign]
            loop.set_override("bess", 1000.0)  # a change past the deadband: the next cycle writes
            await asyncio.wait_for(entered.wait(), 10)
            notify.drain()
            pings_before, cycles_before = len(notify.pings()), loop.cycles
            silence_s = 25 * loop.period_s
            await notify.wait_async(lambda: notify.silent_for() >= silence_s, 30, f"{silence_s} s without a ping")
            assert len(notify.pings()) == pings_before and loop.cycles == cycles_before
            reading = await driver.read()  # the device and the event loop are fine: only the cycle is stuck
            assert reading.soc is not None
            never.set_result(None)
            await notify.wait_async(lambda: len(notify.pings()) > pings_before + 1, 30, "pings once the write returns")
        notifier.close()


def test_pings_go_on_while_no_device_answers(tmp_path: Path) -> None:
    """The simulator frozen (SIGSTOP: connections are still accepted by the kernel, nothing answers): every poll
    times out, the assets go unavailable, the status turns degraded, and every cycle still completes, so the pings
    go on. A restart would not bring the devices back, and the agent keeps the site within its limits meanwhile."""
    config = site_config(tmp_path, mode="site_target")
    with (
        notify_socket() as notify,
        simulator(config, tmp_path) as sim,
        agent_process(config, notify) as agent,
    ):
        notify.wait(lambda: len(notify.pings()) >= 2, 60, "pings while cycling")
        sim.send_signal(signal.SIGSTOP)
        notify.wait(lambda: bool(agent.logged("asset.unavailable")), 60, "assets unavailable")
        frozen_from = len(notify.pings())
        notify.wait(lambda: len(notify.pings()) >= frozen_from + 3, 30, "pings go on while no device answers")
        notify.wait(lambda: any(s.startswith("degraded") for s in notify.statuses()), 30, "STATUS=degraded")


# -- the notifier itself ------------------------------------------------------------------------------------------
def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    notifier.cycle_completed("online")
    notifier.stopping()
    assert notifier.pings == 0 and not notifier.ready_sent


def test_pings_are_rate_limited_to_half_the_watchdog_and_status_sent_on_change() -> None:
    clock = [100.0]
    with notify_socket() as notify:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "30000000"})
        notifier.monotonic = lambda: clock[0]
        for _ in range(30):  # 30 cycles of 1 s
            notifier.cycle_completed("online")
            clock[0] += 1.0
        health = Health()
        health.report("meter", "site meter 'meter-site' gives no reading\nREADY=1")
        notifier.cycle_completed(health_status(health))
        notify.drain()
        assert [m.lines for m in notify.messages] == [
            ["READY=1", "WATCHDOG=1", "STATUS=online"],
            ["WATCHDOG=1"],  # 15 s later, not every cycle
            # 30 s after the first; the reason's newline flattened: it cannot add a line of its own
            ["WATCHDOG=1", "STATUS=degraded: meter: site meter 'meter-site' gives no reading READY=1"],
        ]
        notifier.close()


def test_a_watchdog_of_another_process_is_not_fed_and_a_full_queue_never_blocks() -> None:
    with notify_socket() as notify:
        notifier = Notifier.from_environment(
            {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        )
        notifier.cycle_completed()
        notify.drain()
        assert [m.lines for m in notify.messages] == [["READY=1"]]
        # nobody reads the socket now: its queue fills, and a send drops instead of waiting
        started = time.monotonic()
        for _ in range(2000):
            notifier.send("STATUS=x")
        assert notifier.dropped > 0 and time.monotonic() - started < 5
        notifier.close()


# -- (c) the unit passes systemd's own check ----------------------------------------------------------------------
def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_says_what_it_must() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert float(unit["WatchdogSec"][0]) >= 4 * PERIOD_S
    assert unit["StateDirectory"] == ["vpp-agent"]
    assert unit["WorkingDirectory"] in (["%S/vpp-agent"], ["/var/lib/vpp-agent"])
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "mqtt:/etc/vpp-agent/mqtt-password" in unit["LoadCredential"]
    assert {"DynamicUser", "ProtectSystem", "NoNewPrivileges", "ProtectHome", "PrivateTmp"} <= unit.keys()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian: systemd)")
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the shipped unit, with ExecStart pointing at this venv's `vpp-agent` (verify
    checks that the executables exist). Warnings count as failures: systemd ignores a key it does not know."""
    vpp_agent = Path(sys.executable).parent / "vpp-agent"
    assert vpp_agent.exists(), f"{vpp_agent}: the venv has no vpp-agent script (pip install -e .)"
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    unit = tmp_path / "vpp-agent.service"
    unit.write_text(text.replace(SHIPPED_EXEC, str(vpp_agent)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    about_unit = [line for line in (result.stdout + result.stderr).splitlines() if "vpp-agent" in line]
    assert result.returncode == 0 and not about_unit, result.stdout + result.stderr


# -- (d) DynamicUser + ProtectSystem=strict: the agent starts with the unit's directories -------------------------
def unit_cwd(root: Path) -> Path:
    """Where systemd starts ExecStart=, mapped under `root`: WorkingDirectory= (%S is /var/lib), else `/` (which
    is where the shipped unit ran before it had one). StateDirectory= is made there, owned by the service's uid."""
    unit = unit_settings(UNIT.read_text())
    for name in unit.get("StateDirectory", []):
        state = root / "var" / "lib" / name
        state.mkdir(parents=True)
        os.chown(state, NOBODY, NOBODY)
        state.chmod(int(unit.get("StateDirectoryMode", ["0755"])[0], 8))
    working = unit.get("WorkingDirectory", ["/"])[0].replace("%S", "/var/lib").lstrip("-")
    return root / working.lstrip("/")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_as_a_dynamic_user_the_relative_state_file_opens_in_the_state_directory() -> None:
    """The issue's crash loop: as an unprivileged uid with the shipped relative `state_file`, started where the unit
    starts it. With cwd `/` (no WorkingDirectory) SQLite cannot create its file; with the unit's StateDirectory and
    WorkingDirectory the agent starts, says READY=1, and the state file lands in the state directory."""
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    with short_dir() as root:
        etc = root / "etc"
        etc.mkdir()
        config = site_config(etc, mode="site_target", state_file="vpp-state.sqlite3")  # no devices: none needed
        config.chmod(0o644)
        cwd = unit_cwd(root)
        assert cwd != root, "the unit sets no WorkingDirectory: the agent would start in / and fail"
        check = subprocess.run(
            [*as_nobody, sys.executable, "-m", "agent.cli", "check-config", str(config)],
            cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        with notify_socket() as notify, agent_process(config, notify, cwd=cwd, as_user=as_nobody) as agent:
            notify.wait(
                lambda: bool(notify.with_line("READY=1")) or agent.proc.poll() is not None, 90, "READY=1 or an exit"
            )
            assert agent.proc.poll() is None, agent.log_text()
            state = cwd / "vpp-state.sqlite3"
            assert state.exists() and state.stat().st_uid == NOBODY


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_without_a_working_directory_the_relative_state_file_fails_as_in_the_issue() -> None:
    """What the old unit did (cwd `/`, not writable by the dynamic user): the start fails, with the reason."""
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    with short_dir() as root:
        config = site_config(root, mode="site_target", state_file="vpp-state.sqlite3")
        config.chmod(0o644)
        with notify_socket() as notify, agent_process(config, notify, cwd=Path("/"), as_user=as_nobody) as agent:
            code = agent.proc.wait(90)
            assert code != 0 and not notify.with_line("READY=1")
            if agent.reader is not None:
                agent.reader.join(5)
        output = agent.log_text()
        assert "state_file" in output or "unable to open database file" in output, output
