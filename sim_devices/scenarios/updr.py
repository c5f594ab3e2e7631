"""Synthetic up-DR (上げDR) events that follow the curtailment days of a generated price set.

Why: up-DR asks a site to raise consumption above its baseline while an area has surplus solar; the market sign of
that surplus is an area price of 0.01 JPY/kWh (REFERENCE.md "Grid services"). Tying events to the curtailment days of
`prices.generate_prices` keeps a scenario's prices and events consistent, so the dispatcher sees both signals agree.

Assumptions (illustrative, not one programme's terms):
- One event per curtailment day of the area: the full 08:00–16:00 JST window with probability `full_window_share`,
  otherwise a half-hour-aligned sub-window starting 08:00–12:00 and ending 13:00–16:00 (so it always overlaps the
  10:00–15:00 curtailment periods).
- Requested increase: `increase_fraction` (default 10–50 %) of the site's peak demand, rounded to 10 W.
- Reward: `price_range` (default 3–12 JPY/kWh) per kWh above the baseline, rounded to 0.1 JPY/kWh.
- The baseline method is METI ERAB "High 4 of 5" (`high4of5`); computing that baseline is not this module's job.

Field names are those of agent.signals.UpDrEvent so a spec turns into that signal's JSON without a mapping table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta

import numpy as np

from sim_devices.scenarios.prices import AREAS, JST, PriceSet


@dataclass(frozen=True, slots=True)
class UpDrEventSpec:
    """An up-DR event in the shape of agent.signals.UpDrEvent: aware times, W, JPY/kWh."""

    id: str
    start: datetime
    end: datetime
    requested_increase_w: float
    price_per_kwh: float
    baseline_method: str = "high4of5"

    def to_signal_dict(self) -> dict[str, object]:
        """Plain JSON types; times as ISO 8601 with their offset."""
        data = asdict(self)
        data["start"] = self.start.isoformat()
        data["end"] = self.end.isoformat()
        return data

    def to_signal_json(self) -> str:
        """The payload of an `up_dr` signal (what the agent's signal topic accepts)."""
        return json.dumps(self.to_signal_dict())


def generate_updr_events(
    prices: PriceSet,
    area: str,
    site_peak_w: float,
    seed: int,
    *,
    full_window_share: float = 0.5,
    increase_fraction: tuple[float, float] = (0.1, 0.5),
    price_range: tuple[float, float] = (3.0, 12.0),
) -> list[UpDrEventSpec]:
    """One event per curtailment day of `area` in `prices`, in date order; none when the area is never curtailed."""
    if area not in AREAS:
        raise ValueError(f"unknown area {area!r}; known: {', '.join(AREAS)}")
    if not site_peak_w > 0:
        raise ValueError(f"site_peak_w must be > 0, got {site_peak_w}")
    # The area index joins the seed so two areas of one scenario do not get the same draws.
    rng = np.random.default_rng([seed, AREAS.index(area)])
    events = []
    for day in sorted(prices.curtailment_days.get(area, [])):
        midnight = datetime.combine(day, time(), JST)
        if rng.random() < full_window_share:
            start_h, end_h = 8.0, 16.0
        else:
            start_h = 8.0 + 0.5 * int(rng.integers(0, 9))  # 08:00..12:00
            end_h = 13.0 + 0.5 * int(rng.integers(0, 7))  # 13:00..16:00
        increase = max(10.0, round(site_peak_w * rng.uniform(*increase_fraction), -1))
        events.append(UpDrEventSpec(
            id=f"updr-{area.lower()}-{day:%Y%m%d}",
            start=midnight + timedelta(hours=start_h),
            end=midnight + timedelta(hours=end_h),
            requested_increase_w=float(increase),
            price_per_kwh=round(float(rng.uniform(*price_range)), 1),
        ))
    return events
