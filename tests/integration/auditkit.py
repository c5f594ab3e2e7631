"""What someone who can write the agent's state file but cannot sign does to its audit trail, for the tests that show
each attempt is caught. Imported as `auditkit` (the unit, integration and mqtt conftests put this folder on sys.path).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agent.audit.chain import encode_data, row_hash
from agent.store import read_audit


def rewrite(path: Path, from_n: int, change: dict[str, object]) -> None:
    """Edit row `from_n`'s data and recompute every hash from there on, so the chain is consistent again: only a
    head the agent signed before can tell."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("DROP TRIGGER IF EXISTS audit_append_only")  # the trigger stops bugs, not an attacker
        rows = list(read_audit(db))
        prev = next(r.prev_hash for r in rows if r.n == from_n)
        for row in rows:
            if row.n < from_n:
                continue
            data = json.loads(row.data)
            if row.n == from_n:
                data.update(change)
            digest = row_hash(prev, row.n, row.at, row.kind, data)
            db.execute("UPDATE audit SET data = ?, prev_hash = ?, hash = ? WHERE n = ?",
                       (encode_data(data), prev, digest, row.n))  # fmt: skip
            prev = digest
    finally:
        db.close()


def delete_start(path: Path, through_n: int) -> None:
    """Delete rows 1..through_n: no UPDATE (so the trigger does not object) and no hash to recompute."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("DELETE FROM audit WHERE n <= ?", (through_n,))
    finally:
        db.close()


def append(path: Path, at: str, kind: str, data: dict[str, object]) -> None:
    """Chain one more row onto the newest, as the agent would: anyone can compute the hash, nobody else can sign."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        n, prev = db.execute("SELECT n, hash FROM audit ORDER BY n DESC LIMIT 1").fetchone()
        db.execute("INSERT INTO audit (n, at, kind, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
                   (n + 1, at, kind, encode_data(data), prev, row_hash(prev, n + 1, at, kind, data)))  # fmt: skip
    finally:
        db.close()
