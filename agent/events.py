"""Grid events from receipt to report: up-DR events and ancillary-service awards.

    received → accepted | rejected (with the reason, e.g. the fleet cannot sustain it)
    accepted → scheduled → active (inside its window) → completed (with an M&V report)

Every transition is written to the Store before it takes effect, so a restarted agent resumes an active event where
it was. While an event is active it shapes what the control loop steers to (`site_target_w`): an up-DR event raises
the site meter's target to baseline + requested increase; an ancillary-service award shifts it by the latest
activation (−1..1) times the awarded capacity, so the rule controller shares the response over assets by headroom
and re-shares at once when one drops out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np
import structlog

from agent.capability import capability_shortfall
from agent.fleet import Fleet
from agent.signals import AsActivation, AsAward, SignalModel, UpDrEvent
from agent.store import Store

log = structlog.get_logger("agent.events")

MAX_SAMPLES = 50_000  # meter samples kept per event: 14 h at one per second


class EventState(StrEnum):
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"


@dataclass
class Event:
    id: str
    kind: str  # "up_dr" | "as_award"
    signal: UpDrEvent | AsAward
    state: EventState = EventState.RECEIVED
    reason: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)  # (state, ISO time)
    baseline_w: float | None = None  # site demand without the event (pre-event average, W)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (unix s, site meter W) while active
    report: dict[str, float] | None = None

    @property
    def start(self) -> datetime:
        return self.signal.start if isinstance(self.signal, UpDrEvent) else self.signal.block_start

    @property
    def end(self) -> datetime:
        return self.signal.end if isinstance(self.signal, UpDrEvent) else self.signal.block_end

    def data(self) -> dict[str, object]:
        return {
            "signal": self.signal.model_dump(mode="json"),
            "reason": self.reason,
            "history": self.history,
            "baseline_w": self.baseline_w,
            "samples": self.samples,
            "report": self.report,
        }


class EventManager:
    """Owns every event; `tick(now)` moves them along the lifecycle, `site_target_w(now)` says what they ask."""

    def __init__(self, store: Store, fleet: Fleet, pre_event_s: float = 1800.0) -> None:
        self.store = store
        self.fleet = fleet
        self.pre_event_s = pre_event_s
        self.events: dict[str, Event] = {}
        self.activation: dict[str, float] = {}  # award id -> latest normalised activation
        self._recent_site: deque[tuple[float, float]] = deque()  # (unix s, W) for pre-event baselines
        for event_id, kind, state, data in store.load_events():
            signal_data = data["signal"]
            assert isinstance(signal_data, dict)
            signal = UpDrEvent.model_validate(signal_data) if kind == "up_dr" else AsAward.model_validate(signal_data)
            event = Event(event_id, kind, signal, EventState(state), data.get("reason"))  # type: ignore[arg-type]
            event.history = [tuple(h) for h in data.get("history", [])]  # type: ignore[misc, union-attr]
            event.baseline_w = data.get("baseline_w")  # type: ignore[assignment]
            event.samples = [tuple(s) for s in data.get("samples", [])]  # type: ignore[misc, union-attr]
            event.report = data.get("report")  # type: ignore[assignment]
            self.events[event_id] = event

    # -- intake -----------------------------------------------------------------------------------------------
    async def receive(self, kind: str, signal: SignalModel, now: datetime) -> Event | None:
        """Take an up-DR event, an award or an activation; events are checked against the fleet's envelope."""
        if isinstance(signal, AsActivation):
            self.activation[signal.award_id] = signal.value
            return None
        if not isinstance(signal, UpDrEvent | AsAward):
            return None
        if signal.id in self.events:
            return self.events[signal.id]
        event = Event(signal.id, kind, signal)
        self._mark(event, EventState.RECEIVED, now)
        shortfall = capability_shortfall(self.fleet.envelope(), signal)
        if shortfall:
            event.reason = shortfall
            self._mark(event, EventState.REJECTED, now)
            log.warning("event.rejected", event_id=event.id, kind=kind, reason=shortfall)
        else:
            self._mark(event, EventState.ACCEPTED, now)
            self._mark(event, EventState.SCHEDULED, now)
            log.info("event.scheduled", event_id=event.id, kind=kind, start=event.start.isoformat())
        self.events[event.id] = event
        await self._save(event)
        return event

    # -- time -------------------------------------------------------------------------------------------------
    def observe_site(self, now: datetime, site_w: float | None) -> None:
        """Record the site meter every cycle: pre-event baselines and M&V come from these readings."""
        if site_w is None:
            return
        ts = now.timestamp()
        self._recent_site.append((ts, site_w))
        cutoff = ts - self.pre_event_s
        while self._recent_site and self._recent_site[0][0] < cutoff:
            self._recent_site.popleft()
        for event in self.events.values():
            if event.state is EventState.ACTIVE and len(event.samples) < MAX_SAMPLES:
                event.samples.append((ts, site_w))

    async def tick(self, now: datetime) -> None:
        for event in self.events.values():
            if event.state is EventState.SCHEDULED and now >= event.start:
                if event.baseline_w is None:
                    event.baseline_w = self._pre_event_baseline()
                self._mark(event, EventState.ACTIVE, now)
                log.info("event.active", event_id=event.id, baseline_w=event.baseline_w)
                await self._save(event)
            if event.state is EventState.ACTIVE and now >= event.end:
                event.report = self._report(event)
                self._mark(event, EventState.COMPLETED, now)
                log.info("event.completed", event_id=event.id, **event.report)
                await self._save(event)

    def site_target_w(self, now: datetime, default_w: float) -> float:
        """The site meter target with every active event applied (the default when none is active)."""
        target = default_w
        for event in self.events.values():
            if event.state is not EventState.ACTIVE or not event.start <= now < event.end:
                continue
            base = event.baseline_w if event.baseline_w is not None else default_w
            if isinstance(event.signal, UpDrEvent):
                target = max(target, base + event.signal.requested_increase_w)
            else:
                value = self.activation.get(event.id, 0.0)
                capacity = event.signal.up_w if value > 0 else event.signal.down_w
                target = base - value * capacity  # +1 = full up = deliver: the site imports less
        return target

    # -- internals --------------------------------------------------------------------------------------------
    def _pre_event_baseline(self) -> float | None:
        if not self._recent_site:
            return None
        return float(np.mean([w for _, w in self._recent_site]))

    def _report(self, event: Event) -> dict[str, float]:
        """M&V: energy delivered against the baseline from the meter samples taken while the event was active."""
        if len(event.samples) < 2 or event.baseline_w is None:
            return {"samples": float(len(event.samples))}
        times = np.array([t for t, _ in event.samples])
        watts = np.array([w for _, w in event.samples])
        dt_h = np.diff(times) / 3600.0
        above = np.maximum(0.0, watts[:-1] - event.baseline_w)
        report = {
            "samples": float(len(event.samples)),
            "baseline_w": float(event.baseline_w),
            "mean_site_w": float(np.average(watts[:-1], weights=dt_h)),
            "delivered_kwh": float(np.sum(above * dt_h) / 1000.0),
        }
        if isinstance(event.signal, UpDrEvent):
            requested_kwh = event.signal.requested_increase_w * float(np.sum(dt_h)) / 1000.0
            report["requested_kwh"] = requested_kwh
            report["delivered_fraction"] = report["delivered_kwh"] / requested_kwh if requested_kwh else 0.0
        return report

    def _mark(self, event: Event, state: EventState, now: datetime) -> None:
        event.state = state
        event.history.append((state.value, now.isoformat()))

    async def _save(self, event: Event) -> None:
        await self.store.save_event(event.id, event.kind, event.state.value, event.data())
