"""Signal ingestion: validate, store, acknowledge; reject with a reason; never touch a setpoint on bad input."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime

import structlog

from agent.ports import Bus
from agent.signals.models import SIGNAL_TYPES, Ack, SignalModel, SignalRejected, now_utc, parse_signal
from agent.store import Store

log = structlog.get_logger("agent.signals")

# Activations arrive every 2-4 s and frequency readings every second, for hours: storing or logging each would grow
# the disk and the log without bound.
TRANSIENT_KINDS = frozenset({"as_activation", "frequency"})


class SignalIngest:
    """Subscribes to `{prefix}/signals/<kind>` for every kind and answers on `{prefix}/signals/ack`.

    Also the entry for signals from a file or the command line (`receive`), with the same validation and storage.
    """

    def __init__(
        self,
        bus: Bus | None,
        prefix: str,
        store: Store,
        max_payload_bytes: int,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.bus = bus
        self.prefix = prefix
        self.store = store
        self.max_payload_bytes = max_payload_bytes
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.on_accepted: list[Callable[[str, SignalModel], None]] = []  # consumers of new signals
        self.book: dict[str, dict[str, SignalModel]] = {kind: {} for kind in SIGNAL_TYPES}
        for kind, signal_id, payload in store.load():
            if kind in SIGNAL_TYPES:
                self.book[kind][signal_id] = SIGNAL_TYPES[kind].model_validate(payload)
        if bus is not None:  # without a broker, signals come from a file or the CLI through receive()
            for kind in SIGNAL_TYPES:
                bus.subscribe(self.topic(kind), self._handler(kind), qos=1)

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/signals/{kind}"

    @property
    def ack_topic(self) -> str:
        return f"{self.prefix}/signals/ack"

    def _handler(self, kind: str) -> Callable[[str, bytes], object]:
        async def handle(topic: str, payload: bytes) -> None:
            await self.receive(kind, payload)

        return handle

    async def receive(self, kind: str, payload: bytes) -> Ack:
        received_at = self.clock()
        try:
            signal = parse_signal(kind, payload, self.max_payload_bytes)
        except SignalRejected as exc:
            self.counts["rejected"] += 1
            log.warning("signal.rejected", kind=kind, signal_id=exc.signal_id, reason=str(exc))
            ack = Ack(kind=kind, signal_id=exc.signal_id, status="rejected", reason=str(exc), received_at=received_at)
        else:
            if kind in TRANSIENT_KINDS:  # every few seconds, superseded by the next: acted on, never stored
                new = True
            else:
                new = await self.store.add(kind, signal.id, received_at, signal.model_dump(mode="json"))
                self.book[kind][signal.id] = signal
            status = "accepted" if new else "duplicate"
            self.counts[status] += 1
            if new:
                for consumer in self.on_accepted:
                    consumer(kind, signal)
            if kind not in TRANSIENT_KINDS:
                log.info("signal.accepted" if new else "signal.duplicate", kind=kind, signal_id=signal.id)
            ack = Ack(kind=kind, signal_id=signal.id, status=status, received_at=received_at)
        if self.bus is not None:
            await self.bus.publish(self.ack_topic, ack.model_dump_json(), qos=1)
        return ack
