"""The SafetyEnvelope: every setpoint passes here before any driver writes it (DESIGN.md §7 rule 1).

Whatever a controller, optimiser or signal asks for, the value written stays inside the device's nameplate and
live limits, keeps an EV above its owner's minimum SoC and able to reach its departure target, respects the ramp
limit and keeps the site within its import/export limits. Each cut is named, so an operator can see why a
request was not followed.

Because setpoints are leases that a device holds until its timeout, a setpoint is judged over the longer of the
control period and the lease: if the agent died right after writing, the device would run it that long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from agent.fleet import AssetState
from agent.model import AssetKind, DeviceStatus, Setpoint


@dataclass(frozen=True, slots=True)
class Bounds:
    """The interval a setpoint must fall in, and the limit that set each end."""

    low_w: float
    high_w: float
    low_reason: str
    high_reason: str

    def clamp(self, value: float) -> tuple[float, tuple[str, ...]]:
        if not math.isfinite(value):  # NaN compares false with everything: it would slip through below
            return min(max(0.0, self.low_w), self.high_w), ("non-finite request",)
        if value > self.high_w:
            return self.high_w, (self.high_reason,)
        if value < self.low_w:
            return self.low_w, (self.low_reason,)
        return value, ()


ZERO = Bounds(0.0, 0.0, "not operable", "not operable")


def asset_bounds(state: AssetState, now: datetime, horizon_s: float) -> Bounds:
    """Hard limits of one asset now, plus the EV owner's needs, as an interval of allowed power."""
    m = state.measurement
    if not state.available or m is None or m.status in (DeviceStatus.FAULT, DeviceStatus.NO_EV):
        return ZERO
    if state.kind is AssetKind.EV_CHARGER and m.ev_connected is False:
        return ZERO
    high, high_reason = state.rated_charge_w(), "nameplate charge limit"
    low, low_reason = -state.rated_discharge_w(), "nameplate discharge limit"
    if m.max_charge_w is not None and m.max_charge_w < high:
        high, high_reason = m.max_charge_w, "live charge limit"
    if m.max_discharge_w is not None and -m.max_discharge_w > low:
        low, low_reason = -m.max_discharge_w, "live discharge limit"
    capacity = state.usable_capacity_wh()
    if state.kind is AssetKind.EV_CHARGER and capacity is not None and m.soc is not None:
        low, low_reason, high = _ev_limits(state, now, horizon_s, capacity, low, low_reason, high)
    if low > high:  # only the EV floor can push low above high; charging at the maximum is the best we can do
        low = high
    return Bounds(low, high, low_reason, high_reason)


def _ev_limits(
    state: AssetState,
    now: datetime,
    horizon_s: float,
    capacity_wh: float,
    low: float,
    low_reason: str,
    high: float,
) -> tuple[float, str, float]:
    """Raise the lower bound so the EV stays above its minimum SoC and can still reach its target by departure."""
    m = state.measurement
    assert m is not None and m.soc is not None
    eta = state.config.efficiency
    hours = horizon_s / 3600.0
    if m.ev_min_soc is not None:
        above_min_wh = max(0.0, (m.soc - m.ev_min_soc) * capacity_wh)
        floor = -above_min_wh * eta / hours
        if floor > low:
            low, low_reason = floor, "EV minimum SoC"
    needed_wh = state.ev_energy_needed_wh()
    if m.ev_departure is not None and needed_wh > 0:
        left_h = max(0.0, (m.ev_departure - now).total_seconds() / 3600.0)
        # Energy the pack can still take after this setpoint's horizon at the best charge rate we may use.
        later_wh = max(0.0, high) * eta * max(0.0, left_h - hours)
        slack_wh = later_wh - needed_wh
        floor = -slack_wh * eta / hours if slack_wh >= 0 else -slack_wh / (eta * hours)
        if floor > low:
            low, low_reason = floor, "EV departure need"
    return low, low_reason, high


def apply_ramp(bounds: Bounds, state: AssetState, period_s: float) -> Bounds:
    """Narrow the bounds to the agent-side ramp limit around where the device is, inside the hard limits.

    "Where the device is" is the last setpoint written while the lease holds, else the measured power: on the
    first write and after an outage the device sits at its measured power (0 W after a lapsed lease), not at
    whatever the agent wrote long ago.
    """
    rate = state.config.ramp_w_per_s
    if rate is None or state.measurement is None:
        return bounds
    held = state.written_setpoint_w if state.lease_written else None
    start = held if held is not None else state.measurement.power_w
    step = rate * period_s
    low = max(bounds.low_w, min(bounds.high_w, start - step))
    high = min(bounds.high_w, max(bounds.low_w, start + step))
    low_reason = "ramp limit" if low > bounds.low_w else bounds.low_reason
    high_reason = "ramp limit" if high < bounds.high_w else bounds.high_reason
    return Bounds(low, high, low_reason, high_reason)


def enforce_site_limits(
    setpoints: dict[str, float],
    uncontrolled_w: float | tuple[float, float],
    import_limit_w: float,
    export_limit_w: float,
) -> tuple[dict[str, float], str | None]:
    """Scale setpoints toward 0 so import/export at the site meter stays within limits.

    `uncontrolled_w` is what the site draws besides the assets: one value when it is known, else the (low, high)
    interval the truth lies in (agent/control/meter.py: a meter not believed, or assets whose power is not known).
    The limits then hold for every value in it: the import limit against the top, the export limit against the
    bottom. Should the interval be wider than the two limits together, no total of the assets keeps both for all of
    it; their net power is then held between 0 and what the one limit with room still allows, so they never push
    the site toward a limit the range already breaks.

    Scaling only moves values toward zero, so every setpoint stays within its asset's hard bounds, which always
    contain 0 (an EV's departure floor is a preference and yields to the site connection limit).
    """
    low, high = uncontrolled_w if isinstance(uncontrolled_w, tuple) else (uncontrolled_w, uncontrolled_w)
    most = import_limit_w - high  # the assets' total may not exceed this (import at the top of the range) ...
    least = -export_limit_w - low  # ... nor fall below this (export at the bottom)
    if least > most:  # no total satisfies both for the whole range: add nothing toward either limit
        least, most = min(least, 0.0), max(most, 0.0)
    total = sum(setpoints.values())
    if total > most:
        charging = sum(v for v in setpoints.values() if v > 0)
        if charging <= 0:
            return setpoints, None  # nothing the assets can shed; uncontrolled load alone is over the limit
        factor = max(0.0, 1.0 - (total - most) / charging)
        return {k: v * factor if v > 0 else v for k, v in setpoints.items()}, "site import limit"
    if total < least:
        discharging = -sum(v for v in setpoints.values() if v < 0)
        if discharging <= 0:
            return setpoints, None
        factor = max(0.0, 1.0 - (least - total) / discharging)
        return {k: v * factor if v < 0 else v for k, v in setpoints.items()}, "site export limit"
    return setpoints, None


class SafetyEnvelope:
    """Turns requested powers into Setpoints that are safe to write."""

    def __init__(self, import_limit_w: float, export_limit_w: float) -> None:
        self.import_limit_w = import_limit_w
        self.export_limit_w = export_limit_w

    def bounds(self, state: AssetState, now: datetime, period_s: float, lease_s: float) -> Bounds:
        return apply_ramp(asset_bounds(state, now, max(period_s, lease_s)), state, period_s)

    def apply(
        self,
        requests: dict[str, float],
        states: dict[str, AssetState],
        bounds: dict[str, Bounds],
        uncontrolled_w: float | tuple[float, float],
    ) -> dict[str, Setpoint]:
        """Clamp each request into its bounds, then the total into the site limits (see enforce_site_limits)."""
        clamped: dict[str, float] = {}
        reasons: dict[str, tuple[str, ...]] = {}
        for asset_id, requested in requests.items():
            value, why = bounds[asset_id].clamp(requested)
            clamped[asset_id], reasons[asset_id] = value, why
        limited, site_reason = enforce_site_limits(clamped, uncontrolled_w, self.import_limit_w, self.export_limit_w)
        result: dict[str, Setpoint] = {}
        for asset_id, value in limited.items():
            why = reasons[asset_id]
            if site_reason and value != clamped[asset_id]:
                why = (*why, site_reason)
            final = _within_hard_limits(value, states[asset_id])
            result[asset_id] = Setpoint(asset_id, final, requests[asset_id], why)
        return result


def _within_hard_limits(value: float, state: AssetState) -> float:
    """Last line of defence: whatever happened above, never leave the device's nameplate or live limits."""
    if not math.isfinite(value):
        return 0.0
    m = state.measurement
    high = state.rated_charge_w()
    low = -state.rated_discharge_w()
    if m is not None:
        if m.max_charge_w is not None:
            high = min(high, m.max_charge_w)
        if m.max_discharge_w is not None:
            low = max(low, -m.max_discharge_w)
    return min(max(value, low), high) if low <= high else 0.0
