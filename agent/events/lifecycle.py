"""Grid events from receipt to report: up-DR events and ancillary-service awards.

    received → accepted | rejected (with the reason, e.g. the fleet cannot sustain it)
    accepted → scheduled → active (inside its window) → completed (with an M&V report)

Every transition is written to the Store before it takes effect, so a restarted agent resumes an active event where
it was. While an event is active it shapes what the control loop steers to (`site_target_w`): an up-DR event raises
the site meter's target to the current interval's baseline + requested increase; an ancillary-service award shifts
it by the latest activation (−1..1) times the awarded capacity, so the controller shares the response over assets
and re-shares at once when one drops out. Activations come from the operator's signal, or for frequency products
(FCR) from local frequency readings through the droop of `[events]`.

The site meter is also kept as 30-min interval history in the Store: the High 4 of 5 baseline of the next up-DR
event is computed from it (with the pre-event average as the fallback when there is not enough history).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

import holidays
import numpy as np
import structlog

from agent.config import EventSettings
from agent.events.capability import capability_shortfall
from agent.events.droop import Droop
from agent.events.mv.baseline import BaselineError, event_baseline
from agent.events.mv.intervals import Interval, IntervalMeter, interval_start
from agent.events.mv.report import Report, award_report, updr_report
from agent.fleet import Fleet
from agent.products import PRODUCTS
from agent.signals.models import AsActivation, AsAward, GridFrequency, SignalModel, UpDrEvent
from agent.store import Store

log = structlog.get_logger("agent.events")

MAX_SAMPLES = 50_000  # meter samples (and activations) kept per event: 7 h at the rate below
SAMPLE_EVERY_S = 0.5  # device seconds between the meter samples an event keeps (the loop may poll faster)
ACTIVATION_STEP = 0.002  # an activation closer than this to the last one kept is acted on but not kept again
SAVE_EVERY_S = 120.0  # an active event's progress is written this often (device time): a restart loses at most this
LOOKBACK_DAYS = 45  # High 4 of 5 looks this far back for its 5 like-days


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
    baseline_w: float | None = None  # site demand without the event (W; the mean over the window for up-DR)
    baseline_method: str | None = None  # high4of5 | high4of5_unadjusted | pre_event_average
    baseline_note: str | None = None  # why the method asked for was not used as is
    baseline_intervals: dict[float, float] = field(default_factory=dict)  # interval start (unix s) -> W
    samples: list[tuple[float, float]] = field(default_factory=list)  # (unix s, site meter W) while active
    activations: list[tuple[float, float]] = field(default_factory=list)  # (unix s, value) while active
    report: Report | None = None
    saved_ts: float = 0.0  # when progress was last written (not persisted)

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
            "baseline_method": self.baseline_method,
            "baseline_note": self.baseline_note,
            "baseline_intervals": [[k, v] for k, v in sorted(self.baseline_intervals.items())],
            "samples": self.samples,
            "activations": self.activations,
            "report": self.report,
        }

    def restore(self, data: Mapping[str, object]) -> None:
        """Progress from the Store (the inverse of `data`), so a restarted agent carries on with the same event."""
        self.reason = data.get("reason")  # type: ignore[assignment]
        self.history = [tuple(h) for h in data.get("history", [])]  # type: ignore[misc, attr-defined]
        self.baseline_w = data.get("baseline_w")  # type: ignore[assignment]
        self.baseline_method = data.get("baseline_method")  # type: ignore[assignment]
        self.baseline_note = data.get("baseline_note")  # type: ignore[assignment]
        self.baseline_intervals = {float(k): float(v) for k, v in data.get("baseline_intervals", [])}  # type: ignore[attr-defined]
        self.samples = [tuple(x) for x in data.get("samples", [])]  # type: ignore[misc, attr-defined]
        self.activations = [tuple(x) for x in data.get("activations", [])]  # type: ignore[misc, attr-defined]
        self.report = data.get("report")  # type: ignore[assignment]

    def baseline_at(self, ts: float, interval_s: float) -> float | None:
        """The baseline for the interval holding `ts` (up-DR), else the flat one."""
        return self.baseline_intervals.get(interval_start(ts, interval_s), self.baseline_w)


class EventManager:
    """Owns every event; `tick(now)` moves them along the lifecycle; `site_target_w` and `award_shift_w` say what
    the active ones ask of the control loop."""

    def __init__(
        self, store: Store, fleet: Fleet, settings: EventSettings | None = None, max_hold_s: float = 60.0
    ) -> None:
        """`max_hold_s`: longest a meter reading stands for the power after it (a few poll periods of device time)."""
        self.store = store
        self.fleet = fleet
        self.settings = settings or EventSettings()
        self.zone = ZoneInfo(self.settings.timezone)
        country = self.settings.holiday_country
        self.holidays: Container[date] = holidays.country_holidays(country) if country else frozenset()
        self.max_hold_s = max_hold_s
        self.events: dict[str, Event] = {}
        self.activation: dict[str, float] = {}  # award id -> latest normalised activation
        self._recent_site: deque[tuple[float, float]] = deque()  # (unix s, W) for pre-event baselines
        self._meter = IntervalMeter(self.settings.interval_s, max_hold_s)
        self._closed: list[Interval] = []  # closed intervals not yet in the Store
        self._frequency_at: dict[str, float] = {}  # award id -> `at` (unix s) of the reading behind its activation
        for event_id, kind, state, data in store.load_events():
            signal_data = data["signal"]
            assert isinstance(signal_data, dict)
            signal = UpDrEvent.model_validate(signal_data) if kind == "up_dr" else AsAward.model_validate(signal_data)
            event = Event(event_id, kind, signal, EventState(state))
            event.restore(data)
            self.events[event_id] = event
            if event.state is EventState.ACTIVE and event.activations:  # carry on from the last activation
                self.activation[event_id] = event.activations[-1][1]

    # -- intake -----------------------------------------------------------------------------------------------
    async def receive(self, kind: str, signal: SignalModel, now: datetime) -> Event | None:
        """Take an up-DR event, an award or an activation; events are checked against the fleet's envelope."""
        if isinstance(signal, AsActivation):
            self._activate(signal.award_id, signal.value, now)
            return None
        if isinstance(signal, GridFrequency):
            self._frequency(signal.frequency_hz, signal.at.timestamp(), now)
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
        self._closed += self._meter.add(ts, site_w)
        self._recent_site.append((ts, site_w))
        cutoff = ts - self.settings.pre_event_s
        while self._recent_site and self._recent_site[0][0] < cutoff:
            self._recent_site.popleft()
        for event in self.events.values():
            if event.state is not EventState.ACTIVE or len(event.samples) >= MAX_SAMPLES:
                continue
            if not event.samples or ts - event.samples[-1][0] >= SAMPLE_EVERY_S:
                event.samples.append((ts, site_w))

    async def tick(self, now: datetime) -> None:
        if self._closed:
            closed, self._closed = self._closed, []
            await self.store.add_intervals(closed, keep_days=self.settings.history_days)
        self._expire_frequency(now)
        for event in list(self.events.values()):  # receive() may add events while this awaits
            if event.state is EventState.SCHEDULED and now >= event.start:
                if event.baseline_w is None:
                    await self._set_baseline(event)
                self._mark(event, EventState.ACTIVE, now)
                log.info(
                    "event.active",
                    event_id=event.id,
                    baseline_w=event.baseline_w,
                    baseline_method=event.baseline_method,
                    baseline_note=event.baseline_note,
                )
                await self._save(event, now)
            if event.state is EventState.ACTIVE and now >= event.end:
                # the report is made off the event loop from copies (readings taken meanwhile are past the end);
                # the event turns completed only with its report, so nobody sees a completed event without one
                series = list(event.samples), list(event.activations)
                event.report = await asyncio.to_thread(self._report, event, *series)
                self._mark(event, EventState.COMPLETED, now)
                event.samples, event.activations = [], []  # the report holds what they showed
                self.activation.pop(event.id, None)
                self._frequency_at.pop(event.id, None)
                log.info("event.completed", event_id=event.id, **{k: v for k, v in event.report.items()
                                                                  if not isinstance(v, list)})  # fmt: skip
                await self._save(event)
            elif event.state is EventState.ACTIVE and now.timestamp() - event.saved_ts >= SAVE_EVERY_S:
                await self._save(event, now)

    async def flush(self) -> None:
        """Write the progress of every active event (at shutdown: a restart resumes from here)."""
        for event in list(self.events.values()):
            if event.state is EventState.ACTIVE:
                await self._save(event)

    def _active(self, now: datetime) -> tuple[list[Event], list[Event]]:
        """(active up-DR events, active awards) at `now`."""
        updr, awards = [], []
        for event in self.events.values():
            if event.state is EventState.ACTIVE and event.start <= now < event.end:
                (updr if isinstance(event.signal, UpDrEvent) else awards).append(event)
        return updr, awards

    def _shift_w(self, awards: list[Event]) -> float:
        """Σ activation × awarded capacity over awards, W toward "up" (+1 = full up = the site imports less)."""
        shift = 0.0
        for event in awards:
            assert isinstance(event.signal, AsAward)
            value = self.activation.get(event.id, 0.0)
            shift += value * (event.signal.up_w if value > 0 else event.signal.down_w)
        return shift

    def site_target_w(self, now: datetime, default_w: float) -> float | None:
        """The site meter target the active events ask for, or None when no event is active.

        Events add up: the base is the highest up-DR target (baseline + increase) or, without up-DR, the baseline
        of the earliest active award; every award then shifts it by its own activation × capacity.
        """
        updr, awards = self._active(now)
        ts = now.timestamp()
        if updr:
            targets = [self._baseline(e, ts, default_w) + e.signal.requested_increase_w for e in updr]  # type: ignore[union-attr]
            base = max(default_w, *targets)
        elif awards:
            base = self._baseline(min(awards, key=lambda e: e.start), ts, default_w)
        else:
            return None
        return base - self._shift_w(awards)

    def award_shift_w(self, now: datetime) -> float | None:
        """What active awards ask on top of a plan (W toward "up"), or None when no award is active or an up-DR
        event is (then the site target owns the meter). The optimiser's plan already holds the site where the
        plan wants it, so in dispatch mode an activation is a change to the plan, not to a pre-event baseline."""
        updr, awards = self._active(now)
        if updr or not awards:
            return None
        return self._shift_w(awards)

    def _baseline(self, event: Event, ts: float, default_w: float) -> float:
        base = event.baseline_at(ts, self.settings.interval_s)
        return default_w if base is None else base

    # -- internals --------------------------------------------------------------------------------------------
    def _activate(self, award_id: str, value: float, now: datetime) -> None:
        self.activation[award_id] = value
        event = self.events.get(award_id)
        if event is None or event.state is not EventState.ACTIVE or len(event.activations) >= MAX_SAMPLES:
            return
        if not event.activations or abs(event.activations[-1][1] - value) >= ACTIVATION_STEP:
            event.activations.append((now.timestamp(), value))

    def _frequency(self, frequency_hz: float, at_ts: float, now: datetime) -> None:
        """Local frequency → activation of every active frequency product (FCR) through the droop.

        A reading older than the one already applied (replayed after a reconnect) or older than
        `frequency_timeout_s` is ignored: acting on it would respond to a grid state that has passed.
        """
        s = self.settings
        if now.timestamp() - at_ts > s.frequency_timeout_s:
            log.warning("frequency.stale", at=at_ts, age_s=round(now.timestamp() - at_ts, 1))
            return
        for event in self.events.values():
            signal = event.signal
            if event.state is not EventState.ACTIVE or not isinstance(signal, AsAward):
                continue
            if PRODUCTS[signal.product].signal != "frequency" or at_ts < self._frequency_at.get(event.id, -math.inf):
                continue
            self._frequency_at[event.id] = at_ts
            up = frequency_hz < s.nominal_hz
            rated = s.rated_w if s.rated_w is not None else self._rated_w(up)
            capacity = signal.up_w if up else signal.down_w
            droop = Droop(rated, capacity, float(s.nominal_hz), s.deadband_hz, s.droop)
            self._activate(event.id, droop.activation(frequency_hz), now)

    def _expire_frequency(self, now: datetime) -> None:
        """No frequency reading for `frequency_timeout_s`: the droop's output falls back to 0 rather than holding a
        full response to an excursion that may be long over (the relay or its link failed)."""
        cutoff = now.timestamp() - self.settings.frequency_timeout_s
        for award_id, at_ts in list(self._frequency_at.items()):
            if at_ts < cutoff:
                del self._frequency_at[award_id]
                if self.activation.get(award_id, 0.0) != 0.0:
                    log.warning("frequency.lost", award_id=award_id, timeout_s=self.settings.frequency_timeout_s)
                    self._activate(award_id, 0.0, now)

    def _rated_w(self, up: bool) -> float:
        """The fleet's rated power in one direction (assets reporting no finite rating are left out)."""
        total = 0.0
        for state in self.fleet.controllable():
            if state.available:
                rated = state.rated_discharge_w() if up else state.rated_charge_w()
                total += rated if math.isfinite(rated) else 0.0
        return total

    async def _set_baseline(self, event: Event) -> None:
        """High 4 of 5 (+ same-day adjustment) from the interval history when asked for and possible; else the
        pre-event average, with the reason kept in `baseline_note` and the report."""
        pre_event = self._pre_event_baseline()
        signal = event.signal
        if isinstance(signal, UpDrEvent) and signal.baseline_method == "high4of5":
            interval = self.settings.interval_s
            first = interval_start(event.start.timestamp(), interval)
            starts = list(np.arange(first, event.end.timestamp(), interval, dtype=float))
            since = first - (LOOKBACK_DAYS + 1) * 86400
            try:
                history = await asyncio.to_thread(self.store.load_intervals, since)
                values, method, note = event_baseline(
                    history, self.zone, interval, starts, self._event_days(event), LOOKBACK_DAYS, self.holidays
                )
            except BaselineError as exc:
                event.baseline_note = f"High 4 of 5 not possible ({exc}); pre-event average used"
            else:
                event.baseline_intervals, event.baseline_method, event.baseline_note = values, method, note
                event.baseline_w = float(np.mean(list(values.values())))
                return
        event.baseline_method = "pre_event_average"
        event.baseline_w = pre_event

    def _event_days(self, event: Event) -> set[date]:
        """Local days touched by other events that ran (up-DR or awards): not like-days for a baseline, since the
        agent shifted the site's demand on them."""
        days = set()
        for other in self.events.values():
            if other is event or other.state not in (EventState.ACTIVE, EventState.COMPLETED):
                continue
            day = other.start.astimezone(self.zone).date()
            while day <= other.end.astimezone(self.zone).date():
                days.add(day)
                day += timedelta(days=1)
        return days

    def _pre_event_baseline(self) -> float | None:
        if not self._recent_site:
            return None
        return float(np.mean([w for _, w in self._recent_site]))

    def _report(
        self, event: Event, samples: list[tuple[float, float]], activations: list[tuple[float, float]]
    ) -> Report:
        """M&V from the meter samples taken while the event was active (agent.events.mv.report)."""
        signal = event.signal
        if event.baseline_w is None:
            return {"samples": len(samples), "note": "no site meter reading before the event: no baseline"}
        if isinstance(signal, UpDrEvent):
            report = updr_report(
                samples,
                lambda ts: self._baseline(event, ts, 0.0),
                signal.requested_increase_w,
                self.settings.interval_s,
                self.max_hold_s,
                event.start.timestamp(),
                event.end.timestamp(),
            )
        else:
            report = award_report(
                samples,
                activations,
                event.baseline_w,
                signal.up_w,
                signal.down_w,
                PRODUCTS[signal.product].response_s,
                self.max_hold_s,
            )
        report["baseline_method"] = event.baseline_method or "pre_event_average"
        if event.baseline_note:
            report["baseline_note"] = event.baseline_note
        return report

    def _mark(self, event: Event, state: EventState, now: datetime) -> None:
        event.state = state
        event.history.append((state.value, now.isoformat()))

    async def _save(self, event: Event, now: datetime | None = None) -> None:
        if now is not None:
            event.saved_ts = now.timestamp()
        await self.store.save_event(event.id, event.kind, event.state.value, event.data())
