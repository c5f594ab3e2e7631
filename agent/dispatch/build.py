"""Turn the live fleet, the config and the signal book into PlanInputs for the next horizon.

Forecasts are deliberately simple until a forecasting issue lands: the uncontrolled load (base load net of PV) is
held at its last measured value (or the configured one). An up-DR baseline is the settlement's own
(agent.events.mv.baseline.updr_baseline): the one the event lifecycle already fixed for a running event when the
caller passes it (`baselines`), else the same rule with the data the planner has: High 4 of 5 from `history` when
given, else the pre-event average, read as the site's demand now (the uncontrolled load plus the assets' measured
power: what the site meter shows). Prices come from the newest price signal covering each step, else the configured
time-of-use day (`price_profile_per_kwh`, in local time of `[events] timezone`), else the flat default.

Reserves: each product's awards (`as_award`) are a Reserve the plan must hold (the awarded W, no price: the award is
already won); each product's offers (`as_offer`) are a Reserve of their own with the offered capacity prices per step
(an up and a down price series) and nothing awarded, so the planner decides how much to hold. That band is not
published as a bid (AsOffer says where it shows). Where an award of the product covers a step, its offer's price
there is 0: that capacity is already sold, so the offer adds nothing on top of the award's W (the LP sums every
Reserve into the same power and energy headroom).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np

from agent.config import AppConfig
from agent.dispatch.degradation import calendar_bends, calendar_price_per_wh_h, segment_prices, shallow_cycle_price
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, UpDr
from agent.dispatch.taper import TaperBook, taper_book
from agent.dispatch.wear_fits import WearFit, fit
from agent.events.mv.baseline import BaselineError, updr_baseline
from agent.events.mv.intervals import Interval, interval_start
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus
from agent.products import PRODUCTS
from agent.signals.models import AsAward, AsOffer, PriceSeries, SignalModel, UpDrEvent


def step_start(now: datetime, step_s: float) -> datetime:
    """The start of the planning step containing `now` (steps aligned to the UNIX epoch, like market periods)."""
    ts = now.timestamp()
    return datetime.fromtimestamp(ts - ts % step_s, now.tzinfo)


def plan_inputs(
    fleet: Fleet,
    config: AppConfig,
    now: datetime,
    book: Mapping[str, Mapping[str, SignalModel]],
    uncontrolled_w: float,
    *,
    baselines: Mapping[str, Mapping[float, float]] | None = None,
    history: Iterable[Interval] | None = None,
    wear_basis: Mapping[str, float] | None = None,
) -> tuple[PlanInputs, datetime]:
    """Inputs for the horizon starting at the current step, and that step's start time.

    `baselines`: up-DR event id → the settlement's baseline (W per M&V interval start) where the event lifecycle has
    fixed it; `history`: the site meter's interval history, for High 4 of 5 before it has (both optional);
    `wear_basis`: asset id → currency per whole life to price that pack's wear at instead of its replacement cost
    (opportunity-cost pricing, agent.dispatch.wear_book; see `life_cost`)."""
    d = config.dispatch
    start = step_start(now, d.step_s)
    times = [start + timedelta(seconds=d.step_s * k) for k in range(d.horizon_steps)]
    step_starts = start.timestamp() + d.step_s * np.arange(d.horizon_steps)
    basis = wear_basis or {}
    tapers = taper_book(fleet)
    for state in fleet.assets.values():
        tapers.observe(state)
    planned = (
        _asset(s, d.step_s, start, d.horizon_steps, d.wear_segments, basis, charge_taper(s, tapers))
        for s in _plannable(fleet)
    )
    assets = [a for a in planned if a]
    base = d.base_load_w if d.base_load_w is not None else uncontrolled_w
    site = SiteForecast(
        price_per_kwh=_prices(step_starts, book.get("prices", {}), _default_prices(times, d.step_s, config)),
        base_load_w=np.full(d.horizon_steps, base),
        pv_w=np.zeros(d.horizon_steps),
        import_limit_w=config.site.import_limit_w,
        export_limit_w=config.site.export_limit_w,
    )
    site_now = base + sum(_measured_w(s) for s in fleet.assets.values())
    updr = _updr(step_starts, d.step_s, book.get("up_dr", {}), site_now, config, baselines or {}, history)
    reserves = _reserves(step_starts, d.step_s, book.get("as_award", {}))
    reserves += _offers(step_starts, d.step_s, book.get("as_offer", {}), book.get("as_award", {}))
    return PlanInputs(d.horizon_steps, d.step_s, assets, site, updr=updr, reserves=reserves), start


def _measured_w(state: AssetState) -> float:
    """The asset's measured power now (W, + import), 0 without a reading: its share of the site meter."""
    m = state.measurement
    return float(m.power_w) if m is not None and m.power_w is not None and math.isfinite(m.power_w) else 0.0


def _plannable(fleet: Fleet) -> list[AssetState]:
    return [
        s
        for s in fleet.assets.values()
        if s.controllable
        and s.available
        and s.measurement is not None
        and s.measurement.status not in (DeviceStatus.FAULT, DeviceStatus.NO_EV)
        and s.measurement.soc is not None
        and s.usable_capacity_wh()
    ]


def charge_taper(state: AssetState, tapers: TaperBook) -> float | None:
    """The knee SoC of the asset's charge taper for the plan (AssetPlan.charge_taper_soc): its config's when set
    (1: no taper), else what its live limits taught (agent.dispatch.taper), else None."""
    knee = state.config.charge_taper_soc
    if knee is None:
        knee = tapers.knee(state.id)
    return None if knee is None or knee >= 1.0 else knee


def life_cost(state: AssetState, wear_basis: Mapping[str, float]) -> float | None:
    """What a whole life of this pack is priced at (currency), the R of every wear price: the opportunity value the
    caller learnt for it (`wear_basis`, agent.dispatch.wear_book), else its replacement cost; None: no wear cost."""
    value = wear_basis.get(state.id)
    return float(value) if value is not None else state.config.replacement_cost


def wear_model(state: AssetState) -> WearFit:
    """The pack's fitted wear, from the battery model its config names (chemistry, temperature, source)."""
    cfg = state.config
    return _wear_model(cfg.chemistry, cfg.temperature_c, cfg.wear_source)


@functools.lru_cache(maxsize=64)
def _wear_model(chemistry: str | None, temperature_c: float | None, source: str | None) -> WearFit:
    """wear_fits.fit, once per pack kind: a fleet of 1000 alike EVs re-plans without interpolating 1000 times."""
    return fit(chemistry, temperature_c, source)


def departure_steps(steps_left: float, steps: int) -> tuple[int, np.ndarray | None]:
    """The target step of an EV leaving `steps_left` steps after the horizon's start (the boundary at or after it),
    and the fraction of each step it is still plugged in when it leaves mid-step (None: on a boundary, or already
    past its departure: it stays plugged in for the whole first step). The plan books the departure step's energy
    for that fraction only and the executor holds the step's average over it (Plan.setpoints_w), so a car leaving
    10 minutes into an hour gets no more than 10 minutes of charging from the plan."""
    target_step = max(1, math.ceil(steps_left - 1e-9))
    last = steps_left - (target_step - 1)  # of the departure step, in (0, 1] unless the departure has passed
    if not 0.0 < last < 1.0 - 1e-9 or target_step > steps:
        return target_step, None
    presence = (np.arange(steps) < target_step).astype(float)
    presence[target_step - 1] = last
    return target_step, presence


def _calendar(
    cost: float | None, usable_wh: float, model: WearFit, is_ev: bool
) -> tuple[float, tuple[tuple[float, float], ...]]:
    """A pack's calendar price per Wh of its usable energy (the SoC's unit): convex in the energy held for a
    stationary pack (its fit's convex curve), the line for an EV, whose member LP on the aggregated path
    (agent.dispatch.member_lp) prices calendar as flows, linear in the energy held (docs/wear.md)."""
    if not cost:
        return 0.0, ()
    if is_ev:
        return calendar_price_per_wh_h(cost, usable_wh, model=model), ()
    return calendar_bends(cost, usable_wh, model)


def _asset(
    state: AssetState,
    step_s: float,
    start: datetime,
    steps: int,
    segments: int,
    wear_basis: Mapping[str, float],
    taper_soc: float | None = None,
) -> AssetPlan | None:
    m = state.measurement
    usable = state.usable_capacity_wh()
    if m is None or m.soc is None or not usable:
        return None
    cfg = state.config
    # nameplate, not the live limit: live limits derate with SoC, which the plan itself changes; the envelope
    # applies the live limits to every setpoint actually written
    charge = state.rated_charge_w()
    discharge = state.rated_discharge_w()
    nominal = m.capacity_wh or usable
    soh = m.soh if m.soh is not None else 1.0
    is_ev = state.kind is AssetKind.EV_CHARGER
    floor = (m.ev_min_soc or 0.0) * usable if is_ev else 0.0
    min_wh = min(floor, m.soc * usable)  # below the floor already: the floor is where it is, never a violation
    # the pack's wear, fitted to the battery model its config names (chemistry, temperature, source: docs/wear.md)
    model = wear_model(state)
    cost = life_cost(state, wear_basis)
    if cfg.wear_price_per_kwh is not None:
        wear = np.array([cfg.wear_price_per_kwh])
    elif cost:
        # the segments split the plan's window [min_wh, usable], not the whole pack: each is priced for the cycle
        # depth it really is (a full-window cycle costs a cycle of the window's depth, not 1.58x it at 10-90 %)
        window = max(0.0, usable - min_wh) / usable
        wear = segment_prices(cost, nominal, soh, cfg.efficiency, segments, window=window, model=model)
    else:
        wear = np.zeros(1)
    calendar, bends = _calendar(cost, usable, model, is_ev)
    activation = None
    if cfg.wear_price_per_kwh is None and cost:
        life = activation_life_per_kwh(state, usable, nominal, soh, model)
        activation = None if life is None else cost * life
    available = presence = None
    target_wh = target_step = None
    if is_ev and m.ev_departure is not None:
        target_step, presence = departure_steps((m.ev_departure - start).total_seconds() / step_s, steps)
        available = np.arange(steps) < target_step
        target_wh = (m.ev_target_soc or 0.0) * usable
    return AssetPlan(
        id=state.id,
        energy_wh=m.soc * usable,
        min_wh=min_wh,
        max_wh=usable,
        charge_w=max(0.0, charge),
        discharge_w=max(0.0, discharge),
        efficiency=cfg.efficiency,
        available=available,
        target_wh=target_wh,
        target_step=target_step,
        present_fraction=presence,
        wear_prices=wear,
        activation_wear_per_kwh=activation,
        calendar_price_per_wh_h=calendar,
        calendar_bends=bends,
        is_ev=is_ev,
        charge_taper_soc=taper_soc,
    )


def activation_life_per_kwh(
    state: AssetState, usable_wh: float, nominal_wh: float, soh: float, model: WearFit
) -> float | None:
    """Life fraction per kWh discharged following activations, so the price is life_cost × this: the pack's fitted
    shallow-cycle price at the depth of the regulation products' swings (agent.products.ProductProfile.swing_h) per
    unit of life cost; None (the cheapest wear segment, inputs.activation_price) without any product that swings.

    Depth = swing_h × the asset's rated power / its usable energy. The rated power because the band is at most that
    (a symmetric band at most the smaller of the charge and discharge ratings): a band below it swings shallower,
    which Xu's concave depth stress prices higher, so a partly used asset's activations are priced somewhat low.
    Several swinging products: the highest price of them (the conservative one).

    Limitation: the price is per asset, not per product (AssetPlan.activation_wear_per_kwh), and the assets are built
    before the caller knows which reserves they will hold. So a product with activations but no swing would be priced
    at this shallow price too, not at the cheapest segment. Awarded reserves carry no activations (`_reserves`); an
    offer carries the activation its sender gives, else its product's figure (`_offers`): only RegD has one today.
    """
    swings = [p.swing_h for p in PRODUCTS.values() if p.swing_h]
    if not swings or usable_wh <= 0:
        return None
    ratings = [w for w in (state.rated_charge_w(), state.rated_discharge_w()) if w > 0]
    if not ratings:
        return None
    band_w = min(ratings)
    eff = state.config.efficiency
    return max(shallow_cycle_price(1.0, nominal_wh, soh, eff, s * band_w / usable_wh, model=model) for s in swings)


def _covering(step_starts: np.ndarray, step_s: float, start: datetime, end: datetime) -> np.ndarray:
    """Steps (by start, unix s) that overlap [start, end). Vectorised: it runs on the event loop once per signal per
    re-plan, so its cost must stay flat in the number of steps."""
    return (start.timestamp() < step_starts + step_s) & (step_starts < end.timestamp())


def _default_prices(times: list[datetime], step_s: float, config: AppConfig) -> np.ndarray:
    """Per step, the price assumed where no signal says otherwise: the time-of-use day, else the flat default."""
    profile = config.dispatch.price_profile_per_kwh
    if profile is None:
        return np.full(len(times), config.dispatch.default_price_per_kwh)
    zone = ZoneInfo(config.events.timezone)
    return np.array([profile_mean(profile, zone, t, step_s) for t in times])


def profile_mean(profile: list[float], zone: ZoneInfo, start: datetime, step_s: float) -> float:
    """Time-weighted mean of a daily price profile over [start, start + step_s), read in local time of `zone`.

    A mean rather than the price at the step's start, because a step spanning two slots (an hourly step over a
    half-hourly profile) buys energy at both. Slot boundaries are found from the local wall clock at each point, so
    a daylight-saving change (none in Japan) shifts them as it shifts the tariff.
    """
    us = timedelta(microseconds=1)  # integer microseconds: every span is >= 1 us, so the walk always ends
    slot_us = 86_400_000_000 // len(profile)
    end = start + timedelta(seconds=step_s)
    total, t = 0.0, start
    while t < end:
        local = t.astimezone(zone)
        into_day_us = (local - local.replace(hour=0, minute=0, second=0, microsecond=0)) // us
        slot = min(into_day_us // slot_us, len(profile) - 1)
        span_us = min((slot + 1) * slot_us - into_day_us, (end - t) // us)
        total += profile[slot] * span_us
        t += span_us * us
    return total / ((end - start) // us)


def _prices(step_starts: np.ndarray, signals: Mapping[str, SignalModel], default: np.ndarray) -> np.ndarray:
    """The newest price signal covering each step's start, else `default` (one price per step)."""
    series = [(s.start, s.interval_s, s.prices_per_kwh) for s in signals.values() if isinstance(s, PriceSeries)]
    return _on_steps(step_starts, series, default)


def _on_steps(
    step_starts: np.ndarray, series: Iterable[tuple[datetime, float, Sequence[float]]], default: np.ndarray
) -> np.ndarray:
    """Per step, the value of the newest series (start, interval_s, values) whose intervals cover the step's start,
    else `default`. The one rule for every per-interval signal (energy prices, offered capacity prices): a step takes
    the interval its start falls in, later series overwrite earlier ones."""
    values = default.astype(float)
    for start, interval_s, data in series:  # insertion order: newer signals overwrite older ones
        index = np.floor((step_starts - start.timestamp()) / interval_s).astype(int)
        covered = (index >= 0) & (index < len(data))
        if covered.any():
            values[covered] = np.asarray(data, dtype=float)[index[covered]]
    return values


def _updr(
    step_starts: np.ndarray,
    step_s: float,
    events: Mapping[str, SignalModel],
    site_now_w: float,
    config: AppConfig,
    known: Mapping[str, Mapping[float, float]],
    history: Iterable[Interval] | None,
) -> UpDr | None:
    """The up-DR window, request, price and per-step baseline of the events covering the horizon."""
    window = np.zeros(len(step_starts), dtype=bool)
    baseline = np.full(len(step_starts), site_now_w)
    requested, price = 0.0, 0.0
    interval_s = config.events.interval_s
    history = list(history) if history is not None else None
    for event in events.values():
        if not isinstance(event, UpDrEvent):
            continue
        covered = _covering(step_starts, step_s, event.start, event.end)
        if not covered.any():
            continue
        window |= covered
        requested, price = max(requested, event.requested_increase_w), max(price, event.price_per_kwh)
        # each step reads the baseline of the M&V interval its start falls in
        first = interval_start(max(event.start.timestamp(), float(step_starts[covered][0])), interval_s)
        starts = list(np.arange(first, event.end.timestamp(), interval_s, dtype=float))
        values = known.get(event.id)
        if not values:
            try:
                values, _, _ = updr_baseline(
                    event.baseline_method, starts, site_now_w, history, ZoneInfo(config.events.timezone), interval_s
                )
            except BaselineError:
                values = {}
        for k in np.flatnonzero(covered):
            at = interval_start(max(float(step_starts[k]), event.start.timestamp()), interval_s)
            baseline[k] = values.get(at, site_now_w)
    if not window.any():
        return None
    return UpDr(window, baseline, requested, price)


def _reserves(step_starts: np.ndarray, step_s: float, awards: Mapping[str, SignalModel]) -> list[Reserve]:
    steps = len(step_starts)
    by_product: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for award in awards.values():
        if not isinstance(award, AsAward):
            continue
        covered = _covering(step_starts, step_s, award.block_start, award.block_end)
        if not covered.any():
            continue
        up, down = by_product.setdefault(award.product, (np.zeros(steps), np.zeros(steps)))
        up += covered * award.up_w
        down += covered * award.down_w
    zeros = np.zeros(steps)
    return [Reserve(product, zeros, zeros, up, down) for product, (up, down) in sorted(by_product.items())]


def _offers(
    step_starts: np.ndarray, step_s: float, offers: Mapping[str, SignalModel], awards: Mapping[str, SignalModel]
) -> list[Reserve]:
    """One Reserve per product offered (`as_offer`) that covers a step of the horizon, nothing awarded, with an up and
    a down capacity price per step. Each side is the energy prices' rule (`_on_steps`) over the offers naming it, in
    the book's order (newer overwrite older): an "up_down" offer feeds both sides, an "up" one the up side only, a
    "down" one the down side only; 0 where none covers. Steps an award of the same product covers (`_covering`, the
    award's own rule) are priced 0 on both sides: already sold (AsOffer).

    `Reserve.activation_per_h` is one number per Reserve: the highest `AsOffer.expected_activation_per_h` of the
    offers whose price is in force at some step (its wear and round-trip loss priced conservatively)."""
    by_product: dict[str, list[AsOffer]] = {}
    for offer in offers.values():
        if isinstance(offer, AsOffer):
            by_product.setdefault(offer.product, []).append(offer)
    steps = len(step_starts)
    none = np.full(steps, -1.0)
    reserves = []
    for product, group in sorted(by_product.items()):
        prices, in_force = [], set()
        for side in ("up", "down"):
            named = [k for k, o in enumerate(group) if o.directions in ("up_down", side)]
            # the same rule twice: each step's price, and which offer set it (its index in `group`)
            price = _on_steps(step_starts, [_series(group[k]) for k in named], np.zeros(steps))
            which = _on_steps(step_starts, [_series(group[k], k) for k in named], none)
            prices.append(price)
            in_force |= {int(k) for k in which if k >= 0}
        if not in_force:
            continue
        sold = np.zeros(steps, dtype=bool)
        for award in awards.values():
            if isinstance(award, AsAward) and award.product == product:
                sold |= _covering(step_starts, step_s, award.block_start, award.block_end)
        up, down = (np.where(sold, 0.0, price) for price in prices)
        activation = max(group[k].expected_activation_per_h() for k in in_force)
        zeros = np.zeros(steps)
        reserves.append(Reserve(product, up, down, zeros, zeros, activation_per_h=activation))
    return reserves


def offered_prices(book: Mapping[str, Mapping[str, SignalModel]], step: datetime, step_s: float) -> list[Offered]:
    """What the planner prices per product offered (`as_offer`) in the step starting at `step`: `plan_inputs`' own
    rule (the newest offer per side, 0 where an award has sold the step), for the status page. Products priced 0 on
    both sides are left out."""
    reserves = _offers(np.array([step.timestamp()]), step_s, book.get("as_offer", {}), book.get("as_award", {}))
    priced = [Offered(r.product, float(r.up_price_per_kw_h[0]), float(r.down_price_per_kw_h[0])) for r in reserves]
    return [o for o in priced if o.up_per_kw_h > 0 or o.down_per_kw_h > 0]


class Offered(NamedTuple):
    product: str
    up_per_kw_h: float
    down_per_kw_h: float


def _series(offer: AsOffer, index: int | None = None) -> tuple[datetime, float, Sequence[float]]:
    """The offer as `_on_steps` reads it: its prices, or (`index` given) that index in every interval."""
    values = offer.capacity_price_per_kw_h
    return offer.start, offer.interval_s, values if index is None else [float(index)] * len(values)
