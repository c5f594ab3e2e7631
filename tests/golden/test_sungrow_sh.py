"""Sungrow SH-RT golden test: 1-based documented registers (PDU = number - 1), input registers, power sign from the
running-state bits, a word-swapped int32; a setpoint → forced mode command and magnitude, in order."""

from __future__ import annotations

import pytest
from devicekit import device
from structlog.testing import capture_logs

from drivers.registermap import load_map

DISCHARGING = {
    13000: 0x0025,  # register 13001 running state: bits 0, 2 (discharging) and 5
    13009: 0xFB2E, 13010: 0xFFFF,  # register 13010 export power -1234 W (importing), low word first
    13021: 2500,  # register 13022 battery power magnitude, W
    13022: 655,  # register 13023 SoC 65.5 %
}
SPAN = (13000, 13060)


def test_documented_numbers_become_pdu_addresses() -> None:
    spans = load_map("sungrow_sh").spans
    assert [(s.address, s.count, s.function) for s in spans] == [(13000, 1, 4), (13009, 2, 4), (13021, 2, 4)]


async def test_discharging_battery_reads_negative() -> None:
    async with device("sungrow_sh", DISCHARGING, SPAN) as dev:
        m = await dev.driver.read()
        extras = dev.driver.last_reading.extras
    assert m.power_w == -2500.0
    assert m.soc == pytest.approx(0.655)
    assert extras["export_power_w"] == -1234
    assert extras["charging"] == 0 and extras["discharging"] == 1


async def test_charging_bit_keeps_power_positive() -> None:
    async with device("sungrow_sh", {**DISCHARGING, 13000: 0x0002}, SPAN) as dev:
        m = await dev.driver.read()
    assert m.power_w == 2500.0


async def test_setpoint_is_forced_mode_command_then_power() -> None:
    async with device("sungrow_sh", DISCHARGING, SPAN) as dev:
        await dev.driver.read()
        await dev.driver.write_setpoint(-3000.0)
        assert await dev.words(13049, 4) == [2, 0xBB, 3000, 0]  # EMS forced; discharge; 3000 W
        await dev.driver.write_setpoint(1500.0)
        assert await dev.words(13050, 2) == [0xAA, 1500]
        await dev.driver.write_setpoint(0.0)
        assert await dev.words(13050, 2) == [0xCC, 0]


async def test_the_missing_lease_is_said_at_every_connect() -> None:
    """The forced mode has no revert timer: the map says so ([control] no_lease) and the driver warns when it
    (re)establishes control, so a stopped agent leaving the battery discharging is never a surprise."""
    assert not load_map("sungrow_sh").leased
    async with device("sungrow_sh", DISCHARGING, SPAN) as dev:
        with capture_logs() as logs:
            await dev.driver.write_lease_timeout(10.0)
    warned = [e for e in logs if e["event"] == "asset.no_lease"]
    assert warned and "no revert timer" in warned[0]["reason"]
