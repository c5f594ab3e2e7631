"""Why an asset does what the plan has it do now, in a few words a person can check against the prices.

The optimiser gives powers, not reasons; a viewer who sees a battery discharging at noon wants to know what it is
for. The rule reads the plan itself: this step's power of the asset, the next step where it does the opposite (or
anything at all), and the prices it was planned against. "buys at 8, sells 18:00 at 32" says the plan stores cheap
energy for a dearer hour; "keeps 12 kWh for 18:00 (32)" says an idle battery waits for the peak. It explains a
plan's shape, it does not re-derive the optimum: wear, efficiency and terminal value are in the plan's numbers only.

Prices are shown bare (the caller's column or line names the currency, `agent.money.price`); times are the local
time of the site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from agent.money import price

if TYPE_CHECKING:
    import numpy as np

    from agent.dispatch.plan import Plan

ACTIVE_W = 100.0  # below this a planned power is "idle" (solver noise, not an intention)
SAME_PRICE = 1e-6  # prices closer than this are equal (currency per kWh)


@dataclass(frozen=True)
class PlanContext:
    """A plan with what it was planned against: the price per step and the up-DR window, if any."""

    plan: Plan
    start: datetime  # start of step 0
    prices: np.ndarray  # (T,) currency per kWh
    updr: np.ndarray | None = None  # (T,) bool: the step overlaps an up-DR event
    updr_price: float = 0.0  # the event's reward per kWh above the baseline

    @property
    def hours(self) -> float:
        return self.plan.step_s * self.plan.power_w.shape[1] / 3600

    def step(self, now: datetime) -> int | None:
        """The plan's step holding `now`, None when the plan does not cover it."""
        k = int((now - self.start).total_seconds() // self.plan.step_s)
        return k if 0 <= k < self.plan.power_w.shape[1] else None


@dataclass(frozen=True)
class EvNeed:
    """An EV's target, as the charger reports it: SoC 0..1 by a departure time."""

    target_soc: float
    departure: datetime


def reason(context: PlanContext, asset_id: str, now: datetime, zone: tzinfo, ev: EvNeed | None = None) -> str | None:
    """Why `asset_id` has its planned power at `now`; None when the plan does not hold the asset or the time."""
    plan = context.plan
    k = context.step(now)
    if k is None or asset_id not in plan.asset_ids:
        return None
    i = plan.asset_ids.index(asset_id)
    power = plan.power_w[i]
    prices = context.prices

    def at(j: int) -> str:
        return (context.start + timedelta(seconds=plan.step_s * j)).astimezone(zone).strftime("%H:%M")

    now_price = price(prices[k])
    if power[k] > ACTIVE_W:
        if context.updr is not None and context.updr[k]:
            return f"up-DR event pays {price(context.updr_price)} to absorb"
        sell = _next(power, k, lambda p: p < -ACTIVE_W)
        if sell is not None:
            return f"buys at {now_price}, sells {at(sell)} at {price(prices[sell])}"
        if ev is not None:
            return f"to {ev.target_soc:.0%} by {ev.departure.astimezone(zone):%H:%M}"
        if prices[k] <= prices.min() + SAME_PRICE:
            return f"{now_price} is the {context.hours:g}-h low"
        return f"charges at {now_price}"
    if power[k] < -ACTIVE_W:
        buy = _next(power, k, lambda p: p > ACTIVE_W)
        if buy is not None:
            return f"sells at {now_price}, rebuys {at(buy)} at {price(prices[buy])}"
        if prices[k] >= prices.max() - SAME_PRICE:
            return f"{now_price} is the {context.hours:g}-h high"
        return f"sells at {now_price}"
    held = max(plan.reserve_up_w[i, k], plan.reserve_down_w[i, k])
    if held > ACTIVE_W:
        return f"holds {held / 1000:.0f} kW in reserve"
    later = _next(power, k, lambda p: abs(p) > ACTIVE_W)
    if later is None:
        return f"idle: no trade pays in {context.hours:g} h"
    if power[later] < 0:
        return f"keeps {plan.energy_wh[i, later] / 1000:.0f} kWh for {at(later)} ({price(prices[later])})"
    return f"waits for {at(later)} at {price(prices[later])}"


def _next(power: np.ndarray, k: int, test: Callable[[float], bool]) -> int | None:
    """First step after `k` whose power passes `test`."""
    for j in range(k + 1, len(power)):
        if test(float(power[j])):
            return j
    return None
