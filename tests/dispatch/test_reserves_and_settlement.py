"""Issue 13 item 3, reproduced first: reserve energy held from the start of each step, up-DR paid only above the
baseline, and regulation's expected round-trip loss in the energy balance. Each test failed before the fix."""

from __future__ import annotations

import numpy as np
import pytest

from agent.dispatch.aggregate import solve_aggregated
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, UpDr
from agent.dispatch.planner import solve
from agent.dispatch.reserve_check import reserve_energy_unheld_kwh
from agent.events.mv.baseline import delivered_increase


def store(energy_wh: float, power_w: float, max_wh: float, efficiency: float = 1.0, **kw: object) -> AssetPlan:
    return AssetPlan("b", energy_wh, 0.0, max_wh, power_w, power_w, efficiency, **kw)  # type: ignore[arg-type]


def flat_site(prices: list[float], base_w: float = 0.0) -> SiteForecast:
    t = len(prices)
    return SiteForecast(np.array(prices, dtype=float), np.full(t, base_w), np.zeros(t))


def s_frr_up(t: int, up_w: float) -> Reserve:
    zeros = np.zeros(t)
    return Reserve("S-FRR", zeros, zeros, awarded_up_w=np.full(t, up_w), awarded_down_w=zeros)


def test_an_empty_battery_cannot_hold_an_up_reserve_in_its_first_step() -> None:
    # the case: at 0 kWh, 40 kW up for 30 min needs 20 kWh at the step's start, which it does not have
    t = 4
    empty = store(0.0, 50_000, 50_000)
    inputs = PlanInputs(t, 3600, [empty], flat_site([10, 10, 10, 10]), reserves=[s_frr_up(t, 40e3)])
    plan = solve(inputs)
    assert plan.violations["reserve_short_kwh"] >= 40.0 - 1e-3  # the whole first step is short
    need = plan.reserve_up_w[0] * 0.5  # Wh held for 30 min (efficiency 1)
    assert np.all(plan.energy_wh[0, :-1] >= need - 1e-3)  # at each step's start
    assert np.all(plan.energy_wh[0, 1:] >= need - 1e-3)  # and its end
    assert reserve_energy_unheld_kwh(inputs, plan.energy_wh, plan.reserve_up_w, plan.reserve_down_w) < 1e-6


def test_the_unheld_check_sees_a_reserve_without_energy_at_the_step_start() -> None:
    t = 2
    inputs = PlanInputs(t, 3600, [store(0.0, 50_000, 50_000)], flat_site([10, 10]), reserves=[s_frr_up(t, 40e3)])
    stored = np.array([[0.0, 20_000.0, 20_000.0]])  # charged 20 kWh in step 0 while "holding" 40 kW up
    up = np.array([[40_000.0, 40_000.0]])
    assert reserve_energy_unheld_kwh(inputs, stored, up, np.zeros((1, t))) == pytest.approx(20.0)


def updr_case(energy_wh: float) -> PlanInputs:
    """The issue's case: baseline 15 kW over a 10 kW base, prices [10, 20, 10], a 20 kW battery."""
    dr = UpDr(np.ones(3, dtype=bool), np.full(3, 15_000.0), requested_w=5_000, price_per_kwh=5.0)
    return PlanInputs(3, 3600, [store(energy_wh, 20_000, 40_000)], flat_site([10, 20, 10], 10_000), updr=dr)


@pytest.mark.parametrize("energy_wh", [0.0, 20_000.0, 40_000.0])
@pytest.mark.parametrize("method", ["full", "aggregated"])
def test_updr_revenue_is_what_settlement_pays(energy_wh: float, method: str) -> None:
    inputs = updr_case(energy_wh)
    plan = solve(inputs) if method == "full" else solve_aggregated(inputs, groups=1)
    site_w = 10_000 + plan.power_w.sum(axis=0)
    dr = inputs.updr
    assert dr is not None
    paid = np.minimum(delivered_increase(site_w, dr.baseline_w, slice(0, 3)), dr.requested_w)
    assert plan.breakdown["updr_revenue"] >= 0.0
    assert plan.breakdown["updr_revenue"] == pytest.approx(dr.price_per_kwh * paid.sum() / 1000.0, abs=1e-3)
    short = (dr.requested_w - paid).sum() / 1000.0
    assert plan.violations["updr_short_kwh"] == pytest.approx(short, abs=1e-3)


def regd(t: int, price: float, activation_per_h: float) -> Reserve:
    prices = np.full(t, price)
    zeros = np.zeros(t)
    return Reserve("RegD", prices, prices, zeros, zeros, activation_per_h)


def test_regulation_round_trip_loss_is_taken_from_the_stored_energy() -> None:
    # a lossy battery holding a symmetric band loses α·r·h·(1/η − η) Wh per step to following the signal
    t, eta, alpha = 4, 0.9, 0.2
    asset = store(50_000, 50_000, 100_000, eta, activation_wear_per_kwh=0.0, terminal_price_per_kwh=20.0)
    plan = solve(PlanInputs(t, 900, [asset], flat_site([20.0] * t), reserves=[regd(t, 5.0, alpha)]))
    r = plan.reserve_up_w[0]
    assert r.sum() > 0
    p = plan.power_w[0]
    h = 0.25
    moved = np.where(p > 0, p * eta * h, p * h / eta)
    loss = alpha * r * h * (1 / eta - eta)
    assert np.diff(plan.energy_wh[0]) == pytest.approx(moved - loss, abs=1e-3)
