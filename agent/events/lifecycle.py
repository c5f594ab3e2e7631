"""Grid events from receipt to report: up-DR events and ancillary-service awards.

    admitted (or refused on the ack topic with the reason, e.g. the fleet cannot sustain it)
    → scheduled → active (inside its window) → completed (with an M&V report) | failed (its processing raised)

An event reaches this manager only once the signal ingest admitted it (`admit`: the fleet can sustain it; for an
activation, its award exists, its block has started, it is fresh and newer than the one applied). Every transition is
written to the Store before it takes effect, the latest activation of each award before it is acknowledged, and an
active event's meter samples every few seconds, so a restarted agent resumes an active event where it was. One event
whose processing fails is marked `failed` with the reason; the others carry on.

While an event is active it shapes what the control loop steers to (`site_target_w`): an up-DR event raises
the site meter's target to the current interval's baseline + requested increase; an ancillary-service award shifts
it by the latest activation (−1..1) times the awarded capacity, so the controller shares the response over assets
and re-shares at once when one drops out. Activations come from the operator's signal, or for frequency products
(FCR) from local frequency readings through the droop of `[events]`.

The site meter is also kept as 30-min interval history in the Store: the High 4 of 5 baseline of the next up-DR
event is computed from it (with the pre-event average as the fallback when there is not enough history).

Assets that keep their own energy history (`RegisterHistory`: an OCPP EVSE's transaction registers in seqNo order,
offline-queued events included) are booked to the Store's per-asset intervals by the time each value was measured:
what a station sends of past intervals within BOOK_EVERY_S, live values once their interval is over, everything
before an event's report. The report lists that per asset beside the site meter's figures
(attribution; the site meter stays the settlement of record). Bookings that arrive after an event completed (a
station back from offline sends its queue) amend its report in place: `per_asset` is recomputed and
`per_asset_amended` says when; the site-meter figures never change.
"""

from __future__ import annotations

import asyncio
import importlib
import math
from collections import deque
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import structlog
from pydantic import ValidationError

from agent.config import EventSettings
from agent.events.capability import capability_shortfall
from agent.events.droop import Droop
from agent.events.mv.intervals import Interval, IntervalMeter, interval_start, register_energy_by_interval
from agent.fleet import Fleet
from agent.ports import RegisterHistory
from agent.products import PRODUCTS
from agent.signals.models import AsActivation, AsAward, GridFrequency, SignalModel, UpDrEvent
from agent.store import AssetEnergy, Store, StoreError

if TYPE_CHECKING:
    from agent.events.mv.report import Report

log = structlog.get_logger("agent.events")

MAX_SAMPLES = 50_000  # meter samples (and activations) kept per event: 7 h at the rate below
SAMPLE_EVERY_S = 0.5  # device seconds between the meter samples an event keeps (the loop may poll faster)
ACTIVATION_STEP = 0.002  # an activation closer than this to the last one kept is acted on but not kept again
SAVE_EVERY_S = 5.0  # an active event's new samples are appended this often (device time): a kill -9 loses at most this
LOOKBACK_DAYS = 45  # High 4 of 5 looks this far back for its 5 like-days
FINISHED_IN_MEMORY = 100  # finished events kept in memory for a look (all stay in the Store until pruned)
MAX_PENDING_INTERVALS = 48 * 7  # closed meter intervals held while the Store cannot take them (a week)
BOOK_EVERY_S = 10.0  # device seconds between bookings of the assets' own energy history into the Store
BOOK_BATCH = 50  # logs booked between two yields to the event loop (a booking pass must not stall a cycle)
MAX_PENDING_BOOKINGS = 100_000  # per-asset interval rows held while the Store cannot take them
REGISTER_FIELDS = ("import_wh", "export_wh")


class EventState(StrEnum):
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"  # its processing raised: the reason says why; it no longer acts


OPEN_STATES = frozenset({EventState.RECEIVED, EventState.ACCEPTED, EventState.SCHEDULED, EventState.ACTIVE})


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
    saved_samples: int = 0  # samples and activations already in the Store (not persisted: they are the Store's)
    saved_activations: int = 0

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
        self.report = data.get("report")  # type: ignore[assignment]

    def baseline_at(self, ts: float, interval_s: float) -> float | None:
        """The baseline for the interval holding `ts` (up-DR), else the flat one."""
        return self.baseline_intervals.get(interval_start(ts, interval_s), self.baseline_w)


class EventManager:
    """Owns every event; `tick(now)` moves them along the lifecycle; `site_target_w` and `award_shift_w` say what
    the active ones ask of the control loop."""

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        settings: EventSettings | None = None,
        max_hold_s: float = 60.0,
        energy_sources: Iterable[object] = (),
    ) -> None:
        """`max_hold_s`: longest a meter reading stands for the power after it (a few poll periods of device time).
        `energy_sources`: the drivers; those that are a RegisterHistory are booked per asset and interval."""
        self.store = store
        self.energy_sources = [d for d in energy_sources if isinstance(d, RegisterHistory)]
        self._pending_bookings: dict[tuple[str, str, float], tuple[float, float]] = {}
        self._booked_ts = -math.inf
        self.fleet = fleet
        self.settings = settings or EventSettings()
        self.zone = ZoneInfo(self.settings.timezone)
        self.max_hold_s = max_hold_s
        self.events: dict[str, Event] = {}
        self.activation: dict[str, float] = {}  # award id -> latest normalised activation
        self._recent_site: deque[tuple[float, float]] = deque()  # (unix s, W) for pre-event baselines
        self._meter = IntervalMeter(self.settings.interval_s, max_hold_s)
        self._closed: list[Interval] = []  # closed intervals not yet in the Store
        # frequency: `at` of the newest reading applied (readings must not go back in time) and, per award, when the
        # agent last took a reading for it (its own clock: a reading's `at` must not decide how long it is held)
        self._frequency_at = -math.inf
        self._frequency_seen: dict[str, float] = {}
        self._activation_at: dict[str, tuple[str, float]] = {}  # award id -> (signal id, `at` unix s) applied
        # award id -> when the signed command carrying its activation expires (agent clock, unix s)
        self._activation_expires: dict[str, float] = {}
        self._pending_intervals: list[Interval] = []  # closed but not yet stored (the Store failed): retried
        self.store_failures = 0
        self._load()

    @cached_property
    def holidays(self) -> Container[date]:
        """The public holidays of `[events] holiday_country` (like-days of weekends), built when a High 4 of 5
        baseline first needs them."""
        import holidays  # deferred: see _import_mv

        country = self.settings.holiday_country
        return holidays.country_holidays(country) if country else frozenset()

    def _load(self) -> None:
        """Open events from the Store, with their samples and the activation in force; an event that no longer
        validates is marked failed (and says why) instead of stopping every other one at each start."""
        for event_id, kind, state, data in self.store.load_events(open_only=True):
            try:
                signal_type = UpDrEvent if kind == "up_dr" else AsAward
                signal = signal_type.model_validate(data["signal"])
                event = Event(event_id, kind, signal, EventState(state))
                event.restore(data)
                if event.state is EventState.ACTIVE:
                    event.samples = _legacy(data, "samples") or self.store.load_series(event_id, "site")
                    event.activations = _legacy(data, "activations") or self.store.load_series(event_id, "activation")
                    event.saved_samples, event.saved_activations = len(event.samples), len(event.activations)
            except (ValidationError, ValueError, KeyError, TypeError, StoreError) as exc:
                log.error("event.unloadable", event_id=event_id, kind=kind, error=_short(exc))
                self._fail_stored(event_id, f"could not be loaded: {_short(exc)}")
                continue
            self.events[event_id] = event

    def resume(self, now: datetime) -> None:
        """Take up the activation each active award had before a restart, unless it is older than its product
        allows (then the award holds 0 until a fresh one comes)."""
        try:
            stored = self.store.load_activations()
        except StoreError as exc:
            log.error("activation.unloadable", error=str(exc))
            return
        for award_id, (signal_id, at_ts, value, expires_ts) in stored.items():
            event = self.events.get(award_id)
            if event is None or event.state is not EventState.ACTIVE or not isinstance(event.signal, AsAward):
                continue
            if expires_ts is not None and expires_ts <= now.timestamp():
                log.warning("activation.command_expired", award_id=award_id, signal_id=signal_id)
                continue
            age_s = now.timestamp() - at_ts
            allowed_s = PRODUCTS[event.signal.product].response_s
            if age_s > allowed_s:
                log.warning("activation.expired", award_id=award_id, age_s=round(age_s, 1), allowed_s=allowed_s)
                continue
            self.activation[award_id] = value
            self._activation_at[award_id] = (signal_id, at_ts)
            if expires_ts is not None:
                self._activation_expires[award_id] = expires_ts
            log.info("activation.resumed", award_id=award_id, value=value, age_s=round(age_s, 1))

    def _fail_stored(self, event_id: str, reason: str) -> None:
        try:
            self.store.mark_event_failed(event_id, reason)
        except StoreError as exc:
            self._store_failed(exc)

    def get(self, event_id: str) -> Event | None:
        return self.events.get(event_id)

    # -- intake -----------------------------------------------------------------------------------------------
    def admit(self, kind: str, signal: SignalModel, now: datetime) -> str | None:
        """Why the agent must refuse `signal` now (None: take it). Runs before the signal is stored or acked, so
        the sender learns the outcome: an event the fleet cannot sustain, an activation for an award the agent does
        not hold or outside its block, a stale or out-of-order activation or frequency reading."""
        if isinstance(signal, UpDrEvent | AsAward):
            return capability_shortfall(self.fleet.envelope(), signal)
        if isinstance(signal, AsActivation):
            return self._activation_problem(signal, now)
        if isinstance(signal, GridFrequency):
            age_s = now.timestamp() - signal.at.timestamp()
            if age_s > self.settings.frequency_timeout_s:
                return f"reading at {signal.at.isoformat()} is {age_s:.1f} s old (frequency_timeout_s " \
                    f"{self.settings.frequency_timeout_s:g})"
            if signal.at.timestamp() < self._frequency_at:
                return "reading is older than the last one applied"
        return None

    def _activation_problem(self, signal: AsActivation, now: datetime) -> str | None:
        event = self.events.get(signal.award_id)
        if event is None or not isinstance(event.signal, AsAward):
            return f"no award {signal.award_id!r} is held by this agent"
        if event.state not in (EventState.SCHEDULED, EventState.ACTIVE):
            return f"award {signal.award_id!r} is {event.state.value}"
        award = event.signal
        if signal.at < award.block_start or signal.at >= award.block_end:
            return (f"at {signal.at.isoformat()} is outside award {award.id!r}'s block "
                    f"{award.block_start.isoformat()}..{award.block_end.isoformat()}")  # fmt: skip
        age_s = now.timestamp() - signal.at.timestamp()
        allowed_s = PRODUCTS[award.product].response_s
        if age_s > allowed_s:
            return f"activation is {age_s:.0f} s old; {award.product} allows {allowed_s:g} s"
        applied = self._activation_at.get(signal.award_id)
        if applied is not None and signal.at.timestamp() < applied[1]:
            return f"activation is older than the one applied ({applied[0]!r})"
        return None

    def apply(self, signal: AsActivation | GridFrequency, now: datetime, expires_ts: float | None = None) -> bool:
        """Act on an admitted activation or frequency reading at once; True when an activation moved enough that
        the control loop should act before its next cycle. A signed activation holds until `expires_ts` (its
        command's `exp`) at most: a sender that falls silent must not leave the fleet on its last order."""
        if isinstance(signal, AsActivation):
            before = self.activation.get(signal.award_id, 0.0)
            self._activation_at[signal.award_id] = (signal.id, signal.at.timestamp())
            if expires_ts is None:
                self._activation_expires.pop(signal.award_id, None)
            else:
                self._activation_expires[signal.award_id] = expires_ts
            self._activate(signal.award_id, signal.value, now)
            return abs(signal.value - before) >= ACTIVATION_STEP
        return self._frequency(signal.frequency_hz, signal.at.timestamp(), now)

    async def receive(self, kind: str, signal: SignalModel, now: datetime) -> Event | None:
        """Schedule an admitted up-DR event or award (activations and readings go through `apply`)."""
        if isinstance(signal, AsActivation | GridFrequency):
            self.apply(signal, now)
            return None
        if not isinstance(signal, UpDrEvent | AsAward):
            return None
        if signal.id in self.events:
            return self.events[signal.id]
        event = Event(signal.id, kind, signal)
        self._mark(event, EventState.RECEIVED, now)
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
        await self._store_intervals()
        if now.timestamp() - self._booked_ts >= BOOK_EVERY_S:
            await self._book_assets(now)
        self._expire_frequency(now)
        self._expire_activations(now)
        for event in list(self.events.values()):  # receive() may add events while this awaits
            if event.state not in OPEN_STATES:
                continue
            try:
                await self._advance(event, now)
            except Exception as exc:  # one broken event must not stop the others (or the next tick)
                log.exception("event.failed", event_id=event.id, error=_short(exc))
                event.reason = f"processing failed: {_short(exc)}"
                self._mark(event, EventState.FAILED, now)
                self.activation.pop(event.id, None)
                await self._save(event)
        self._forget_finished()

    async def _advance(self, event: Event, now: datetime) -> None:
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
            await self._book_assets(now, partial=False)  # what the assets told until now is in the report
            assets = [source.asset_id for source in self.energy_sources]
            event.report = await asyncio.to_thread(self._report, event, *series, assets)
            self._mark(event, EventState.COMPLETED, now)
            event.samples, event.activations = [], []  # the report holds what they showed
            self.activation.pop(event.id, None)
            self._frequency_seen.pop(event.id, None)
            self._activation_at.pop(event.id, None)
            self._activation_expires.pop(event.id, None)
            log.info("event.completed", event_id=event.id, **{k: v for k, v in event.report.items()
                                                              if not isinstance(v, list | dict)})  # fmt: skip
            await self._finish(event)
        elif event.state is EventState.ACTIVE and now.timestamp() - event.saved_ts >= SAVE_EVERY_S:
            await self._save(event, now)

    def _forget_finished(self) -> None:
        """Finished events stay in the Store; memory keeps only the newest few, so it never grows with history."""
        finished = [k for k, e in self.events.items() if e.state not in OPEN_STATES]
        for event_id in finished[: max(0, len(finished) - FINISHED_IN_MEMORY)]:
            del self.events[event_id]

    async def _store_intervals(self) -> None:
        if self._closed:
            self._pending_intervals += self._closed
            self._closed = []
            del self._pending_intervals[:-MAX_PENDING_INTERVALS]
        if not self._pending_intervals:
            return
        try:
            await self.store.add_intervals(self._pending_intervals, keep_days=self.settings.history_days)
        except StoreError as exc:
            self._store_failed(exc)
            return
        self._pending_intervals = []

    async def flush(self) -> None:
        """Write the progress of every active event (at shutdown: a restart resumes from here)."""
        for event in list(self.events.values()):
            if event.state is EventState.ACTIVE:
                await self._save(event)
        await self._store_intervals()
        if self.energy_sources:
            await self._book_assets(None)

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

    def _frequency(self, frequency_hz: float, at_ts: float, now: datetime) -> bool:
        """Local frequency → activation of every active frequency product (FCR) through the droop; True when an
        activation moved by ACTIVATION_STEP or more. Readings were admitted fresh and in order (`admit`)."""
        s = self.settings
        self._frequency_at = max(self._frequency_at, at_ts)
        moved = False
        for event in self.events.values():
            signal = event.signal
            if event.state is not EventState.ACTIVE or not isinstance(signal, AsAward):
                continue
            if PRODUCTS[signal.product].signal != "frequency":
                continue
            self._frequency_seen[event.id] = now.timestamp()
            up = frequency_hz < s.nominal_hz
            rated = s.rated_w if s.rated_w is not None else self._rated_w(up)
            capacity = signal.up_w if up else signal.down_w
            droop = Droop(rated, capacity, float(s.nominal_hz), s.deadband_hz, s.droop)
            value = droop.activation(frequency_hz)
            moved = moved or abs(value - self.activation.get(event.id, 0.0)) >= ACTIVATION_STEP
            self._activate(event.id, value, now)
        return moved

    def _expire_frequency(self, now: datetime) -> None:
        """No frequency reading taken for `frequency_timeout_s` (the agent's clock, not the readings' `at`): the
        droop's output falls back to 0 rather than holding a full response to an excursion that may be long over
        (the relay or its link failed, or it sends only readings that are refused)."""
        cutoff = now.timestamp() - self.settings.frequency_timeout_s
        for award_id, seen_ts in list(self._frequency_seen.items()):
            if seen_ts < cutoff:
                del self._frequency_seen[award_id]
                if self.activation.get(award_id, 0.0) != 0.0:
                    log.warning("frequency.lost", award_id=award_id, timeout_s=self.settings.frequency_timeout_s)
                    self._activate(award_id, 0.0, now)

    def _expire_activations(self, now: datetime) -> None:
        """An activation whose signed command has expired returns to 0: the agent never acts on an expired
        command, whether the sender fell silent or its key was revoked (then no newer command can come)."""
        ts = now.timestamp()
        for award_id, expires_ts in list(self._activation_expires.items()):
            if expires_ts <= ts:
                del self._activation_expires[award_id]
                if self.activation.get(award_id, 0.0) != 0.0:
                    log.warning("activation.command_expired", award_id=award_id, value=self.activation[award_id])
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
        """The up-DR baseline by the one rule the planner uses too (agent.events.mv.baseline.updr_baseline): High 4
        of 5 (+ same-day adjustment) from the interval history when asked for and possible, else the pre-event
        average, with the reason kept in `baseline_note` and the report. Awards: the pre-event average."""
        await asyncio.to_thread(_import_mv)  # off the event loop: the first event's start must not stall a cycle
        import numpy as np  # deferred: see _import_mv

        from agent.events.mv.baseline import BaselineError, updr_baseline

        pre_event = self._pre_event_baseline()
        signal = event.signal
        event.baseline_method, event.baseline_w = "pre_event_average", pre_event
        if not isinstance(signal, UpDrEvent):
            return
        interval = self.settings.interval_s
        first = interval_start(event.start.timestamp(), interval)
        starts = list(np.arange(first, event.end.timestamp(), interval, dtype=float))
        history, excluded, store_note = None, frozenset[date](), None
        if signal.baseline_method == "high4of5":
            since = first - (LOOKBACK_DAYS + 1) * 86400
            try:
                history = await asyncio.to_thread(self.store.load_intervals, since)
                excluded = frozenset(await asyncio.to_thread(self._event_days, event, since))
            except StoreError as exc:
                history, store_note = None, f"High 4 of 5 not possible ({exc}); pre-event average used"
        try:
            values, method, note = updr_baseline(
                signal.baseline_method, starts, pre_event, history, self.zone if history is not None else None,
                interval, excluded, LOOKBACK_DAYS, self.holidays,
            )  # fmt: skip
        except BaselineError as exc:  # no history that works and no meter reading before the event
            event.baseline_note = store_note or str(exc)
            return
        event.baseline_intervals, event.baseline_method = values, method
        event.baseline_note = store_note or note
        event.baseline_w = float(np.mean(list(values.values())))

    def _event_days(self, event: Event, since_ts: float) -> set[date]:
        """Local days touched by other events that ran since `since_ts` (up-DR or awards): not like-days for a
        baseline, since the agent shifted the site's demand on them. From the Store, so it does not depend on what
        memory still holds (runs in a worker thread)."""
        days = set()
        for start_text, end_text in self.store.event_windows_since(since_ts):
            start, end = datetime.fromisoformat(start_text), datetime.fromisoformat(end_text)
            if start == event.start and end == event.end:
                continue
            day = start.astimezone(self.zone).date()
            while day <= end.astimezone(self.zone).date():
                days.add(day)
                day += timedelta(days=1)
        return days

    def _pre_event_baseline(self) -> float | None:
        import numpy as np  # deferred: see _import_mv

        if not self._recent_site:
            return None
        return float(np.mean([w for _, w in self._recent_site]))

    def _report(
        self,
        event: Event,
        samples: list[tuple[float, float]],
        activations: list[tuple[float, float]],
        assets: Sequence[str] = (),
    ) -> Report:
        """M&V from the meter samples taken while the event was active (agent.events.mv.report), with the energy
        `assets` (and any other asset with bookings) booked to each interval of the window. Runs in a worker thread."""
        report = self._site_report(event, samples, activations)
        if assets:
            report["per_asset"] = self._asset_part(event, assets)
        return report

    def _asset_part(self, event: Event, assets: Sequence[str]) -> Report:
        """The per-asset attribution of `event`'s window from the Store (blocking: a worker thread calls it)."""
        from agent.events.mv.report import asset_energy_report  # deferred: see _import_mv

        starts = self._window_starts(event)
        if not starts:
            return asset_energy_report({}, assets, [])
        bookings = self.store.load_asset_intervals(starts[0], starts[-1] + self.settings.interval_s)
        return asset_energy_report(bookings, assets, starts)

    def _window_starts(self, event: Event) -> list[float]:
        """Start (unix s) of every settlement interval the event's window touches."""
        interval = self.settings.interval_s
        start, end = interval_start(event.start.timestamp(), interval), event.end.timestamp()
        return [start + i * interval for i in range(max(0, math.ceil((end - start) / interval)))]

    async def _book_assets(self, now: datetime | None, partial: bool = True) -> None:
        """Book what changed in each asset's own register history into the Store's per-asset intervals (by when
        it was measured), then amend the reports of completed events whose window it touched. A source's change
        is rebooked from the interval it starts in on; the Store replaces that source's rows, so a resend or a
        second booking cannot count twice. A Store failure keeps the rows for the next try.

        `partial`: changes inside the interval in progress wait until it is over (live meter values are booked
        once per interval, not at every pass; what a station sends of the past, and every change when a report
        is due, are booked at once). `now` None (at shutdown): everything is booked, no report is amended."""
        interval = self.settings.interval_s
        before = None
        if now is not None:
            self._booked_ts = now.timestamp()
            before = interval_start(now.timestamp(), interval) if partial else None
        booked_logs = 0
        for driver in self.energy_sources:
            for log_ in driver.transaction_logs():
                changed = log_.take_change(before)
                if changed is None:
                    continue
                booked_logs += 1
                if booked_logs % BOOK_BATCH == 0:
                    await asyncio.sleep(0)
                since = interval_start(changed, interval)
                booked = [
                    register_energy_by_interval(log_.registers(field, since), interval) for field in REGISTER_FIELDS
                ]
                for start in set(booked[0]) | set(booked[1]):
                    if start >= since:
                        key = (driver.asset_id, log_.source, start)
                        self._pending_bookings[key] = (booked[0].get(start, 0.0), booked[1].get(start, 0.0))
        if not self._pending_bookings:
            return
        if len(self._pending_bookings) > MAX_PENDING_BOOKINGS:
            newest = sorted(self._pending_bookings, key=lambda k: k[2])[-MAX_PENDING_BOOKINGS:]
            self._pending_bookings = {k: self._pending_bookings[k] for k in newest}
        rows = [AssetEnergy(a, s, t, i, e) for (a, s, t), (i, e) in self._pending_bookings.items()]
        try:
            await self.store.add_asset_intervals(rows, keep_days=self.settings.history_days)
        except StoreError as exc:
            self._store_failed(exc)
            return
        self._pending_bookings = {}
        if now is not None:
            await self._amend_reports({r.start_ts for r in rows}, now)

    async def _amend_reports(self, starts: set[float], now: datetime) -> None:
        """Completed events (those still in memory) whose window holds a newly booked interval get their per-asset
        part recomputed; when it changed, the report says when it was amended and the Store gets it."""
        assets = [source.asset_id for source in self.energy_sources]
        for event in list(self.events.values()):
            if event.state is not EventState.COMPLETED or event.report is None:
                continue
            if not starts.intersection(self._window_starts(event)):
                continue
            part = await asyncio.to_thread(self._asset_part, event, assets)
            if part == event.report.get("per_asset"):
                continue
            event.report["per_asset"] = part
            event.report["per_asset_amended"] = now.isoformat()
            log.info("event.report_amended", event_id=event.id, per_asset={
                a: v["import_wh"] - v["export_wh"] for a, v in part["assets"].items()})  # type: ignore[union-attr, index]
            await self._finish(event)

    def _site_report(
        self, event: Event, samples: list[tuple[float, float]], activations: list[tuple[float, float]]
    ) -> Report:
        """The settlement of record: from the site meter (agent.events.mv.report)."""
        from agent.events.mv.report import award_report, updr_report  # deferred: see _import_mv

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
        """Write the event's state and append its new samples; a Store failure is reported and memory carries on
        (the next save retries what is missing)."""
        if now is not None:
            event.saved_ts = now.timestamp()
        try:
            await self.store.save_event(event.id, event.kind, event.state.value, event.data(), event.end.timestamp())
            samples, activations = event.samples[event.saved_samples :], event.activations[event.saved_activations :]
            await self.store.add_series(event.id, "site", samples)
            event.saved_samples += len(samples)
            await self.store.add_series(event.id, "activation", activations)
            event.saved_activations += len(activations)
        except StoreError as exc:
            self._store_failed(exc)

    async def _finish(self, event: Event) -> None:
        try:
            await self.store.finish_event(event.id, event.kind, event.state.value, event.data(), event.end.timestamp())
        except StoreError as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: StoreError) -> None:
        self.store_failures += 1
        log.error("store.failed", error=str(exc))


def _import_mv() -> None:
    """Import what M&V computes with: numpy, the baseline and report arithmetic, the holiday calendars. They are
    imported when an event first needs them, not with this module: a site without events never pays their ~18 MB of
    RSS (docs/deploy.md, Sizing; tests/deploy/test_imports.py keeps them out of a plain start)."""
    for name in ("numpy", "agent.events.mv.baseline", "agent.events.mv.report", "holidays"):
        importlib.import_module(name)


def _short(exc: BaseException) -> str:
    """An exception as a bounded one-liner for reasons and logs."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 300 else text[:299] + "…"


def _legacy(data: Mapping[str, object], key: str) -> list[tuple[float, float]]:
    """Samples kept inside the event's own record by earlier releases (now they live in the series table)."""
    return [(float(a), float(b)) for a, b in data.get(key, []) or []]  # type: ignore[union-attr, misc]
