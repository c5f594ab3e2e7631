"""The shipped agent as a user runs it, for fault injection: `vpp-agent run` as its own process (sitekit.Agent, so it
can be killed with SIGKILL), a real Mosquitto, and the simulated site in this process (so every write is checked on
the devices' side: `ControllableDevice.write_log`, `writes_outside_nameplate`, leases).

Imported as `faultkit` (the conftest puts this folder and the integration and MQTT kits on sys.path).
"""

from __future__ import annotations

import contextlib
import sqlite3
import tomllib
from collections.abc import AsyncIterator, Callable
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


def simulation_of(config: Path) -> dict[str, Any]:
    return tomllib.loads(config.read_text())["simulation"]


@contextlib.asynccontextmanager
async def simulated_site(config: Path) -> AsyncIterator[SimSite]:
    sim = parse_simulation(simulation_of(config))
    async with SimSite.from_config(sim) as site:
        yield site


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


def shipped_persistence() -> list[str]:
    """The persistence settings a deployment is told to use (deploy/mosquitto.conf), as lines."""
    text = (ROOT / "deploy" / "mosquitto.conf").read_text()
    keys = ("persistence ", "autosave_on_changes", "autosave_interval", "set_tcp_nodelay")
    return [line.split("#")[0].strip() for line in text.splitlines() if line.startswith(keys)]
