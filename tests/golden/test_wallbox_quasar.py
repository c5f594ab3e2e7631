"""Wallbox Quasar 1 golden test: words from the documented table (V2G Liberty's Wallbox register file) → Measurement;
a setpoint → the exact words the charger must receive, remote-control writes first."""

from __future__ import annotations

import pytest
from devicekit import device

from agent.model import DeviceStatus

# Discharging at 3.7 kW into the site, EV at 62 %, no error, hardware limit 7400 W.
DISCHARGING = {
    514: 7400,
    526: 0xF18C,  # -3700 W as s16
    537: 11,  # discharging
    538: 62,  # %
    539: 0, 540: 0, 541: 0, 542: 0,
}
SPAN = (81, 542)


async def test_discharging_state_reads_as_the_agent_sees_it() -> None:
    async with device("wallbox_quasar", DISCHARGING, SPAN) as dev:
        m = await dev.driver.read()
    assert m.power_w == -3700
    assert m.status is DeviceStatus.DISCHARGING
    assert m.ev_connected is True
    assert m.soc == pytest.approx(0.62)
    assert m.rated_charge_w == 7400
    assert m.fault_code == 0
    assert m.unmapped_status is None


async def test_unknown_state_code_is_reported_and_not_operable_not_a_failed_poll() -> None:
    words = {**DISCHARGING, 537: 13, 540: 0x0001, 542: 0x0200}  # 13 is no documented state
    async with device("wallbox_quasar", words, SPAN) as dev:
        m = await dev.driver.read()
    assert m.status is DeviceStatus.FAULT and m.unmapped_status == 13
    assert m.fault_code == (1 << 32) + 0x0200  # 539..542 as one u64, 539 most significant


async def test_no_car_and_soc_zero_reads_as_no_ev_without_soc() -> None:
    async with device("wallbox_quasar", {**DISCHARGING, 526: 0, 537: 0, 538: 0}, SPAN) as dev:
        m = await dev.driver.read()
    assert m.status is DeviceStatus.NO_EV and m.ev_connected is False and m.soc is None


async def test_discharge_setpoint_writes_remote_control_then_start_then_power() -> None:
    async with device("wallbox_quasar", DISCHARGING, SPAN) as dev:
        await dev.driver.read()
        await dev.driver.write_lease_timeout(30)
        await dev.driver.write_setpoint(-5000.4)
        assert await dev.words(81, 3) == [1, 0, 1]  # remote, no autostart, power setpoints
        assert dev.pauses == [2.5]  # the charger is given time to take the control registers
        assert await dev.words(88) == [30]  # its Modbus idle timeout is the lease
        assert await dev.words(257) == [1]  # start
        assert await dev.words(260) == [0xEC78]  # -5000 W as s16, truncated toward zero
        await dev.driver.write_setpoint(0.0)
        assert await dev.words(257) == [2]  # stop
        assert await dev.words(260) == [0]
