"""Is the site meter telling the truth? Its reading cross-checked against the assets behind it and the site's range.

The controller and the SafetyEnvelope steer by what the site draws besides the controlled assets (base load, PV,
anything the agent does not steer): `uncontrolled = meter − Σ asset power`, each asset's power as it measures it
itself. A meter that lies (a wrong scale or offset, a stuck or spoofed register) would otherwise steer the fleet to
whatever the lie implies: a reading of +300 kW made the rule discharge everything it had, and the true site went
144 kW into export against a 40 kW limit.

So, with `[site] base_load_max_w` set, the uncontrolled power must lie in the configured range
`[base_load_min_w − pv_max_w, base_load_max_w]`, give or take `meter_tolerance_w` (readings of different devices are
not simultaneous, meters and assets have their own errors). A reading that implies otherwise is not believed and the
agent trusts the tighter bound, the range:
- the controller's estimate is the implied value clamped into the range;
- the site limits are kept for every value in the range (import against its top, export against its bottom), so
  whatever the truth is within the configured range, the true site stays within its limits.
A meter that gives no reading (unavailable, or reporting its own fault) is handled the same way: the last estimate,
clamped, and the limits against the whole range. A believed reading is used exactly, as without the check, while
every asset's power is known.

An implausible reading must pass back inside the range itself (not just the tolerance) to be believed again: a
reading hovering at the edge of the tolerance does not flap between the two modes every cycle.

Without `base_load_max_w` (the default) there is no range and no check: the meter is believed and, while it gives no
reading, the last estimate is kept.

The assets' power may be known only as an interval (`control/assets_now.py`: a reading older than the poll may
describe the asset before it moved towards its setpoint). The rest of the site then lies in `[meter − high,
meter − low]`: the controller keeps its last estimate while it lies in there (nothing says the rest of the site
changed) and otherwise moves to the nearer end, and the site limits are kept for the whole of it (within the range,
where there is one): a change of the rest of the site hidden inside it must not take the site past a limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import structlog

from agent.config import SiteSettings

log = structlog.get_logger("agent.control.meter")

MeterState = Literal["believed", "implausible", "missing"]


@dataclass(frozen=True, slots=True)
class Uncontrolled:
    """What the site draws besides the controlled assets: the value to steer by and the interval the truth lies in.

    `low_w == high_w == value_w` when the meter is believed and every asset's power is known.
    """

    value_w: float
    low_w: float
    high_w: float

    @classmethod
    def exactly(cls, watts: float) -> Uncontrolled:
        return cls(watts, watts, watts)


@dataclass(frozen=True, slots=True)
class SiteRange:
    """The configured range of the uncontrolled power, and the disagreement with it that is still believed."""

    low_w: float
    high_w: float
    tolerance_w: float

    @classmethod
    def from_settings(cls, site: SiteSettings) -> SiteRange | None:
        """None when `base_load_max_w` is unset: no range, no check."""
        if site.base_load_max_w is None:
            return None
        return cls(site.base_load_min_w - site.pv_max_w, site.base_load_max_w, site.meter_tolerance_w)

    def contains(self, watts: float, margin_w: float = 0.0) -> bool:
        return self.low_w - margin_w <= watts <= self.high_w + margin_w

    def clamp(self, watts: float) -> float:
        return min(max(watts, self.low_w), self.high_w)


AssetsPower = float | tuple[float, float]  # the assets' summed power, W: known, or the interval (low, high) it lies in


def _allowed(meter_w: float, assets_w: AssetsPower) -> tuple[float, float]:
    """The interval the rest of the site lies in by this reading: `[meter − high, meter − low]`."""
    low, high = assets_w if isinstance(assets_w, tuple) else (assets_w, assets_w)
    return meter_w - high, meter_w - low


def implied_w(meter_w: float, assets_w: AssetsPower, last_w: float) -> float:
    """What the rest of the site draws by this reading: meter − assets, or, with the assets an interval, the last
    estimate while the reading allows it, else the nearer end of what it allows."""
    low, high = _allowed(meter_w, assets_w)
    return min(max(last_w, low), high)


def _believed(meter_w: float, assets_w: AssetsPower, value_w: float, site: SiteRange | None) -> Uncontrolled:
    """Steer by `value_w`; the truth lies where the reading allows, `[meter − high, meter − low]`, and within the
    site's range where there is one (never excluding `value_w`, which the tolerance may put just outside it)."""
    truth_low, truth_high = _allowed(meter_w, assets_w)
    if site is not None:
        truth_low, truth_high = max(truth_low, site.low_w), min(truth_high, site.high_w)
    return Uncontrolled(value_w, min(truth_low, value_w), max(truth_high, value_w))


def judge(
    meter_w: float | None, assets_w: AssetsPower, last_w: float, site: SiteRange | None, believed_before: bool = True
) -> tuple[Uncontrolled, MeterState]:
    """The uncontrolled power to steer and limit by, and whether the meter reading was believed.

    `meter_w` None (or not finite) is no reading. `last_w` is the previous estimate, kept while there is none.
    `assets_w` is the assets' summed power, or the interval it lies in (`control/assets_now.py`).
    `believed_before` False: the meter was not believed last time, so its reading must lie inside the range itself,
    not only within the tolerance, to be believed again.
    """
    if meter_w is not None and not math.isfinite(meter_w):
        meter_w = None
    if site is None:
        if meter_w is None:
            return Uncontrolled.exactly(last_w), "missing"
        return _believed(meter_w, assets_w, implied_w(meter_w, assets_w, last_w), None), "believed"
    if meter_w is None:
        return Uncontrolled(site.clamp(last_w), site.low_w, site.high_w), "missing"
    implied = implied_w(meter_w, assets_w, last_w)
    if site.contains(implied, site.tolerance_w if believed_before else 0.0):
        return _believed(meter_w, assets_w, implied, site), "believed"
    return Uncontrolled(site.clamp(implied), site.low_w, site.high_w), "implausible"


class MeterCheck:
    """Judges the site meter every cycle, remembers the estimate, logs each change of verdict once."""

    def __init__(self, site: SiteSettings) -> None:
        self.meter_id = site.meter
        self.range = SiteRange.from_settings(site)
        self.state: MeterState = "believed"
        self.problem: str | None = None  # a sentence for the agent's status while the meter is not believed
        estimate = 0.0 if self.range is None else self.range.clamp(0.0)
        self.uncontrolled = Uncontrolled.exactly(estimate)

    def update(self, meter_w: float | None, assets_w: AssetsPower) -> Uncontrolled:
        """This cycle's uncontrolled power from the meter reading (None: none) and the assets' power now (their
        measured sum, or the interval it lies in: `control/assets_now.py`)."""
        if self.meter_id is None:  # no meter at the connection point: nothing to check, the range is all we know
            if self.range is not None:
                self.uncontrolled = Uncontrolled(self.uncontrolled.value_w, self.range.low_w, self.range.high_w)
            return self.uncontrolled
        last_w = self.uncontrolled.value_w
        result, state = judge(meter_w, assets_w, last_w, self.range, self.state == "believed")
        self.uncontrolled = result
        if state != self.state:
            self._changed(state, meter_w, assets_w, last_w)
        self.state = state
        return result

    def _changed(self, state: MeterState, meter_w: float | None, assets: AssetsPower, last_w: float) -> None:
        site = self.range
        span = {} if site is None else {"range_low_w": site.low_w, "range_high_w": site.high_w}
        # the assets' power the verdict took: their sum, or the point of their interval the estimate implies
        implied = None if meter_w is None else implied_w(meter_w, assets, last_w)
        assets_w = 0.0 if meter_w is None or implied is None else meter_w - implied
        if state == "believed":
            self.problem = None
            log.info("meter.plausible", meter_id=self.meter_id, meter_w=meter_w, assets_w=round(assets_w, 1))
            return
        if state == "missing":
            kept = "site limits kept for the whole range" if site is not None else "steering by the last estimate"
            self.problem = f"site meter {self.meter_id!r} gives no reading: {kept}"
            log.warning("meter.missing", meter_id=self.meter_id, uncontrolled_w=self.uncontrolled.value_w, **span)
            return
        assert site is not None and meter_w is not None and implied is not None
        self.problem = (
            f"site meter {self.meter_id!r} reads {meter_w:.0f} W; with the assets' own {assets_w:.0f} W the rest of "
            f"the site would draw {implied:.0f} W, outside {site.low_w:.0f}..{site.high_w:.0f} W "
            f"(± {site.tolerance_w:.0f} W): not believed, site limits kept for the whole range"
        )
        log.warning(
            "meter.implausible",
            meter_id=self.meter_id,
            meter_w=meter_w,
            assets_w=round(assets_w, 1),
            uncontrolled_w=round(implied, 1),
            tolerance_w=site.tolerance_w,
            **span,
        )
