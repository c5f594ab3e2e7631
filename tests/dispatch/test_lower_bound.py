"""agent.dispatch.bound: a number no schedule of the fleet beats, even where members' prices differ within a bin.

The aggregate's own optimum prices each virtual battery at its members' average prices, so it can sit above the full
LP's optimum (first test: a fleet built so it does); the bound prices every group at its members' lowest and must
never exceed the full LP's optimum on any fleet (hypothesis), which the aggregate's optimum fails on that fleet.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.dispatch import planner
from agent.dispatch.aggregate import solve_aggregated_detail
from agent.dispatch.bound import lower_bound, relaxation
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, UpDr

T = 24
STEP_S = 3600.0
WEAR = np.array([2.0, 4.0, 8.0, 16.0])
REL = 1e-6  # the LP solver's relative optimality tolerance, with room


def ev(i: int, arrive: int, depart: int, energy: float, scale: float, v2g: bool = True, eta: float = 0.95,
       calendar: float = 0.0) -> AssetPlan:  # fmt: skip
    steps = np.arange(T)
    return AssetPlan(
        id=f"ev{i}", energy_wh=energy, min_wh=min(8_000.0, energy), max_wh=60_000.0, charge_w=11_000.0,
        discharge_w=11_000.0 if v2g else 0.0, efficiency=eta, available=(steps >= arrive) & (steps < depart),
        target_wh=min(60_000.0, energy + 10_000.0), target_step=depart, wear_prices=WEAR * scale, is_ev=True,
        calendar_price_per_wh_h=calendar * scale,
    )  # fmt: skip


def spread_prices() -> np.ndarray:
    """Cheap nights, dear evenings: discharging pays for an EV with cheap enough wear."""
    hours = np.arange(T)
    return np.where((hours >= 17) & (hours < 21), 60.0, np.where(hours < 6, 5.0, 20.0))


def margin(value: float) -> float:
    return REL * max(abs(value), 1.0)


def test_the_aggregate_optimum_is_not_a_bound_and_this_is() -> None:
    """Two EVs alike but for wear prices 0.9 % apart share a category (one 2 % bin); the export limit lets only one
    of them discharge in the evening, and the full LP picks the cheaper, while the aggregate pays the average: its
    optimum is above the full LP's, the bound is not."""
    assets = [ev(0, 0, T, 50_000.0, 1.0), ev(1, 0, T, 50_000.0, 1.009)]
    site = SiteForecast(spread_prices(), np.zeros(T), np.zeros(T), export_limit_w=11_000.0)
    inputs = PlanInputs(T, STEP_S, assets, site)
    full = planner.solve(inputs, forbid_burning=False).net_cost
    aggregated = solve_aggregated_detail(inputs, refined=False)
    assert aggregated.aggregate_plan.net_cost > full + margin(full), "the fleet no longer shows the old reference fail"
    bound = lower_bound(inputs).net_cost
    assert bound <= full + margin(full)


@st.composite
def fleets(draw: st.DrawFn) -> PlanInputs:
    """EVs (V2G and charge-only, some with their departure target before they leave), a battery, and any of: an
    export limit, an up-DR window, a reserve offered or awarded."""
    n = draw(st.integers(2, 8))
    assets = []
    for i in range(n):
        arrive = draw(st.integers(0, 8))
        depart = draw(st.integers(arrive + 2, T + 4))
        energy = draw(st.floats(8_000.0, 50_000.0))
        scale = draw(st.floats(1.0, 1.05))  # within and across the aggregate's 2 % price bins
        calendar = draw(st.sampled_from([0.0, 1e-5]))
        asset = ev(i, arrive, depart, energy, scale, draw(st.booleans()), calendar=calendar)
        if draw(st.booleans()):  # the target falls due while the EV is still plugged in
            asset = replace(asset, target_step=draw(st.integers(arrive + 1, min(depart, T))))
        assets.append(asset)
    prices = np.array(draw(st.lists(st.floats(-5, 60), min_size=T, max_size=T)))
    base = draw(st.floats(0, 20_000))
    limit = draw(st.sampled_from([float("inf"), base + 30_000.0]))
    export = draw(st.sampled_from([float("inf"), 11_000.0]))  # a scarce export picks the cheapest wear (test above)
    site = SiteForecast(prices, np.full(T, base), np.zeros(T), import_limit_w=limit, export_limit_w=export)
    battery = AssetPlan("bess", 100_000, 10_000, 200_000, 50_000, 50_000, 0.96, wear_prices=WEAR * 2)
    updr = None
    if draw(st.booleans()):
        start = draw(st.integers(0, T - 4))
        window = (np.arange(T) >= start) & (np.arange(T) < start + 4)
        updr = UpDr(window, np.full(T, base), draw(st.floats(5_000.0, 40_000.0)), draw(st.floats(1.0, 30.0)))
    reserves = []
    kind = draw(st.sampled_from(["none", "offered", "awarded"]))
    if kind != "none":
        price = np.full(T, draw(st.floats(0.5, 5.0)))
        award = np.full(T, draw(st.floats(1_000.0, 30_000.0))) if kind == "awarded" else np.zeros(T)
        reserves = [Reserve("RegD", price, price, award, award, activation_per_h=0.1)]
    return PlanInputs(T, STEP_S, [*assets, battery], site, updr, reserves)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_the_bound_never_exceeds_the_full_optimum(inputs: PlanInputs) -> None:
    full = planner.solve(inputs, forbid_burning=False).net_cost
    bound = lower_bound(inputs).net_cost
    assert bound <= full + margin(full), (bound, full)


def test_mixed_efficiencies_in_a_group_are_refused_by_name() -> None:
    """0.9504 and 0.9496 round to one category (0.1 %): the dynamics differ, so there is no bound to give."""
    assets = [ev(0, 0, T, 30_000.0, 1.0, eta=0.9504), ev(1, 0, T, 30_000.0, 1.0, eta=0.9496)]
    inputs = PlanInputs(T, STEP_S, assets, SiteForecast(spread_prices(), np.zeros(T), np.zeros(T)))
    with pytest.raises(ValueError, match=r"ev-group-\d+ mixes efficiencies"):
        relaxation(inputs, groups=2)
