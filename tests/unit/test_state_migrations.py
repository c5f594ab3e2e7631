"""Upgrades migrate the state file by numbered migrations keyed by `PRAGMA user_version` (agent/store.py), and files
made before versions existed keep working."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent import store as store_module
from agent.store import SCHEMA_VERSION, Store, StoreError

# The schema of an early release (git show HEAD~40:agent/store.py), written by hand: no version, no added columns.
EARLY_SCHEMA = [
    """CREATE TABLE signals (kind TEXT NOT NULL, id TEXT NOT NULL, received_at TEXT NOT NULL, payload TEXT NOT NULL,
        PRIMARY KEY (kind, id))""",
    "CREATE TABLE events (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE meter_intervals (start_ts REAL PRIMARY KEY, mean_w REAL NOT NULL, covered_s REAL NOT NULL)",
]
PRICES = {"id": "p1", "start": "2026-01-01T00:00:00+09:00", "interval_s": 1800, "prices_per_kwh": [10.0]}


def early_file(path: Path) -> Path:
    db = sqlite3.connect(path)
    for statement in EARLY_SCHEMA:
        db.execute(statement)
    db.execute("INSERT INTO signals VALUES ('prices', 'p1', '2026-01-01T00:00:00+00:00', ?)", (json.dumps(PRICES),))
    db.execute("INSERT INTO events VALUES ('dr-1', 'updr', 'completed', ?)", (json.dumps({"report": {"ok": 1}}),))
    db.execute("INSERT INTO meter_intervals VALUES (1767225600.0, 1234.5, 1800.0)")
    db.commit()
    db.close()
    return path


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def columns(path: Path, table: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    finally:
        db.close()


async def test_an_early_unversioned_file_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = early_file(tmp_path / "state.db")
    store = Store(path)
    assert store.schema_found == 0
    assert [(k, i) for k, i, _ in store.load()] == [("prices", "p1")]
    assert [(i, s, d) for i, _, s, d in store.load_events()] == [("dr-1", "completed", {"report": {"ok": 1}})]
    assert [i.mean_w for i in store.load_intervals()] == [1234.5]
    await store.save_event("dr-2", "updr", "accepted", {}, ends_ts=1.0)  # a column the early file lacked
    store.append_audit([("test", "migrated", {})])  # a table the early file lacked
    store.close()
    assert user_version(path) == SCHEMA_VERSION
    assert {"ends_ts", "issued_ts"} <= columns(path, "signals") and "expires_ts" in columns(path, "activations")

    again = Store(path)  # nothing left to migrate, nothing lost
    assert again.schema_found == SCHEMA_VERSION
    assert [i for i, *_ in again.load_events()] == ["dr-1", "dr-2"]
    again.close()


def test_a_file_of_the_last_unversioned_release_is_stamped_without_change(tmp_path: Path) -> None:
    """What the agent wrote just before versions: every table and added column, user_version 0."""
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for statement in store_module.SCHEMA:
        db.execute(statement)
    for table, column, declaration in store_module._UNVERSIONED_COLUMNS:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    db.commit()
    db.close()
    before = {t: columns(path, t) for t in ("signals", "events", "activations", "audit")}
    Store(path).close()
    assert user_version(path) == SCHEMA_VERSION
    assert {t: columns(path, t) for t in before} == before


def test_a_file_from_a_newer_agent_is_refused_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=r"schema version \d+ was written by a newer vpp-agent"):
        Store(path)
    assert user_version(path) == SCHEMA_VERSION + 1


def test_a_failing_migration_leaves_the_file_at_the_version_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    Store(path).close()

    def half_done(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE signals ADD COLUMN source TEXT")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, (SCHEMA_VERSION + 1, "x", half_done)])
    with pytest.raises(StoreError, match="cannot open"):
        Store(path)
    assert user_version(path) == SCHEMA_VERSION
    assert "source" not in columns(path, "signals")

    monkeypatch.setattr(
        store_module, "MIGRATIONS",
        [*store_module.MIGRATIONS[:-1], (SCHEMA_VERSION + 1, "x", lambda db: db.execute(
            "ALTER TABLE signals ADD COLUMN source TEXT"))],
    )  # fmt: skip
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    Store(path).close()
    assert user_version(path) == SCHEMA_VERSION + 1 and "source" in columns(path, "signals")
