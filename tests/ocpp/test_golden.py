"""Golden messages written by hand from the OCPP 2.1 schema's field descriptions, checked against the CSMS alone.

A raw JSON client stands in for the station, so nothing of drivers/ocpp or the simulated station can share a
misreading with these expectations:
- ChargingSchedulePeriod.setpoint: "Use negative values for discharging", in chargingRateUnit (W);
- maxOfflineDuration: "Period in seconds that this charging profile remains valid after the Charging Station has
  gone offline", with invalidAfterOfflineDuration true the profile is dropped after it;
- SampledValue: unitOfMeasure.unit (default "Wh" for energy), multiplier a power of ten; Power.Active.Export is
  power from the EV; SoC in Percent;
- V2XChargingParameters: evTargetEnergyRequest "Energy to requested state of charge in Wh", evMinEnergyRequest
  "Energy to minimum allowed state of charge in Wh"; DCChargingParameters.stateOfCharge in percent.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ocppkit import raw_station, running_csms
from sitekit import eventually

from agent.model import DeviceStatus
from agent.ports import DriverError
from drivers.ocpp.evse import OcppEvseDriver

STATION = "CP-GOLDEN"
TX = "tx-golden-1"

STARTED = {
    "eventType": "Started",
    "timestamp": "2026-11-23T00:00:00.000Z",
    "triggerReason": "CablePluggedIn",
    "seqNo": 0,
    "transactionInfo": {"transactionId": TX, "chargingState": "EVConnected"},
    "evse": {"id": 1, "connectorId": 1},
    "meterValue": [
        {
            "timestamp": "2026-11-23T00:00:00.000Z",
            "sampledValue": [
                {"value": 7.4, "measurand": "Power.Active.Export", "unitOfMeasure": {"unit": "kW"}},
                {"value": 0, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
                {"value": 56.5, "measurand": "SoC", "location": "EV", "unitOfMeasure": {"unit": "Percent"}},
                {"value": 12345, "measurand": "Energy.Active.Import.Register"},
                {"value": 2.5, "measurand": "Energy.Active.Export.Register",
                 "unitOfMeasure": {"unit": "Wh", "multiplier": 3}},
                {"value": 231.0, "measurand": "Voltage", "phase": "L1-N", "unitOfMeasure": {"unit": "V"}},
            ],
        }
    ],
}

NEEDS = {
    "evseId": 1,
    "chargingNeeds": {
        "requestedEnergyTransfer": "DC_BPT",
        "departureTime": "2026-11-23T08:30:00Z",
        "dcChargingParameters": {"evMaxCurrent": 200, "evMaxVoltage": 500, "evEnergyCapacity": 60000,
                                 "stateOfCharge": 50},
        "v2xChargingParameters": {"maxChargePower": 11000, "maxDischargePower": 10000,
                                  "evTargetEnergyRequest": 18000, "evMinEnergyRequest": -12000},
    },
}

SET_PROFILE_MINUS_5000 = {
    "evseId": 1,
    "chargingProfile": {
        "id": 1,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Dynamic",
        "transactionId": TX,
        "maxOfflineDuration": 10,
        "invalidAfterOfflineDuration": True,
        "chargingSchedule": [
            {
                "id": 1,
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "operationMode": "CentralSetpoint", "setpoint": -5000}],
            }
        ],
    },
}


def _driver() -> OcppEvseDriver:
    return OcppEvseDriver("ev1", STATION, 1, lambda: datetime(2026, 11, 23, tzinfo=UTC))


async def test_transaction_event_and_needs_make_the_measurement(tmp_path: Path) -> None:
    driver = _driver()
    async with running_csms(tmp_path, [driver]) as (csms, pki), raw_station(csms, pki, STATION) as station:
        await station.boot()
        answer = await station.call("StatusNotification", {"timestamp": "2026-11-23T00:00:00Z",
                                                           "connectorStatus": "Occupied", "evseId": 1,
                                                           "connectorId": 1})
        assert answer == [3, answer[1], {}]
        assert (await station.call("TransactionEvent", STARTED))[0] == 3
        assert (await station.call("NotifyEVChargingNeeds", NEEDS))[2] == {"status": "Accepted"}
        m = await driver.read()
    assert m.power_w == pytest.approx(-7400.0)  # 7.4 kW exported by the EV: discharge, < 0 in the agent's sign
    assert m.status is DeviceStatus.DISCHARGING
    assert m.ev_connected is True
    assert m.soc == pytest.approx(0.565)
    assert m.energy_import_wh == pytest.approx(12345.0)
    assert m.energy_export_wh == pytest.approx(2500.0)
    assert m.voltage_v is None  # a per-phase value is not the total
    assert m.capacity_wh == pytest.approx(60000.0)
    assert m.ev_target_soc == pytest.approx(0.8)  # 50 % + 18 kWh of 60 kWh
    assert m.ev_min_soc == pytest.approx(0.3)  # 50 % - 12 kWh of 60 kWh
    assert m.ev_departure == datetime(2026, 11, 23, 8, 30, tzinfo=UTC)
    assert m.rated_discharge_w == pytest.approx(10000.0) and m.rated_charge_w == pytest.approx(11000.0)


async def test_a_measurement_keeps_the_time_its_meter_values_arrived(tmp_path: Path) -> None:
    """The control loop takes the site meter's reading and the assets' at one moment (control/meter.py): a pushed
    meter value handed out again by later polls must say how old it is, not look measured at each poll."""
    clock = [datetime(2026, 11, 23, 0, 0, 0, tzinfo=UTC)]
    driver = OcppEvseDriver("ev1", STATION, 1, lambda: clock[0])
    async with running_csms(tmp_path, [driver]) as (csms, pki), raw_station(csms, pki, STATION) as station:
        await station.boot()
        await station.call("StatusNotification", {"timestamp": "2026-11-23T00:00:00Z", "connectorStatus": "Occupied",
                                                  "evseId": 1, "connectorId": 1})  # fmt: skip
        assert (await driver.read()).at == clock[0]  # no transaction: 0 W is known at the poll
        arrived = clock[0] = clock[0] + timedelta(seconds=1)
        await station.call("TransactionEvent", STARTED)
        clock[0] += timedelta(seconds=3)
        first, second = await driver.read(), await driver.read()
        # a meter value without power (an energy register alone) says nothing new about the power held
        clock[0] += timedelta(seconds=1)
        energy_only = {**STARTED, "eventType": "Updated", "triggerReason": "MeterValuePeriodic", "seqNo": 1,
                       "meterValue": [{"timestamp": "2026-11-23T00:00:05.000Z", "sampledValue": [
                           {"value": 12346, "measurand": "Energy.Active.Import.Register"}]}]}  # fmt: skip
        assert (await station.call("TransactionEvent", energy_only))[0] == 3
        third = await driver.read()
    assert first.at == second.at == third.at == arrived
    assert first.power_w == third.power_w == pytest.approx(-7400.0)
    assert third.energy_import_wh == pytest.approx(12346.0)


async def test_discharge_setpoint_is_a_dynamic_central_setpoint_profile_then_updates(tmp_path: Path) -> None:
    driver = _driver()
    async with running_csms(tmp_path, [driver]) as (csms, pki), raw_station(csms, pki, STATION) as station:
        await station.boot()
        await station.call("TransactionEvent", STARTED)
        await driver.write_lease_timeout(10.0)
        write = asyncio.create_task(driver.write_setpoint(-5000.0))
        request = await station.expect_call()
        assert request[2:] == ["SetChargingProfile", SET_PROFILE_MINUS_5000]
        await station.answer(request, {"status": "Accepted"})
        await write
        write = asyncio.create_task(driver.write_setpoint(-3000.0))
        request = await station.expect_call()
        assert request[2:] == ["UpdateDynamicSchedule", {"chargingProfileId": 1, "scheduleUpdate": {"setpoint": -3000}}]
        await station.answer(request, {"status": "Accepted"})
        await write
        assert (driver.profiles_sent, driver.updates_sent) == (1, 1)
        assert (await driver.read()).lease_timeout_s == 10.0  # the accepted maxOfflineDuration, for read-back


async def test_a_rejected_profile_is_logged_and_the_asset_offers_nothing(tmp_path: Path) -> None:
    driver = _driver()
    async with running_csms(tmp_path, [driver]) as (csms, pki), raw_station(csms, pki, STATION) as station:
        await station.boot()
        await station.call("TransactionEvent", STARTED)
        await station.call("NotifyEVChargingNeeds", NEEDS)
        write = asyncio.create_task(driver.write_setpoint(-5000.0))
        request = await station.expect_call()
        await station.answer(request, {"status": "Rejected", "statusInfo": {"reasonCode": "NoPhaseForDC",
                                                                            "additionalInfo": "V2X not enabled"}})
        with pytest.raises(DriverError, match="NoPhaseForDC V2X not enabled"):
            await write
        m = await driver.read()
        assert (m.max_charge_w, m.max_discharge_w) == (0.0, 0.0)  # not counted as controllable
        with pytest.raises(DriverError, match="rejected"):
            await driver.write_setpoint(-1000.0)  # nothing more is sent while the rejection stands
        await station.call("Heartbeat", {})  # the next frame the station sees is this answer, no new CALL
        await station.boot()  # a reboot: the station may have been reconfigured
        retry = asyncio.create_task(driver.write_setpoint(-1000.0))
        request = await station.expect_call()
        assert request[2] == "SetChargingProfile"
        await station.answer(request, {"status": "Accepted"})
        await retry
        await eventually(lambda: driver.rejected is None, what="rejection cleared")
