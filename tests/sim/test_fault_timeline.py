"""Faults on a timeline (issue 12 §5): a TOML file of [[faults]] entries applied on the sim clock to any simulated
device, read from `[simulation] fault_timeline` or `vpp-sim --fault-timeline`, with errors naming file, entry and
key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from simhelpers import HOST, eventually, free_port_block, span

from sim_devices.clock import ManualClock
from sim_devices.config import SimulationError, load_simulation_file, parse_simulation
from sim_devices.faults import TimelineError, load_timeline, parse_fault_spec, parse_timeline
from sim_devices.runner import SimSite

KINDS = {"ev1": ("offline", "slow", "exception", "frozen", "device", "offset"),
         "CP1": ("offline", "slow", "device", "reject", "silent", "reboot")}

EXAMPLE = """
# at t = 30 s take ev1 offline for 20 s; at 45 s make it slow for ever; at 60 s reboot station CP1
[[faults]]
at_s = 30
device = "ev1"
kind = "offline"
for_s = 20

[[faults]]
at_s = 45
device = "ev1"
kind = "slow"
value = 0.5

[[faults]]
at_s = 60
device = ["CP1"]
kind = "reboot"
"""


def test_due_hands_out_switches_in_time_order_and_clears_after_for_s(tmp_path: Path) -> None:
    path = tmp_path / "faults.toml"
    path.write_text(EXAMPLE)
    timeline = load_timeline(path, KINDS)
    assert timeline.due(29.9) == []
    (on,) = timeline.due(30.0)
    assert (on.device, on.kind, on.clear) == ("ev1", "offline", False)
    assert [(a.t_s, a.kind, a.clear, a.value) for a in timeline.due(100.0)] == [
        (45.0, "slow", False, 0.5), (50.0, "offline", True, None), (60.0, "reboot", False, None)]
    assert len(timeline) == 0


@pytest.mark.parametrize(("text", "message"), [
    ("[[faults]]\nat_s = 1\ndevice = 'ev1'\nkind = 'ofline'", r"faults\[0\]\.kind = 'ofline': unknown fault kind"),
    ("[[faults]]\ndevice = 'ev1'\nkind = 'offline'", r"faults\[0\]\.at_s: required key is missing"),
    ("[[faults]]\nat_s = 1\ndevice = 'ev1'\nkind = 'offline'\nfor = 3", r"faults\[0\]\.for = 3: unknown key"),
    ("[[faults]]\nat_s = -1\ndevice = 'ev1'\nkind = 'offline'", r"faults\[0\]\.at_s = -1: .*greater than or equal"),
    ("[[faults]]\nat_s = 1\ndevice = 'ev1'\nkind = 'slow'", r"faults\[0\]\.value = None: fault 'slow' needs a value"),
    ("[[faults]]\nat_s = 1\ndevice = 'CP1'\nkind = 'reboot'\nfor_s = 2",
     r"faults\[0\]\.for_s = 2\.0: 'reboot' is a one-off"),
    ("[[faults]]\nat_s = 1\ndevice = 'ev1'\nkind = 'offline'\n[[faults]]\nat_s = 2\ndevice = 'ev9'\nkind = 'offline'",
     r"faults\[1\]\.device = 'ev9': no such device"),
    ("[[faults]]\nat_s = 1\ndevice = 'ev1'\nkind = 'reject'", r"faults\[0\]\.kind = 'reject': does not apply to 'ev1'"),
    ("[[fault]]\nat_s = 1", r"fault: unknown key"),
    ("[[faults]\nat_s = 1", r"not valid TOML"),
])
def test_bad_timeline_entries_name_the_file_the_entry_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TimelineError, match=message) as caught:
        load_timeline(path, KINDS)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)  # one line


def test_cli_fault_specs_take_the_ocpp_kinds() -> None:
    assert parse_fault_spec("CP1:reject=TxNotFound") == ("CP1", "reject", "TxNotFound")
    assert parse_fault_spec("CP1:reject") == ("CP1", "reject", "SimulatedFault")
    assert parse_fault_spec("CP1:silent") == ("CP1", "silent", None)
    with pytest.raises(ValueError, match="reasonCode"):
        parse_fault_spec("CP1:reject=" + "x" * 21)


async def _answers(port: int, model: str) -> bool:
    client = AsyncModbusTcpClient(HOST, port=port, timeout=0.3, retries=0)
    try:
        if not await client.connect():
            return False
        first, count = span(model)
        rr = await client.read_holding_registers(first, count=count, device_id=1)
        return not rr.isError()
    except Exception:
        return False
    finally:
        client.close()


async def test_the_timeline_takes_a_modbus_device_offline_and_back_on_the_sim_clock(tmp_path: Path) -> None:
    port = free_port_block(1)
    path = tmp_path / "faults.toml"
    path.write_text("[[faults]]\nat_s = 30\ndevice = 'bess'\nkind = 'offline'\nfor_s = 20\n")
    config = parse_simulation({"fault_timeline": str(path), "devices": [
        {"id": "bess", "model": "vppsim_battery", "port": port}]})
    async with SimSite.from_config(config, ManualClock()) as site:
        assert site.timeline is not None
        faults = site.faults("bess")

        async def up() -> bool:
            return await _answers(port, "vppsim_battery")

        async def down() -> bool:
            return not await _answers(port, "vppsim_battery")

        await eventually(up, what="answers before t = 30 s")
        site.step(29.0)
        assert await _answers(port, "vppsim_battery") and not site.timeline.applied
        site.step(2.0)  # t = 31 s
        await eventually(lambda: _true(faults.state.offline), what="offline at t = 30 s")
        await eventually(down, what="no answer while offline")
        site.step(20.0)  # t = 51 s
        await eventually(lambda: _true(not faults.state.offline), what="back at t = 50 s")
        await eventually(up, what="answers again")
        assert [(a.t_s, a.clear) for a in site.timeline.applied] == [(30.0, False), (50.0, True)]


async def _true(value: bool) -> bool:
    return value


def test_the_config_key_is_read_relative_to_the_config_file_and_checked(tmp_path: Path) -> None:
    (tmp_path / "faults.toml").write_text("[[faults]]\nat_s = 5\ndevice = 'bess'\nkind = 'frozen'\n")
    sim = tmp_path / "sim.toml"
    sim.write_text("[simulation]\nfault_timeline = 'faults.toml'\n[[simulation.devices]]\nid = 'bess'\n"
                   "model = 'vppsim_battery'\nport = 1502\n")
    assert load_simulation_file(sim).fault_timeline == str((tmp_path / "faults.toml").resolve())
    (tmp_path / "faults.toml").write_text("[[faults]]\nat_s = 5\ndevice = 'bess'\nkind = 'silent'\n")
    with pytest.raises(SimulationError, match=r"sim\.toml: simulation\.fault_timeline: .*faults\.toml: "
                                              r"faults\[0\]\.kind = 'silent': does not apply to 'bess'"):
        load_simulation_file(sim)


def test_vpp_sim_refuses_a_bad_timeline_and_a_fault_a_device_cannot_show(tmp_path: Path) -> None:
    sim = tmp_path / "sim.toml"
    sim.write_text("[simulation]\n[[simulation.devices]]\nid = 'bess'\nmodel = 'vppsim_battery'\nport = 1502\n")
    (tmp_path / "t.toml").write_text("[[faults]]\nat_s = 5\ndevice = 'nobody'\nkind = 'offline'\n")
    for extra, message in ((["--fault-timeline", str(tmp_path / "t.toml")], "faults[0].device = 'nobody'"),
                           (["--fault", "bess:reboot"], "--fault bess:reboot: does not apply to this device")):
        done = subprocess.run([sys.executable, "-m", "sim_devices.cli", "--config", str(sim), *extra],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_an_inline_timeline_parses_like_a_file() -> None:
    timeline = parse_timeline({"faults": [{"at_s": 1.0, "device": ["a", "b"], "kind": "frozen", "for_s": 1.0}]},
                              "inline")
    assert [(a.device, a.clear) for a in timeline.due(5.0)] == [("a", False), ("b", False), ("a", True),
                                                                 ("b", True)]
