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
64 lowercase hex digits. The first row ever chains to GENESIS (64 zeros). Pruning keeps a suffix of the chain: the
oldest kept row's prev_hash is the anchor, taken as given; a head older than the anchor can no longer be checked.

This module is the only place that encodes or hashes a row: the Store uses it to append, `audit verify` to check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64


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


def encode_data(data: dict[str, Any]) -> str:
    """The `data` column: the canonical JSON of the row's data (NotCanonical if it has none)."""
    _check(data)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical(n: int, at: str, kind: str, data: dict[str, Any]) -> bytes:
    """The bytes a row's hash covers (see the module docstring)."""
    _check(data)
    return json.dumps([n, at, kind, data], sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def row_hash(prev_hash: str, n: int, at: str, kind: str, data: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(n, at, kind, data)).hexdigest()


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
        except (ValueError, RecursionError) as exc:  # NotCanonical is a ValueError, as is bad JSON or bad hex
            result.broken_n, result.broken = row.n, f"row {row.n}: data cannot be checked ({exc})"
            return result
        if expected != row.hash:
            result.broken_n, result.broken = row.n, f"row {row.n}: hash does not match its content"
            return result
        if row.n in wanted:
            result.hashes[row.n] = row.hash
        result.rows += 1
        result.last_n, result.last_hash, prev_n, prev_hash = row.n, row.hash, row.n, row.hash
    return result


def check_head(chain: ChainCheck, head: Head) -> tuple[str, str]:
    """("ok" | "mismatch" | "unchecked", why) for one kept head against a chain pass that wanted its row."""
    if chain.first_n is None:
        return "mismatch", f"head row {head.n}: the state file has no audit rows"
    if head.n == chain.first_n - 1:  # the anchor is that row's hash
        if head.hash == chain.anchor:
            return "ok", f"head row {head.n} is the anchor of the kept chain"
        return "mismatch", f"head row {head.n}: the anchor differs from the signed head"
    if head.n < chain.first_n - 1:
        return "unchecked", f"head row {head.n} is older than the anchor (row {chain.first_n - 1}): pruned"
    if chain.broken_n is not None and head.n >= chain.broken_n:
        return "unchecked", f"head row {head.n} lies past the broken row {chain.broken_n}"
    assert chain.last_n is not None
    if head.n > chain.last_n:
        return "mismatch", (f"head row {head.n} was signed, the state file ends at row {chain.last_n}: "
                            "rows were removed from its end")  # fmt: skip
    if chain.hashes.get(head.n) != head.hash:
        return "mismatch", f"head row {head.n}: the stored hash differs from the signed head (the chain was rewritten)"
    return "ok", f"head row {head.n} matches"
