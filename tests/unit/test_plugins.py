"""Third-party maps and drivers through entry points (issue 12 §4, docs/integrators.md "Plugins").

Each test writes a real installed distribution into a tmp dir (a package plus its `<name>-0.1.dist-info` with METADATA
and entry_points.txt), puts the dir on PYTHONPATH of a subprocess running the shipped CLI, and reads what the CLI
says and does: importlib.metadata finds the plugin exactly as it would one installed by pip. No mocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.config import parse_config
from drivers.entrypoints import installed
from sim_devices.ports import free_port_block

ROOT = Path(__file__).resolve().parents[2]

ACME_DRIVER = '''
"""A made-up transport 'acme': an in-memory battery per asset that records every call the agent makes."""
import os

from agent.model import AssetKind, DeviceStatus, Measurement


class AcmeBattery:
    def __init__(self, asset_id, now, record):
        self.asset_id, self.kind, self.now, self.record = asset_id, AssetKind.BATTERY, now, record
        self.setpoint_w, self.lease_s = 0.0, None

    def _log(self, line):
        with open(self.record, "a") as f:
            f.write(f"{self.asset_id} {line}\\n")

    async def connect(self):
        self._log("connect")

    async def read(self):
        self._log("read")
        return Measurement(self.asset_id, self.now(), power_w=self.setpoint_w, status=DeviceStatus.STANDBY,
                           setpoint_w=self.setpoint_w, lease_timeout_s=self.lease_s, soc=0.5, capacity_wh=10000.0,
                           rated_charge_w=5000.0, rated_discharge_w=5000.0)

    async def write_setpoint(self, power_w):
        self.setpoint_w = power_w
        self._log(f"setpoint {power_w:g}")

    async def write_lease_timeout(self, seconds):
        self.lease_s = seconds
        self._log(f"lease {seconds:g}")

    async def close(self):
        self._log("close")


def acme_drivers(asset, context):
    return {p.id: AcmeBattery(p.id, context.now, os.environ["ACME_RECORD"]) for p in asset.placements()}
'''

ACME_MAP = '''
# A made-up meter with one register at 7000, shipped by a plugin package (tests/unit/test_plugins.py).
schema = 2

[model]
id = "acme_meter"
manufacturer = "Acme"
name = "Test meter"
kind = "meter"
source = "made up for a test"

[[registers]]
field = "power_w"
address = 7000
type = "s32"
unit = "W"
access = "r"
description = "Power, + import"
'''


def _distribution(site: Path, name: str, entry_points: str, files: dict[str, str]) -> None:
    """Install `name` 0.1 into `site` the way pip lays it out: the files, and <name>-0.1.dist-info."""
    for relative, text in files.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def _acme(site: Path) -> Path:
    _distribution(
        site, "acme-vpp",
        "[vpp_agent.drivers]\nacme = acme_vpp.driver:acme_drivers\n\n[vpp_agent.maps]\nacme = acme_vpp.maps\n",
        {"acme_vpp/__init__.py": "", "acme_vpp/driver.py": ACME_DRIVER, "acme_vpp/maps/acme_meter.toml": ACME_MAP},
    )
    return site


def _cli(sites: list[Path], *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, sites), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "agent.cli", *argv], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=120)


def _config(tmp_path: Path, assets: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[agent]\nstate_file = ":memory:"\n{assets}')
    return path


PLUGIN_ASSETS = '''
[[assets]]
id = "acme-{{i}}"
transport = "acme"
count = 2

[[assets]]
id = "meter-1"
map = "acme_meter"
port = {port}
'''


def test_check_config_takes_the_plugins_transport_and_map(tmp_path: Path) -> None:
    site = _acme(tmp_path / "site")
    done = _cli([site], "check-config", str(_config(tmp_path, PLUGIN_ASSETS.format(port=1502))), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ok (3 assets)" in done.stdout
    # without the plugin installed, the same config names both gaps
    bare = _cli([], "check-config", str(_config(tmp_path, PLUGIN_ASSETS.format(port=1502))), cwd=tmp_path)
    assert bare.returncode == 2
    assert "unknown transport 'acme': one of modbus, mqtt, ocpp, sunspec" in bare.stderr


def test_unknown_transport_lists_the_plugins_ones(tmp_path: Path) -> None:
    site = _acme(tmp_path / "site")
    config = _config(tmp_path, '[[assets]]\nid = "x"\ntransport = "acne"\n')
    done = _cli([site], "check-config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert "assets[0].transport: unknown transport 'acne': one of modbus, mqtt, ocpp, sunspec, acme" in done.stderr


async def test_run_drives_the_plugins_device_and_reads_through_its_map(tmp_path: Path) -> None:
    """`vpp-agent run` polls the plugin's in-memory batteries and a bare Modbus meter through the plugin's map; the
    server holds only the map's registers (7000-7001), so a read through any other map would fail."""
    site = _acme(tmp_path / "site")
    port = free_port_block(1)
    words = [0xFFFF, 0xFC18]  # s32 -1000 W: exporting
    server = ModbusTcpServer([SimDevice(id=1, simdata=[SimData(address=7000, count=2, values=words,
                                                              datatype=DataType.REGISTERS)])],
                             address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    record = tmp_path / "acme.log"
    try:
        config = _config(tmp_path, PLUGIN_ASSETS.format(port=port))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(config), "--duration", "3",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "ACME_RECORD": str(record)},
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        await server.shutdown()
    assert proc.returncode == 0, err.decode()
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    available = {e["asset_id"] for e in events if e["event"] == "asset.available"}
    assert available == {"acme-1", "acme-2", "meter-1"}
    assert not [e for e in events if e["event"] in ("poll.failed", "asset.unavailable")]
    calls = record.read_text().splitlines()
    for asset_id in ("acme-1", "acme-2"):  # built, connected, polled and leased like a built-in driver
        mine = [c.split(" ", 1)[1] for c in calls if c.startswith(asset_id + " ")]
        assert mine[0] == "connect" and "read" in mine
        assert any(c.startswith("lease ") for c in mine)


def test_a_plugin_that_fails_to_import_is_named_at_check_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    _distribution(broken, "broken-vpp", "[vpp_agent.drivers]\nzap = broken_vpp:factory\n",
                  {"broken_vpp/__init__.py": "import not_a_module_anywhere\n"})
    done = _cli([broken], "check-config", str(_config(tmp_path, '[[assets]]\nid = "z"\ntransport = "zap"\n')),
                cwd=tmp_path)
    assert done.returncode == 2
    assert ("assets[0].transport: plugin broken-vpp 0.1 ([vpp_agent.drivers] zap = 'broken_vpp:factory') failed to "
            "load: ModuleNotFoundError: No module named 'not_a_module_anywhere'") in done.stderr


def test_a_map_two_sources_provide_is_an_error_naming_both(tmp_path: Path) -> None:
    """A second plugin whose map directory (given by a callable) also has acme_meter."""
    site = _acme(tmp_path / "site")
    _distribution(site, "dup-vpp", "[vpp_agent.maps]\ndup = dup_vpp:maps_dir\n",
                  {"dup_vpp/__init__.py": "from pathlib import Path\n\ndef maps_dir():\n    return Path(__file__)"
                   ".parent / 'm'\n", "dup_vpp/m/acme_meter.toml": ACME_MAP})
    done = _cli([site], "check-config", str(_config(tmp_path, PLUGIN_ASSETS.format(port=1502))), cwd=tmp_path)
    assert done.returncode == 2
    err = " ".join(done.stderr.split())  # the message may wrap
    assert "assets[1].map: register map 'acme_meter' is provided by 2 sources:" in err
    assert str(site / "acme_vpp" / "maps" / "acme_meter.toml") in err
    assert str(site / "dup_vpp" / "m" / "acme_meter.toml") in err


def test_a_plugin_claiming_a_built_in_transport_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _distribution(site, "rival-vpp", "[vpp_agent.drivers]\nmodbus = rival_vpp:factory\n",
                  {"rival_vpp/__init__.py": "def factory(asset, context):\n    return {}\n"})
    done = _cli([site], "check-config", str(_config(tmp_path, '[[assets]]\nid = "b"\nmap = "vppsim_battery"\n')),
                cwd=tmp_path)
    assert done.returncode == 2
    assert ("assets[0].transport: transport 'modbus' is provided by vpp-agent (built in) (agent.wiring:modbus_drivers)"
            " and by plugin rival-vpp 0.1 ([vpp_agent.drivers] modbus = 'rival_vpp:factory')") in done.stderr


def test_a_config_of_built_in_transports_reads_no_entry_points() -> None:
    """Start-up pays for plugins only when a config names something that is not built in."""
    installed.cache_clear()
    parse_config('[[assets]]\nid = "b"\nmap = "vppsim_battery"\n\n[[assets]]\nid = "s"\ntransport = "sunspec"\n'
                 'kind = "battery"\nport = 1503\n')
    assert installed.cache_info().misses == 0
    try:
        parse_config('[[assets]]\nid = "x"\ntransport = "nope"\n')
    except ValueError as exc:
        assert "unknown transport 'nope': one of modbus, mqtt, ocpp, sunspec" in str(exc)
    else:
        raise AssertionError("an unknown transport was accepted")
    assert installed.cache_info().misses == 1  # read once, then cached


def test_a_factory_giving_wrong_drivers_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the same installed layout on sys.path; build_drivers names the asset entry and what came back."""
    from agent.config import ConfigError
    from agent.wiring import build_drivers

    _distribution(tmp_path, "odd-vpp", "[vpp_agent.drivers]\nnone = odd_vpp:nothing\nboom = odd_vpp:boom\n",
                  {"odd_vpp/__init__.py": "def nothing(asset, context):\n    return {}\n\n"
                                          "def boom(asset, context):\n    raise KeyError('serial_number')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    installed.cache_clear()
    try:
        config = parse_config('[[assets]]\nid = "n1"\ntransport = "none"\n')
        with pytest.raises(ConfigError, match=r"assets\[0\] \(transport 'none'\): the driver factory returned \[\], "
                                              r"not one driver for each of \['n1'\]"):
            build_drivers(config, lambda: datetime.now(UTC))
        config = parse_config('[[assets]]\nid = "b1"\ntransport = "boom"\n')
        with pytest.raises(ConfigError, match=r"assets\[0\] \(transport 'boom'\): the plugin's driver factory failed: "
                                              r"KeyError: 'serial_number'"):
            build_drivers(config, lambda: datetime.now(UTC))
    finally:
        installed.cache_clear()
