"""Opportunity-cost wear pricing: seeded from depreciation, then following what the pack's life earns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.dispatch.degradation import segment_prices
from agent.dispatch.inputs import AssetPlan, PlanInputs, SiteForecast
from agent.dispatch.planner import solve
from agent.dispatch.wear_value import OpportunityWearValue

R = 3_000_000.0
DAY = 86_400.0


def test_with_no_history_the_price_is_the_depreciation_price() -> None:
    value = OpportunityWearValue(R)
    assert value.cost_basis(0.0) == R
    assert np.array_equal(
        segment_prices(value.cost_basis(0.0), 1e5, 1.0, 0.95, 4), segment_prices(R, 1e5, 1.0, 0.95, 4)
    )


def test_settled_history_moves_the_value_from_the_seed_to_the_packs_own_earnings() -> None:
    value = OpportunityWearValue(R, prior_life=0.02)
    value.record(0.0, DAY, revenue=10_000.0, life_used=0.01)
    assert value.value_per_life(DAY) == pytest.approx((10_000 + R * 0.02) / 0.03)
    for day in range(1, 80):  # 80 days earning 1 M per half life: the prior fades to a small share
        value.record(day * DAY, (day + 1) * DAY, revenue=1e6 / 80, life_used=0.5 / 80)
    own = 1e6 / 0.5
    assert abs(value.value_per_life(80 * DAY) - own) < 0.05 * own


def test_a_life_that_earns_more_than_it_costs_is_priced_at_its_replacement() -> None:
    """Earning 3 R per life, the pack is replaced when its life ends, so a unit of life used now costs R; earning
    R / 2 per life it is not worth replacing, and a unit of life is worth what it earns."""
    rich = OpportunityWearValue(R, prior_life=1e-6)
    rich.record(0.0, DAY, revenue=3 * R * 0.01, life_used=0.01)
    assert rich.value_per_life(DAY) == pytest.approx(3 * R, rel=1e-3)
    assert rich.cost_basis(DAY) == R
    poor = OpportunityWearValue(R, prior_life=1e-6)
    poor.record(0.0, DAY, revenue=0.5 * R * 0.01, life_used=0.01)
    assert poor.cost_basis(DAY) == pytest.approx(0.5 * R, rel=1e-3)


def test_settlements_older_than_the_window_stop_counting() -> None:
    value = OpportunityWearValue(R, window_s=30 * DAY)
    value.record(0.0, DAY, revenue=100.0, life_used=0.05)
    assert value.value_per_life(DAY) < R / 2
    assert value.value_per_life(40 * DAY) == R  # only the seed is left


def test_a_pack_that_loses_money_prices_its_life_at_zero_not_below() -> None:
    value = OpportunityWearValue(R)
    value.record(0.0, DAY, revenue=-1e6, life_used=0.01)
    assert value.value_per_life(DAY) == 0.0


def test_discounting_over_the_years_until_the_margin_of_life_is_reached() -> None:
    value = OpportunityWearValue(R, window_s=365 * DAY, discount_rate_per_year=0.05)
    value.record(0.0, 365 * DAY, revenue=R * 0.1, life_used=0.1)  # earns exactly R per life, 10 % of life a year
    assert value.value_per_life(365 * DAY) == pytest.approx(R)
    # half the life left at 10 % a year: that unit of life would be used in 5 years
    assert value.cost_basis(365 * DAY, remaining_life=0.5) == pytest.approx(R / 1.05**5)


def test_a_cheap_life_lets_the_planner_cycle_where_depreciation_would_not() -> None:
    """Selling at 3 JPY/kWh pays less than the depreciation wear price (~4.7) but more than half of it."""

    def discharged(cost_basis: float) -> float:
        wear = segment_prices(cost_basis, 100_000, 1.0, 1.0, 4)
        battery = AssetPlan("b", 100_000, 0, 100_000, 100_000, 100_000, 1.0, wear_prices=wear, terminal_price_per_kwh=0)
        plan = solve(PlanInputs(1, 3600, [battery], SiteForecast(np.array([3.0]), np.zeros(1), np.zeros(1))))
        return float(-plan.power_w[0, 0])

    value = OpportunityWearValue(R)
    assert discharged(value.cost_basis(0.0)) == pytest.approx(0.0, abs=1e-3)
    value.record(0.0, 90 * DAY, revenue=R * 0.5 * 0.3, life_used=0.3)  # the pack earned half its cost per life
    assert value.cost_basis(90 * DAY) < 0.6 * R
    assert discharged(value.cost_basis(90 * DAY)) > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, DAY, math.nan, 0.01), "revenue must be finite"),
        ((0.0, DAY, 1.0, -0.01), "life_used must be a life fraction >= 0"),
        ((DAY, DAY, 1.0, 0.01), "must end after it starts"),
    ],
)
def test_bad_settlements_are_refused_with_their_reason(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpportunityWearValue(R).record(*args)


def test_an_overlapping_settlement_is_refused() -> None:
    value = OpportunityWearValue(R)
    value.record(0.0, DAY, 1.0, 0.001)
    with pytest.raises(ValueError, match="overlaps the last one"):
        value.record(DAY / 2, 2 * DAY, 1.0, 0.001)
