"""End to end over loopback: simulated devices on real Modbus TCP servers, the agent's real drivers and loop."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import pytest
from sitekit import eventually, running_site

from agent.cli import _fit_lease_to_speed
from agent.control.loop import ControlLoop
from agent.model import AssetKind, DeviceStatus
from agent.ports import DriverError
from agent.wiring import build_drivers
from sim_devices.clock import ManualClock

# One EV with a known session, one battery, a site meter; the agent steers the meter to a target.
SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
unavailable_after = 2
max_backoff_s = 0.4
lease_timeout_s = 1.0
setpoint_deadband_w = 20.0
[site]
meter = "meter"
import_limit_w = 100000.0
export_limit_w = 100000.0
[control]
mode = "site_target"  # the rule controller steers the meter (dispatch mode: test_dispatch_loop.py)
site_target_w = 0.0
[[assets]]
id = "ev"
map = "vppsim_v2g_dc"
port = {port}
[[assets]]
id = "bess"
map = "vppsim_battery"
port = {port}
unit_id = 2
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}
unit_id = 3

[simulation]
speed = 1.0
tick_s = 0.05
base_load_w = 12000.0
pv_peak_w = 0.0
[[simulation.devices]]
id = "ev"
model = "vppsim_v2g_dc"
port = {port}
[simulation.devices.params]
sessions = [{ arrival_s = 0, departure_s = 86400, capacity_kwh = 60, soc = 0.5, target_soc = 0.8, min_soc = 0.2 }]
[[simulation.devices]]
id = "bess"
model = "vppsim_battery"
port = {port}
unit_id = 2
[simulation.devices.params]
soc = 0.6
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
unit_id = 3
[simulation.devices.params]
measures = "site"
"""


async def test_measurements_follow_the_physics() -> None:
    """With a manual clock nothing moves between step and read: the agent must see exactly the physics."""
    clock = ManualClock(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))
    async with running_site(SITE, 1, clock=clock, start_agent=False) as run:
        drivers = run.loop.drivers
        await drivers["bess"].write_lease_timeout(0)
        await drivers["bess"].write_setpoint(-20000.0)
        await drivers["ev"].write_lease_timeout(0)
        await drivers["ev"].write_setpoint(7000.0)
        for _ in range(120):
            run.site.step(1.0)
        bess, ev, meter = [await drivers[k].read() for k in ("bess", "ev", "meter")]
        physics_bess, physics_ev, physics_meter = (run.device(k) for k in ("bess", "ev", "meter"))
        assert bess.power_w == pytest.approx(-20000.0, abs=1) and physics_bess.power_w == pytest.approx(-20000.0)
        assert bess.status is DeviceStatus.DISCHARGING
        assert bess.soc == pytest.approx(physics_bess.soc, abs=1e-6)
        assert bess.soc < 0.6
        assert bess.soh == pytest.approx(physics_bess.soh, abs=1e-4)
        assert ev.power_w == pytest.approx(7000.0, abs=1) and ev.status is DeviceStatus.CHARGING
        assert ev.soc == pytest.approx(physics_ev.soc, abs=0.0006)  # 0.1 % register resolution
        assert ev.ev_target_soc == pytest.approx(0.8) and ev.ev_min_soc == pytest.approx(0.2)
        assert ev.ev_departure == clock.start + timedelta(seconds=86400)
        assert meter.power_w == pytest.approx(physics_meter.power_w, abs=1)
        assert meter.power_w == pytest.approx(12000 - 20000 + 7000, abs=1)
        assert meter.energy_import_wh == pytest.approx(physics_meter.import_wh, abs=1)
        assert meter.voltage_v is not None and meter.current_a is not None
        assert meter.current_a == pytest.approx(meter.power_w / meter.voltage_v, abs=0.1)  # A_SF resolution


async def test_setpoints_reach_devices_and_move_the_site_meter() -> None:
    async with running_site(SITE, 1) as run:
        meter = run.device("meter")
        await eventually(lambda: run.loop.fleet.assets["meter"].available, what="meter polled")
        # target 0 W at the meter: the assets must cover the 12 kW base load
        await eventually(lambda: abs(meter.power_w) < 500, what="site meter steered to 0 W")
        assert run.device("bess").power_w < -5000 or run.device("ev").power_w < -5000
        run.loop.set_site_target(30000.0)
        await eventually(lambda: abs(meter.power_w - 30000) < 500, what="site meter steered to +30 kW")
        assert run.device("bess").power_w > 0


async def test_lease_expiry_returns_device_to_zero() -> None:
    async with running_site(SITE, 1) as run:
        bess = run.device("bess")
        await eventually(lambda: bess.power_w < -1000, what="battery discharging under agent control")
        assert bess.lease.timeout_s == 1.0  # the agent wrote its lease timeout
        await run.halt_agent()  # the agent goes silent; nothing refreshes the lease
        await eventually(lambda: bess.power_w == 0.0 and bess.lease.setpoint_w == 0.0, what="lease lapsed")
        assert bess.lease.expiries >= 1


async def test_envelope_clamps_requests_beyond_device_limits() -> None:
    async with running_site(SITE, 1) as run:
        run.loop.set_override("bess", 1e9)  # far beyond what the battery can take
        run.loop.set_override("ev", -1e9)
        state = run.loop.fleet.assets["bess"]
        await eventually(lambda: run.device("bess").power_w > 40000, what="battery charging hard")
        setpoint = run.loop.last_setpoints["bess"]
        assert setpoint.requested_w == 1e9 and setpoint.power_w <= 50000
        assert setpoint.clamped and setpoint.reasons[0] in ("nameplate charge limit", "live charge limit")
        ev = run.loop.last_setpoints["ev"]
        assert ev.power_w >= -11000 and ev.clamped
        assert state.written_setpoint_w is not None and state.written_setpoint_w <= 50000
        assert run.device("bess").lease.max_written_w <= 50000
        assert run.device("ev").lease.max_written_w <= 11000
        assert run.device("bess").lease.min_written_w >= -50000


async def test_site_import_limit_is_never_exceeded_by_setpoints() -> None:
    limited = SITE.replace("import_limit_w = 100000.0", "import_limit_w = 30000.0")
    async with running_site(limited, 1) as run:
        run.loop.set_site_target(1e9)
        await eventually(lambda: run.device("bess").power_w > 10000, what="battery charging")
        total = sum(sp.power_w for sp in run.loop.last_setpoints.values())
        assert run.loop.uncontrolled_w + total <= 30000 + 1e-6
        assert any("site import limit" in sp.reasons for sp in run.loop.last_setpoints.values())


async def test_offline_device_becomes_unavailable_and_recovers() -> None:
    async with running_site(SITE, 1) as run:
        state = run.loop.fleet.assets["bess"]
        await eventually(lambda: state.available, what="battery first seen")
        run.site.faults("bess").set_offline(True)
        await eventually(lambda: not state.available, what="battery marked unavailable")
        await eventually(lambda: "bess" not in run.loop.last_setpoints, what="no setpoint decided for it")
        # the others behind the same gateway port keep being polled
        polls = run.loop.fleet.assets["meter"].polls_ok
        await eventually(lambda: run.loop.fleet.assets["meter"].polls_ok > polls + 3, what="meter still polled")
        assert run.loop.fleet.envelope().assets_available == 2
        run.site.faults("bess").set_offline(False)
        await eventually(lambda: state.available, what="battery back")
        assert state.consecutive_failures == 0


async def test_modbus_exception_and_device_fault_are_handled() -> None:
    async with running_site(SITE, 1) as run:
        state = run.loop.fleet.assets["ev"]
        await eventually(lambda: state.available, what="ev seen")
        run.site.faults("ev").set_exception(4)
        await eventually(lambda: not state.available, what="ev out after exception replies")
        assert "Modbus exception 4" in (state.last_error or "")
        run.site.faults("ev").set_exception(None)
        run.site.faults("ev").set_device_fault(2)
        await eventually(
            lambda: (
                state.available and state.measurement is not None and state.measurement.status is DeviceStatus.FAULT
            ),
            what="ev back, reporting its fault",
        )
        await eventually(lambda: run.loop.last_setpoints["ev"].power_w == 0.0, what="faulted EV gets 0 W")


async def test_implausible_register_value_is_rejected_with_its_address() -> None:
    clock = ManualClock(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))
    async with running_site(SITE, 1, clock=clock, start_agent=False) as run:
        run.device("bess").soc = 1.7  # a broken BMS
        with pytest.raises(DriverError) as err:
            await run.loop.drivers["bess"].read()
        assert "register 4 (soc)" in str(err.value) and "outside 0..1" in str(err.value)
        assert "bess" in str(err.value)


async def test_agent_keeps_running_past_bad_values() -> None:
    async with running_site(SITE, 1) as run:
        await eventually(lambda: run.loop.fleet.assets["bess"].available, what="battery seen")
        run.device("bess").soc = math.nan
        await eventually(lambda: not run.loop.fleet.assets["bess"].available, what="bad battery out")
        cycles = run.loop.cycles
        await eventually(lambda: run.loop.cycles > cycles + 3, what="loop still cycling")
        assert run.loop.fleet.assets["ev"].available
        assert run.loop.fleet.assets["bess"].kind is AssetKind.BATTERY


async def test_device_that_lost_its_lease_settings_is_rewritten() -> None:
    async with running_site(SITE, 1) as run:
        bess = run.device("bess")
        await eventually(lambda: bess.power_w < -1000, what="battery under agent control")
        bess.write_lease_timeout(30.0)  # as after a reboot: factory lease, setpoint gone
        bess.write_setpoint(0.0)
        await eventually(lambda: bess.lease.timeout_s == 1.0, what="agent rewrote the lease timeout")
        await eventually(lambda: bess.power_w < -1000, what="agent restored the setpoint")


async def test_accelerated_site_keeps_leases_with_scaled_agent() -> None:
    """At 20x device time the agent must refresh leases 20x sooner (the demo's --speed)."""
    fast = SITE.replace("speed = 1.0", "speed = 20.0")
    async with running_site(fast, 1, start_agent=False) as run:
        config = _fit_lease_to_speed(run.config, 20.0)
        assert config.agent.lease_timeout_s >= 20 * 1.0  # stretched to cover two cycles of device time
        drivers, pool = build_drivers(config, run.site.clock.now)
        loop = ControlLoop(config, drivers, clock=run.site.clock.now, time_scale=20.0)
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        bess = run.device("bess")
        try:
            await eventually(lambda: bess.power_w < -1000, what="battery under agent control")
            cycles = loop.cycles
            await eventually(lambda: loop.cycles > cycles + 15, what="15 more cycles")
            assert bess.lease.expiries == 0
        finally:
            stop.set()
            await task
            pool.close()
