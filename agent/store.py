"""The agent's durable state (SQLite): accepted signals, the lifecycle of grid events, site-meter interval history.

An acknowledged signal and an event's progress must survive any restart (an active event resumes).

Writes are few (signals arrive minutes apart) but must be on disk before the acknowledgement goes out; they run
in a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

from agent.events.mv.intervals import Interval

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS signals (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        received_at TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        data TEXT NOT NULL
    )""",
    # one row per settlement interval (30 min): 48 a day, pruned past `keep_days`, so the file stays small
    """CREATE TABLE IF NOT EXISTS meter_intervals (
        start_ts REAL PRIMARY KEY,
        mean_w REAL NOT NULL,
        covered_s REAL NOT NULL
    )""",
]


class Store:
    """One SQLite file; safe to call from the event loop (writes go to a thread) and from worker threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in SCHEMA:
            self._db.execute(statement)

    def _insert(self, kind: str, signal_id: str, received_at: datetime, payload: dict[str, object]) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO signals (kind, id, received_at, payload) VALUES (?, ?, ?, ?)",
                (kind, signal_id, received_at.isoformat(), json.dumps(payload, default=str)),
            )
            return cursor.rowcount == 1

    async def add(self, kind: str, signal_id: str, received_at: datetime, payload: dict[str, object]) -> bool:
        """Store a signal; False when (kind, id) was already stored (a redelivery)."""
        return await asyncio.to_thread(self._insert, kind, signal_id, received_at, payload)

    def load(self, kind: str | None = None) -> list[tuple[str, str, dict[str, object]]]:
        """(kind, id, payload) of stored signals, oldest first."""
        with self._lock:
            query = "SELECT kind, id, payload FROM signals"
            rows = (
                self._db.execute(query + " WHERE kind = ? ORDER BY rowid", (kind,))
                if kind
                else self._db.execute(query + " ORDER BY rowid")
            ).fetchall()
        return [(k, i, json.loads(p)) for k, i, p in rows]

    def _save_event(self, event_id: str, kind: str, state: str, data: dict[str, object]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO events (id, kind, state, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = excluded.state, data = excluded.data",
                (event_id, kind, state, json.dumps(data, default=str)),
            )

    async def save_event(self, event_id: str, kind: str, state: str, data: dict[str, object]) -> None:
        await asyncio.to_thread(self._save_event, event_id, kind, state, data)

    def load_events(self) -> list[tuple[str, str, str, dict[str, object]]]:
        """(id, kind, state, data) of every event, in the order first seen."""
        with self._lock:
            rows = self._db.execute("SELECT id, kind, state, data FROM events ORDER BY rowid").fetchall()
        return [(i, k, s, json.loads(d)) for i, k, s, d in rows]

    def _add_intervals(self, intervals: list[Interval], keep_days: float) -> None:
        if not intervals:
            return
        with self._lock:
            self._db.execute("BEGIN")  # autocommit connection: the transaction is explicit
            try:
                self._merge_intervals(intervals, keep_days)
            except BaseException:
                self._db.execute("ROLLBACK")  # an open transaction would make every later BEGIN fail
                raise
            self._db.execute("COMMIT")

    def _merge_intervals(self, intervals: list[Interval], keep_days: float) -> None:
        # a restart can re-close an interval already stored: merge by coverage rather than lose either part
        for item in intervals:
            row = self._db.execute(
                "SELECT mean_w, covered_s FROM meter_intervals WHERE start_ts = ?", (item.start_ts,)
            ).fetchone()
            mean, covered = item.mean_w, item.covered_s
            if row is not None:
                covered = row[1] + item.covered_s
                mean = (row[0] * row[1] + item.mean_w * item.covered_s) / covered
            self._db.execute(
                "INSERT OR REPLACE INTO meter_intervals (start_ts, mean_w, covered_s) VALUES (?, ?, ?)",
                (item.start_ts, mean, covered),
            )
        cutoff = max(i.start_ts for i in intervals) - keep_days * 86400
        self._db.execute("DELETE FROM meter_intervals WHERE start_ts < ?", (cutoff,))

    async def add_intervals(self, intervals: list[Interval], keep_days: float = 60.0) -> None:
        """Store closed meter intervals (and drop those older than `keep_days`)."""
        await asyncio.to_thread(self._add_intervals, intervals, keep_days)

    def load_intervals(self, since_ts: float = 0.0) -> list[Interval]:
        with self._lock:
            rows = self._db.execute(
                "SELECT start_ts, mean_w, covered_s FROM meter_intervals WHERE start_ts >= ? ORDER BY start_ts",
                (since_ts,),
            ).fetchall()
        return [Interval(float(t), float(w), float(c)) for t, w, c in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
