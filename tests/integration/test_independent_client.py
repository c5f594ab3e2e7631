"""An independent Modbus client (Debian's mbpoll) reads and writes the documented addresses.

The simulator and the driver both read drivers/maps/*.toml; if a map were wrong, both ends would agree and every
other test would pass. Here the addresses, types and word orders are the ones written in docs/devices.md, typed
in by hand, and a client that shares no code with either end does the talking.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from datetime import UTC, datetime

import pytest
from sitekit import running_site

from sim_devices.clock import ManualClock

SITE = """
[[assets]]
id = "bess"
map = "vppsim_battery"
port = {port}
[[assets]]
id = "ev"
map = "vppsim_v2g_dc"
port = {port}
unit_id = 2
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}
unit_id = 3
[simulation]
base_load_w = 5000.0
[[simulation.devices]]
id = "bess"
model = "vppsim_battery"
port = {port}
[simulation.devices.params]
soc = 0.42
lease_timeout_s = 0
[[simulation.devices]]
id = "ev"
model = "vppsim_v2g_dc"
port = {port}
unit_id = 2
[simulation.devices.params]
lease_timeout_s = 0
sessions = [{ arrival_s = 0, departure_s = 36000, capacity_kwh = 62.5, soc = 0.5, target_soc = 0.9, min_soc = 0.25 }]
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
unit_id = 3
"""

pytestmark = pytest.mark.mbpoll


async def mbpoll(
    port: int, unit: int, ref: int, kind: str = "4", count: int = 1, big: bool = False, write: str | None = None
) -> dict[int, float]:
    """Run mbpoll once with PDU addressing; returns {address: value} as mbpoll printed them."""
    exe = shutil.which("mbpoll")
    assert exe, "mbpoll is not installed: apt-get install -y mbpoll (README's test command does this)"
    args = [exe, "-m", "tcp", "-p", str(port), "-a", str(unit), "-0", "-1", "-t", kind, "-r", str(ref)]
    args += ["-c", str(count)] if not write else []
    args += ["-B"] if big else []
    args += ["-o", "2", "127.0.0.1"]
    if write:
        args += ["--", write]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"mbpoll {' '.join(args)} failed: {out.decode()} {err.decode()}"
    return {int(a): float(v) for a, v in re.findall(r"^\[(\d+)\]:\s+(-?[\d.]+)", out.decode(), re.MULTILINE)}


async def test_documented_addresses_read_by_mbpoll() -> None:
    clock = ManualClock(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))
    async with running_site(SITE, 1, clock=clock, start_agent=False) as run:
        port = run.site.placements["bess"].port
        await run.loop.drivers["bess"].write_setpoint(-20000.0)  # agent convention: discharge 20 kW
        await run.loop.drivers["ev"].write_setpoint(7000.0)
        run.site.step(30.0)
        # battery (docs/devices.md): 2 f32 kW, + discharge, low word first; 4 f32 % SoC; 6 u16 SoH % x0.01
        power = await mbpoll(port, 1, 2, "4:float")
        assert power[2] == pytest.approx(20.0, abs=1e-3)
        soc = await mbpoll(port, 1, 4, "4:float")
        assert soc[4] == pytest.approx(run.device("bess").soc * 100, abs=1e-3)
        assert soc[4] < 42.0
        soh = await mbpoll(port, 1, 6)
        assert soh[6] == round(run.device("bess").soh * 10000)
        # charger: 1003 s32 W big-endian words; 1009 u16 SoC x0.1 %; 1010 capacity x0.1 kWh; 1011 target x0.1 %
        ev_power = await mbpoll(port, 2, 1003, "4:int", big=True)
        assert ev_power[1003] == 7000
        ev_fields = await mbpoll(port, 2, 1009, count=4)
        assert ev_fields[1010] == 625 and ev_fields[1011] == 900 and ev_fields[1012] == 250
        assert ev_fields[1009] == round(run.device("ev").soc * 1000)
        # meter: 0 u16 V with V_SF at 1; 4 s32 W big-endian with W_SF at 6
        meter = await mbpoll(port, 3, 0, count=7)
        v_sf = meter[1] - 65536 if meter[1] > 32767 else meter[1]
        assert meter[0] * 10**v_sf == pytest.approx(run.device("meter").voltage_v, abs=10**v_sf)
        watts = await mbpoll(port, 3, 4, "4:int", big=True)
        w_sf = meter[6] - 65536 if meter[6] > 32767 else meter[6]
        assert watts[4] * 10**w_sf == pytest.approx(5000 - 20000 + 7000, abs=10**w_sf)


async def test_documented_setpoint_register_written_by_mbpoll() -> None:
    clock = ManualClock(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))
    async with running_site(SITE, 1, clock=clock, start_agent=False) as run:
        port = run.site.placements["ev"].port
        await mbpoll(port, 2, 1015, "4:int", big=True, write="-3000")  # 1015 s32 W, + charge, big-endian words
        assert run.device("ev").lease.setpoint_w == -3000
        run.site.step(10.0)
        reading = await run.loop.drivers["ev"].read()
        assert reading.power_w == pytest.approx(-3000) and reading.setpoint_w == pytest.approx(-3000)
