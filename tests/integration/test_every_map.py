"""Every register map in drivers/maps is served by the simulator and read back by the driver (evcc's pattern:
every device template is instantiated by a test), so a new map cannot land without working on the wire.

The simulator serves a real product's map with the device's own codes and sign (issue 12 §3: Quasar 11 for
discharging, EVtec's connector states, Sungrow's magnitude + running-state bits), so the driver's translation is
exercised here as a real device needs it; tests/golden checks the same maps against hand-worked words."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sitekit import running_site

from agent.model import MEASUREMENT_FIELDS
from drivers.registermap import UNIT_FACTOR, available_maps, load_map
from sim_devices.clock import ManualClock

TEMPLATE = """
[[assets]]
id = "dut"
map = "{model}"
port = {port}
[simulation]
base_load_w = 4321.0
[[simulation.devices]]
id = "dut"
model = "{model}"
port = {port}
"""
# a car plugged in from the start with room to discharge, so a charger's native "discharging" code is served
EV_PARAMS = """
[[simulation.devices.params.sessions]]
arrival_s = 0
departure_s = 36000
capacity_kwh = 60
soc = 0.6
min_soc = 0.2
"""


@pytest.mark.parametrize("model", available_maps())
async def test_map_round_trip_through_simulator(model: str) -> None:
    register_map = load_map(model)
    clock = ManualClock(datetime(2026, 11, 23, tzinfo=UTC))
    config = TEMPLATE.replace("{model}", model) + (EV_PARAMS if register_map.kind == "ev_charger" else "")
    async with running_site(config, 1, clock=clock, start_agent=False) as run:
        driver = run.loop.drivers["dut"]
        physics = run.device("dut")
        pauses: list[float] = []

        async def pause(seconds: float) -> None:  # the device's own settle time ([control] delay_s), recorded
            pauses.append(seconds)

        driver._sleep = pause
        if register_map.kind.controllable:
            await driver.write_lease_timeout(45)
            if register_map.leased:
                assert physics.lease.timeout_s == 45
            await driver.write_setpoint(-2500.0)
            assert physics.lease.setpoint_w == pytest.approx(-2500.0, abs=1)
            run.site.step(30.0)  # inside the 45 s lease
            assert physics.power_w < 0, "the device discharges, so its native discharging code is served"
        else:
            run.site.step(60.0)
        reading = await driver.read()
        truth = physics.fields()
        checked = 0
        for field in MEASUREMENT_FIELDS:
            if not register_map.has(field) or field not in truth or register_map.codec(field).row.access == "w":
                continue  # a write-only row (the lease) is checked by what the physics took
            got = getattr(reading, field)
            want = truth[field]
            if field == "ev_departure":
                got, want = got.timestamp(), round(want)
            elif field in ("status", "fault_code"):
                got, want = int(got), int(want)
            elif field == "ev_connected":
                got, want = bool(got), bool(want)
            row = register_map.codec(field).row
            step = abs(row.scale * UNIT_FACTOR.get(row.unit, 1.0))  # one count of the register: 10 Wh at 0.01 kWh
            assert got == pytest.approx(want, rel=2e-3, abs=max(1.0, step)), field
            checked += 1
        status = register_map.codec("status").row if register_map.has("status") else None
        if status is not None and status.ev_connected_codes is not None:  # derived from the native state code
            assert reading.ev_connected == truth["ev_connected"]
        mapped = [f for f in MEASUREMENT_FIELDS if register_map.has(f) and register_map.codec(f).row.access != "w"]
        assert checked == len(mapped), f"physics does not report {set(mapped) - set(truth)}"
