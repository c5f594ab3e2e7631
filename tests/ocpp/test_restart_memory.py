"""What an OCPP transaction keeps across an agent restart, part by part: the Store's driver_memory table (schema
version 3, upgraded from a version-2 file), the memory's write-behind and retention (agent.store.StoredMemory), a
transaction log's snapshot and restore (drivers/ocpp/txlog.py), and the EVSE driver forgetting a transaction once
it ends. The whole restart, with the agent and a station, is test_restart_transaction.py."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import store as store_module
from agent.events.mv.intervals import register_energy_by_interval
from agent.store import SCHEMA_VERSION, Store, StoredMemory
from drivers.ocpp.evse import OcppEvseDriver
from drivers.ocpp.txlog import TransactionLog

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
MIN = 60.0


def version_2_file(path: Path) -> Path:
    """Exactly what migrations 1 and 2 leave, with a booking in it."""
    db = sqlite3.connect(path)
    store_module._baseline(db)
    store_module._asset_intervals(db)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO asset_intervals VALUES ('ev1', 'CP/1/tx/ab', ?, 500.0, 0.0)", (T0.timestamp(),))
    db.commit()
    db.close()
    return path


async def test_a_version_2_file_gains_the_driver_memory_and_keeps_its_rows(tmp_path: Path) -> None:
    path = version_2_file(tmp_path / "state.db")
    store = Store(path)
    assert store.schema_found == 2 and SCHEMA_VERSION >= 3
    assert store.load_asset_intervals(0.0, T0.timestamp() + 3600) == {"ev1": {T0.timestamp(): (500.0, 0.0)}}
    memory = StoredMemory(store, lambda: T0)
    assert memory.get("ocpp/CP/1/tx") is None
    memory.put("ocpp/CP/1/tx", {"session": {"ev_target_soc": 0.8}})
    await memory.flush()
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r[1] for r in db.execute("PRAGMA table_info(driver_memory)")] == ["key", "updated_ts", "value"]
    db.close()

    again = Store(path)
    assert again.schema_found == SCHEMA_VERSION
    assert StoredMemory(again, lambda: T0).get("ocpp/CP/1/tx") == {"session": {"ev_target_soc": 0.8}}
    again.close()


async def test_the_memory_forgets_dropped_keys_and_old_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    memory = StoredMemory(store, lambda: T0)
    memory.put("a", {"n": 1})
    memory.put("b", {"n": 2})
    await memory.flush()
    memory.drop("a")
    memory.put("b", {"n": 3})
    await memory.flush()
    assert StoredMemory(store, lambda: T0).get("a") is None
    assert StoredMemory(store, lambda: T0).get("b") == {"n": 3}
    # opened 8 days later with a week's retention: a key nobody wrote since is gone, from the file too
    later = StoredMemory(store, lambda: T0 + timedelta(days=8), keep_s=7 * 86400.0)
    assert later.get("b") is None
    assert StoredMemory(store, lambda: T0).get("b") is None
    store.close()


def _log(readings: list[tuple[int, float, float]]) -> TransactionLog:
    log = TransactionLog("CP", 1, "tx")
    for seq_no, minutes, wh in readings:
        log.add(seq_no, False, [(T0.timestamp() + minutes * MIN, {"energy_import_wh": wh})])
    return log


def test_a_restored_log_books_what_the_uninterrupted_one_would() -> None:
    readings = [(0, 0, 1000.0), (1, 10, 2000.0), (2, 20, 3000.0), (3, 35, 4000.0), (4, 50, 5000.0)]
    whole = _log([*readings, (5, 70, 6000.0)])
    before = _log(readings)
    snapshot = before.snapshot(tail_s=30 * MIN)
    assert [r[0] for r in snapshot["readings"]] == [2, 3, 4]  # from the last one at or before 30 min back
    restored = TransactionLog.restore("CP", 1, "tx", snapshot)
    assert restored.source == before.source and restored.highest == 4
    restored.add(2, False, [(T0.timestamp() + 20 * MIN, {"energy_import_wh": 3000.0})])  # resent: kept once
    restored.add(0, False, [(T0.timestamp(), {"energy_import_wh": 1000.0})])  # older than the tail: booked before
    restored.add(5, False, [(T0.timestamp() + 70 * MIN, {"energy_import_wh": 6000.0})])
    changed = restored.take_change()
    assert changed == T0.timestamp() + 50 * MIN
    since = T0.timestamp() + 30 * MIN  # the interval the change starts in (30 min intervals)
    assert restored.registers("import_wh", since) == whole.registers("import_wh", since)
    booked = register_energy_by_interval(restored.registers("import_wh", since), 30 * MIN)
    expected = register_energy_by_interval(whole.registers("import_wh"), 30 * MIN)
    assert {t: v for t, v in booked.items() if t >= since} == pytest.approx(
        {t: v for t, v in expected.items() if t >= since})


def test_a_gap_stays_open_across_the_restart_and_can_be_filled() -> None:
    before = _log([(0, 0, 1000.0), (1, 10, 2000.0), (3, 20, 3000.0)])
    assert before.missing == {2}
    restored = TransactionLog.restore("CP", 1, "tx", before.snapshot(tail_s=30 * MIN))
    assert restored.missing == {2} and not restored.is_known(2) and restored.is_known(3)
    restored.add(2, True, [(T0.timestamp() + 15 * MIN, {"energy_import_wh": 2500.0})])
    assert not restored.missing and [r.seq_no for r in restored.readings] == [0, 1, 2, 3]


def test_a_saved_log_that_is_not_one_is_named() -> None:
    with pytest.raises(ValueError, match=r"transaction tx at CP/1: saved log unusable"):
        TransactionLog.restore("CP", 1, "tx", {"source": "x", "highest": 3})


async def test_the_driver_remembers_a_transaction_until_it_ends(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    memory = StoredMemory(store, lambda: T0)
    driver = OcppEvseDriver("ev1", "CP", 1, lambda: T0, memory=memory)

    def event(kind: str, seq_no: int, tx: str = "tx1") -> dict[str, object]:
        return {"eventType": kind, "seqNo": seq_no, "transactionInfo": {"transactionId": tx},
                "timestamp": "2026-12-02T10:00:00Z", "triggerReason": "MeterValuePeriodic"}

    driver.on_transaction_event(event("Started", 0))
    driver.on_charging_needs({"requestedEnergyTransfer": "DC_BPT", "departureTime": "2026-12-02T13:00:00Z"})
    assert memory.get("ocpp/CP/1/tx1") is not None
    assert memory.get("ocpp/CP/1/tx1")["session"] == {"ev_departure": T0.timestamp() + 3 * 3600}  # type: ignore[index]
    driver.on_transaction_event(event("Started", 0, tx="tx2"))  # another transaction: the first is over
    assert memory.get("ocpp/CP/1/tx1") is None and memory.get("ocpp/CP/1/tx2") is not None
    driver.on_transaction_event(event("Ended", 1, tx="tx2"))
    assert memory.get("ocpp/CP/1/tx2") is None
    await memory.flush()
    assert StoredMemory(store, lambda: T0).get("ocpp/CP/1/tx1") is None
    store.close()


async def test_an_end_sent_after_the_restart_closes_the_remembered_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")

    def event(kind: str, seq_no: int, minutes: int, wh: float) -> dict[str, object]:
        when = (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
        return {"eventType": kind, "seqNo": seq_no, "transactionInfo": {"transactionId": "tx1"}, "timestamp": when,
                "triggerReason": "MeterValuePeriodic", "meterValue": [{"timestamp": when, "sampledValue": [
                    {"value": wh, "measurand": "Energy.Active.Import.Register"}]}]}

    before = OcppEvseDriver("ev1", "CP", 1, lambda: T0, memory=(memory := StoredMemory(store, lambda: T0)))
    before.on_transaction_event(event("Started", 0, 0, 1000.0))
    before.on_transaction_event(event("Updated", 1, 10, 2000.0))
    await before.close()  # the agent stops: the transaction as it is now goes to the Store
    await memory.flush()
    source = before.tx_log.source  # type: ignore[union-attr]

    after = OcppEvseDriver("ev1", "CP", 1, lambda: T0, memory=(memory := StoredMemory(store, lambda: T0)))
    after.on_transaction_event(event("Ended", 2, 20, 3000.0))  # the station's queue: only the end is left
    [ended] = after.ended_logs
    assert ended.source == source and after.transaction_id is None
    assert ended.registers("import_wh") == [(T0.timestamp() + m * MIN, wh) for m, wh in
                                            ((0, 1000.0), (10, 2000.0), (20, 3000.0))]
    assert memory.get("ocpp/CP/1/tx1") is None
    store.close()
