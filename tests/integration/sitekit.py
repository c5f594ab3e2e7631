"""Start a simulated site and the agent against it on free loopback ports, for end-to-end tests and the bench.

Imported as `sitekit` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AppConfig, parse_config
from agent.control.loop import ControlLoop
from agent.wiring import build_drivers
from drivers.modbus import GatewayPool
from sim_devices.clock import Clock
from sim_devices.config import parse_simulation
from sim_devices.ports import astart_on_free_ports, free_port_block
from sim_devices.runner import SimSite

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]


SHIPPED_PORTS = 30  # the block config.toml's ports move to: devices at base+1..base+22, the status page at base+29


def shipped_config_on_free_ports(tmp_path: Path) -> Path:
    """config.toml with its ports moved to a free block, so tests never collide with a running demo."""
    return shipped_config(tmp_path, free_port_block(SHIPPED_PORTS))


def shipped_config(tmp_path: Path, base: int) -> Path:
    """config.toml with its ports moved to the block of SHIPPED_PORTS starting at `base`."""
    text = (ROOT / "config.toml").read_text()
    for old in (15021, 15022, 15023, 15024, 15031, 15032, 15041, 15042):
        text = text.replace(f"port = {old}\n", f"port = {base + old - 15020}\n")
    # the shipped state file is relative and the commands run in the repo: keep each test's state in its tmp_path,
    # or a stored event leaks into later runs
    text = text.replace('state_file = "vpp-state.sqlite3"', f'state_file = "{tmp_path / "state.db"}"')
    # the status page is on in the shipped config: on its own free port, or two tests (or a test and a running
    # demo) would both want 8088
    text, moved = re.subn(r"^(\[web\]\n(?:[^\[\n].*\n|\n)*?)port = \d+", rf"\g<1>port = {base + 29}", text, flags=re.M)
    assert moved == 1 or "[web]" not in text, "config.toml has a [web] table without a port line: update sitekit"
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@dataclass
class SimProcess:
    """A `vpp-sim` child serving a config; stdout and stderr are read all along (a full pipe would stall it)."""

    config: Path
    proc: asyncio.subprocess.Process
    output: bytearray
    readers: list[asyncio.Task[None]]

    async def stop(self) -> int:
        """SIGTERM (SIGKILL if it does not stop), then the rest of its output; returns the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            await asyncio.gather(*self.readers)
        return self.proc.returncode


async def launch_sim(config: Path, env: dict[str, str] | None = None, ready: bytes = b"sim.ready") -> SimProcess:
    """`vpp-sim --config config`, once it has logged `ready` (sim.ready: every port listens). Raises OSError with
    its output if it exits first, so sim_devices.ports.address_in_use can tell whether a port was taken."""
    cli = Path(sys.executable).parent / "vpp-sim"  # the console script a user runs, else the module it points at
    args = [str(cli)] if cli.exists() else [sys.executable, "-m", "sim_devices.cli"]
    proc = await asyncio.create_subprocess_exec(
        *args, "--config", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env=env,
    )  # fmt: skip
    output = bytearray()

    async def drain(stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            output.extend(chunk)

    sim = SimProcess(config, proc, output, [asyncio.create_task(drain(s)) for s in (proc.stdout, proc.stderr)])
    await eventually(lambda: ready in output or proc.returncode is not None, 60, f"vpp-sim logs {ready!r}")
    if ready not in output:
        await sim.stop()
        text = output.decode(errors="replace")
        raise OSError(f"vpp-sim exited with {proc.returncode} before serving {config}: {text}")
    return sim


@contextlib.asynccontextmanager
async def shipped_sim(
    tmp_path: Path,
    edit: Callable[[Path], None] | None = None,
    env: dict[str, str] | None = None,
    pick: Callable[[int], int] = free_port_block,
) -> AsyncIterator[SimProcess]:
    """vpp-sim serving the shipped config (shipped_config, then `edit(path)`) on a free block; if a port of the
    block was taken before vpp-sim bound it, the config is written again on a new block (ports.astart_on_free_ports).
    The agent's ports are in the same block, so `sim.config` is the file to run the agent with too."""

    async def start(base: int) -> SimProcess:
        config = shipped_config(tmp_path, base)
        if edit is not None:
            edit(config)
        return await launch_sim(config, env)

    sim = await astart_on_free_ports(SHIPPED_PORTS, start, pick=pick)
    try:
        yield sim
    finally:
        await sim.stop()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 15.0, what: str = "") -> None:
    """Poll until `check` holds; the deadline only bounds a failing test, it is not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


@dataclass
class Running:
    site: SimSite
    config: AppConfig
    loop: ControlLoop
    pool: GatewayPool
    stop: asyncio.Event
    task: asyncio.Task[None] | None

    def device(self, device_id: str):  # type: ignore[no-untyped-def]
        return self.site.devices[device_id]

    async def halt_agent(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
            self.task = None


@contextlib.asynccontextmanager
async def running_site(
    template: str, ports: int, clock: Clock | None = None, start_agent: bool = True
) -> AsyncIterator[Running]:
    """`template` is one TOML text (agent tables + [simulation]) with `{port}` for the first of `ports` ports."""
    text = template.replace("{port}", str(free_port_block(ports)))
    config = parse_config(text, "test-site.toml")
    sim_config = parse_simulation(tomllib.loads(text)["simulation"])
    async with SimSite.from_config(sim_config, clock=clock) as site:
        now = site.clock.now
        drivers, pool = build_drivers(config, now)
        loop = ControlLoop(config, drivers, clock=now)
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop)) if start_agent else None
        running = Running(site, config, loop, pool, stop, task)
        try:
            yield running
        finally:
            await running.halt_agent()
            pool.close()


# The two-battery site several integration tests run (two batteries on one port, units 1-2, and the site meter as
# unit 3), as [[assets]] and as the simulator's devices: `{port}` is replaced by each test's free port.
TWO_BATTERY_ASSETS = """[[assets]]
id = "bess{i}"
count = 2
map = "vppsim_battery"
port = {port}
units_per_port = 2
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}
unit_id = 3
"""
TWO_BATTERY_DEVICES = """[[simulation.devices]]
id = "bess{i}"
count = 2
model = "vppsim_battery"
port = {port}
units_per_port = 2
[simulation.devices.params]
ramp_w_per_s = 50000.0
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
unit_id = 3
"""


# The shipped agent as a user runs it: `vpp-agent run` in its own process, so it can be killed with SIGKILL
# (tests/faults, tests/ocpp).
@dataclass
class Agent:
    """One `vpp-agent run` process and the JSON log lines it wrote (stderr is not a terminal: structlog JSON)."""

    config: Path
    proc: asyncio.subprocess.Process | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(self.config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def logged(self, event: str, **fields: object) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]

    async def wait_logged(self, event: str, timeout_s: float = 60.0, **fields: object) -> dict[str, Any]:
        await eventually(lambda: bool(self.logged(event, **fields)), timeout_s, f"agent logs {event} {fields}")
        return self.logged(event, **fields)[-1]

    async def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or an OOM kill."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        await self._drain()

    async def stop(self) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await self._drain()
        return code

    async def _drain(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 5)


@contextlib.asynccontextmanager
async def agent_process(config: Path) -> AsyncIterator[Agent]:
    agent = Agent(config)
    await agent.start()
    try:
        yield agent
    finally:
        if agent.proc is not None and agent.proc.returncode is None:
            agent.proc.kill()
            await agent.proc.wait()
        await agent._drain()
