"""What the CSMS asks at boot (SetVariables: the measurands the codec reads, at `[ocpp] meter_interval_s`) and the
`[ocpp] id_tokens` policy (Authorize, TransactionEvent's idTokenInfo, controllability), against the raw client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ocppkit import raw_station, running_csms
from sitekit import eventually
from structlog.testing import capture_logs
from test_golden import NEEDS, STARTED, STATION

from agent.ports import DriverError
from drivers.ocpp.evse import OcppEvseDriver

SET_VARIABLES = {"setVariableData": [
    {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedMeasurands"},
     "attributeValue": "Power.Active.Import,Power.Active.Export,Energy.Active.Import.Register,"
                       "Energy.Active.Export.Register,SoC"},
    {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"}, "attributeValue": "5"},
]}


def _token(value: str) -> dict[str, str]:
    return {"idToken": value, "type": "ISO14443"}


async def test_set_variables_at_boot_with_one_variable_rejected(tmp_path: Path) -> None:
    driver = OcppEvseDriver("ev1", STATION, 1)
    async with running_csms(tmp_path, [driver]) as (csms, pki), raw_station(csms, pki, STATION) as station:
        with capture_logs() as logs:
            request = await station.boot({"SampledDataCtrlr.TxUpdatedInterval": "Rejected"})
            link = csms.links[STATION]
            await eventually(lambda: bool(link.rejected_variables), what="rejection recorded")
        assert request[3] == SET_VARIABLES
        assert link.rejected_variables == {"SampledDataCtrlr.TxUpdatedInterval": "Rejected ValueTooLow golden refusal"}
        [entry] = [e for e in logs if e["event"] == "ocpp.variable_rejected"]
        assert entry["station"] == STATION and entry["reason"] == "Rejected ValueTooLow golden refusal"
        # the agent keeps running with what the station sends
        assert (await station.call("Heartbeat", {}))[0] == 3
        await station.call("TransactionEvent", STARTED)
        assert (await driver.read()).power_w == pytest.approx(-7400.0)


async def test_id_token_list_accepts_and_refuses(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# fleet cards\nCARD-OK\n\n  CARD-TOO  \n")
    driver = OcppEvseDriver("ev1", STATION, 1)
    async with running_csms(tmp_path, [driver], id_tokens="list", id_token_file=str(tokens)) as (csms, pki), \
            raw_station(csms, pki, STATION) as station:
        await station.boot()
        for value, status in (("CARD-OK", "Accepted"), ("CARD-TOO", "Accepted"), ("CARD-STOLEN", "Unknown"),
                              ("# fleet cards", "Unknown")):
            answer = await station.call("Authorize", {"idToken": _token(value)})
            assert answer[2] == {"idTokenInfo": {"status": status}}, value

        # a transaction under a refused token: answered Unknown, not controllable, nothing is sent to it
        refused = {**STARTED, "idToken": _token("CARD-STOLEN")}
        assert (await station.call("TransactionEvent", refused))[2] == {"idTokenInfo": {"status": "Unknown"}}
        await station.call("NotifyEVChargingNeeds", NEEDS)
        m = await driver.read()
        assert (m.max_charge_w, m.max_discharge_w) == (0.0, 0.0)
        with pytest.raises(DriverError, match="idToken not accepted"):
            await driver.write_setpoint(-1000.0)
        assert await driver.write_setpoint(0.0) is None
        assert driver.profiles_sent == 0

        # the same transaction authorised later with a listed card: controllable
        updated = {**STARTED, "eventType": "Updated", "seqNo": 1, "triggerReason": "Authorized",
                   "idToken": _token("CARD-OK")}
        assert (await station.call("TransactionEvent", updated))[2] == {"idTokenInfo": {"status": "Accepted"}}
        assert (await driver.read()).max_discharge_w == 10000.0
        write = asyncio.create_task(driver.write_setpoint(-1000.0))
        request = await station.expect_call()
        assert request[2] == "SetChargingProfile"
        await station.answer(request, {"status": "Accepted"})
        await write


async def test_with_a_list_a_transaction_without_any_token_is_not_controllable(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("CARD-OK\n")
    driver = OcppEvseDriver("ev1", STATION, 1)
    async with running_csms(tmp_path, [driver], id_tokens="list", id_token_file=str(tokens)) as (csms, pki), \
            raw_station(csms, pki, STATION) as station:
        await station.boot()
        assert (await station.call("TransactionEvent", STARTED))[2] == {}  # no idToken, no idTokenInfo
        assert "none sent" in str(driver.not_controllable())


async def test_accept_all_is_the_default(tmp_path: Path) -> None:
    driver = OcppEvseDriver("ev1", STATION, 1)
    async with running_csms(tmp_path, [driver]) as (csms, pki), raw_station(csms, pki, STATION) as station:
        await station.boot()
        assert (await station.call("Authorize", {"idToken": _token("ANY-CARD")}))[2]["idTokenInfo"]["status"] == (
            "Accepted")
        started = {**STARTED, "idToken": _token("ANY-CARD")}
        assert (await station.call("TransactionEvent", started))[2] == {"idTokenInfo": {"status": "Accepted"}}
        assert driver.not_controllable() is None
