"""Dispatch cases small enough to work out by hand, and the degradation price model."""

from __future__ import annotations

import numpy as np
import pytest

from agent.dispatch.aggregate import solve_aggregated
from agent.dispatch.degradation import damage_at_end_of_life, life_per_cycle, segment_prices
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, UpDr, terminal_price
from agent.dispatch.planner import solve


def battery(**kw: object) -> AssetPlan:
    base: dict[str, object] = dict(
        id="b", energy_wh=50_000, min_wh=0, max_wh=100_000, charge_w=50_000, discharge_w=50_000, efficiency=1.0
    )
    base.update(kw)
    return AssetPlan(**base)  # type: ignore[arg-type]


def site(prices: list[float], base: float = 0.0) -> SiteForecast:
    t = len(prices)
    return SiteForecast(np.array(prices, dtype=float), np.full(t, base), np.zeros(t))


def test_one_battery_two_prices_arbitrage() -> None:
    plan = solve(PlanInputs(4, 3600, [battery()], site([10, 10, 30, 30])))
    # buy 50 kWh at 10, sell 100 kWh at 30: −2500 net
    assert plan.net_cost == pytest.approx(-2500, abs=1e-3)
    assert plan.power_w[0, 2:] == pytest.approx([-50_000, -50_000], abs=1e-3)


def test_wear_price_above_spread_stops_cycling() -> None:
    # energy left at the end worth nothing (no terminal value): the wear-versus-spread trade alone
    worn = battery(wear_prices=np.array([25.0]), terminal_price_per_kwh=0.0)  # 25 per kWh discharged > spread 20
    plan = solve(PlanInputs(4, 3600, [worn], site([10, 10, 30, 30])))
    # only the energy already stored is worth selling (30 − 25 = 5 per kWh): no charging
    assert np.all(plan.power_w <= 1e-6)
    assert plan.breakdown["wear_cycle"] == pytest.approx(50 * 25, abs=1e-3)


def test_worn_battery_keeps_energy_worth_more_than_its_sale() -> None:
    # with the default terminal value (the horizon's lowest price, 10), selling at 30 nets 30 − 25 = 5 < 10: keep
    worn = battery(wear_prices=np.array([25.0]))
    plan = solve(PlanInputs(4, 3600, [worn], site([10, 10, 30, 30])))
    assert np.all(np.abs(plan.power_w) <= 1e-6)
    assert plan.breakdown["terminal_value"] == pytest.approx(50 * 10, abs=1e-3)


def test_stored_energy_is_not_sold_off_at_a_flat_price() -> None:
    # the demo's failure before the terminal value: at a flat price every stored kWh was sold at once
    lossy = battery(efficiency=0.95)
    plan = solve(PlanInputs(4, 3600, [lossy], site([25, 25, 25, 25])))
    assert np.all(np.abs(plan.power_w) <= 1e-6)  # selling earns 25 x 0.95 per kWh stored, keeping 25
    assert plan.breakdown["terminal_value"] == pytest.approx(50 * 25, abs=1e-3)


def test_terminal_value_buys_nothing_only_to_hold_it() -> None:
    empty = battery(efficiency=0.95, energy_wh=0, discharge_w=0.0)  # it can only buy and hold
    plan = solve(PlanInputs(3, 3600, [empty], site([10, 12, 12])))
    # buying at 10 costs 10 / 0.95 per kWh stored, worth 10 at the end: no charging (valued at the mean price x
    # efficiency, 10.77, the held kWh would have paid for buying it)
    assert np.all(np.abs(plan.power_w) <= 1e-6)


def test_ev_energy_left_at_the_horizon_end_is_worth_nothing_to_the_plan() -> None:
    ev = battery(id="ev", is_ev=True, terminal_price_per_kwh=99.0)
    assert terminal_price(ev, np.array([10.0, 30.0])) == 0.0
    assert terminal_price(battery(), np.array([10.0, 30.0])) == 10.0
    assert terminal_price(battery(), np.array([-5.0, 30.0])) == 0.0  # a negative price: worthless, never a cost


def test_efficiency_losses_are_paid() -> None:
    lossy = battery(efficiency=0.9, energy_wh=0)
    plan = solve(PlanInputs(2, 3600, [lossy], site([10, 30])))
    # charge 50 kW (45 kWh stored) at 10, discharge 45*0.9 = 40.5 kWh at 30
    assert plan.power_w[0] == pytest.approx([50_000, -40_500], abs=1e-2)
    assert plan.net_cost == pytest.approx(500 - 1215, abs=1e-2)


def test_ev_must_reach_its_target_by_departure() -> None:
    ev = battery(
        id="ev", energy_wh=20_000, min_wh=12_000, max_wh=60_000, charge_w=11_000, discharge_w=11_000,
        target_wh=48_000, target_step=3, is_ev=True,
        available=np.array([1, 1, 1, 0, 0, 0], dtype=bool),
    )  # fmt: skip
    plan = solve(PlanInputs(6, 3600, [ev], site([30, 30, 30, 1, 1, 1])))
    assert plan.energy_wh[0, 3] == pytest.approx(48_000, abs=1e-3)  # 28 kWh in 3 h at 11 kW: feasible
    assert plan.violations["ev_short_kwh"] == pytest.approx(0, abs=1e-6)
    assert np.all(np.abs(plan.power_w[0, 3:]) < 1e-6)  # gone: no power after departure


def test_infeasible_ev_target_is_soft_and_reported() -> None:
    ev = battery(id="ev", energy_wh=20_000, min_wh=12_000, max_wh=60_000, charge_w=11_000, discharge_w=11_000,
                 target_wh=55_000, target_step=2, is_ev=True)  # fmt: skip
    plan = solve(PlanInputs(3, 3600, [ev], site([30, 30, 30])))
    assert plan.violations["ev_short_kwh"] == pytest.approx(55 - 42, abs=1e-3)  # 22 kWh is all it can take
    assert plan.energy_wh[0, 2] == pytest.approx(42_000, abs=1e-3)


def test_updr_window_raises_consumption_above_baseline() -> None:
    window = np.array([0, 1, 1, 0], dtype=bool)
    dr = UpDr(window=window, baseline_w=np.full(4, 5000.0), requested_w=20_000, price_per_kwh=15.0)
    # the last step sells a little below the window's price, so charging beyond the request loses money and the
    # optimum is unique (at equal prices a lossless battery is indifferent, and solvers pick different vertices)
    plan = solve(PlanInputs(4, 3600, [battery(energy_wh=0)], site([20, 20, 20, 19], base=5000), updr=dr))
    site_w = 5000 + plan.power_w[0]
    assert site_w[1:3] == pytest.approx([25_000, 25_000], abs=1e-3)  # baseline + requested in the window
    assert plan.breakdown["updr_revenue"] == pytest.approx(2 * 20 * 15, abs=1e-3)


def updr_with_pv_below_baseline() -> PlanInputs:
    """One 6 kW EV, 20 kW of PV over a 5 kW base load, an up-DR step with the base load as baseline: the site
    cannot reach the baseline whatever the EV does."""
    ev = battery(
        id="ev", energy_wh=10_000, min_wh=5_000, max_wh=40_000, charge_w=6_000, discharge_w=0.0, is_ev=True,
        available=np.array([1, 1], dtype=bool), target_wh=20_000, target_step=2,
    )  # fmt: skip
    forecast = SiteForecast(np.array([20.0, 20.0]), np.full(2, 5000.0), np.array([20_000.0, 0.0]))
    dr = UpDr(window=np.array([1, 0], dtype=bool), baseline_w=np.full(2, 5000.0), requested_w=10_000, price_per_kwh=15)
    return PlanInputs(2, 3600, [ev], forecast, updr=dr)


@pytest.mark.parametrize("method", ["full", "aggregated"])
def test_updr_window_below_the_baseline_stays_feasible(method: str) -> None:
    # was infeasible: a non-negative increase tied the site to at least the baseline in the window
    inputs = updr_with_pv_below_baseline()
    plan = solve(inputs) if method == "full" else solve_aggregated(inputs, groups=1)
    # the baseline is out of reach (−15 kW + 6 kW): nothing is claimed, the whole request is reported missed
    assert plan.breakdown["updr_revenue"] == pytest.approx(0.0, abs=1e-6)
    assert plan.violations["updr_short_kwh"] == pytest.approx(10.0, abs=1e-6)
    assert plan.energy_wh[0, 2] == pytest.approx(20_000, abs=1e-3)  # the EV's own need still drives it


def test_an_unreachable_baseline_pays_nothing_for_raising_load() -> None:
    # review finding: with a free-sign increase over the whole window, a battery bought at 60 to "raise" a site
    # that stays 5 kW under its baseline whatever it does, instead of selling at 60
    store = battery(efficiency=0.95, charge_w=10_000, discharge_w=10_000)
    forecast = SiteForecast(np.array([60.0, 20.0]), np.full(2, 5000.0), np.array([20_000.0, 0.0]))
    dr = UpDr(window=np.array([1, 0], dtype=bool), baseline_w=np.full(2, 5000.0), requested_w=10_000, price_per_kwh=15)
    plan = solve(PlanInputs(2, 3600, [store], forecast, updr=dr))
    assert plan.power_w[0, 0] == pytest.approx(-10_000, abs=1e-3)


def test_reservation_holds_energy_for_the_product_duration() -> None:
    t = 4
    award = Reserve("S-FRR", np.zeros(t), np.zeros(t), awarded_up_w=np.full(t, 40_000.0), awarded_down_w=np.zeros(t))
    plan = solve(PlanInputs(t, 3600, [battery(energy_wh=30_000)], site([10, 10, 50, 50]), reserves=[award]))
    assert plan.violations["reserve_short_kwh"] == pytest.approx(0, abs=1e-6)
    # 40 kW up for 30 min needs 20 kWh above the floor at the end of every step
    assert np.all(plan.energy_wh[0, 1:] >= 20_000 - 1e-3)
    assert np.all(plan.power_w[0] - plan.reserve_up_w[0] >= -50_000 - 1e-3)


def test_site_import_limit_caps_charging() -> None:
    limited = SiteForecast(np.array([1.0, 50.0]), np.full(2, 10_000.0), np.zeros(2), import_limit_w=30_000)
    plan = solve(PlanInputs(2, 3600, [battery(energy_wh=0)], limited))
    assert plan.power_w[0, 0] == pytest.approx(20_000, abs=1e-3)


def test_cycle_depth_prices_are_convex_and_scale_with_soh() -> None:
    new = segment_prices(3_000_000, 100_000, soh=1.0, efficiency=0.95, segments=6)
    aged = segment_prices(3_000_000, 100_000, soh=0.8, efficiency=0.95, segments=6)
    assert np.all(np.diff(new) >= 0)  # non-decreasing: an LP without binaries
    assert np.all(aged > new)  # an aged pack costs more per kWh
    assert 2500 < 1 / life_per_cycle(1.0) < 3100  # ≈ 2,800 full cycles to 20 % fade (REFERENCE.md)
    assert 0.1 < damage_at_end_of_life() < 0.2


def test_updr_outside_its_window_leaves_the_battery_free() -> None:
    window = np.array([0, 0, 1, 1], dtype=bool)
    dr = UpDr(window=window, baseline_w=np.full(4, 5000.0), requested_w=10_000, price_per_kwh=5.0)
    plan = solve(PlanInputs(4, 3600, [battery(energy_wh=50_000)], site([40, 40, 1, 1], base=5000), updr=dr))
    assert plan.power_w[0, 0] < -10_000  # sells at 40 before the window: the event does not pin the site
    assert np.all(5000 + plan.power_w[0, 2:] >= 15_000 - 1e-3)  # and delivers the increase inside it
