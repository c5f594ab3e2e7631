"""The SunSpec driver against simulated SunSpec devices: discovery in both firmware orders, Measurements in SI and
the agent's sign, control through 704 and 124 with their revert timers as the lease, limits never exceeded."""

from __future__ import annotations

import asyncio

import pytest
from sunspeckit import HOST, driver_for, served

from agent.model import AssetKind, DeviceStatus
from agent.ports import Driver, DriverError
from drivers.sunspec.driver import SunSpecDriver
from sim_devices.faults import DeviceFaults
from sim_devices.server import PortServer
from sim_devices.sunspec.image import SunSpecEndpoint, SunSpecImage, model_order

BATTERY = "sunspec_battery_inverter"
CHARGER = "sunspec_v2g_charger"


@pytest.mark.parametrize("order", ["a", "b"])
async def test_discovery_walks_the_chain_in_either_order(order: str) -> None:
    async with served(BATTERY, order) as sim, driver_for(sim.port, AssetKind.BATTERY) as driver:
        device = await driver.discover()
        assert device.base == 40000
        assert [e.model_id for e in device.chain] == list(model_order(BATTERY, order))
        assert {e.model_id: e.address for e in device.chain} == {p.model_id: p.address for p in sim.image.placed}
        m = await driver.read()
    assert m.soc == pytest.approx(0.5, abs=1e-3)
    assert m.capacity_wh == pytest.approx(100_000.0, rel=1e-3)
    assert m.rated_charge_w == 50_000.0 and m.rated_discharge_w == 40_000.0
    assert m.status is DeviceStatus.STANDBY


async def test_marker_at_another_base_is_found() -> None:
    """A device whose map starts at 50000 (neither 40000 nor 0 answer) is found at the third place SunSpec allows."""
    async with served(BATTERY, base=50000) as sim, driver_for(sim.port, AssetKind.BATTERY) as driver:
        device = await driver.discover()
    assert device.base == 50000


async def test_no_sunspec_marker_is_a_driver_error() -> None:
    async with served(BATTERY, base=30000) as sim, driver_for(sim.port, AssetKind.BATTERY) as driver:
        with pytest.raises(DriverError, match="no SunSpec marker"):
            await driver.read()


@pytest.mark.parametrize("order", ["a", "b"])
async def test_704_setpoint_moves_the_battery_with_the_agent_sign(order: str) -> None:
    async with served(BATTERY, order) as sim, driver_for(sim.port, AssetKind.BATTERY) as driver:
        await driver.read()
        await driver.write_lease_timeout(20.0)
        assert await driver.write_setpoint(-15_000.0) is None
        sim.step(2.0)
        m = await driver.read()
        assert sim.physics.power_w == pytest.approx(-15_000.0)
        assert m.power_w == pytest.approx(-15_000.0, abs=10)  # 701 W = +15 kW generation, W_SF = 1
        assert m.status is DeviceStatus.DISCHARGING
        assert m.setpoint_w == pytest.approx(-15_000.0)
        assert m.lease_timeout_s == 20.0
        assert sim.physics.lease.timeout_s == 20.0
        await driver.write_setpoint(12_345.0)
        sim.step(2.0)
        m = await driver.read()
    assert sim.physics.power_w == pytest.approx(12_345.0)
    assert m.power_w == pytest.approx(12_340.0, abs=10) and m.status is DeviceStatus.CHARGING


async def test_704_lease_reverts_to_zero() -> None:
    async with served(BATTERY) as sim, driver_for(sim.port, AssetKind.BATTERY) as driver:
        await driver.read()
        await driver.write_lease_timeout(10.0)
        await driver.write_setpoint(20_000.0)
        sim.step(9.0)
        assert sim.physics.power_w == pytest.approx(20_000.0)
        sim.step(2.0)  # no write for 11 s > 10 s
        m = await driver.read()
    assert sim.physics.power_w == 0.0
    assert m.setpoint_w == 0.0


async def test_setpoint_beyond_the_device_limits_is_clamped_not_written() -> None:
    """702 WDisChaRteMax is 40 kW: a 45 kW discharge request is written as 40 kW and reported as such."""
    async with served(BATTERY) as sim, driver_for(sim.port, AssetKind.BATTERY) as driver:
        await driver.read()
        await driver.write_lease_timeout(20.0)
        assert await driver.write_setpoint(-45_000.0) == -40_000.0
        assert await driver.write_setpoint(60_000.0) == 50_000.0
    assert sim.physics.writes_outside_nameplate == 0
    assert sim.physics.lease.min_written_w == -40_000.0 and sim.physics.lease.max_written_w == 50_000.0


@pytest.mark.parametrize("order", ["a", "b"])
async def test_124_rates_in_percent_of_wchamax(order: str) -> None:
    async with served(BATTERY, order) as sim, driver_for(sim.port, AssetKind.BATTERY, control="124") as driver:
        await driver.read()
        await driver.write_lease_timeout(15.0)
        await driver.write_setpoint(10_000.0)  # 20 % of WChaMax 50 kW
        sim.step(2.0)
        m = await driver.read()
        assert sim.physics.power_w == pytest.approx(10_000.0)
        assert m.setpoint_w == pytest.approx(10_000.0)
        assert sim.physics.lease.timeout_s == 15.0
        await driver.write_setpoint(-5_000.0)
        sim.step(2.0)
        assert sim.physics.power_w == pytest.approx(-5_000.0)
        sim.step(16.0)  # the 124 revert timer runs out
        m = await driver.read()
    assert sim.physics.power_w == 0.0
    assert m.setpoint_w is None  # the device dropped the limits: no longer under the agent's control


async def test_v2g_charger_reads_the_ev_port_and_takes_setpoints() -> None:
    async with served(CHARGER, "b") as sim, driver_for(sim.port, AssetKind.EV_CHARGER) as driver:
        m = await driver.read()
        assert m.ev_connected is True and m.soc == pytest.approx(0.4, abs=1e-3)
        await driver.write_lease_timeout(10.0)
        await driver.write_setpoint(-8_000.0)
        sim.step(2.0)
        m = await driver.read()
        assert m.power_w == pytest.approx(-8_000.0) and m.status is DeviceStatus.DISCHARGING
        sim.physics.set_fault(7)
        m = await driver.read()
    assert m.status is DeviceStatus.FAULT and m.fault_code == 7


async def test_a_meter_kind_takes_no_control() -> None:
    async with served(BATTERY) as sim, driver_for(sim.port, AssetKind.METER) as driver:
        assert isinstance(driver, Driver) and isinstance(driver, SunSpecDriver)
        await driver.read()
        with pytest.raises(DriverError, match="no SunSpec control"):
            await driver.write_setpoint(1000.0)


async def test_a_device_back_after_failing_is_rediscovered_in_its_new_order() -> None:
    """A firmware update moves every model: after the device failed a poll, the driver walks the chain again."""
    async with served(BATTERY, "a") as sim, driver_for(sim.port, AssetKind.BATTERY) as driver:
        await driver.read()
        await sim.server.stop()
        with pytest.raises(DriverError):
            await driver.read()
        image = SunSpecImage(BATTERY, sim.physics, "updated", "b")
        updated = PortServer(HOST, sim.port, [SunSpecEndpoint("updated", 1, image, DeviceFaults("u", sim.physics))])
        await updated.start()
        try:
            m = await eventually_read(driver)
        finally:
            await updated.stop()
    assert driver.device is not None
    assert [e.model_id for e in driver.device.chain] == list(model_order(BATTERY, "b"))
    assert m.soc == pytest.approx(0.5, abs=1e-3)


async def eventually_read(driver: SunSpecDriver):  # type: ignore[no-untyped-def]
    """The client reconnects by itself after the server returns: poll until a read succeeds (bounded)."""
    for _ in range(200):
        try:
            return await driver.read()
        except DriverError:
            await asyncio.sleep(0.05)
    raise AssertionError("the device never answered again")


async def test_simulator_faults_reach_the_sunspec_image() -> None:
    """The simulator's fault switches work on SunSpec devices too: a lying meter offset shows in 701 W, and an
    exception fault answers every request with it."""
    async with served(BATTERY) as sim, driver_for(sim.port, AssetKind.BATTERY) as driver:
        await driver.read()
        sim.endpoint.faults.set_offset(-2000.0)
        m = await driver.read()
        assert m.power_w == pytest.approx(-2000.0, abs=10)
        sim.endpoint.faults.set_exception(4)
        with pytest.raises(DriverError, match="exception 4"):
            await driver.read()
