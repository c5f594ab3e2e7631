"""Turn the live fleet, the config and the signal book into PlanInputs for the next horizon.

Forecasts are deliberately simple until a forecasting issue lands: the uncontrolled load (base load net of PV) is
held at its last measured value (or the configured one), and an up-DR baseline is that same value. Prices come
from the newest price signal covering each step, else the configured time-of-use day (`price_profile_per_kwh`, in
local time of `[events] timezone`), else the flat default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from agent.config import AppConfig
from agent.dispatch.degradation import calendar_price_per_wh_h, segment_prices
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, UpDr
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus
from agent.signals.models import AsAward, PriceSeries, SignalModel, UpDrEvent


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
) -> tuple[PlanInputs, datetime]:
    """Inputs for the horizon starting at the current step, and that step's start time."""
    d = config.dispatch
    start = step_start(now, d.step_s)
    times = [start + timedelta(seconds=d.step_s * k) for k in range(d.horizon_steps)]
    step_starts = start.timestamp() + d.step_s * np.arange(d.horizon_steps)
    assets = [a for a in (_asset(s, d.step_s, start, d.horizon_steps, d.wear_segments) for s in _plannable(fleet)) if a]
    base = d.base_load_w if d.base_load_w is not None else uncontrolled_w
    site = SiteForecast(
        price_per_kwh=_prices(step_starts, book.get("prices", {}), _default_prices(times, d.step_s, config)),
        base_load_w=np.full(d.horizon_steps, base),
        pv_w=np.zeros(d.horizon_steps),
        import_limit_w=config.site.import_limit_w,
        export_limit_w=config.site.export_limit_w,
    )
    updr = _updr(step_starts, d.step_s, book.get("up_dr", {}), base)
    reserves = _reserves(step_starts, d.step_s, book.get("as_award", {}))
    return PlanInputs(d.horizon_steps, d.step_s, assets, site, updr=updr, reserves=reserves), start


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


def _asset(state: AssetState, step_s: float, start: datetime, steps: int, segments: int) -> AssetPlan | None:
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
    if cfg.wear_price_per_kwh is not None:
        wear = np.array([cfg.wear_price_per_kwh])
    elif cfg.replacement_cost:
        wear = segment_prices(cfg.replacement_cost, nominal, soh, cfg.efficiency, segments)
    else:
        wear = np.zeros(1)
    calendar = calendar_price_per_wh_h(cfg.replacement_cost, nominal) if cfg.replacement_cost else 0.0
    is_ev = state.kind is AssetKind.EV_CHARGER
    available = None
    target_wh = target_step = None
    floor = 0.0
    if is_ev:
        floor = (m.ev_min_soc or 0.0) * usable
        if m.ev_departure is not None:
            target_step = max(1, math.ceil((m.ev_departure - start).total_seconds() / step_s))
            available = np.arange(steps) < target_step
            target_wh = (m.ev_target_soc or 0.0) * usable
    return AssetPlan(
        id=state.id,
        energy_wh=m.soc * usable,
        min_wh=min(floor, m.soc * usable),  # below the floor already: the floor is where it is, never a violation
        max_wh=usable,
        charge_w=max(0.0, charge),
        discharge_w=max(0.0, discharge),
        efficiency=cfg.efficiency,
        available=available,
        target_wh=target_wh,
        target_step=target_step,
        wear_prices=wear,
        calendar_price_per_wh_h=calendar,
        is_ev=is_ev,
    )


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
    prices = default.astype(float)
    for signal in signals.values():  # insertion order: newer signals overwrite older ones
        if not isinstance(signal, PriceSeries):
            continue
        index = np.floor((step_starts - signal.start.timestamp()) / signal.interval_s).astype(int)
        covered = (index >= 0) & (index < len(signal.prices_per_kwh))
        if covered.any():
            prices[covered] = np.asarray(signal.prices_per_kwh, dtype=float)[index[covered]]
    return prices


def _updr(step_starts: np.ndarray, step_s: float, events: Mapping[str, SignalModel], base_w: float) -> UpDr | None:
    window = np.zeros(len(step_starts), dtype=bool)
    requested, price = 0.0, 0.0
    for event in events.values():
        if isinstance(event, UpDrEvent):
            covered = _covering(step_starts, step_s, event.start, event.end)
            if covered.any():
                window |= covered
                requested, price = max(requested, event.requested_increase_w), max(price, event.price_per_kwh)
    if not window.any():
        return None
    return UpDr(window, np.full(len(step_starts), base_w), requested, price)


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
