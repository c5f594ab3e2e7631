"""The audit chain: the one definition of a row's canonical bytes and hash, and how a chain and kept heads are checked.

A row is (n, at, kind, data):
  n     row number: 1, 2, 3, ... never reused (pruning removes the oldest rows; numbering goes on)
  at    the agent's UTC time of the entry, "YYYY-MM-DDTHH:MM:SS.mmmZ" (so text order is time order)
  kind  what the row records (docs/audit.md lists the kinds and their fields)
  data  a JSON object of strings, integers, booleans, null, lists and objects, never a float: a fractional quantity
        is a decimal string, so any JSON library writes the same bytes for it and a reader in another language can
        recompute the hash
Canonical bytes of a row: the JSON array [n, at, kind, data] with object keys sorted, no whitespace (separators ","
and ":"), every non-ASCII character escaped as \\uXXXX, as ASCII; in Python
    json.dumps([n, at, kind, data], sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
Hash of a row: SHA-256 over the previous row's hash (its 32 raw bytes) followed by the row's canonical bytes, written as
64 lowercase hex digits. The first row ever chains to GENESIS (64 zeros). The `data` column holds exactly the
canonical JSON of the row's data (`encode_data`): any other text for the same data (spacing, key order, a duplicate
key that a JSON reader resolves one way and another reader the other) is an edit.

Pruning keeps a suffix of the chain and says so in the chain: every prune appends a `pruned` row with the range it
removed, the hash of the last removed row and its cutoff. The oldest kept row's prev_hash is the anchor; a chain that
does not start at row 1 on GENESIS is whole only when a `pruned` row explains its anchor (its last_hash is the anchor,
its range ends right before the oldest kept row), and a kept head older than the anchor is excused only by a `pruned`
row whose range covers it and that a later signed head vouches for (or, not yet vouched for, only for a head signed
at least the retention period before the newest matching head). Anything else is rows deleted from the start.

This module is the only place that encodes or hashes a row: the Store uses it to append, `audit verify` to check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

GENESIS = "0" * 64
PRUNED = "pruned"  # the kind of the row a prune appends (docs/audit.md)
MIN_KEEP_DAYS = 1.0  # the least [trust] audit_keep_days allows: what a reader without the config assumes
HEAD_EVERY_S = 300.0  # [trust] audit_head_every_s by default: how late the head vouching for a prune may come
AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class NotCanonical(ValueError):
    """Row data without a canonical form (a float, a non-string key): a bug when written, an edit when read."""


def timestamp(moment: datetime) -> str:
    """The `at` of a row: UTC, milliseconds, "Z"."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _check(value: Any, path: str = "data") -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonical(f"{path}: key {key!r} is not a string")
            _check(item, f"{path}.{key}")
        return
    raise NotCanonical(f"{path}: {type(value).__name__} has no canonical form (fractions are decimal strings)")


def _canonical_json(value: Any) -> str:
    """The one canonical JSON text: keys sorted, no whitespace, non-ASCII escaped."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def encode_data(data: dict[str, Any]) -> str:
    """The `data` column: the canonical JSON of the row's data (NotCanonical if it has none); `check_rows` requires
    the stored text to be exactly this."""
    _check(data)
    return _canonical_json(data)


def canonical(n: int, at: str, kind: str, data: dict[str, Any]) -> bytes:
    """The bytes a row's hash covers (see the module docstring)."""
    _check(data)
    return _canonical_json([n, at, kind, data]).encode("ascii")


def row_hash(prev_hash: str, n: int, at: str, kind: str, data: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(n, at, kind, data)).hexdigest()


def parse_at(at: str) -> datetime | None:
    """A row's or head's `at` as a time, None when it is not one."""
    try:
        return datetime.strptime(at, AT_FORMAT).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def decimal(value: float, places: int = 3) -> str:
    """A fractional quantity as row data: a decimal string, fixed places, no exponent ("-0" becomes "0")."""
    text = f"{value:.{places}f}"
    return "0" if float(text) == 0 else text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class Row:
    """One stored row as read back: `data` is the stored text, parsed only when checked or shown."""

    n: int
    at: str
    kind: str
    data: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Head:
    """The chain's newest row: its number, hash and time; what the agent signs and publishes."""

    n: int
    hash: str
    at: str

    def body(self) -> bytes:
        return json.dumps({"n": self.n, "hash": self.hash, "at": self.at}, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: object) -> Head:
        """A head from a sealed message's body; ValueError when it is not one."""
        if not isinstance(body, dict):
            raise ValueError("an audit head is a JSON object")
        n, digest, at = body.get("n"), body.get("hash"), body.get("at")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError("an audit head's n is a row number")
        if not isinstance(digest, str) or len(digest) != 64:
            raise ValueError("an audit head's hash is 64 hex digits")
        if not isinstance(at, str):
            raise ValueError("an audit head's at is a time")
        return cls(n, digest.lower(), at)


@dataclass(frozen=True)
class Prune:
    """A `pruned` row: rows first_n..last_n were deleted (those written before `before`), the last of them had hash
    last_hash; since_n..first_n - 1 had gone in earlier prunes that the agent found recorded (1: the chain since the
    genesis is accounted for). `n` and `at` are the `pruned` row's own."""

    n: int
    at: str
    since_n: int
    first_n: int
    last_n: int
    last_hash: str
    before: str

    def data(self) -> dict[str, Any]:
        return {"since_n": self.since_n, "first_n": self.first_n, "last_n": self.last_n, "last_hash": self.last_hash,
                "before": self.before, "rows": self.last_n - self.first_n + 1}  # fmt: skip

    @classmethod
    def from_data(cls, n: int, at: str, data: object) -> Prune:
        """The record in a `pruned` row's data; ValueError when it is not a consistent one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        numbers = [data.get(k) for k in ("since_n", "first_n", "last_n")]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers):
            raise ValueError("since_n, first_n and last_n are row numbers")
        since_n, first_n, last_n = numbers
        if not 1 <= since_n <= first_n <= last_n < n:
            raise ValueError(f"range {since_n}/{first_n}..{last_n} is not before row {n}")
        last_hash, before = data.get("last_hash"), data.get("before")
        if not isinstance(last_hash, str) or len(last_hash) != 64 or not isinstance(before, str):
            raise ValueError("last_hash is 64 hex digits, before a time")
        return cls(n, at, since_n, first_n, last_n, last_hash, before)


@dataclass
class ChainCheck:
    """What a pass over the kept rows found: the span, the anchor, the first break, and the hashes heads ask for."""

    rows: int = 0
    first_n: int | None = None
    last_n: int | None = None
    anchor: str | None = None  # prev_hash of the oldest kept row
    last_hash: str | None = None
    broken_n: int | None = None
    broken: str | None = None
    hashes: dict[int, str] = field(default_factory=dict)  # n -> stored hash, for the wanted rows up to the break
    prunes: list[Prune] = field(default_factory=list)  # the `pruned` rows up to the break, oldest first
    explained_by: Prune | None = None  # the `pruned` row that explains a kept chain not starting at the genesis
    start_missing: bool = False  # broken only at its start (rows deleted, unrecorded): every kept row still checked


def check_rows(rows: Iterable[Row], wanted: set[int] | None = None) -> ChainCheck:
    """Recompute the chain from its anchor, row by row (memory does not grow with the chain); stop at the first
    broken row. `wanted`: row numbers whose hashes heads will be compared with."""
    result = ChainCheck()
    wanted = wanted or set()
    prev_n: int | None = None
    prev_hash = ""
    for row in rows:
        if prev_n is None:
            result.first_n, result.anchor, prev_hash = row.n, row.prev_hash, row.prev_hash
        elif row.n != prev_n + 1:
            result.broken_n, result.broken = prev_n + 1, f"row {prev_n + 1} is missing (the next kept row is {row.n})"
            return result
        if row.prev_hash != prev_hash:
            result.broken_n, result.broken = row.n, f"row {row.n}: prev_hash is not the hash of row {row.n - 1}"
            return result
        try:
            data = json.loads(row.data)
            if not isinstance(data, dict):
                raise NotCanonical("data is not a JSON object")
            expected = row_hash(prev_hash, row.n, row.at, row.kind, data)
            stored_as_hashed = row.data == encode_data(data)
        except (ValueError, RecursionError) as exc:  # NotCanonical is a ValueError, as is bad JSON or bad hex
            result.broken_n, result.broken = row.n, f"row {row.n}: data cannot be checked ({exc})"
            return result
        if expected != row.hash:
            result.broken_n, result.broken = row.n, f"row {row.n}: hash does not match its content"
            return result
        if not stored_as_hashed:  # e.g. a duplicate key: the hash covers the last value, SQLite and `show` the first
            result.broken_n, result.broken = row.n, f"row {row.n}: data is not stored as the canonical text it hashes"
            return result
        if row.kind == PRUNED:
            try:
                result.prunes.append(Prune.from_data(row.n, row.at, data))
            except ValueError as exc:
                result.broken_n, result.broken = row.n, f"row {row.n}: not a valid prune record ({exc})"
                return result
        if row.n in wanted:
            result.hashes[row.n] = row.hash
        result.rows += 1
        result.last_n, result.last_hash, prev_n, prev_hash = row.n, row.hash, row.n, row.hash
    _check_start(result)
    return result


def _check_start(result: ChainCheck) -> None:
    """A whole chain starts at row 1 on the genesis, or on an anchor a `pruned` row explains."""
    first, anchor = result.first_n, result.anchor
    if first is None:
        return
    if first == 1:
        if anchor != GENESIS:
            result.broken_n, result.broken = 1, "row 1: prev_hash is not the genesis (64 zeros)"
        return
    for prune in reversed(result.prunes):
        if prune.last_n == first - 1 and prune.last_hash == anchor:
            result.explained_by = prune
            return
    result.broken_n, result.start_missing = first, True
    result.broken = (f"rows before {first} are gone and no `pruned` row records their removal (none has last_n "
                     f"{first - 1} and last_hash {anchor}): rows were deleted from the start of the chain")  # fmt: skip


def check_head(
    chain: ChainCheck,
    head: Head,
    newest: Head | None = None,
    keep_days: float = MIN_KEEP_DAYS,
    head_every_s: float = HEAD_EVERY_S,
) -> tuple[str, str]:
    """("ok" | "mismatch" | "unchecked", why) for one kept head against a chain pass that wanted its row. `newest`:
    the newest kept head that matches ("ok"): a `pruned` row at or before it is vouched for by the agent's key;
    `keep_days`, `head_every_s`: the retention and head interval in force (the config's, else the least retention
    allowed and the default interval)."""
    if chain.first_n is None:
        return "mismatch", f"head row {head.n}: the state file has no audit rows"
    if head.n == chain.first_n - 1:  # the anchor is that row's hash
        if head.hash == chain.anchor:
            return "ok", f"head row {head.n} is the anchor of the kept chain"
        return "mismatch", f"head row {head.n}: the anchor differs from the signed head"
    if head.n < chain.first_n - 1:
        return _check_pruned(chain, head, newest, keep_days, head_every_s)
    if chain.broken_n is not None and not chain.start_missing and head.n >= chain.broken_n:
        return "unchecked", f"head row {head.n} lies past the broken row {chain.broken_n}"
    assert chain.last_n is not None
    if head.n > chain.last_n:
        return "mismatch", (f"head row {head.n} was signed, the state file ends at row {chain.last_n}: "
                            "rows were removed from its end")  # fmt: skip
    if chain.hashes.get(head.n) != head.hash:
        return "mismatch", f"head row {head.n}: the stored hash differs from the signed head (the chain was rewritten)"
    return "ok", f"head row {head.n} matches"


def _check_pruned(
    chain: ChainCheck, head: Head, newest: Head | None, keep_days: float, head_every_s: float
) -> tuple[str, str]:
    """A head older than the anchor: its row is gone, which only a recorded prune excuses. A `pruned` row after the
    newest matching head is not vouched for (anyone who can write the file can append one); it excuses only a head
    signed at least `keep_days` before the newest matching head (less the head interval: a real prune comes at most
    that long after the head before it), as a real prune's cutoff does."""
    assert chain.first_n is not None
    covering = [p for p in chain.prunes if p.since_n <= head.n <= p.last_n]
    if not covering:
        return "mismatch", (f"head row {head.n} is older than the anchor (row {chain.first_n - 1}) and no `pruned` "
                            "row records its removal: rows were deleted from the start of the chain")  # fmt: skip
    vouched = [p for p in covering if newest is not None and p.n <= newest.n]
    if vouched:
        p = vouched[-1]
        return "unchecked", f"head row {head.n} was pruned (row {p.n} records rows {p.since_n}..{p.last_n} removed)"
    p = covering[-1]
    signed, latest = parse_at(head.at), parse_at(newest.at) if newest is not None else None
    cutoff = latest - timedelta(days=keep_days) + timedelta(seconds=head_every_s) if latest is not None else None
    if signed is not None and cutoff is not None and signed <= cutoff:
        return "unchecked", (f"head row {head.n} was pruned (row {p.n}, not yet under a signed head, records rows "
                             f"{p.since_n}..{p.last_n} removed; the head is older than the {keep_days:g}-day "
                             "retention)")  # fmt: skip
    return "mismatch", (f"head row {head.n}: only row {p.n}, which no matching signed head covers, records its "
                        f"removal, and it was signed less than {keep_days:g} day(s) before the newest matching head: "
                        "rows deleted from the start, passed off as a prune (or a prune the reader has no later head "
                        "for yet: verify again with newer heads)")  # fmt: skip


def check_heads(
    chain: ChainCheck, heads: Iterable[Head], keep_days: float = MIN_KEEP_DAYS, head_every_s: float = HEAD_EVERY_S
) -> list[tuple[Head, str, str]]:
    """Every kept head's verdict (check_head), with the newest matching head vouching for the `pruned` rows."""
    heads = sorted(heads, key=lambda h: h.n)
    newest = None
    for head in heads:
        if chain.first_n is not None and head.n >= chain.first_n - 1 and check_head(chain, head)[0] == "ok":
            newest = head
    return [(head, *check_head(chain, head, newest, keep_days, head_every_s)) for head in heads]
