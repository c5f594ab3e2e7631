"""Per-asset interval energy in the Store (schema version 2): the upgrade from a version-1 state file, the merge
(a source's rows are replaced, never added to; sources add up), retention, and the events manager's incremental
booking of a transaction log agreeing with booking the whole log at once."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import store as store_module
from agent.config import EventSettings
from agent.events.lifecycle import EventManager
from agent.events.mv.intervals import register_energy_by_interval
from agent.fleet import Fleet
from agent.store import SCHEMA_VERSION, AssetEnergy, Store
from drivers.ocpp.txlog import TransactionLog

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()


def test_a_version_1_file_gains_the_table_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    store_module._baseline(db)  # exactly what migration 1 leaves
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO meter_intervals VALUES (?, 1234.5, 1800.0)", (T0,))
    db.execute("INSERT INTO events (id, kind, state, data) VALUES ('dr-1', 'up_dr', 'completed', '{}')")
    db.commit()
    assert "asset_intervals" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    db.close()

    store = Store(path)
    assert store.schema_found == 1 and SCHEMA_VERSION >= 2
    assert [i.mean_w for i in store.load_intervals()] == [1234.5]
    assert [e[0] for e in store.load_events()] == ["dr-1"]
    assert store.load_asset_intervals(0.0, T0 + 3600) == {}
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = [r[1] for r in db.execute("PRAGMA table_info(asset_intervals)")]
    assert columns == ["asset_id", "source", "start_ts", "import_wh", "export_wh"]
    db.close()
    assert Store(path).schema_found == SCHEMA_VERSION  # nothing left to migrate


async def test_a_source_is_replaced_not_added_and_sources_add_up(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    rows = [AssetEnergy("ev1", "tx-a", T0, 1000.0, 0.0), AssetEnergy("ev1", "tx-a", T0 + 1800, 500.0, 20.0)]
    await store.add_asset_intervals(rows)
    await store.add_asset_intervals(rows)  # the same booking again: a resend, a second pass
    assert store.load_asset_intervals(T0, T0 + 3600) == {"ev1": {T0: (1000.0, 0.0), T0 + 1800: (500.0, 20.0)}}
    await store.add_asset_intervals([AssetEnergy("ev1", "tx-a", T0 + 1800, 800.0, 20.0),  # rebooked: replaces
                                     AssetEnergy("ev1", "tx-b", T0 + 1800, 100.0, 0.0),  # another source: adds
                                     AssetEnergy("ev2", "tx-c", T0, 7.0, 3.0)])
    assert store.load_asset_intervals(T0, T0 + 3600) == {
        "ev1": {T0: (1000.0, 0.0), T0 + 1800: (900.0, 20.0)}, "ev2": {T0: (7.0, 3.0)}}
    assert store.load_asset_intervals(T0 + 1800, T0 + 3600)["ev1"] == {T0 + 1800: (900.0, 20.0)}
    await store.add_asset_intervals([AssetEnergy("ev1", "tx-d", T0 + 2 * 86400, 1.0, 0.0)], keep_days=1.0)
    assert store.load_asset_intervals(0.0, T0 + 3 * 86400) == {"ev1": {T0 + 2 * 86400: (1.0, 0.0)}}
    store.close()


class Evse:
    """A register history as the events manager sees one (drivers/ocpp/evse.py keeps its logs the same way)."""

    def __init__(self, asset_id: str, logs: list[TransactionLog]) -> None:
        self.asset_id = asset_id
        self.logs = logs

    def transaction_logs(self) -> list[TransactionLog]:
        return self.logs


async def test_booking_in_steps_agrees_with_booking_the_whole_log(tmp_path: Path) -> None:
    """Events arrive shuffled (queued, late, resent) with bookings in between: what the Store holds in the end is
    the booking of the complete log, interval by interval."""
    rng = random.Random(7)
    readings, wh = [], 0.0
    for seq_no in range(120):
        wh += rng.uniform(0.0, 400.0)
        readings.append((seq_no, T0 + seq_no * 97.0 + rng.uniform(0, 50), wh))
    arrivals = readings[:]
    rng.shuffle(arrivals)
    arrivals += rng.sample(readings, 15)  # resends
    log = TransactionLog("CP", 1, "tx")
    store = Store(tmp_path / "state.db")
    events = EventManager(store, Fleet(assets={}), EventSettings(), energy_sources=[Evse("ev1", [log])])
    for i, (seq_no, ts, value) in enumerate(arrivals):
        log.add(seq_no, True, [(ts, {"energy_import_wh": value, "energy_export_wh": value / 10})])
        if i % 7 == 0:
            await events._book_assets(None)
    await events._book_assets(None)
    whole = register_energy_by_interval([(ts, value) for _, ts, value in readings], 1800.0)
    stored = store.load_asset_intervals(0.0, T0 + 86400)["ev1"]
    assert {k: v[0] for k, v in stored.items()} == pytest.approx(whole)
    assert {k: v[1] for k, v in stored.items()} == pytest.approx({k: v / 10 for k, v in whole.items()})
    assert sum(v[0] for v in stored.values()) == pytest.approx(readings[-1][2] - readings[0][2])
    store.close()


def imported(store: Store) -> dict[float, float]:
    return {k: v[0] for k, v in store.load_asset_intervals(T0, T0 + 3600)["ev1"].items()}


async def test_a_late_reading_rebooks_the_interval_of_the_reading_before_it(tmp_path: Path) -> None:
    """seqNo 1 (10:40) arrives after 0 (10:00) and 2 (10:50) were booked: the step 0 -> 1 starts in the 10:00
    interval, so that interval is booked again (1500 Wh, not the 3000 Wh the straight line 0 -> 2 gave it)."""
    log = TransactionLog("CP", 1, "tx")
    store = Store(tmp_path / "state.db")
    events = EventManager(store, Fleet(assets={}), EventSettings(), energy_sources=[Evse("ev1", [log])])
    log.add(0, False, [(T0, {"energy_import_wh": 0.0})])
    log.add(2, True, [(T0 + 50 * 60, {"energy_import_wh": 5000.0})])
    await events._book_assets(None)
    assert imported(store) == pytest.approx({T0: 3000.0, T0 + 1800: 2000.0})
    log.add(1, True, [(T0 + 40 * 60, {"energy_import_wh": 2000.0})])
    await events._book_assets(None)
    assert imported(store) == pytest.approx({T0: 1500.0, T0 + 1800: 3500.0})
    store.close()
