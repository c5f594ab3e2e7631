"""The shipped agent as a user runs it, for fault injection: `vpp-agent run` as its own process (so it can be killed
with SIGKILL), a real Mosquitto, and the simulated site in this process (so every write is checked on the devices'
side: `ControllableDevice.write_log`, `writes_outside_nameplate`, leases).

Imported as `faultkit` (the conftest puts this folder and the integration and MQTT kits on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brokerkit import Broker
from sitekit import ROOT, eventually, shipped_config_on_free_ports

from sim_devices.config import parse_simulation
from sim_devices.controllable import ControllableDevice
from sim_devices.runner import SimSite

PREFIX = "vpp/demo"


def site_config(tmp_path: Path, broker: Broker | None, mode: str = "dispatch", extra: str = "") -> Path:
    """The shipped config.toml on free ports, its state file in `tmp_path`, MQTT on toward `broker`."""
    path = shipped_config_on_free_ports(tmp_path)
    text = path.read_text()
    if broker is not None:
        text = text.replace("enabled = false", "enabled = true", 1).replace("port = 1883", f"port = {broker.port}")
    text = text.replace('mode = "dispatch"', f'mode = "{mode}"', 1)
    if broker is not None and "[trust]" not in extra:
        text += "\n[trust]\nrequire_signatures = false  # a lab: these tests send unsigned signals\n"
    path.write_text(text + extra)
    return path


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


def simulation_of(config: Path) -> dict[str, Any]:
    return tomllib.loads(config.read_text())["simulation"]


@contextlib.asynccontextmanager
async def simulated_site(config: Path) -> AsyncIterator[SimSite]:
    sim = parse_simulation(simulation_of(config))
    async with SimSite.from_config(sim) as site:
        yield site


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


def controllable(site: SimSite) -> dict[str, ControllableDevice]:
    return {k: d for k, d in site.devices.items() if isinstance(d, ControllableDevice)}


def writes_outside_nameplate(site: SimSite) -> dict[str, int]:
    return {k: d.writes_outside_nameplate for k, d in controllable(site).items() if d.writes_outside_nameplate}


def stored_signal_ids(state_file: Path, kind: str) -> set[str]:
    """What the agent's state file holds (read after the agent is gone, as an operator would)."""
    with contextlib.closing(sqlite3.connect(state_file)) as db:
        return {row[0] for row in db.execute("SELECT id FROM signals WHERE kind = ?", (kind,))}


def state_file(config: Path) -> Path:
    return Path(tomllib.loads(config.read_text())["agent"]["state_file"])


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    await eventually(check, timeout_s, what)
