"""The agent's durable state (SQLite): accepted signals and the lifecycle of grid events.

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

    def close(self) -> None:
        with self._lock:
            self._db.close()
