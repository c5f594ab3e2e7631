"""What `vpp-agent keys` and `vpp-agent sign` do, so a market desk or a test rig can send commands the site takes.

A sender's sequence numbers must only go up per key (agent/trust/replay.py): `sign` keeps the next one in a counter
file beside the key (`<key>.seq`), locked while it is read and advanced, so two `sign` runs with one key never hand
out the same number.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config import TrustedKey, TrustSettings, format_validation_error
from agent.signals.models import SIGNAL_TYPES
from agent.trust.commands import sign_command
from agent.trust.keys import KeyFileError, Signer, new_private_key, public_key_text, write_private_key


class SignInputError(ValueError):
    """A line `sign` cannot turn into a command; the message names the line."""


def new_key(out_dir: Path, kid: str, kinds: list[str], issuer: str) -> tuple[Path, str]:
    """Write `<out_dir>/<kid>.pem` (mode 600, never over an existing file); returns its path and the `[[trust.keys]]`
    entry a site adds to trust it (only its public key when it may send no kind)."""
    key = new_private_key()
    # the rules of the config the entry goes into (agent/config.py), checked before any file is written
    try:
        if kinds:
            TrustedKey(kid=kid, public_key=public_key_text(key), kinds=kinds, issuer=issuer)
        else:
            TrustSettings(agent_kid=kid, agent_key_file=str(out_dir / f"{kid}.pem"))
    except ValidationError as exc:
        raise KeyFileError(format_validation_error("key", exc)) from None
    path = out_dir / f"{kid}.pem"
    try:
        write_private_key(path, key)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; a key is never overwritten (pick another --kid or --out)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write: {exc.strerror}") from exc
    public = f"public_key = {json.dumps(public_key_text(key))}"
    if not kinds:  # the agent's own key, or one a reader is given: no rights to send anything
        return path, public
    entry = "\n".join([
        "[[trust.keys]]", f"kid = {json.dumps(kid)}", public, f"kinds = {json.dumps(kinds)}",
        f"issuer = {json.dumps(issuer)}",
    ])  # fmt: skip
    return path, entry


def next_sequences(key_path: Path, count: int) -> range:
    """`count` fresh sequence numbers for the key at `key_path` from its counter file (created at 1)."""
    counter = key_path.with_name(key_path.name + ".seq")
    fd = os.open(counter, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+", encoding="ascii") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read().strip()
        try:
            first = int(text) if text else 1
        except ValueError:
            raise KeyFileError(f"{counter}: not a sequence number ({text[:20]!r})") from None
        f.seek(0)
        f.truncate()
        f.write(f"{first + count}\n")
        f.flush()
        os.fsync(f.fileno())
    return range(first, first + count)


def read_entries(lines: Iterable[str], kind: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, signal) per input line: `{"kind": ..., "payload": {...}}` lines as `run --signals` reads them, or,
    with `kind` given, one bare signal object per line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise SignInputError(f"line {number}: not JSON ({exc})") from None
        if kind is not None:
            signal, entry_kind = entry, kind
        elif isinstance(entry, dict) and isinstance(entry.get("payload"), dict) and "kind" in entry:
            signal, entry_kind = entry["payload"], entry["kind"]
        else:
            raise SignInputError(f'line {number}: expected {{"kind": ..., "payload": {{...}}}} (or give --kind)')
        if entry_kind not in SIGNAL_TYPES:
            raise SignInputError(f"line {number}: unknown kind {entry_kind!r}; known: {', '.join(SIGNAL_TYPES)}")
        if not isinstance(signal, dict):
            raise SignInputError(f"line {number}: a signal is a JSON object")
        yield entry_kind, signal


def sign_entries(
    entries: list[tuple[str, dict[str, Any]]], signer: Signer, key_path: Path, site: str, ttl_s: float,
    iat: float | None = None,
) -> list[tuple[str, str]]:  # fmt: skip
    """(kind, signed command) for each entry, numbered from the key's counter."""
    issued = time.time() if iat is None else iat
    sequences = next_sequences(key_path, len(entries))
    return [
        (kind, sign_command(signer, site, kind, signal, issued, ttl_s, seq))
        for (kind, signal), seq in zip(entries, sequences, strict=True)
    ]
