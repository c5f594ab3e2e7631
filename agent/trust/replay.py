"""Replay protection for signed commands: a per-key sequence number with a window, persisted across restarts.

A sender numbers its commands 1, 2, 3, ... per key. QoS 1 may deliver them out of order and more than once, so a
number is accepted once if it is above `highest - window`; the same number with the same bytes again is a broker
redelivery (`duplicate`, not an attack), with other bytes a forgery or a sender bug (refused). What is kept per key
is at most `window` numbers, in memory and in the Store, so nothing grows with the number of commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agent.store import SequenceRow, Store


class ReplayRefused(ValueError):
    """A command whose sequence number was used or left the window; the message is the reason."""


@dataclass
class _KeyWindow:
    highest: int = -1
    seen: dict[int, str] = field(default_factory=dict)  # seq -> digest of the command's bytes


class ReplayGuard:
    def __init__(self, store: Store, window: int) -> None:
        self.store = store
        self.window = window
        self._keys: dict[str, _KeyWindow] = {}
        for kid, seq, digest in store.load_sequences():
            self._remember(kid, seq, digest)

    def check(self, kid: str, seq: int, digest: str) -> Literal["new", "duplicate"]:
        """Whether (kid, seq) is new; ReplayRefused when it was taken with other bytes or is below the window."""
        state = self._keys.get(kid)
        if state is None:
            return "new"
        taken = state.seen.get(seq)
        if taken is not None:
            if taken == digest:
                return "duplicate"
            raise ReplayRefused(f"sequence {seq} of key {kid!r} was already used by another command")
        if seq <= self._floor(state):
            raise ReplayRefused(
                f"sequence {seq} of key {kid!r} is older than the replay window (newest {state.highest}, "
                f"window {self.window})"
            )
        return "new"

    def row(self, kid: str, seq: int, digest: str) -> SequenceRow:
        """What the Store keeps for taking (kid, seq), in the transaction that stores what the command carries."""
        state = self._keys.get(kid) or _KeyWindow()
        return SequenceRow(kid, seq, digest, max(state.highest, seq) - self.window)

    def taken(self, row: SequenceRow) -> None:
        """(kid, seq) is on disk: remember it (memory follows the disk, never leads it)."""
        self._remember(row.kid, row.seq, row.digest)

    def _remember(self, kid: str, seq: int, digest: str) -> None:
        state = self._keys.setdefault(kid, _KeyWindow())
        state.seen[seq] = digest
        if seq > state.highest:
            state.highest = seq
            floor = self._floor(state)
            if len(state.seen) > self.window:
                state.seen = {s: d for s, d in state.seen.items() if s > floor}

    def _floor(self, state: _KeyWindow) -> int:
        return state.highest - self.window
