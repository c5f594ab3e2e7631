"""Signal ingestion: validate, admit, store, acknowledge; reject with a reason; never touch a setpoint on bad input.

Every message on `{prefix}/signals/<anything>` gets exactly one acknowledgement on `{prefix}/ack` (unknown kinds
included; the ack lives outside `signals/` so the agent's subscription to every signal topic does not hear its own
acks), in this order:
  0. the command gate (agent/trust/gate.py): signed by a key the site trusts for this kind, for this site, fresh and
     not replayed, or unsigned where `[trust]` allows it; a token taken before is a `duplicate`;
  1. parse strictly (agent/signals/models.py) — a bad payload is refused with a bounded reason naming the key;
  2. a stored id: the same content again is a `duplicate` (a broker redelivery), other content under a used id is
     refused (ids are never reused);
  3. sane now (agent/signals/sanity.py): not from the future, not over, not too far ahead;
  4. room: at most `[signals] max_pending` signals of a kind that have not ended;
  5. admitted by every admission check (the event manager: capability, award known, activation fresh and in order);
  6. stored (activations: the one in force per award) and its command's sequence number recorded *before* the ack,
     then acted on, then acknowledged.
Each outcome goes to the audit trail (agent/audit/trail.py) before its ack is published: an accepted command's row,
or a refusal counted per reason (a bounded sample of them kept), so a flood adds rows per reason, not per message.
Nothing is handled before the agent is ready (`ready`: the fleet has been polled and the clock is sane): the broker
keeps unacknowledged QoS 1 messages meanwhile. A Store failure (a full disk) refuses the signal with the reason rather
than acknowledging what it could not keep. The signal book holds what has not ended; ended signals are forgotten here
and pruned from the Store `[signals] keep_days` later, so nothing grows with history.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog
from pydantic import ValidationError

from agent.audit.trail import AuditTrail
from agent.config import SignalSettings
from agent.logs import Throttle
from agent.ports import Bus
from agent.signals.models import (
    SIGNAL_TYPES,
    Ack,
    AsActivation,
    SignalModel,
    SignalRejected,
    bounded,
    now_utc,
    parse_signal,
    shown,
)
from agent.signals.sanity import time_problem
from agent.store import SequenceRow, Store, StoreError
from agent.trust.commands import Command, Refusal, claimed_signal_id
from agent.trust.gate import CommandGate, Opened

log = structlog.get_logger("agent.signals")

# Activations arrive every 2-4 s and frequency readings every second, for hours: storing or logging each would grow
# the disk and the log without bound. An activation's latest value per award is kept (a restart resumes it).
TRANSIENT_KINDS = frozenset({"as_activation", "frequency"})
# kinds where only the newest signal matters: the book keeps one
LATEST_ONLY_KINDS = frozenset({"site_target"})

Admission = Callable[[str, SignalModel, datetime], str | None]
# (kind, signal, expires): `expires` is the signed command's `exp` (unix s), None for an unsigned signal
Consumer = Callable[[str, SignalModel, float | None], Awaitable[None] | None]


class SignalIngest:
    """Subscribes to `{prefix}/signals/+` and answers on `{prefix}/ack`.

    Also the entry for signals from a file or the command line (`receive`), with the same checks and storage.
    """

    def __init__(
        self,
        bus: Bus | None,
        prefix: str,
        store: Store,
        max_payload_bytes: int,
        clock: Callable[[], datetime] = now_utc,
        settings: SignalSettings | None = None,
        gate: CommandGate | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.bus = bus
        self.prefix = prefix
        self.store = store
        self.max_payload_bytes = max_payload_bytes
        self.clock = clock
        self.settings = settings or SignalSettings()
        self.gate = gate  # None: every signal is taken unsigned (tests of parsing and admission only)
        self.audit = audit  # None: nothing is audited (tests of parsing and admission only)
        self.counts: Counter[str] = Counter()
        self.admission: list[Admission] = []  # checks that may refuse a valid signal (the event manager's)
        self.on_accepted: list[Consumer] = []  # consumers of new signals, awaited before the ack
        self.ready = asyncio.Event()  # set by the app: the fleet has been polled and the clock is sane
        self.book: dict[str, dict[str, SignalModel]] = {kind: {} for kind in SIGNAL_TYPES}
        self._last_transient: dict[str, tuple[str, str]] = {}  # kind -> (id, JSON) of the last one taken
        self._issued: dict[str, float | None] = {}  # latest-only kind -> when its signal in force was issued
        self._throttle = Throttle()
        self._load()
        if bus is not None:  # without a broker, signals come from a file or the CLI through receive()
            # retained messages are replays of old state on every (re)subscribe, never a fresh command
            bus.subscribe(f"{self.prefix}/signals/+", self._handle, qos=1, retained=False)

    def _load(self) -> None:
        """The book from the Store: signals that have not ended. One that no longer validates (stored by an older
        release with looser rules) is dropped with a log line, never retried at every start."""
        for kind, signal_id, text in self.store.load(live_after_ts=self.clock().timestamp()):
            model = SIGNAL_TYPES.get(kind)
            try:
                if model is None:
                    raise ValueError(f"unknown kind {kind!r}")
                signal = model.model_validate_json(text, strict=True)
            except (ValidationError, ValueError) as exc:
                log.error("signal.dropped_on_load", kind=kind, signal_id=signal_id, error=bounded(str(exc)))
                self.store.drop_signal(kind, signal_id)
                continue
            if kind in LATEST_ONLY_KINDS:
                self.book[kind].clear()
            self.book[kind][signal_id] = signal
        for kind in LATEST_ONLY_KINDS:
            self._issued[kind] = self.store.latest_issued(kind)

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/signals/{kind}"

    @property
    def ack_topic(self) -> str:
        return f"{self.prefix}/ack"

    async def _handle(self, topic: str, payload: bytes) -> None:
        await self.receive(topic.rsplit("/", 1)[-1], payload)

    async def receive(self, kind: str, payload: bytes) -> Ack:
        await self.ready.wait()
        received_at = self.clock()
        signal_id: str | None = None
        refusal = "invalid"  # the audit's reason code when the signal is rejected
        try:
            if kind not in SIGNAL_TYPES:
                raise SignalRejected(f"unknown signal kind {shown(kind)}; known: {', '.join(SIGNAL_TYPES)}")
            if len(payload) > self.max_payload_bytes:  # before any work: a signed token is checked at this size too
                raise SignalRejected(f"payload of {len(payload)} bytes exceeds the limit of {self.max_payload_bytes}")
            opened = self.gate.open(kind, payload, received_at) if self.gate is not None else Opened(payload)
            signal = parse_signal(kind, opened.signal)
            signal_id = signal.id
            if opened.redelivered:
                status = "duplicate"
            else:
                status = await self._take(kind, signal, received_at, opened)
        except Refusal as exc:
            status, refusal = "rejected", exc.code
            reason = f"refused ({exc.code}): {exc}"
            signal_id = claimed_signal_id(payload)  # unverified: only so the sender can match the refusal
            self._count_rejection(kind, signal_id, reason)
            ack = Ack(kind=_kind(kind), signal_id=signal_id, status="rejected", reason=bounded(reason),
                      received_at=received_at)  # fmt: skip
        except SignalRejected as exc:
            status = "rejected"
            self._count_rejection(kind, exc.signal_id or signal_id, str(exc))
            ack = Ack(kind=_kind(kind), signal_id=exc.signal_id or signal_id, status="rejected", reason=str(exc),
                      received_at=received_at)  # fmt: skip
        except StoreError as exc:
            status, refusal = "rejected", "not_stored"
            log.error("store.failed", kind=kind, signal_id=signal_id, error=str(exc))
            reason = bounded(f"not stored, so not taken: {exc}")
            self._count_rejection(kind, signal_id, reason)
            ack = Ack(kind=_kind(kind), signal_id=signal_id, status="rejected", reason=reason, received_at=received_at)
        except Exception as exc:  # a check that failed on input nobody foresaw: refuse, answer, keep running
            status, refusal = "rejected", "internal"
            log.exception("signal.check_failed", kind=_kind(kind), signal_id=signal_id, error=bounded(repr(exc), 200))
            reason = bounded(f"could not be checked ({type(exc).__name__}), so not taken")
            self._count_rejection(kind, signal_id, reason)
            ack = Ack(kind=_kind(kind), signal_id=signal_id, status="rejected", reason=reason, received_at=received_at)
        else:
            self.counts[status] += 1
            if kind not in TRANSIENT_KINDS:
                log.info(f"signal.{status}", kind=kind, signal_id=signal_id)
            ack = Ack(kind=kind, signal_id=signal_id, status=status, received_at=received_at)
            if status == "accepted" and self.audit is not None:
                self.audit.accepted(kind, signal, opened.command, payload, received_at)
        if status == "rejected" and self.audit is not None:
            self.audit.refused(refusal, ack.kind, ack.signal_id, ack.reason or "", payload, received_at)
        await self._publish(ack)
        return ack

    async def _take(self, kind: str, signal: SignalModel, now: datetime, opened: Opened | None = None) -> str:
        """"accepted" or "duplicate" for a signal that parsed; raises SignalRejected with the reason otherwise.
        A signed command's sequence number goes to disk in the same transaction as what it carries (and alone for
        a duplicate, so its token is known from then on), before anything acts on it."""
        command = opened.command if opened is not None else None
        sequence = self.gate.sequence(opened) if self.gate is not None and opened is not None else None
        expires = command.expires_ts if command is not None else None
        content = signal.model_dump(mode="json")
        if kind in TRANSIENT_KINDS:
            if self._last_transient.get(kind) == (signal.id, _json(content)):
                return await self._duplicate(sequence)
        else:
            known = await self.store.known(kind, signal.id, content)
            if known == "duplicate":
                return await self._duplicate(sequence)
            if known == "conflict":
                raise SignalRejected(f"id {signal.id!r} already names a different {kind} signal", signal.id)
        problem = time_problem(signal, now, self.settings) or self._room_problem(kind, now)
        problem = problem or self._order_problem(kind, command)
        for check in self.admission:
            problem = problem or check(kind, signal, now)
        if problem:
            raise SignalRejected(problem, signal.id)
        if kind in TRANSIENT_KINDS:
            if isinstance(signal, AsActivation):
                at_ts = signal.at.timestamp()
                await self.store.save_activation(signal.award_id, signal.id, at_ts, signal.value, expires, sequence)
            elif sequence is not None:
                await self.store.save_sequence(sequence)
            self._last_transient[kind] = (signal.id, _json(content))
        else:
            end = signal.ends_at()
            issued = command.issued_ts if command is not None else None
            added = await self.store.add(
                kind, signal.id, now, content, end.timestamp() if end else None, sequence, issued
            )
            if added != "new":  # the same id arrived twice at once: the Store decided
                if added == "conflict":
                    raise SignalRejected(f"id {signal.id!r} already names a different {kind} signal", signal.id)
                return await self._duplicate(sequence)
        if self.gate is not None:
            self.gate.taken(sequence)
        if kind not in TRANSIENT_KINDS:
            if kind in LATEST_ONLY_KINDS:
                self.book[kind].clear()
                self._issued[kind] = command.issued_ts if command is not None else None
            self.book[kind][signal.id] = signal
        for consumer in self.on_accepted:
            result = consumer(kind, signal, expires)
            if inspect.isawaitable(result):
                await result
        return "accepted"

    async def _duplicate(self, sequence: SequenceRow | None) -> str:
        """A signal taken before, under this command or another: its command's number is taken too, nothing acts."""
        if sequence is not None and self.gate is not None:
            await self.store.save_sequence(sequence)
            self.gate.taken(sequence)
        return "duplicate"

    def _order_problem(self, kind: str, command: Command | None) -> str | None:
        """Where only the newest signal counts (a site target), a signed command issued before the one in force
        is stale, however late QoS 1 or a broker delivers it."""
        if kind not in LATEST_ONLY_KINDS or command is None:
            return None
        in_force = self._issued.get(kind)
        if in_force is not None and command.issued_ts < in_force:
            return f"issued {in_force - command.issued_ts:.0f} s before the {kind} in force: stale"
        return None

    def _room_problem(self, kind: str, now: datetime) -> str | None:
        """More than `max_pending` signals of one kind still to come is a flood, not a plan: refuse until some end."""
        if kind in TRANSIENT_KINDS or kind in LATEST_ONLY_KINDS:
            return None
        book = self.book[kind]
        if len(book) < self.settings.max_pending:
            return None
        self.forget_ended(now)
        if len(book) < self.settings.max_pending:
            return None
        return f"{len(book)} {kind} signals have not ended yet (max_pending {self.settings.max_pending})"

    def forget_ended(self, now: datetime) -> int:
        """Drop ended signals from the book (the Store keeps them `keep_days`); returns how many went."""
        gone = 0
        for kind, signals in self.book.items():
            if kind in LATEST_ONLY_KINDS:
                continue
            for signal_id in [i for i, s in signals.items() if (end := s.ends_at()) is not None and end <= now]:
                del signals[signal_id]
                gone += 1
        return gone

    def _count_rejection(self, kind: str, signal_id: str | None, reason: str) -> None:
        self.counts["rejected"] += 1
        allowed, suppressed = self._throttle.allow()
        if suppressed:
            log.warning("signal.rejections_suppressed", count=suppressed, window_s=self._throttle.window_s)
        if allowed:
            log.warning("signal.rejected", kind=_kind(kind), signal_id=signal_id, reason=reason)

    async def _publish(self, ack: Ack) -> None:
        if self.bus is None:
            return
        try:
            await self.bus.publish(self.ack_topic, ack.model_dump_json(), qos=1)
        except Exception as exc:  # the ack is lost, the decision stands (and is in the log)
            log.error("signal.ack_failed", kind=ack.kind, signal_id=ack.signal_id, error=bounded(repr(exc)))


def _kind(kind: str) -> str:
    """A topic level echoed as the ack's kind: bounded and printable, whatever the sender used."""
    return kind if kind in SIGNAL_TYPES else bounded(kind.encode("utf-8", "replace").decode("utf-8"), 64)


def _json(content: object) -> str:
    return json.dumps(content, sort_keys=True, default=str)
