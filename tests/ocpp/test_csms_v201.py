"""A charge-only OCPP 2.0.1 station, built on the `ocpp` library's own `ocpp.v201.ChargePoint` (not our simulator),
joins the fleet: each EVSE is an asset without discharge, steered by a TxProfile W limit whose validTo is the lease,
falling back to the 0 W TxDefaultProfile installed at boot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ocpp import v201
from ocppkit import lib_station, meter, running_csms
from sitekit import eventually

from agent.model import DeviceStatus
from drivers.ocpp.evse import OcppEvseDriver

STATION = "CP-201"


def _driver() -> OcppEvseDriver:
    return OcppEvseDriver("ev201", STATION, 1)


async def _boot_and_start(station: object, power_w: float = 0.0) -> None:
    cp: v201.ChargePoint = station  # type: ignore[assignment]
    answer = await cp.call(v201.call.BootNotification(
        charging_station={"model": "LibStation", "vendor_name": "ocpp.v201"}, reason="PowerUp"))
    assert answer.status == "Accepted"
    await cp.call(v201.call.StatusNotification(timestamp="2026-11-23T00:00:00Z", connector_status="Occupied",
                                               evse_id=1, connector_id=1))
    await cp.call(v201.call.TransactionEvent(
        event_type="Started", timestamp="2026-11-23T00:00:00Z", trigger_reason="CablePluggedIn", seq_no=0,
        transaction_info={"transaction_id": "tx-201"}, evse={"id": 1, "connector_id": 1}, meter_value=meter(power_w)))


async def test_a_201_station_gets_a_watt_limit_and_reports_it(tmp_path: Path) -> None:
    driver = _driver()
    async with running_csms(tmp_path, [driver], meter_interval_s=3) as (csms, pki), \
            lib_station(csms, pki, STATION, "2.0.1") as station:
        await _boot_and_start(station)
        assert csms.links[STATION].subprotocol == "ocpp2.0.1"
        # at boot: the measurands the codec reads at [ocpp] meter_interval_s, then the 0 W fallback profile
        await eventually(lambda: driver.fallback_installed, what="TxDefaultProfile installed")
        variables = station.actions("SetVariables")[0]["set_variable_data"]
        assert [(v["variable"]["name"], v["attribute_value"]) for v in variables] == [
            ("TxUpdatedMeasurands", "Power.Active.Import,Power.Active.Export,Energy.Active.Import.Register,"
                                    "Energy.Active.Export.Register,SoC"),
            ("TxUpdatedInterval", "3")]
        default = station.actions("SetChargingProfile")[0]["charging_profile"]
        assert default["charging_profile_purpose"] == "TxDefaultProfile" and default["stack_level"] == 0
        assert station.default_w == 0.0

        m = await driver.read()
        assert (m.max_discharge_w, m.rated_discharge_w) == (0.0, 0.0)  # a 2.0.1 EVSE offers no discharge

        await driver.write_lease_timeout(30.0)
        before = datetime.now(UTC)
        assert await driver.write_setpoint(7000.0) is None
        profile = station.actions("SetChargingProfile")[-1]["charging_profile"]
        assert profile["charging_profile_purpose"] == "TxProfile"
        assert profile["charging_profile_kind"] == "Absolute"
        assert profile["transaction_id"] == "tx-201"
        schedule = profile["charging_schedule"][0]
        assert schedule["charging_rate_unit"] == "W"
        assert schedule["charging_schedule_period"] == [{"start_period": 0, "limit": 7000.0}]
        assert "max_offline_duration" not in profile  # 2.0.1 has none: validTo carries the lease
        valid_to = datetime.fromisoformat(profile["valid_to"].replace("Z", "+00:00"))
        assert before + timedelta(seconds=29) <= valid_to <= datetime.now(UTC) + timedelta(seconds=31)
        assert station.tx_w == 7000.0

        # the station follows and says so in its meter values
        await station.call(v201.call.TransactionEvent(
            event_type="Updated", timestamp="2026-11-23T00:00:05Z", trigger_reason="MeterValuePeriodic", seq_no=1,
            transaction_info={"transaction_id": "tx-201"}, evse={"id": 1}, meter_value=meter(7000.0)))
        m = await driver.read()
        assert m.power_w == pytest.approx(7000.0) and m.status is DeviceStatus.CHARGING
        await eventually(lambda: driver.verifications >= 1, what="composite schedule checked")
        assert driver.unverified is None and station.actions("GetCompositeSchedule")[0]["charging_rate_unit"] == "W"

        # a discharge request (the envelope never makes one here) is told 0 W, never a negative limit
        assert await driver.write_setpoint(-3000.0) == 0.0
        assert station.tx_w == 0.0


async def test_a_station_offering_both_versions_gets_2_1(tmp_path: Path) -> None:
    from ocppkit import raw_station

    driver = _driver()
    async with running_csms(tmp_path, [driver]) as (csms, pki), \
            raw_station(csms, pki, STATION, subprotocols=("ocpp2.0.1", "ocpp2.1")) as station:
        await station.boot()
        assert csms.links[STATION].subprotocol == "ocpp2.1" and not csms.links[STATION].charge_only


async def test_a_201_session_is_checked_against_the_201_schemas(tmp_path: Path) -> None:
    """An action only OCPP 2.1 defines is NotImplemented on a 2.0.1 session; a 2.0.1 message passes."""
    import json

    from ocppkit import raw_station

    driver = _driver()
    async with running_csms(tmp_path, [driver]) as (csms, pki), \
            raw_station(csms, pki, STATION, subprotocols=("ocpp2.0.1",)) as station:
        await station.boot()
        answer = await station.send_raw(json.dumps([2, "d1", "NotifyDERAlarm", {
            "controlType": "FreqDroop", "timestamp": "2026-11-23T00:00:00Z"}]))
        assert answer[:3] == [4, "d1", "NotImplemented"] and "2.0.1" in answer[3]
        assert (await station.call("Heartbeat", {}))[0] == 3
