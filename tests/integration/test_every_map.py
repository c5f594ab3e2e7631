"""Every register map in drivers/maps is served by the simulator and read back by the driver (evcc's pattern:
every device template is instantiated by a test), so a new map cannot land without working on the wire."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sitekit import running_site

from drivers.registermap import available_maps, load_map
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


@pytest.mark.parametrize("model", available_maps())
async def test_map_round_trip_through_simulator(model: str) -> None:
    register_map = load_map(model)
    clock = ManualClock(datetime(2026, 11, 23, tzinfo=UTC))
    async with running_site(TEMPLATE.replace("{model}", model), 1, clock=clock, start_agent=False) as run:
        driver = run.loop.drivers["dut"]
        physics = run.device("dut")
        if register_map.kind.controllable:
            await driver.write_lease_timeout(0)
            await driver.write_setpoint(-2500.0)
            assert physics.lease.setpoint_w == pytest.approx(-2500.0, abs=1)
            run.site.step(60.0)
        else:
            run.site.step(60.0)
        reading = await driver.read()
        truth = physics.fields()
        for field in ("power_w", "soc", "soh", "voltage_v", "energy_import_wh", "max_charge_w", "setpoint_w"):
            if register_map.has(field):
                got = getattr(reading, field)
                assert got == pytest.approx(truth[field], rel=2e-3, abs=1.0), field
