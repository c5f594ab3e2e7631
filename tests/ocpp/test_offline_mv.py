"""An OCPP EVSE whose station is offline during an up-DR event: once back, the TransactionEvents it queued
(`offline: true`, `seqNo`, timestamps inside the event) are booked to the intervals they were metered in, the
completed event's report is amended with that per-asset energy (the site-meter settlement is left as it was), a
resend counts once, and a seqNo gap is logged. The station is the `ocpp` library's own `ocpp.v21.ChargePoint`,
talking to the agent's CSMS over TLS; the events manager and the Store are the agent's own."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ocpp import v21
from ocppkit import lib_station, running_csms
from structlog.testing import capture_logs

from agent.config import EventSettings
from agent.events.lifecycle import EventManager, EventState
from agent.fleet import Fleet
from agent.signals.models import UpDrEvent
from agent.store import Store
from drivers.ocpp.evse import OcppEvseDriver

STATION = "CP-MV"
TX = "tx-mv"


def at(hhmm: str) -> datetime:
    hours, minutes = hhmm.split(":")
    return datetime(2026, 11, 23, int(hours), int(minutes), tzinfo=UTC)


def _event(seq_no: int, hhmm: str, import_wh: float, offline: bool, kind: str = "Updated") -> Any:
    stamp = at(hhmm).isoformat().replace("+00:00", "Z")
    return v21.call.TransactionEvent(
        event_type=kind, timestamp=stamp, seq_no=seq_no, offline=offline,
        trigger_reason="CablePluggedIn" if kind == "Started" else "MeterValuePeriodic",
        transaction_info={"transaction_id": TX}, evse={"id": 1, "connector_id": 1},
        meter_value=[{"timestamp": stamp, "sampled_value": [
            {"value": 6000.0, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
            {"value": import_wh, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "Wh"}}]}])


def per_interval(report: dict[str, Any], asset_id: str) -> dict[str, float]:
    rows = report["per_asset"]["assets"][asset_id]["intervals"]
    return {row["start"][11:16]: row["import_wh"] - row["export_wh"] for row in rows}


async def boot(station: Any) -> None:
    await station.call(v21.call.BootNotification(
        charging_station={"model": "Lib", "vendor_name": "ocpp.v21"}, reason="PowerUp"))


async def test_queued_events_are_booked_to_the_intervals_they_describe_and_amend_the_report(tmp_path: Path) -> None:
    driver = OcppEvseDriver("ev1", STATION, 1)
    store = Store(tmp_path / "state.db")
    events = EventManager(store, Fleet(assets={}), EventSettings(), energy_sources=[driver])
    signal = UpDrEvent(id="dr", start=at("10:00"), end=at("11:00"), requested_increase_w=5000.0, price_per_kwh=3.0,
                       baseline_method="pre_event_average")
    await events.receive("up_dr", signal, at("09:40"))
    for hhmm in ("09:45", "09:50", "09:55"):
        events.observe_site(at(hhmm), 2000.0)

    async with running_csms(tmp_path, [driver]) as (csms, pki):
        async with lib_station(csms, pki, STATION, "2.1") as station:
            await boot(station)
            await station.call(_event(0, "10:00", 1000.0, offline=False, kind="Started"))
            await events.tick(at("10:00"))
            await station.call(_event(1, "10:10", 2000.0, offline=False))
            await events.tick(at("10:10"))
        # the link is gone at 10:15: the station meters on and queues; the event ends without its account
        for hhmm in ("10:15", "10:30", "10:45", "10:59"):
            events.observe_site(at(hhmm), 8000.0)
        await events.tick(at("11:00"))
        event = events.get("dr")
        assert event is not None and event.state is EventState.COMPLETED and event.report is not None
        site_before = {k: v for k, v in event.report.items() if k not in ("per_asset", "per_asset_amended")}
        assert per_interval(event.report, "ev1") == {"10:00": pytest.approx(1000.0), "10:30": 0.0}
        assert "per_asset_amended" not in event.report

        async with lib_station(csms, pki, STATION, "2.1") as station:  # back at 11:15, it sends its queue
            with capture_logs() as logs:
                for seq_no, hhmm, wh in ((2, "10:20", 3000.0), (3, "10:40", 5000.0), (5, "10:50", 6000.0)):
                    await station.call(_event(seq_no, hhmm, wh, offline=True))
                await station.call(_event(3, "10:40", 5000.0, offline=True))  # resent: its answer was lost
                await station.call(_event(6, "11:10", 7000.0, offline=False))
            await events.tick(at("11:15"))
            [gap] = [e for e in logs if e["event"] == "ocpp.seq_gap"]
            assert (gap["station"], gap["transaction"], gap["missing"], gap["got"]) == (STATION, TX, "4..4", 5)

            # metered 10:00-10:40 at 100 Wh/min, 10:40-10:50 at 100, 10:50-11:10 at 50: by when, not by arrival
            amended = event.report
            assert per_interval(amended, "ev1") == {"10:00": pytest.approx(3000.0), "10:30": pytest.approx(2500.0)}
            assert amended["per_asset"]["assets"]["ev1"]["import_wh"] == pytest.approx(5500.0)
            assert amended["per_asset_amended"] == at("11:15").isoformat()
            assert {k: v for k, v in amended.items() if k not in ("per_asset", "per_asset_amended")} == site_before
            stored = store.load_asset_intervals(at("10:00").timestamp(), at("11:30").timestamp())["ev1"]
            assert {k: v[0] for k, v in stored.items()} == pytest.approx(
                {at("10:00").timestamp(): 3000.0, at("10:30").timestamp(): 2500.0, at("11:00").timestamp(): 500.0})
            [(_, _, _, data)] = [row for row in store.load_events() if row[0] == "dr"]
            assert data["report"]["per_asset"] == amended["per_asset"]  # the amended report is the stored one

            # the station resends part of its queue again (a lost answer): nothing moves, nothing is amended
            for seq_no, hhmm, wh in ((3, "10:40", 5000.0), (5, "10:50", 6000.0)):
                await station.call(_event(seq_no, hhmm, wh, offline=True))
            await events.tick(at("11:30"))
            assert per_interval(event.report, "ev1") == {"10:00": pytest.approx(3000.0), "10:30": pytest.approx(2500.0)}
            assert event.report["per_asset_amended"] == at("11:15").isoformat()
            again = store.load_asset_intervals(at("10:00").timestamp(), at("11:30").timestamp())["ev1"]
            assert again == stored

            # the missing seqNo 4 (10:45, 5600 Wh) arrives late: it moves energy inside 10:30 only, no double count
            await station.call(_event(4, "10:45", 5600.0, offline=True))
            await events.tick(at("11:45"))
            assert per_interval(event.report, "ev1") == {"10:00": pytest.approx(3000.0), "10:30": pytest.approx(2500.0)}
            assert not driver.tx_log.missing  # type: ignore[union-attr]
    store.close()
