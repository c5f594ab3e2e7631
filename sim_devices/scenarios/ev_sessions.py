"""Synthetic EV charging sessions for a site's chargers, in the spirit of the Caltech ACN-Data set.

Why synthetic: ACN-Data (Lee, Li & Low, "ACN-Data: Analysis and Applications of an Open EV Charging Dataset",
e-Energy 2019) cannot be vendored (REFERENCE.md "Data"), but scenarios need sessions with its character: workplace
chargers occupied through the working day by vehicles arriving in a morning peak, short of a full charge at
departure, with much less use at weekends; residential chargers occupied overnight. The numbers below are this
module's assumptions in that spirit, not values fitted to the data set:

- Workplace: arrival ~ N(08:30, 0.8 h) truncated to 07:00–10:00; dwell ~ N(8 h, 1 h) truncated to 6–10 h; a charger
  is used on 85 % of weekdays and 15 % of weekend days. Energy needed ~ lognormal, median 9 kWh (σ_log 0.55).
- Residential: arrival ~ N(18:45, 1 h) truncated to 17:00–21:00, departure the next morning ~ N(07:00, 0.5 h)
  truncated to 06:00–08:00; used on 70 % of nights (60 % on Friday and Saturday nights). Energy needed ~ lognormal,
  median 12 kWh (σ_log 0.6).
- Mixed: each charger is a workplace or a residential charger (half each, drawn per charger), like a site with an
  office car park and residents' bays.
- Pack (usable) capacity from common models, 40–100 kWh: 40 (20 %), 58 (25 %), 62 (10 %), 75 (20 %), 82 (15 %),
  100 (10 %).
- Owner wishes: target SoC at departure 0.80–1.00 in steps of 0.05 (0.80 most common); minimum SoC 0.20–0.30.
- Arrival SoC = target − energy needed / capacity, at least 0.05 (so it can lie below the owner's minimum: the
  agent must then charge to the minimum first); the energy needed is capped so that arrival SoC ≥ 0.05.
- Times are whole minutes, aware (default JST). A charger holds at most one vehicle: a drawn session that would
  overlap the previous one (or start within 10 min of its departure) is dropped, so some days are empty.
  Sessions arrive on the `days` from `start`; an overnight session may depart on the day after the last.

Each charger draws from its own stream (seed, charger index): adding chargers does not change the existing ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal

import numpy as np

from sim_devices.scenarios.prices import JST

Mix = Literal["workplace", "residential", "mixed"]
Kind = Literal["workplace", "residential"]

CAPACITIES_KWH = (40.0, 58.0, 62.0, 75.0, 82.0, 100.0)
CAPACITY_WEIGHTS = (0.20, 0.25, 0.10, 0.20, 0.15, 0.10)
TARGET_SOCS = (0.80, 0.85, 0.90, 0.95, 1.00)
TARGET_WEIGHTS = (0.40, 0.15, 0.20, 0.05, 0.20)
MIN_SOC_RANGE = (0.20, 0.30)
MIN_ARRIVAL_SOC = 0.05
MIN_GAP = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """One plug-in at one charger: aware times, Wh, SoC as fractions."""

    charger_index: int
    arrival: datetime
    departure: datetime
    capacity_wh: float
    arrival_soc: float
    target_soc: float
    min_soc: float
    kind: Kind = "workplace"

    @property
    def energy_needed_wh(self) -> float:
        """Energy from arrival SoC to the owner's target (0 if it arrives above it)."""
        return max(0.0, (self.target_soc - self.arrival_soc) * self.capacity_wh)


def _truncnorm(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    """Rejection-sampled truncated normal (clipping would pile probability on the bounds)."""
    for _ in range(100):
        x = float(rng.normal(mean, sd))
        if lo <= x <= hi:
            return x
    return min(max(mean, lo), hi)


def _minutes(midnight: datetime, hours: float) -> datetime:
    return midnight + timedelta(minutes=round(hours * 60.0))


def _draw_times(rng: np.random.Generator, kind: Kind, midnight: datetime) -> tuple[datetime, datetime] | None:
    """Arrival and departure of one day's session, or None when the charger is not used that day."""
    weekday = midnight.weekday()
    if kind == "workplace":
        if rng.random() >= (0.85 if weekday < 5 else 0.15):
            return None
        arrival_h = _truncnorm(rng, 8.5, 0.8, 7.0, 10.0)
        departure_h = arrival_h + _truncnorm(rng, 8.0, 1.0, 6.0, 10.0)
    else:
        if rng.random() >= (0.60 if weekday in (4, 5) else 0.70):
            return None
        arrival_h = _truncnorm(rng, 18.75, 1.0, 17.0, 21.0)
        departure_h = 24.0 + _truncnorm(rng, 7.0, 0.5, 6.0, 8.0)
    return _minutes(midnight, arrival_h), _minutes(midnight, departure_h)


def _draw_vehicle(rng: np.random.Generator, kind: Kind) -> tuple[float, float, float, float]:
    """(capacity Wh, arrival SoC, target SoC, min SoC) of one vehicle and its owner."""
    capacity_wh = float(rng.choice(CAPACITIES_KWH, p=CAPACITY_WEIGHTS)) * 1000.0
    target = float(rng.choice(TARGET_SOCS, p=TARGET_WEIGHTS))
    min_soc = round(float(rng.uniform(*MIN_SOC_RANGE)), 2)
    median_kwh, sigma = (9.0, 0.55) if kind == "workplace" else (12.0, 0.6)
    energy_wh = float(rng.lognormal(np.log(median_kwh), sigma)) * 1000.0
    energy_wh = min(energy_wh, (target - MIN_ARRIVAL_SOC) * capacity_wh)
    arrival_soc = round(max(MIN_ARRIVAL_SOC, target - energy_wh / capacity_wh), 3)
    return capacity_wh, arrival_soc, target, min_soc


def generate_sessions(
    start: date,
    days: int,
    chargers: int,
    seed: int,
    mix: Mix = "mixed",
    *,
    tz: tzinfo = JST,
    workplace_share: float = 0.5,
) -> list[SessionSpec]:
    """Sessions arriving on `days` days from `start` at `chargers` chargers, sorted by charger then arrival."""
    if days < 1 or chargers < 1:
        raise ValueError(f"days and chargers must be ≥ 1, got days={days}, chargers={chargers}")
    if mix not in ("workplace", "residential", "mixed"):
        raise ValueError(f"mix must be 'workplace', 'residential' or 'mixed', got {mix!r}")
    sessions: list[SessionSpec] = []
    for charger in range(chargers):
        rng = np.random.default_rng([seed, charger])
        drawn_kind: Kind = "workplace" if rng.random() < workplace_share else "residential"
        kind: Kind = drawn_kind if mix == "mixed" else mix
        last_departure: datetime | None = None
        for offset in range(days):
            midnight = datetime.combine(start + timedelta(days=offset), time(), tz)
            drawn = _draw_times(rng, kind, midnight)
            vehicle = _draw_vehicle(rng, kind)  # drawn every day so a day's outcome does not shift later days
            if drawn is None:
                continue
            arrival, departure = drawn
            if last_departure is not None and arrival < last_departure + MIN_GAP:
                continue
            capacity_wh, arrival_soc, target, min_soc = vehicle
            sessions.append(SessionSpec(charger, arrival, departure, capacity_wh, arrival_soc, target, min_soc, kind))
            last_departure = departure
    return sessions


def sessions_by_charger(sessions: Iterable[SessionSpec]) -> dict[int, list[SessionSpec]]:
    """Group sessions per charger index, each list sorted by arrival."""
    out: dict[int, list[SessionSpec]] = {}
    for s in sessions:
        out.setdefault(s.charger_index, []).append(s)
    return {k: sorted(v, key=lambda s: s.arrival) for k, v in sorted(out.items())}


def to_sim_params(sessions: Sequence[SessionSpec], start: datetime) -> list[dict[str, float]]:
    """One charger's sessions as the simulator's `sessions` params (sim_devices.config.EVSessionParams).

    Times become seconds from the simulation `start`. A session that departs by `start` is left out; one that is
    under way at `start` begins at 0 s with its arrival SoC (the simulator has no earlier history to charge it).
    """
    if start.utcoffset() is None:
        raise ValueError("start must be timezone-aware")
    chargers = {s.charger_index for s in sessions}
    if len(chargers) > 1:
        raise ValueError(f"sessions of one charger expected, got charger indexes {sorted(chargers)}")
    params = []
    for s in sorted(sessions, key=lambda s: s.arrival):
        departure_s = (s.departure - start).total_seconds()
        if departure_s <= 0:
            continue
        params.append({
            "arrival_s": max(0.0, (s.arrival - start).total_seconds()),
            "departure_s": departure_s,
            "capacity_kwh": s.capacity_wh / 1000.0,
            "soc": s.arrival_soc,
            "target_soc": s.target_soc,
            "min_soc": s.min_soc,
        })
    return params
