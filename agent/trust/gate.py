"""The one door a signal passes before ingest parses it: signed by a trusted key, or unsigned where the site allows.

SignalIngest asks `open()` for every message (MQTT and `--signals` files alike, so the rules cannot differ between
them). Once the signal is admitted, its store write carries the command's `sequence()` row in the same transaction,
and `taken()` follows: the sequence number is on disk with the signal before anything acts on it (a replay after a
restart is still refused), and a signal refused as "not stored" leaves neither behind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import structlog

from agent.config import TrustSettings
from agent.store import SequenceRow, Store
from agent.trust.commands import Command, Refusal, TrustedKeys, is_signed
from agent.trust.replay import ReplayGuard, ReplayRefused

log = structlog.get_logger("agent.trust")


@dataclass(frozen=True)
class Opened:
    """What the gate let through: the signal's JSON bytes and, when it was signed, the command it came in."""

    signal: bytes
    command: Command | None = None
    redelivered: bool = False  # this very token was taken before (a broker redelivery): answer `duplicate`


class CommandGate:
    def __init__(self, settings: TrustSettings, required: bool, store: Store, clock_skew_s: float) -> None:
        self.required = required
        self.clock_skew_s = clock_skew_s
        self.keys = TrustedKeys(settings)
        self.replay = ReplayGuard(store, settings.replay_window)
        self.refusals: Counter[str] = Counter()  # per Refusal.code, for stats and metrics

    def reload(self, settings: TrustSettings, required: bool) -> None:
        """New keys, rights and whether signatures are required (SIGHUP), from the next message on. The replay
        state stays: sequence numbers belong to keys, not to a config."""
        self.keys = TrustedKeys(settings)
        self.required = required

    def open(self, kind: str, payload: bytes, now: datetime) -> Opened:
        """The signal inside `payload`; Refusal (counted) when the site does not take it."""
        try:
            return self._open(kind, payload, now)
        except Refusal as exc:
            self.refusals[exc.code] += 1
            raise

    def _open(self, kind: str, payload: bytes, now: datetime) -> Opened:
        if not is_signed(payload):
            if self.required:
                raise Refusal("unsigned", "not signed: this site takes only commands signed by a trusted key")
            return Opened(payload)
        command = self.keys.verify(kind, payload, now, self.clock_skew_s)
        try:
            seen = self.replay.check(command.kid, command.seq, command.digest)
        except ReplayRefused as exc:
            raise Refusal("replay", str(exc)) from exc
        return Opened(command.signal, command, redelivered=seen == "duplicate")

    def sequence(self, opened: Opened) -> SequenceRow | None:
        """The sequence row a signed command's store write must include (None: unsigned, or already taken)."""
        if opened.command is None or opened.redelivered:
            return None
        c = opened.command
        return self.replay.row(c.kid, c.seq, c.digest)

    def taken(self, row: SequenceRow | None) -> None:
        """The row is on disk (with what its command carried): from now on its replay is refused."""
        if row is not None:
            self.replay.taken(row)
