"""TransactionEvents a station queued while offline (`offline: true`, `seqNo`) are kept in seqNo order, a gap is
logged, and their energy is booked to the settlement interval each value was measured in, not the one it arrived in.
The station is the `ocpp` library's own `ocpp.v21.ChargePoint`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from ocpp import v21
from ocppkit import lib_station, running_csms
from structlog.testing import capture_logs

from agent.events.mv.intervals import register_energy_by_interval
from drivers.ocpp.evse import OcppEvseDriver

STATION = "CP-OFFLINE"
TX = "tx-offline"


def _unix(hhmm: str) -> float:
    hours, minutes = hhmm.split(":")
    return datetime(2026, 11, 23, int(hours), int(minutes), tzinfo=UTC).timestamp()


def _event(seq_no: int, hhmm: str, import_wh: float, power_w: float, offline: bool, kind: str = "Updated") -> object:
    return v21.call.TransactionEvent(
        event_type=kind, timestamp=f"2026-11-23T{hhmm}:00Z", seq_no=seq_no, offline=offline,
        trigger_reason="CablePluggedIn" if kind == "Started" else "MeterValuePeriodic",
        transaction_info={"transaction_id": TX}, evse={"id": 1, "connector_id": 1},
        meter_value=[{"timestamp": f"2026-11-23T{hhmm}:00Z", "sampled_value": [
            {"value": power_w, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
            {"value": import_wh / 1000, "measurand": "Energy.Active.Import.Register",
             "unit_of_measure": {"unit": "kWh"}}]}])


async def test_offline_events_are_kept_in_order_with_a_gap_and_booked_to_their_interval(tmp_path: Path) -> None:
    driver = OcppEvseDriver("ev1", STATION, 1)
    async with running_csms(tmp_path, [driver]) as (csms, pki), lib_station(csms, pki, STATION, "2.1") as station:
        await station.call(v21.call.BootNotification(
            charging_station={"model": "Lib", "vendor_name": "ocpp.v21"}, reason="PowerUp"))
        await station.call(_event(0, "10:00", 1000.0, 6000.0, offline=False, kind="Started"))
        assert (await driver.read()).power_w == pytest.approx(6000.0)

        # back online at 11:15, the station sends what it queued: seqNo 3 is missing, then arrives late
        with capture_logs() as logs:
            for seq_no, hhmm, wh in ((1, "10:20", 3000.0), (2, "10:40", 5000.0), (4, "10:50", 6000.0)):
                await station.call(_event(seq_no, hhmm, wh, 9999.0, offline=True))
            await station.call(_event(3, "10:45", 5500.0, 9999.0, offline=True))
            await station.call(_event(4, "10:50", 6000.0, 9999.0, offline=True))  # resent: kept once
        [gap] = [e for e in logs if e["event"] == "ocpp.seq_gap"]
        assert (gap["station"], gap["transaction"], gap["missing"], gap["got"]) == (STATION, TX, "3..3", 4)
        assert [e["seq_no"] for e in logs if e["event"] == "ocpp.seq_late"] == [3]
        assert (await driver.read()).power_w == pytest.approx(6000.0)  # history does not pose as the present

        await station.call(_event(5, "11:15", 7000.0, 3000.0, offline=False))
        log = driver.tx_log
        assert log is not None and not log.missing
        assert [r.seq_no for r in log.readings] == [0, 1, 2, 3, 4, 5]
        assert [r.offline for r in log.readings] == [False, True, True, True, True, False]

        booked = register_energy_by_interval(log.registers(), 1800.0)
        assert booked == pytest.approx({_unix("10:00"): 3000.0, _unix("10:30"): 2400.0, _unix("11:00"): 600.0})
        assert sum(booked.values()) == pytest.approx(6000.0)  # nothing lost, nothing counted twice


def test_a_register_reset_or_time_going_back_books_nothing_for_that_step() -> None:
    readings = [(_unix("10:00"), 100.0), (_unix("10:10"), 50.0), (_unix("10:20"), 150.0), (_unix("10:15"), 400.0)]
    assert register_energy_by_interval(readings, 1800.0) == pytest.approx({_unix("10:00"): 100.0})
