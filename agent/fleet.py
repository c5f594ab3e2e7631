"""Live state of every asset and the VPP envelope built from it.

The fleet is the agent's one picture of the site: who answered, what they said, who is out. Availability follows
DESIGN.md §8 rule 3: N failed polls in a row take an asset out until it answers again, and dead assets are polled
with exponential back-off so they cost the loop little (OpenEMS' defective-device pattern). An asset that answers
with frozen registers (agent.frozen) is out too, without back-off, until its readings move again: it cannot be
steered by what it says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import structlog

from agent.config import AssetConfig
from agent.frozen import FrozenDetector
from agent.model import AssetKind, DeviceStatus, Measurement

log = structlog.get_logger("agent.fleet")


@dataclass(slots=True)
class AssetState:
    """What the agent knows about one asset right now."""

    id: str
    kind: AssetKind
    config: AssetConfig
    measurement: Measurement | None = None
    last_ok_monotonic: float | None = None
    consecutive_failures: int = 0
    available: bool = False
    last_error: str | None = None
    next_poll_monotonic: float = 0.0
    written_setpoint_w: float | None = None
    # what the device was told when its driver changed the request (below its minimum power: 0 W); None: as written.
    # The read-back check compares with this, or a device holding 0 W would look wrong and be rewritten every cycle
    commanded_setpoint_w: float | None = None
    written_at_monotonic: float | None = None
    # when the device was last told a setpoint anew (a new value, or rewritten after a reboot, a lapsed lease or a
    # read-back mismatch), on the agent's clock: readings from response_s after it are its answer (assets_now.py)
    told_at: datetime | None = None
    lease_written: bool = False
    clamp_reasons: tuple[str, ...] = ()
    polls_ok: int = 0
    polls_failed: int = 0
    freeze_check: FrozenDetector = field(default_factory=FrozenDetector)

    @property
    def frozen(self) -> bool:
        return self.freeze_check.frozen

    @property
    def told_w(self) -> float | None:
        """The setpoint the device was told: what its driver commanded when it changed the request, else the
        request; None before the first write."""
        return self.commanded_setpoint_w if self.commanded_setpoint_w is not None else self.written_setpoint_w

    @property
    def controllable(self) -> bool:
        return self.kind.controllable

    def rated_charge_w(self) -> float:
        return _lower(self.config.rated_charge_w, self.measurement.rated_charge_w if self.measurement else None)

    def rated_discharge_w(self) -> float:
        return _lower(self.config.rated_discharge_w, self.measurement.rated_discharge_w if self.measurement else None)

    def usable_capacity_wh(self) -> float | None:
        """Energy the pack holds when full: nominal capacity scaled by SoH where the device reports it."""
        m = self.measurement
        if m is None or m.capacity_wh is None:
            return None
        return m.capacity_wh * (m.soh if m.soh is not None else 1.0)

    def ev_energy_needed_wh(self) -> float:
        """Energy still to put into the EV pack to reach the owner's target (0 when none or reached)."""
        m = self.measurement
        capacity = self.usable_capacity_wh()
        if self.kind is not AssetKind.EV_CHARGER or m is None or capacity is None:
            return 0.0
        if m.soc is None or m.ev_target_soc is None:
            return 0.0
        return max(0.0, (m.ev_target_soc - m.soc) * capacity)


def _lower(configured: float | None, reported: float | None) -> float:
    values = [v for v in (configured, reported) if v is not None]
    return min(values) if values else 0.0


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the VPP can do now: the figures an aggregator bids with.

    Power figures are magnitudes in W; durations are how long that power could be held from the current stored
    energy (inf when the power is 0 or no pack reports energy).
    """

    assets_total: int
    assets_available: int
    power_w: float
    stored_wh: float
    absorb_w: float
    deliver_w: float
    absorb_for_s: float
    deliver_for_s: float
    ev_energy_needed_wh: float


@dataclass
class Fleet:
    """All assets by id, plus availability bookkeeping."""

    assets: dict[str, AssetState]
    unavailable_after: int = 3
    max_backoff_s: float = 30.0
    events: list[tuple[str, str]] = field(default_factory=list)  # (asset_id, event) for the UI; bounded below

    def record_ok(self, asset_id: str, measurement: Measurement, now_monotonic: float) -> bool:
        """Store a good poll; returns True when the asset just came back (it answers again, or its frozen
        readings moved again). A frozen asset answers but stays unavailable; it is polled every period, since
        answering costs it nothing, so its recovery is seen at once."""
        state = self.assets[asset_id]
        was_available = state.available
        change = state.freeze_check.observe(measurement)
        state.measurement = measurement
        state.last_ok_monotonic = now_monotonic
        state.consecutive_failures = 0
        state.next_poll_monotonic = now_monotonic
        state.polls_ok += 1
        evidence = state.freeze_check.evidence
        if change == "froze" and evidence is not None:
            log.warning(
                "asset.frozen",
                asset_id=asset_id,
                field=evidence.field,
                value=evidence.value,
                since=evidence.since.isoformat(),
                still_s=round(evidence.still_s, 1),
                polls=evidence.polls,
                expected_change=round(evidence.expected, 6),
                threshold=round(evidence.threshold, 6),
                power_w=round(evidence.power_w, 1),
            )
            self._event(asset_id, "frozen")
        elif change == "thawed":
            log.info("asset.unfrozen", asset_id=asset_id)
            self._event(asset_id, "unfrozen")
        state.available = evidence is None
        state.last_error = None if evidence is None else evidence.describe()
        came_back = state.available and not was_available
        if came_back:
            state.lease_written = False  # a device that restarted may have lost its lease register
            self._event(asset_id, "available")
        return came_back

    def record_failure(self, asset_id: str, error: str, now_monotonic: float, period_s: float) -> bool:
        """Count a failed poll; returns True when the asset just became unavailable: it was available, or it has
        not answered since the agent started and has now failed `unavailable_after` polls (dead from boot)."""
        state = self.assets[asset_id]
        state.freeze_check.interrupt()
        state.consecutive_failures += 1
        state.polls_failed += 1
        state.last_error = error
        never_answered = state.polls_ok == 0 and state.consecutive_failures == self.unavailable_after
        went_out = (state.available or never_answered) and state.consecutive_failures >= self.unavailable_after
        if state.consecutive_failures >= self.unavailable_after:
            state.available = False
            extra = state.consecutive_failures - self.unavailable_after
            backoff = min(self.max_backoff_s, period_s * (2 ** min(extra, 16)))
            state.next_poll_monotonic = now_monotonic + backoff
        if went_out:
            self._event(asset_id, "unavailable")
        return went_out

    def _event(self, asset_id: str, event: str) -> None:
        self.events.append((asset_id, event))
        del self.events[:-50]

    def available(self, kind: AssetKind | None = None) -> list[AssetState]:
        return [s for s in self.assets.values() if s.available and (kind is None or s.kind is kind)]

    def controllable(self) -> list[AssetState]:
        return [s for s in self.assets.values() if s.controllable]

    def envelope(self) -> Envelope:
        """Aggregate available controllable assets into the VPP envelope."""
        absorb = deliver = stored = headroom_wh = deliverable_wh = power = needed = 0.0
        controllable = [s for s in self.assets.values() if s.controllable]
        for state in controllable:
            m = state.measurement
            if not state.available or m is None or m.status in (DeviceStatus.FAULT, DeviceStatus.NO_EV):
                continue
            power += m.power_w
            absorb += min(x for x in (m.max_charge_w, state.rated_charge_w()) if x is not None)
            deliver += min(x for x in (m.max_discharge_w, state.rated_discharge_w()) if x is not None)
            capacity = state.usable_capacity_wh()
            if capacity is not None and m.soc is not None:
                # an EV gives back nothing it must still have at departure: its floor is the higher of the two
                floor = max(m.ev_min_soc or 0.0, m.ev_target_soc or 0.0)
                stored += m.soc * capacity
                headroom_wh += (1.0 - m.soc) * capacity
                deliverable_wh += max(0.0, m.soc - floor) * capacity
            needed += state.ev_energy_needed_wh()
        return Envelope(
            assets_total=len(self.assets),
            assets_available=sum(1 for s in self.assets.values() if s.available),
            power_w=power,
            stored_wh=stored,
            absorb_w=absorb,
            deliver_w=deliver,
            absorb_for_s=headroom_wh * 3600.0 / absorb if absorb > 0 else float("inf"),
            deliver_for_s=deliverable_wh * 3600.0 / deliver if deliver > 0 else float("inf"),
            ev_energy_needed_wh=needed,
        )
