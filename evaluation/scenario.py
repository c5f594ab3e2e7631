"""The world of one evaluation run: a fleet, and per-step prices, base load, up-DR events and EV sessions.

Everything comes from the seeded generators in sim_devices.scenarios, so a (seed, days, fleet) triple names one
world exactly and every strategy is scored on the same one. Arrays are per planning step of `step_s`; JEPX prices
are half-hourly, so a 15-min step repeats each price twice.

Assumptions stated here (not fitted to any data set):
  * Battery packs are replaced at `replacement_cost_per_kwh` (default 30,000 JPY/kWh of nominal capacity, roughly a
    stationary LFP/NMC pack's cell-and-module cost; not an installed-system price) and are rated for
    `RATED_CYCLES[chemistry]` full cycles (LFP 6,000, NMC 3,000: typical stationary datasheet figures to 80 %
    capacity; only the constant-price strategies read them, as EMHASS users do).
  * An EV owner asks `ev_wear_price_per_kwh` (default 8 JPY/kWh) for every kWh discharged for V2G.
  * Regulation (a RegD-like product, `RegD` in agent.dispatch.inputs): the site may offer up and down capacity in
    any step, paid per kW·h of each side at an hourly capacity price (lognormal, median
    `regulation_median_per_kw_h`, default 1.5 JPY, about PJM's recent clearing prices at 150 JPY/USD; an
    assumption) times the hour's performance score, and follows a RegD-like signal (energy neutral per 15 min)
    sampled every `REGULATION_SAMPLE_S`. Capacity prices are published day-ahead like energy prices.
  * The site's base load follows an office-like day: `base_night_w` at night rising to `base_day_w` 08:00–18:00 on
    weekdays. It is known exactly (the forecast error of base load is not what this harness measures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np

from sim_devices.scenarios import (
    JST,
    SessionSpec,
    generate_prices,
    generate_sessions,
    generate_updr_events,
    regulation_capacity_prices,
    regulation_values,
    swing_h,
)
from sim_devices.scenarios.prices import PERIOD_S

DEFAULT_START = date(2025, 4, 1)  # April: a spring curtailment season falls in the first weeks
# JEPX's day-ahead auction closes at 10:00 JST and publishes day D+1's prices shortly after; up-DR events for D+1 are
# called on the same rhythm. Before 10:00 only today's prices are known.
PUBLISH_HOUR_JST = 10
# The regulation signal's sample: PJM scores performance on 10-s samples of its 2-s signal, and a year of 2-s physics
# sub-steps is too slow in Python (a year at 10 s: 3.2 M sub-steps, ~90 s per strategy)
REGULATION_SAMPLE_S = 10.0
REGULATION_MEDIAN_PER_KW_H = 1.5
RATED_CYCLES = {"lfp": 6000, "nmc": 3000}


@dataclass(frozen=True)
class BatterySpec:
    id: str
    capacity_wh: float = 100_000.0
    power_w: float = 50_000.0
    efficiency: float = 0.95
    temperature_c: float = 25.0
    soc: float = 0.5
    replacement_cost: float = 3_000_000.0  # whole pack, JPY
    chemistry: str = "lfp"  # scored by BLAST-Lite's cell of this chemistry (evaluation.scoring)
    rated_cycles: int = RATED_CYCLES["lfp"]


@dataclass(frozen=True)
class ChargerSpec:
    id: str
    power_w: float = 11_000.0
    efficiency: float = 0.95


@dataclass(frozen=True)
class FleetSpec:
    batteries: tuple[BatterySpec, ...]
    chargers: tuple[ChargerSpec, ...]
    ev_wear_price_per_kwh: float = 8.0
    base_night_w: float = 3_000.0
    base_day_w: float = 8_000.0


def make_fleet(
    name: str, replacement_cost_per_kwh: float = 30_000.0, ev_wear_price_per_kwh: float = 8.0, chemistry: str = "lfp"
) -> FleetSpec:
    """Named fleets: `tiny` (tests), `small` (the 365-day comparison), `default` (a bigger site), `large` (a depot of
    200 chargers: where the full per-EV LP gets slow and the aggregated MPC is compared with it in closed loop)."""
    sizes = {"tiny": (1, 2), "small": (2, 4), "default": (4, 12), "large": (2, 200)}
    if name not in sizes:
        raise ValueError(f"unknown fleet {name!r}; known: {', '.join(sizes)}")
    if chemistry not in RATED_CYCLES:
        raise ValueError(f"unknown chemistry {chemistry!r}; known: {', '.join(RATED_CYCLES)}")
    if replacement_cost_per_kwh <= 0:
        raise ValueError(f"replacement cost must be > 0 per kWh, got {replacement_cost_per_kwh}")
    n_bat, n_ev = sizes[name]
    batteries = tuple(
        BatterySpec(
            id=f"bat-{i + 1}", replacement_cost=replacement_cost_per_kwh * 100.0, chemistry=chemistry,
            rated_cycles=RATED_CYCLES[chemistry],
        )
        for i in range(n_bat)
    )
    chargers = tuple(ChargerSpec(id=f"ev-{i + 1}") for i in range(n_ev))
    return FleetSpec(batteries, chargers, ev_wear_price_per_kwh=ev_wear_price_per_kwh)


@dataclass(frozen=True)
class Scenario:
    """Per-step series of the run (length `steps`) plus the EV sessions of each charger (by charger id)."""

    start: datetime
    days: int
    step_s: float
    fleet: FleetSpec
    price_per_kwh: np.ndarray
    base_load_w: np.ndarray
    updr_window: np.ndarray  # bool
    updr_requested_w: np.ndarray  # 0 outside events
    updr_price_per_kwh: np.ndarray
    sessions: dict[str, list[SessionSpec]] = field(default_factory=dict)
    area: str = "Kyushu"
    seed: int = 1
    # regulation: capacity price per step (currency per kW·h of each side; all 0: no regulation offered), the
    # normalised signal every REGULATION_SAMPLE_S (+1 = full up, i.e. discharge), and its statistics for planning
    regulation_price_per_kw_h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    regulation: np.ndarray = field(default_factory=lambda: np.zeros(0))
    regulation_activation_per_h: float = 0.0  # mean of the signal's positive part: kWh up per kW·h reserved
    regulation_swing_h: float = 0.0  # energy-weighted half cycle, kWh per kW reserved (sizes the cycle depth)

    @property
    def steps(self) -> int:
        return len(self.price_per_kwh)

    @property
    def step_h(self) -> float:
        return self.step_s / 3600.0

    @property
    def offers_regulation(self) -> bool:
        return bool(self.regulation.size) and bool(np.any(self.regulation_price_per_kw_h > 0))

    def regulation_samples(self, k: int) -> np.ndarray:
        """The signal's samples during step k."""
        per_step = round(self.step_s / REGULATION_SAMPLE_S)
        return self.regulation[k * per_step : (k + 1) * per_step]

    def window(self, series: np.ndarray, k: int, length: int, fill: float = 0.0) -> np.ndarray:
        """`series[k:k+length]`, padded with `fill` past the run's end.

        Padding prices with 0 makes the world end at the run's end for every strategy alike: energy left in a
        store then is worth nothing to anyone, so no strategy gains by emptying storage the others keep.
        """
        out = np.full(length, fill, dtype=np.asarray(series).dtype)
        part = series[k : k + length]
        out[: len(part)] = part
        return out


def published_until(scenario: Scenario, k: int) -> int:
    """First step whose day-ahead prices and up-DR events are not yet published at step k (midnights are steps
    because step_s divides a day or is a multiple of 30 min within it)."""
    now = scenario.start + timedelta(seconds=k * scenario.step_s)
    days_known = 2 if now.astimezone(JST).hour >= PUBLISH_HOUR_JST else 1
    end_day = datetime.combine(now.astimezone(JST).date() + timedelta(days=days_known), time(), JST)
    return math.ceil((end_day - scenario.start).total_seconds() / scenario.step_s - 1e-9)


def persistence_forecast(series: np.ndarray, k: int, length: int, known_until: int, per_day: int) -> np.ndarray:
    """`series[k:k+length]` where published (`< known_until`), else the value at the same time of day on the last
    published day: what a trader knows without a price model. Past the series' end: 0 (the world ends)."""
    out = np.zeros(length)
    for j in range(length):
        index = k + j
        if index >= len(series):
            break
        while index >= known_until:
            index -= per_day
        out[j] = series[index] if index >= 0 else 0.0
    return out


def _base_load(start: datetime, steps: int, step_s: float, fleet: FleetSpec) -> np.ndarray:
    out = np.empty(steps)
    for k in range(steps):
        t = start + timedelta(seconds=k * step_s)
        hour = t.hour + t.minute / 60.0
        working = t.weekday() < 5 and 8.0 <= hour < 18.0
        out[k] = fleet.base_day_w if working else fleet.base_night_w
    return out


def make_scenario(
    days: int,
    seed: int = 1,
    fleet: FleetSpec | None = None,
    *,
    step_s: float = 900.0,
    area: str = "Kyushu",
    start: date = DEFAULT_START,
    curtailment_frequency: float = 0.15,
    regulation_median_per_kw_h: float = REGULATION_MEDIAN_PER_KW_H,
) -> Scenario:
    """A seeded world of `days` days from `start` (midnight JST); `regulation_median_per_kw_h` 0: no regulation."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if regulation_median_per_kw_h < 0:
        raise ValueError(f"regulation_median_per_kw_h must be >= 0, got {regulation_median_per_kw_h}")
    if regulation_median_per_kw_h > 0 and step_s % REGULATION_SAMPLE_S:
        raise ValueError(f"step_s {step_s} must be a multiple of the regulation sample {REGULATION_SAMPLE_S:g} s")
    if PERIOD_S % step_s and step_s % PERIOD_S:
        raise ValueError(f"step_s {step_s} must divide or be a multiple of the 30-min price period")
    fleet = fleet or make_fleet("small")
    start_dt = datetime.combine(start, time(), JST)
    steps = round(days * 86400 / step_s)
    prices = generate_prices(start, days, seed, curtailment_frequency=curtailment_frequency)
    half_hourly = prices.series(area)
    t_mid = (np.arange(steps) + 0.5) * step_s
    price = half_hourly[np.minimum((t_mid // PERIOD_S).astype(int), len(half_hourly) - 1)]
    if step_s > PERIOD_S:  # a long step pays the mean of the periods it covers
        per = int(step_s // PERIOD_S)
        price = half_hourly[: steps * per].reshape(steps, per).mean(axis=1)
    base = _base_load(start_dt, steps, step_s, fleet)
    peak_w = float(base.max()) + 0.25 * sum(b.power_w for b in fleet.batteries) + 0.25 * sum(
        c.power_w for c in fleet.chargers
    )
    window = np.zeros(steps, dtype=bool)
    requested = np.zeros(steps)
    dr_price = np.zeros(steps)
    for event in generate_updr_events(prices, area, peak_w, seed):
        first = math.ceil((event.start - start_dt).total_seconds() / step_s)
        last = math.floor((event.end - start_dt).total_seconds() / step_s)
        window[first:last] = True
        requested[first:last] = event.requested_increase_w
        dr_price[first:last] = event.price_per_kwh
    sessions: dict[str, list[SessionSpec]] = {c.id: [] for c in fleet.chargers}
    if fleet.chargers:
        for s in generate_sessions(start, days, len(fleet.chargers), seed):
            sessions[fleet.chargers[s.charger_index].id].append(s)
    regulation = np.zeros(0)
    reg_price = np.zeros(steps)
    activation = swing = 0.0
    if regulation_median_per_kw_h > 0:
        regulation = regulation_values(days * 86400, seed, REGULATION_SAMPLE_S)
        hourly = regulation_capacity_prices(days * 24, seed, regulation_median_per_kw_h)
        reg_price = hourly[np.minimum((t_mid // 3600).astype(int), len(hourly) - 1)]
        activation = float(np.maximum(regulation, 0.0).mean())
        swing = swing_h(regulation, REGULATION_SAMPLE_S)
    return Scenario(
        start=start_dt,
        days=days,
        step_s=step_s,
        fleet=fleet,
        price_per_kwh=np.asarray(price, dtype=float),
        base_load_w=base,
        updr_window=window,
        updr_requested_w=requested,
        updr_price_per_kwh=dr_price,
        sessions=sessions,
        area=area,
        seed=seed,
        regulation_price_per_kw_h=reg_price,
        regulation=regulation,
        regulation_activation_per_h=activation,
        regulation_swing_h=swing,
    )
