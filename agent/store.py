"""The agent's durable state (SQLite): accepted signals, the lifecycle of grid events, their meter samples, the
latest activation of each award, site-meter interval history, each asset's own interval energy (attribution of
M&V), the audit trail (agent/audit, docs/audit.md) and what opportunity-priced packs' wear book learnt (docs/wear.md).

An acknowledged signal and an event's progress must survive any restart (an active event resumes), so a signal or
an activation is on disk (synchronous=FULL) before its acknowledgement goes out, and an active event's meter samples
are appended every few seconds rather than rewritten as one growing blob. Writes run in a worker thread so the event
loop never waits on the disk.

Every table has a retention rule (`prune`): signals go `[signals] keep_days` after they end, finished events and
their reports `[events] report_keep_days` after they end, samples with their event's report, intervals (site
and per asset) after `[events] history_days`, driver memory a week after its last write (at start), audit rows
after `[trust] audit_keep_days` (the newest row always stays: it carries the chain on; a `pruned` row records each
prune in the chain), the opportunity-priced packs' wear book (`wear_packs`, `wear_settlements`:
agent.dispatch.wear_book) at the dispatcher's start and at each save of the book: periods once they leave the book's
90-day window, a pack's header (with its periods) when not written for that long (an asset gone from the config).
A failing disk (full, read-only, gone) raises StoreError naming the file and the operation; callers report it and
carry on from memory, so a full disk degrades the agent instead of stopping it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import structlog

from agent.audit.chain import GENESIS, PRUNED, Head, NotCanonical, Prune, Row, encode_data, row_hash, timestamp
from agent.events.mv.intervals import Interval

T = TypeVar("T")

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
    # what an active event saw: site-meter samples and activations, appended in batches, deleted with the report
    """CREATE TABLE IF NOT EXISTS event_series (
        event_id TEXT NOT NULL,
        series TEXT NOT NULL,
        ts REAL NOT NULL,
        value REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS event_series_by_event ON event_series (event_id, series, ts)",
    # the activation in force per award: what a restarted agent resumes with
    """CREATE TABLE IF NOT EXISTS activations (
        award_id TEXT PRIMARY KEY,
        signal_id TEXT NOT NULL,
        at_ts REAL NOT NULL,
        value REAL NOT NULL
    )""",
    # sequence numbers of signed commands taken per key, within its replay window (agent/trust/replay.py)
    """CREATE TABLE IF NOT EXISTS trust_sequences (
        kid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (kid, seq)
    )""",
    # the audit trail (agent/audit/chain.py defines a row's canonical bytes and hash): appended in batches, never
    # updated (the trigger stops a bug, not an attacker: the signed head published on MQTT catches a rewrite), and
    # pruned only from its oldest end
    """CREATE TABLE IF NOT EXISTS audit (
        n INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at)",
    """CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END""",
]
# Columns added by releases before the state file carried a schema version (user_version 0): a file of that age
# has some, all or none of them, so migration 1 adds each one it lacks. (table, column, declaration)
_UNVERSIONED_COLUMNS = [
    ("signals", "ends_ts", "REAL"),  # when the signal ended (NULL: until replaced); drives retention
    ("events", "ends_ts", "REAL"),
    ("activations", "expires_ts", "REAL"),  # when the signed command that carried it expires (NULL: unsigned)
    ("signals", "issued_ts", "REAL"),  # when its signed command was issued (NULL: unsigned): orders site targets
]


def _baseline(db: sqlite3.Connection) -> None:
    """Migration 1: the schema of the first versioned release, from nothing or from any unversioned file."""
    for statement in SCHEMA:
        db.execute(statement)
    for table, column, declaration in _UNVERSIONED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _asset_intervals(db: sqlite3.Connection) -> None:
    """Migration 2: each asset's own account of its energy per settlement interval (agent/events/lifecycle.py books
    OCPP transactions' registers here). One row per (asset, source, interval): `source` is the booking's origin
    (one transaction log), so booking a source again replaces its own rows (a resent event cannot count twice)
    and different sources of one asset add up."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS asset_intervals (
            asset_id TEXT NOT NULL,
            source TEXT NOT NULL,
            start_ts REAL NOT NULL,
            import_wh REAL NOT NULL,
            export_wh REAL NOT NULL,
            PRIMARY KEY (asset_id, source, start_ts)
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS asset_intervals_by_start ON asset_intervals (start_ts)")


def _driver_memory(db: sqlite3.Connection) -> None:
    """Migration 3: what drivers keep across restarts (agent.ports.DriverMemory; an OCPP EVSE's running
    transaction: the EV's charging needs and its register log's tail), a JSON value per key, with when it was
    last written (unix s, the agent's clock) for retention."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS driver_memory (
            key TEXT PRIMARY KEY,
            updated_ts REAL NOT NULL,
            value TEXT NOT NULL
        )"""
    )


def _wear_book(db: sqlite3.Connection) -> None:
    """Migration 4: opportunity-priced packs' wear book (agent.dispatch.wear_book, docs/wear.md), so a restart
    resumes the learnt value of a life instead of re-seeding it. Per pack one header row (the book's own `format`
    number and its JSON `state`, written at `updated_ts`) and its settled periods, appended as they settle (a
    pack's 90 days are ~9000 rows at 15-min steps: rewriting them as one value per step would wear the flash)."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS wear_packs (
            asset_id TEXT PRIMARY KEY,
            format INTEGER NOT NULL,
            updated_ts REAL NOT NULL,
            state TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS wear_settlements (
            asset_id TEXT NOT NULL,
            start_ts REAL NOT NULL,
            end_ts REAL NOT NULL,
            revenue REAL NOT NULL,
            life_used REAL NOT NULL,
            PRIMARY KEY (asset_id, start_ts)
        )"""
    )


# Numbered migrations: the file's `PRAGMA user_version` is the number of the last one applied. Each runs once, in
# its own transaction with the version bump, so a crash leaves the file at one version or the next. A schema change
# appends one entry here (never edits a released one): e.g. (2, "signals.source", lambda db: db.execute(...)).
# SCHEMA (CREATE ... IF NOT EXISTS) is also run on every open after them, so what it creates stays: a migration that
# drops a table, index or trigger must take it out of SCHEMA too.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], object]]] = [
    (1, "baseline: tables of the first versioned release; columns added before versions", _baseline),
    (2, "asset_intervals: per-asset energy per settlement interval", _asset_intervals),
    (3, "driver_memory: driver state kept across restarts", _driver_memory),
    (4, "wear_packs, wear_settlements: the opportunity-cost wear book", _wear_book),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(db: sqlite3.Connection, path: str) -> int:
    """Bring the file to SCHEMA_VERSION; returns the version it had. A file from a newer agent is refused (a
    downgrade would write rows its schema does not expect): StoreError naming both versions."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"state file {path}: schema version {found} was written by a newer vpp-agent (this one knows up to "
            f"{SCHEMA_VERSION}); run that version, or restore a backup of the file"
        )
    for number, _, step in MIGRATIONS:
        if number <= found:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            db.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    for statement in SCHEMA:  # on every open: puts back an index or the append-only trigger dropped by hand
        db.execute(statement)
    return found

OPEN_EVENT_STATES = ("received", "accepted", "scheduled", "active")

AddResult = Literal["new", "duplicate", "conflict"]
SeriesName = Literal["site", "activation"]


class AssetEnergy(NamedTuple):
    """One booking: the energy `source` says `asset_id` imported and exported in the interval from `start_ts`."""

    asset_id: str
    source: str
    start_ts: float
    import_wh: float
    export_wh: float


class StoredWear(NamedTuple):
    """A pack's stored wear book as read: the book's format number and JSON state (as stored, unchecked: the book
    judges them) and its settled periods (start, end, revenue, life used), oldest first."""

    format: Any
    state: Any
    settlements: list[tuple[Any, ...]]


class WearPackRow(NamedTuple):
    """A pack's header to write; `rewrite`: delete its stored periods first (agent.dispatch.wear_book)."""

    asset_id: str
    format: int
    updated_ts: float
    state: str
    rewrite: bool


class WearSettlementRow(NamedTuple):
    """One settled period of a pack to write (unix s; currency; life fraction)."""

    asset_id: str
    start_ts: float
    end_ts: float
    revenue: float
    life_used: float


class SequenceRow(NamedTuple):
    """A signed command's sequence number as stored, with the window's floor after taking it."""

    kid: str
    seq: int
    digest: str
    floor: int


class StoreError(RuntimeError):
    """The state file could not be read or written (disk full, read-only, gone, not a database)."""


class Store:
    """One SQLite file; safe to call from the event loop (writes go to a thread) and from worker threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self.last_error: str | None = None  # the last failure, cleared by the next success: the agent's health
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                self.schema_found = migrate(self._db, self.path)  # the version the file had when opened
            except StoreError:
                self._db.close()
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"state file {self.path}: cannot open: {exc}") from exc

    # -- plumbing -------------------------------------------------------------------------------------------
    def _run(
        self, what: str, work: Callable[[sqlite3.Connection], T], transaction: bool = False, write: bool = False
    ) -> T:
        """Run `work` under the lock, inside one transaction when asked; sqlite errors become StoreError. A failure
        is kept in `last_error` until a write succeeds (a read that works says nothing about a full disk)."""
        with self._lock:
            try:
                if not transaction:
                    result = work(self._db)
                else:
                    self._db.execute("BEGIN")  # autocommit connection: the transaction is explicit
                    try:
                        result = work(self._db)
                        self._db.execute("COMMIT")
                    finally:
                        # an open transaction would make every later BEGIN fail (SQLite may have ended it already)
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                self.last_error = f"{what}: {exc}"
                raise StoreError(f"state file {self.path}: {what} failed: {exc}") from exc
        if write or transaction:
            self.last_error = None
        return result

    async def _in_thread(
        self, what: str, work: Callable[[sqlite3.Connection], T], transaction: bool = False, write: bool = False
    ) -> T:
        return await asyncio.to_thread(self._run, what, work, transaction, write)

    # -- signals --------------------------------------------------------------------------------------------
    def _add(
        self,
        kind: str,
        signal_id: str,
        received_at: datetime,
        payload: dict[str, object],
        ends_ts: float | None,
        sequence: SequenceRow | None,
        issued_ts: float | None,
    ) -> AddResult:
        text = _canonical(payload)

        def work(db: sqlite3.Connection) -> AddResult:
            row = db.execute("SELECT payload FROM signals WHERE kind = ? AND id = ?", (kind, signal_id)).fetchone()
            if row is not None:
                return "duplicate" if _canonical(json.loads(row[0])) == text else "conflict"
            db.execute(
                "INSERT INTO signals (kind, id, received_at, payload, ends_ts, issued_ts) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, signal_id, received_at.isoformat(), text, ends_ts, issued_ts),
            )
            if sequence is not None:
                _save_sequence(db, sequence)
            return "new"

        return self._run("store signal", work, transaction=True)

    async def add(
        self,
        kind: str,
        signal_id: str,
        received_at: datetime,
        payload: dict[str, object],
        ends_ts: float | None = None,
        sequence: SequenceRow | None = None,
        issued_ts: float | None = None,
    ) -> AddResult:
        """Store a signal: "new"; "duplicate" when (kind, id) is stored with the same content (a redelivery);
        "conflict" when the id is stored with other content (nothing changes). A new signal's command sequence
        number (`sequence`) is stored in the same transaction: both are kept, or neither."""
        return await asyncio.to_thread(
            self._add, kind, signal_id, received_at, payload, ends_ts, sequence, issued_ts
        )

    def latest_issued(self, kind: str) -> float | None:
        """When the newest stored signal of `kind` was issued by its signed command (None: none, or unsigned)."""
        query = "SELECT issued_ts FROM signals WHERE kind = ? ORDER BY rowid DESC LIMIT 1"
        row = self._run("look up issued", lambda db: db.execute(query, (kind,)).fetchone())
        return None if row is None or row[0] is None else float(row[0])

    async def known(self, kind: str, signal_id: str, payload: dict[str, object]) -> AddResult | None:
        """"duplicate" or "conflict" when (kind, id) is already stored, None when it is not."""

        def work(db: sqlite3.Connection) -> AddResult | None:
            row = db.execute("SELECT payload FROM signals WHERE kind = ? AND id = ?", (kind, signal_id)).fetchone()
            if row is None:
                return None
            return "duplicate" if _canonical(json.loads(row[0])) == _canonical(payload) else "conflict"

        return await self._in_thread("look up signal", work)

    def load(self, kind: str | None = None, live_after_ts: float | None = None) -> list[tuple[str, str, str]]:
        """(kind, id, payload JSON text) of stored signals, oldest first; with `live_after_ts`, only those that had
        not ended by then (or never end)."""
        query = "SELECT kind, id, payload FROM signals WHERE 1=1"
        args: list[object] = []
        if kind:
            query += " AND kind = ?"
            args.append(kind)
        if live_after_ts is not None:
            query += " AND (ends_ts IS NULL OR ends_ts > ?)"
            args.append(live_after_ts)
        rows = self._run("load signals", lambda db: db.execute(query + " ORDER BY rowid", args).fetchall())
        return [(k, i, p) for k, i, p in rows]

    def drop_signal(self, kind: str, signal_id: str) -> None:
        """Remove one stored signal (one that no longer validates: it must not be retried at every start)."""
        query = "DELETE FROM signals WHERE kind = ? AND id = ?"
        self._run("drop signal", lambda db: db.execute(query, (kind, signal_id)), write=True)

    # -- signed commands' sequence numbers -------------------------------------------------------------------
    def load_sequences(self) -> list[tuple[str, int, str]]:
        """(kid, seq, digest) of every signed command taken within its key's replay window."""
        query = "SELECT kid, seq, digest FROM trust_sequences"
        rows = self._run("load sequences", lambda db: db.execute(query).fetchall())
        return [(k, int(q), d) for k, q, d in rows]

    async def save_sequence(self, sequence: SequenceRow) -> None:
        """A command's sequence number alone (a command that stores nothing else: a frequency reading, a
        redelivery), on disk before the command is acted on, so a restart still refuses its replay."""
        await self._in_thread("store sequence", lambda db: _save_sequence(db, sequence), transaction=True)

    # -- activations ----------------------------------------------------------------------------------------
    async def save_activation(
        self,
        award_id: str,
        signal_id: str,
        at_ts: float,
        value: float,
        expires_ts: float | None = None,
        sequence: SequenceRow | None = None,
    ) -> None:
        """The activation in force for an award, on disk before it is acknowledged (a restart resumes it, unless
        the command that carried it has expired by then), with its command's sequence number in one transaction."""

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO activations (award_id, signal_id, at_ts, value, expires_ts) "
                "VALUES (?, ?, ?, ?, ?)",
                (award_id, signal_id, at_ts, value, expires_ts),
            )
            if sequence is not None:
                _save_sequence(db, sequence)

        await self._in_thread("store activation", work, transaction=True)

    def load_activations(self) -> dict[str, tuple[str, float, float, float | None]]:
        """award id -> (signal id, at (unix s), value, expires (unix s) or None) of the last activation stored."""
        query = "SELECT award_id, signal_id, at_ts, value, expires_ts FROM activations"
        rows = self._run("load activations", lambda db: db.execute(query).fetchall())
        return {a: (s, float(t), float(v), None if e is None else float(e)) for a, s, t, v, e in rows}

    # -- events ---------------------------------------------------------------------------------------------
    async def save_event(
        self, event_id: str, kind: str, state: str, data: dict[str, object], ends_ts: float | None = None
    ) -> None:
        text = json.dumps(data, default=str)
        await self._in_thread(
            "store event",
            lambda db: db.execute(
                "INSERT INTO events (id, kind, state, data, ends_ts) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
                "SET state = excluded.state, data = excluded.data, ends_ts = excluded.ends_ts",
                (event_id, kind, state, text, ends_ts),
            ),
            write=True,
        )

    def load_events(self, open_only: bool = False) -> list[tuple[str, str, str, dict[str, object]]]:
        """(id, kind, state, data) of every event (or of those not yet finished), in the order first seen."""
        query = "SELECT id, kind, state, data FROM events"
        if open_only:
            query += f" WHERE state IN ({', '.join('?' * len(OPEN_EVENT_STATES))})"
        args = OPEN_EVENT_STATES if open_only else ()
        rows = self._run("load events", lambda db: db.execute(query + " ORDER BY rowid", args).fetchall())
        return [(i, k, s, json.loads(d)) for i, k, s, d in rows]

    def event_windows_since(self, since_ts: float) -> list[tuple[str, str]]:
        """(start, end) ISO times from the stored signal of events that ran (active or completed) and ended after
        `since_ts`: the days a baseline must not take as like-days."""

        def work(db: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = db.execute(
                "SELECT data FROM events WHERE state IN ('active', 'completed') AND (ends_ts IS NULL OR ends_ts >= ?)",
                (since_ts,),
            ).fetchall()
            windows = []
            for (text,) in rows:
                signal = json.loads(text).get("signal", {})
                start = signal.get("start") or signal.get("block_start")
                end = signal.get("end") or signal.get("block_end")
                if isinstance(start, str) and isinstance(end, str):
                    windows.append((start, end))
            return windows

        return self._run("load event windows", work)

    def mark_event_failed(self, event_id: str, reason: str) -> None:
        """An event that can no longer be processed (it does not load): failed, with the reason, kept for a look."""
        self._run(
            "mark event failed",
            lambda db: db.execute(
                "UPDATE events SET state = 'failed', data = json_set(data, '$.reason', ?) WHERE id = ?",
                (reason, event_id),
            ),
            write=True,
        )

    async def add_series(self, event_id: str, series: SeriesName, rows: Iterable[tuple[float, float]]) -> None:
        batch = [(event_id, series, ts, value) for ts, value in rows]
        if batch:
            await self._in_thread(
                "store event samples",
                lambda db: db.executemany(
                    "INSERT INTO event_series (event_id, series, ts, value) VALUES (?, ?, ?, ?)", batch
                ),
                transaction=True,
            )

    def load_series(self, event_id: str, series: SeriesName) -> list[tuple[float, float]]:
        rows = self._run(
            "load event samples",
            lambda db: db.execute(
                "SELECT ts, value FROM event_series WHERE event_id = ? AND series = ? ORDER BY ts", (event_id, series)
            ).fetchall(),
        )
        return [(float(t), float(v)) for t, v in rows]

    async def finish_event(
        self, event_id: str, kind: str, state: str, data: dict[str, object], ends_ts: float | None
    ) -> None:
        """Store a finished event (with its report) and drop its samples and activation, in one transaction."""
        text = json.dumps(data, default=str)

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO events (id, kind, state, data, ends_ts) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
                "SET state = excluded.state, data = excluded.data, ends_ts = excluded.ends_ts",
                (event_id, kind, state, text, ends_ts),
            )
            db.execute("DELETE FROM event_series WHERE event_id = ?", (event_id,))
            db.execute("DELETE FROM activations WHERE award_id = ?", (event_id,))

        await self._in_thread("store finished event", work, transaction=True)

    # -- meter intervals ------------------------------------------------------------------------------------
    def _add_intervals(self, intervals: list[Interval], keep_days: float) -> None:
        if intervals:
            self._run("store meter intervals", lambda db: _merge_intervals(db, intervals, keep_days), transaction=True)

    async def add_intervals(self, intervals: list[Interval], keep_days: float = 60.0) -> None:
        """Store closed meter intervals (and drop those older than `keep_days`)."""
        await asyncio.to_thread(self._add_intervals, intervals, keep_days)

    def load_intervals(self, since_ts: float = 0.0) -> list[Interval]:
        rows = self._run(
            "load meter intervals",
            lambda db: db.execute(
                "SELECT start_ts, mean_w, covered_s FROM meter_intervals WHERE start_ts >= ? ORDER BY start_ts",
                (since_ts,),
            ).fetchall(),
        )
        return [Interval(float(t), float(w), float(c)) for t, w, c in rows]

    # -- driver memory (agent.ports.DriverMemory) ------------------------------------------------------------
    def load_driver_memory(self, forget_before_ts: float) -> dict[str, dict[str, Any]]:
        """Every key's value, after deleting those last written before `forget_before_ts` (retention)."""

        def work(db: sqlite3.Connection) -> list[tuple[str, str]]:
            db.execute("DELETE FROM driver_memory WHERE updated_ts < ?", (forget_before_ts,))
            return db.execute("SELECT key, value FROM driver_memory").fetchall()

        return {str(k): json.loads(v) for k, v in self._run("load driver memory", work, transaction=True)}

    def save_driver_memory(self, puts: list[tuple[str, float, str]], drops: list[str]) -> None:
        """Write (key, updated_ts, JSON text) rows and delete `drops`, in one transaction (worker thread)."""

        def work(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO driver_memory (key, updated_ts, value) VALUES (?, ?, ?)", puts)
            db.executemany("DELETE FROM driver_memory WHERE key = ?", [(k,) for k in drops])

        self._run("save driver memory", work, transaction=True)

    # -- the wear book (agent.dispatch.wear_book) ---------------------------------------------------------------
    def load_wear(self, forget_before_ts: float) -> dict[str, StoredWear]:
        """Every pack's stored book, without what `forget_wear` would delete. Only reads (a read-only disk still
        resumes the book); blocking: read once at start, as the other loads are."""

        def work(db: sqlite3.Connection) -> dict[str, StoredWear]:
            headers = db.execute("SELECT asset_id, format, state FROM wear_packs WHERE updated_ts >= ?",
                                 (forget_before_ts,))  # fmt: skip
            out = {str(a): StoredWear(f, s, []) for a, f, s in headers}
            query = ("SELECT asset_id, start_ts, end_ts, revenue, life_used FROM wear_settlements WHERE end_ts > ? "
                     "ORDER BY asset_id, start_ts")
            for asset_id, *period in db.execute(query, (forget_before_ts,)):
                if str(asset_id) in out:
                    out[str(asset_id)].settlements.append(tuple(period))
            return out

        return self._run("load wear book", work, transaction=True)

    def forget_wear(self, before_ts: float) -> None:
        """The wear book's retention alone (at start; each save applies it too): `_forget_wear`."""
        self._run("prune wear book", lambda db: _forget_wear(db, before_ts), transaction=True)

    def save_wear(
        self, packs: list[WearPackRow], settlements: list[WearSettlementRow], forget_before_ts: float
    ) -> None:
        """Write packs' headers and their newly settled periods in one transaction (a worker thread calls it): a pack
        marked `rewrite` loses its stored periods first (it started afresh: those were another book's). Then
        deletes what `forget_wear` deletes."""

        def work(db: sqlite3.Connection) -> None:
            fresh = [(p.asset_id,) for p in packs if p.rewrite]
            db.executemany("DELETE FROM wear_settlements WHERE asset_id = ?", fresh)
            db.executemany(
                "INSERT OR REPLACE INTO wear_packs (asset_id, format, updated_ts, state) VALUES (?, ?, ?, ?)",
                [(p.asset_id, p.format, p.updated_ts, p.state) for p in packs],
            )
            db.executemany(
                "INSERT OR REPLACE INTO wear_settlements (asset_id, start_ts, end_ts, revenue, life_used) "
                "VALUES (?, ?, ?, ?, ?)",
                settlements,
            )
            _forget_wear(db, forget_before_ts)

        self._run("save wear book", work, transaction=True)

    # -- per-asset interval energy --------------------------------------------------------------------------
    async def add_asset_intervals(self, rows: list[AssetEnergy], keep_days: float = 60.0) -> None:
        """Merge bookings: each (asset, source, interval) takes the newest value its source computed (a source
        rebooks from its whole history, so replacing is idempotent); rows older than `keep_days` before the newest
        go."""
        if rows:
            await self._in_thread("store asset intervals", lambda db: _merge_asset_intervals(db, rows, keep_days),
                                  transaction=True)

    def load_asset_intervals(self, start_ts: float, end_ts: float) -> dict[str, dict[float, tuple[float, float]]]:
        """asset id -> interval start -> (import Wh, export Wh), summed over sources, for intervals starting in
        [start_ts, end_ts)."""
        rows = self._run(
            "load asset intervals",
            lambda db: db.execute(
                "SELECT asset_id, start_ts, sum(import_wh), sum(export_wh) FROM asset_intervals "
                "WHERE start_ts >= ? AND start_ts < ? GROUP BY asset_id, start_ts ORDER BY asset_id, start_ts",
                (start_ts, end_ts),
            ).fetchall(),
        )
        out: dict[str, dict[float, tuple[float, float]]] = {}
        for asset_id, start, imported, exported in rows:
            out.setdefault(str(asset_id), {})[float(start)] = (float(imported), float(exported))
        return out

    # -- audit trail ------------------------------------------------------------------------------------------
    def append_audit(self, entries: list[tuple[str, str, dict[str, Any]]]) -> Head | None:
        """Append (at, kind, data) entries to the chain in one transaction and return the new head (None when
        nothing was ever written). Blocking: the audit trail calls it from a worker thread, once per batch."""
        if not entries:
            return self.audit_head()
        return self._run("append audit rows", lambda db: _append_audit(db, entries), transaction=True)

    def audit_head(self) -> Head | None:
        """The newest audit row's (n, hash, at), None when there is none."""
        row = self._run("read audit head", lambda db: db.execute(
            "SELECT n, hash, at FROM audit ORDER BY n DESC LIMIT 1").fetchone())  # fmt: skip
        return Head(int(row[0]), str(row[1]), str(row[2])) if row else None

    def audit_rows(self, last: int | None = None) -> list[Row]:
        """Every kept audit row oldest first, or the `last` N (for tests and small tools; `audit verify` streams)."""
        return self._run("read audit rows", lambda db: list(read_audit(db, last)))

    def prune_audit(self, before_at: str, at: str | None = None) -> int:
        """Delete the oldest audit rows up to the last one written before `before_at` (a chain timestamp), always
        as a prefix (a clock that once jumped back cannot punch a hole) and never the newest row, and record it in
        the same transaction as a `pruned` row (at `at`, default now, never before the newest row): without that
        record `audit verify` takes a chain that does not start at row 1 for rows deleted from its start. Returns
        the count of rows deleted."""

        def work(db: sqlite3.Connection) -> int:
            newest = db.execute("SELECT n, at FROM audit ORDER BY n DESC LIMIT 1").fetchone()
            if newest is None:
                return 0
            cut = db.execute("SELECT max(n) FROM audit WHERE at < ? AND n < ?", (before_at, newest[0])).fetchone()[0]
            if cut is None:
                return 0
            first_n, anchor = db.execute("SELECT n, prev_hash FROM audit ORDER BY n LIMIT 1").fetchone()
            (last_hash,) = db.execute("SELECT hash FROM audit WHERE n = ?", (cut,)).fetchone()
            since_n = _pruned_since(db, int(first_n), str(anchor))
            removed = db.execute("DELETE FROM audit WHERE n <= ?", (cut,)).rowcount
            record = Prune(0, "", since_n, int(first_n), int(cut), str(last_hash), before_at)
            _append_audit(db, [(max(at or timestamp(datetime.now(UTC)), str(newest[1])), PRUNED, record.data())])
            return int(removed)

        return self._run("prune audit", work, transaction=True)

    # -- retention ------------------------------------------------------------------------------------------
    def prune(self, signals_before_ts: float, events_before_ts: float) -> dict[str, int]:
        """Delete signals that ended before `signals_before_ts` and finished events (with their samples) that ended
        before `events_before_ts`; returns the rows removed per table."""
        finished = ("completed", "rejected", "failed")

        def work(db: sqlite3.Connection) -> dict[str, int]:
            signals = db.execute("DELETE FROM signals WHERE ends_ts IS NOT NULL AND ends_ts < ?", (signals_before_ts,))
            marks = ", ".join("?" * len(finished))
            old = [r[0] for r in db.execute(
                f"SELECT id FROM events WHERE state IN ({marks}) AND ends_ts IS NOT NULL AND ends_ts < ?",
                (*finished, events_before_ts),
            )]  # fmt: skip
            for event_id in old:
                db.execute("DELETE FROM event_series WHERE event_id = ?", (event_id,))
                db.execute("DELETE FROM activations WHERE award_id = ?", (event_id,))
                db.execute("DELETE FROM events WHERE id = ?", (event_id,))
            return {"signals": signals.rowcount, "events": len(old)}

        return self._run("prune", work, transaction=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class StoredMemory:
    """agent.ports.DriverMemory on the Store: read once at start (keys older than `keep_s` forgotten), changes
    written in the background (`flush_soon` after a control cycle, at most every `flush_every_s`) and at shutdown
    (`flush`), so a driver's `put` never waits on the disk. A failed write keeps the changes for the next one."""

    def __init__(self, store: Store, now: Callable[[], datetime], keep_s: float = 7 * 86400.0,
                 flush_every_s: float = 2.0) -> None:
        self.store = store
        self.now = now
        self.flush_every_s = flush_every_s
        self._values = store.load_driver_memory(now().timestamp() - keep_s)
        self._dirty: set[str] = set()
        self._dropped: set[str] = set()
        self._lock = asyncio.Lock()
        self._next_flush = 0.0
        self._task: asyncio.Task[None] | None = None
        self.writes = 0

    def get(self, key: str) -> dict[str, Any] | None:
        return self._values.get(key)

    def put(self, key: str, value: Any) -> None:
        self._values[key] = dict(value)
        self._dirty.add(key)
        self._dropped.discard(key)

    def drop(self, key: str) -> None:
        if self._values.pop(key, None) is not None or key in self._dirty:
            self._dropped.add(key)
        self._dirty.discard(key)

    def flush_soon(self, monotonic_s: float) -> None:
        """Start a background write of the changes when there are some and the last started `flush_every_s` ago."""
        if (self._dirty or self._dropped) and monotonic_s >= self._next_flush and (
                self._task is None or self._task.done()):
            self._next_flush = monotonic_s + self.flush_every_s
            self._task = asyncio.get_running_loop().create_task(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        """A background write; a failure keeps the changes for the next one."""
        try:
            await self.flush()
        except StoreError:
            pass  # in the agent's health already (`store.last_error`)
        except (TypeError, ValueError) as exc:  # a driver's bug: say so, the other keys wait with it
            structlog.get_logger("agent.store").error("memory.not_json", error=str(exc)[:200])

    async def flush(self) -> None:
        """Write the changes now. Encoded in the worker thread too (a few hundred EVSEs' logs take ~1 ms each): a
        value is never changed after `put` (drivers put fresh values, `put` copies the top level)."""
        async with self._lock:
            if not (self._dirty or self._dropped):
                return
            at = self.now().timestamp()
            values = [(k, self._values[k]) for k in sorted(self._dirty)]
            drops = sorted(self._dropped)
            self._dirty, self._dropped = set(), set()

            def write() -> None:
                puts = [(k, at, json.dumps(v, separators=(",", ":"))) for k, v in values]
                self.store.save_driver_memory(puts, drops)

            try:
                await asyncio.to_thread(write)
            except (StoreError, TypeError, ValueError):  # TypeError / ValueError: a value that is not JSON-able
                self._dirty |= {k for k, _ in values if k in self._values}
                self._dropped |= {k for k in drops if k not in self._values}
                raise
            self.writes += 1


def _append_audit(db: sqlite3.Connection, entries: list[tuple[str, str, dict[str, Any]]]) -> Head:
    """Chain (at, kind, data) entries onto the newest row, inside the caller's transaction."""
    last = db.execute("SELECT n, hash, at FROM audit ORDER BY n DESC LIMIT 1").fetchone()
    n, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS)
    rows, at = [], ""
    for at, kind, data in entries:
        n += 1
        try:
            text = encode_data(data)
        except NotCanonical as exc:  # a bug in what was recorded: keep the row's place and say why
            kind, data = "unrecordable", {"kind": kind, "error": str(exc)[:300]}
            text = encode_data(data)
        digest = row_hash(prev, n, at, kind, data)
        rows.append((n, at, kind, text, prev, digest))
        prev = digest
    db.executemany("INSERT INTO audit (n, at, kind, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)", rows)
    return Head(n, prev, at)


def _pruned_since(db: sqlite3.Connection, first_n: int, anchor: str) -> int:
    """Where the rows gone before `first_n` start being accounted for: 1 when the chain starts at the genesis or
    the newest `pruned` row explains its anchor (from there, as that row says); else only from `first_n` (rows
    deleted without a record are not vouched for by a later prune)."""
    if first_n == 1 and anchor == GENESIS:
        return 1
    row = db.execute("SELECT n, at, data FROM audit WHERE kind = ? ORDER BY n DESC LIMIT 1", (PRUNED,)).fetchone()
    if row is not None:
        try:
            prune = Prune.from_data(int(row[0]), str(row[1]), json.loads(row[2]))
        except ValueError:
            return first_n
        if prune.last_n == first_n - 1 and prune.last_hash == anchor:
            return prune.since_n
    return first_n


def read_audit(db: sqlite3.Connection, last: int | None = None) -> Iterator[Row]:
    """Audit rows oldest first from any connection (the agent's, or `audit verify`'s read-only one), streamed."""
    if last is None:
        cursor = db.execute("SELECT n, at, kind, data, prev_hash, hash FROM audit ORDER BY n")
    else:
        cursor = db.execute(
            "SELECT * FROM (SELECT n, at, kind, data, prev_hash, hash FROM audit ORDER BY n DESC LIMIT ?) ORDER BY n",
            (last,),
        )
    for n, at, kind, data, prev_hash, digest in cursor:
        yield Row(int(n), str(at), str(kind), str(data), str(prev_hash), str(digest))


def _save_sequence(db: sqlite3.Connection, sequence: SequenceRow) -> None:
    """Take a sequence number; those at or below its floor have left the window and go, so the table stays bounded
    by the window (agent/trust/replay.py)."""
    db.execute(
        "INSERT OR REPLACE INTO trust_sequences (kid, seq, digest) VALUES (?, ?, ?)",
        (sequence.kid, sequence.seq, sequence.digest),
    )
    db.execute("DELETE FROM trust_sequences WHERE kid = ? AND seq <= ?", (sequence.kid, sequence.floor))


def _canonical(payload: object) -> str:
    """One text per content: a re-sent signal compares equal whatever its key order or spacing."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def _forget_wear(db: sqlite3.Connection, before_ts: float) -> None:
    """The wear book's retention: settled periods that ended by `before_ts` (the caller passes now − the book's
    window: they no longer count), and a pack's header not written since then with its periods (an asset removed
    from the config, or no longer opportunity-priced)."""
    db.execute("DELETE FROM wear_settlements WHERE end_ts <= ?", (before_ts,))
    db.execute("DELETE FROM wear_packs WHERE updated_ts < ?", (before_ts,))
    db.execute("DELETE FROM wear_settlements WHERE asset_id NOT IN (SELECT asset_id FROM wear_packs)")


def _merge_asset_intervals(db: sqlite3.Connection, rows: list[AssetEnergy], keep_days: float) -> None:
    db.executemany(
        "INSERT INTO asset_intervals (asset_id, source, start_ts, import_wh, export_wh) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (asset_id, source, start_ts) DO UPDATE SET import_wh = excluded.import_wh, "
        "export_wh = excluded.export_wh",
        rows,
    )
    cutoff = max(r.start_ts for r in rows) - keep_days * 86400
    db.execute("DELETE FROM asset_intervals WHERE start_ts < ?", (cutoff,))


def _merge_intervals(db: sqlite3.Connection, intervals: list[Interval], keep_days: float) -> None:
    # a restart can re-close an interval already stored: merge by coverage rather than lose either part
    for item in intervals:
        query = "SELECT mean_w, covered_s FROM meter_intervals WHERE start_ts = ?"
        row = db.execute(query, (item.start_ts,)).fetchone()
        mean, covered = item.mean_w, item.covered_s
        if row is not None:
            covered = row[1] + item.covered_s
            mean = (row[0] * row[1] + item.mean_w * item.covered_s) / covered
        db.execute(
            "INSERT OR REPLACE INTO meter_intervals (start_ts, mean_w, covered_s) VALUES (?, ?, ?)",
            (item.start_ts, mean, covered),
        )
    cutoff = max(i.start_ts for i in intervals) - keep_days * 86400
    db.execute("DELETE FROM meter_intervals WHERE start_ts < ?", (cutoff,))
