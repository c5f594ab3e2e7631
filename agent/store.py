"""Durable store of accepted signals (SQLite), so an acknowledged signal survives any restart.

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS signals (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (kind, id)
)
"""


class SignalStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)

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

    def close(self) -> None:
        with self._lock:
            self._db.close()
