"""Power ramping with exact energy integration.

Device power moves linearly toward its target at a ramp rate, so the power over a step is piecewise linear and its
energy can be integrated exactly. Charge and discharge parts are kept apart because conversion losses apply
differently to each (P·η into the pack when charging, |P|/η out of it when discharging).
"""

from __future__ import annotations

from dataclasses import dataclass

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class RampResult:
    """Power at the end of the step and the terminal energy split into import (>= 0) and export (<= 0) parts."""

    power_end_w: float
    import_wh: float
    export_wh: float

    @property
    def net_wh(self) -> float:
        return self.import_wh + self.export_wh


def _segment(p0: float, p1: float, duration_s: float) -> tuple[float, float]:
    """Integrate a linear power segment; return (positive part, negative part) in Wh."""
    if duration_s <= 0:
        return 0.0, 0.0
    if p0 >= 0 and p1 >= 0:
        return (p0 + p1) / 2 * duration_s / SECONDS_PER_HOUR, 0.0
    if p0 <= 0 and p1 <= 0:
        return 0.0, (p0 + p1) / 2 * duration_s / SECONDS_PER_HOUR
    # The segment crosses zero at fraction f of its duration.
    f = p0 / (p0 - p1)
    first = p0 / 2 * f * duration_s / SECONDS_PER_HOUR
    second = p1 / 2 * (1 - f) * duration_s / SECONDS_PER_HOUR
    return (first, second) if p0 > 0 else (second, first)


def ramp(p0_w: float, target_w: float, rate_w_per_s: float, dt_s: float) -> RampResult:
    """Move from p0 toward target at `rate_w_per_s` for dt seconds (rate <= 0 means an instant step)."""
    if rate_w_per_s <= 0 or p0_w == target_w:
        pos, neg = _segment(target_w, target_w, dt_s)
        return RampResult(target_w, pos, neg)
    t_reach = abs(target_w - p0_w) / rate_w_per_s
    if t_reach >= dt_s:
        direction = 1.0 if target_w > p0_w else -1.0
        p1 = p0_w + direction * rate_w_per_s * dt_s
        pos, neg = _segment(p0_w, p1, dt_s)
        return RampResult(p1, pos, neg)
    pos1, neg1 = _segment(p0_w, target_w, t_reach)
    pos2, neg2 = _segment(target_w, target_w, dt_s - t_reach)
    return RampResult(target_w, pos1 + pos2, neg1 + neg2)
