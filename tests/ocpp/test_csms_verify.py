"""K08 GetCompositeSchedule: after each accepted profile the CSMS asks the station what it will do, in the
background; a mismatch (sign or W) is logged with both values and makes the EVSE not controllable until a later
check matches. The station is the raw JSON client, so the request checked here is the specification's text."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ocppkit import composite_answer, raw_station, running_csms
from sitekit import eventually
from structlog.testing import capture_logs
from test_golden import NEEDS, STARTED, STATION

from drivers.ocpp.evse import OcppEvseDriver

ACCEPTED = {"status": "Accepted"}


async def test_a_mismatch_makes_the_evse_not_controllable_and_a_match_restores_it(tmp_path: Path) -> None:
    driver = OcppEvseDriver("ev1", STATION, 1)
    async with running_csms(tmp_path, [driver]) as (csms, pki), \
            raw_station(csms, pki, STATION, echo_composite=False) as station:
        await station.boot()
        await station.call("TransactionEvent", STARTED)
        await station.call("NotifyEVChargingNeeds", NEEDS)
        write = asyncio.create_task(driver.write_setpoint(-5000.0))
        request = await station.expect_call()
        assert request[2] == "SetChargingProfile"
        await station.answer(request, ACCEPTED)
        assert await write is None  # the write is done before the check is answered: the cycle does not wait
        check = await station.expect_call()
        assert check[2:] == ["GetCompositeSchedule", {"duration": 60, "evseId": 1, "chargingRateUnit": "W"}]
        assert (await driver.read()).max_discharge_w == 10000.0  # optimistic while the check is in flight

        with capture_logs() as logs:  # the station would charge at +5000 W: it misread the sign
            await station.answer(check, composite_answer(check[3], 5000.0))
            await eventually(lambda: driver.unverified is not None, what="mismatch seen")
        [entry] = [e for e in logs if e["event"] == "ocpp.schedule_mismatch"]
        assert (entry["station"], entry["evse"], entry["asked_w"], entry["composite_w"]) == (STATION, 1, -5000.0,
                                                                                             5000.0)
        m = await driver.read()
        assert (m.max_charge_w, m.max_discharge_w) == (0.0, 0.0)  # not counted as controllable

        # the envelope now asks 0 W: the station takes it, the check matches, the EVSE is controllable again
        write = asyncio.create_task(driver.write_setpoint(0.0))
        request = await station.expect_call()
        assert request[2] == "UpdateDynamicSchedule"
        await station.answer(request, ACCEPTED)
        await write
        check = await station.expect_call()
        await station.answer(check, composite_answer(check[3], 0.0))
        await eventually(lambda: driver.unverified is None, what="verified again")
        m = await driver.read()
        assert (m.max_charge_w, m.max_discharge_w) == (11000.0, 10000.0)
        assert driver.verifications == 2 and driver.verify_rtt_ms is not None


async def test_a_station_that_cannot_answer_the_check_is_not_called_a_mismatch(tmp_path: Path) -> None:
    driver = OcppEvseDriver("ev1", STATION, 1)
    async with running_csms(tmp_path, [driver]) as (csms, pki), \
            raw_station(csms, pki, STATION, echo_composite=False) as station:
        await station.boot()
        await station.call("TransactionEvent", STARTED)
        write = asyncio.create_task(driver.write_setpoint(-2000.0))
        await station.answer(await station.expect_call(), ACCEPTED)
        await write
        check = await station.expect_call()
        with capture_logs() as logs:
            await station.answer(check, {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEVSE"}})
            await eventually(lambda: any(e["event"] == "ocpp.verify_failed" for e in logs), what="logged")
        assert driver.unverified is None and driver.verifications == 0
