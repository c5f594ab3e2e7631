"""The one cost model (agent.dispatch.costs) compiled to its three backends gives the same money, term by term.

* cvxpy (agent.dispatch.formulation) against numpy pricing (agent.dispatch.pricing): the LP's breakdown of its own
  optimum equals what `plan_cost` and `reserve_cost` make of that schedule, for every term, on seeded random sites
  with a battery, a V2G and a charge-only EV, wear segments, calendar ageing (the battery's convex in SoC, with a
  bend below its floor in some cases), a binding import limit, an up-DR window and a reserve award.
* HiGHS arrays (agent.dispatch.member_lp) against numpy pricing: the EV LP's objective, split by term
  (ArrayLp.term_values), equals `plan_cost` of the schedule it returns less the same schedule left idle (the LP
  leaves out what no decision of its changes), on seeded random EV-only sites.
At the optimum an LP's slack variables sit at their kinks (shortfall = max(0, need − have)), which is why the
equalities hold there and only there.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.dispatch import costs
from agent.dispatch.aggregate import Split, aggregate
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, UpDr
from agent.dispatch.member_lp import plan_members_detail
from agent.dispatch.plan import REVENUE_TERMS
from agent.dispatch.planner import model_for, solve
from agent.dispatch.pricing import plan_cost, reserve_cost
from agent.dispatch.refine import ev_members

T = 12
STEP_S = 1800.0
H = STEP_S / 3600.0
WEAR = np.array([3.0, 5.0, 9.0, 20.0])
SEEDS = range(6)


def site_inputs(seed: int, with_battery: bool = True, with_reserve: bool = True) -> PlanInputs:
    """Odd seeds are stressed, so that every penalty term is non-zero in some case: the uncontrolled load alone
    breaks the import limit in one step and the limit leaves EVs short, the baseline sits high in the up-DR window,
    the award exceeds the fleet."""
    rng = np.random.default_rng(seed)
    stressed = seed % 2 == 1
    steps = np.arange(T)
    assets: list[AssetPlan] = []
    if with_battery:
        assets.append(
            AssetPlan("bess", rng.uniform(20e3, 80e3), 10e3, 100e3, 30e3, 30e3, 0.95, wear_prices=WEAR * 2,
                      calendar_price_per_wh_h=rng.uniform(0, 2e-5), activation_wear_per_kwh=rng.uniform(0, 8),
                      calendar_bends=((rng.uniform(5e3, 50e3), rng.uniform(0, 4e-5)),
                                      (rng.uniform(50e3, 90e3), rng.uniform(0, 8e-5))))  # convex in SoC
        )  # fmt: skip
    for k, v2g in enumerate((True, False, bool(rng.integers(2)))):
        arrive, depart = int(rng.integers(0, 4)), int(rng.integers(6, T + 4))
        cap = float(rng.choice([40e3, 60e3]))
        energy = cap * rng.uniform(0.2, 0.6)
        charge = float(rng.choice([6e3, 11e3]))
        reachable = energy + 0.95 * charge * H * (min(depart, T) - arrive)
        assets.append(
            AssetPlan(f"ev{k}", energy, 0.1 * cap, cap, charge, charge if v2g else 0.0, 0.95,
                      available=(steps >= arrive) & (steps < depart), is_ev=True, wear_prices=WEAR,
                      target_wh=min(cap, energy + rng.uniform(0.3, 0.9) * (reachable - energy)), target_step=depart,
                      calendar_price_per_wh_h=rng.uniform(0, 2e-5))
        )  # fmt: skip
    prices = rng.uniform(5, 40, T)
    base = rng.uniform(5e3, 20e3)
    limit = base + (2e3 if stressed else rng.uniform(5e3, 25e3))
    load = np.full(T, base)
    if stressed:
        load[1] = limit + 100e3
    pv = np.where((steps > 3) & (steps < 9), rng.uniform(0, 30e3), 0.0)
    forecast = SiteForecast(prices, load, pv, import_limit_w=limit)
    window = (steps >= 4) & (steps < 8)
    baseline = base + (rng.uniform(20e3, 30e3) if stressed else rng.uniform(-5e3, 10e3))
    dr = UpDr(window, np.full(T, baseline), rng.uniform(3e3, 15e3), rng.uniform(0, 20))
    reserves = []
    if with_reserve:
        award = np.where(steps < 6, rng.uniform(60e3, 90e3) if stressed else rng.uniform(0, 15e3), 0.0)
        reserves = [Reserve("S-FRR", rng.uniform(0, 3, T), rng.uniform(0, 3, T), award, np.zeros(T), 0.1)]
    return PlanInputs(T, STEP_S, assets, forecast, updr=dr, reserves=reserves)


def test_every_term_of_the_breakdown_is_a_term_of_the_model() -> None:
    model = model_for(site_inputs(0))
    assert set(model.terms) <= set(costs.TERMS)
    assert {name for name, term in costs.TERMS.items() if term.revenue} == REVENUE_TERMS


@pytest.mark.parametrize("seed", SEEDS)
def test_the_lp_and_numpy_pricing_agree_term_by_term(seed: int) -> None:
    inputs = site_inputs(seed)
    plan = solve(inputs)
    priced, violations = plan_cost(inputs, plan.power_w, plan.energy_wh)
    reserve, reserve_violations = reserve_cost(inputs, [plan.reserve_up_w], [plan.reserve_down_w])
    priced |= reserve
    assert set(plan.breakdown) == set(priced)
    for term, value in plan.breakdown.items():
        assert priced[term] == pytest.approx(value, rel=1e-5, abs=1e-3), term
    assert violations["ev_short_kwh"] == pytest.approx(plan.violations["ev_short_kwh"], abs=1e-5)
    assert violations["updr_short_kwh"] == pytest.approx(plan.violations["updr_short_kwh"], abs=1e-5)
    assert reserve_violations["reserve_short_kwh"] == pytest.approx(plan.violations["reserve_short_kwh"], abs=1e-5)


@pytest.mark.parametrize("regulation", [False, True], ids=["no_band", "regd_band"])
@pytest.mark.parametrize("seed", SEEDS)
def test_the_highs_arrays_and_numpy_pricing_agree_term_by_term(seed: int, regulation: bool) -> None:
    inputs = site_inputs(seed, with_battery=False, with_reserve=False)
    if regulation:  # the V2G members hold a RegD band: its round-trip loss leaves their energy in both backends
        band = np.full(T, 1.0)
        reserve = Reserve("RegD", band, band, np.zeros(T), np.zeros(T), activation_per_h=0.2)
        inputs = dataclasses.replace(inputs, reserves=[reserve])
    _, grouping = aggregate(inputs, 16)
    n = len(inputs.assets)
    idle_energy = np.repeat(np.array([a.energy_wh for a in inputs.assets])[:, None], T + 1, axis=1)
    zeros = np.zeros((n, T))
    split = Split(zeros.copy(), idle_energy.copy(), zeros.copy(), zeros.copy(), 0.0)
    if regulation:
        for i, a in enumerate(inputs.assets):
            if a.discharge_w > 0:
                split.up[i] = split.down[i] = 1_000.0 * np.asarray(a.available, dtype=float)
    members = ev_members(inputs, grouping.members, split, v2g=True)
    # the bands the split gave, held fixed (a chosen band of a charge-only member is cut to its energy after the
    # solve, which the LP's own terms do not see)
    members = dataclasses.replace(members, banded=np.zeros(len(members.index), dtype=bool))
    power, energy, lp_terms = plan_members_detail(inputs, members, np.zeros(T), 10.0)
    full_power, full_energy = zeros.copy(), idle_energy.copy()
    full_power[members.index], full_energy[members.index] = power, energy
    after, _ = plan_cost(inputs, full_power, full_energy)
    before, _ = plan_cost(inputs, zeros, idle_energy)
    dr = inputs.updr
    assert dr is not None
    # the LP reads up-DR as a reward per W paid: the shortfall penalty less the constant of the whole request
    request = costs.updr_per_w(dr, inputs.penalties, H).shortfall * dr.requested_w * float(dr.window.sum())
    checked = {
        "energy": after["energy"] - before["energy"],
        "wear_cycle": after["wear_cycle"],
        "wear_calendar": after["wear_calendar"] - before["wear_calendar"],
        "ev_shortfall_penalty": after["ev_shortfall_penalty"],
        "site_limit_penalty": after["site_limit_penalty"],
        "updr_revenue": -after["updr_revenue"],
        "updr_shortfall_penalty": after["updr_shortfall_penalty"] - request,
        "updr_below_baseline_penalty": after["updr_below_baseline_penalty"],
    }
    for term, value in checked.items():
        assert lp_terms.get(term, 0.0) == pytest.approx(value, rel=1e-5, abs=1e-3), term
