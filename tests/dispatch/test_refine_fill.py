"""The charge-only fill (agent.dispatch.fill) against the member LP it replaces (agent.dispatch.member_lp).

Without coupling rows a charge-only member's LP is a fractional knapsack, so the fill must reach the LP's optimum on
any fleet: random windows, departures after the horizon, needs out of reach (both shortfall tiers), negative prices.
With coupling rows (a binding import limit, an up-DR window) the refinement may use the fill only with its
certificate, so the refined schedule must still price as the LP's (the fill refused, or certified optimal), and stay
within the limit. The first test fails if the fill takes a piece of non-positive worth or ignores a member's room.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.dispatch import refine
from agent.dispatch.aggregate import Split, aggregate, solve_aggregated_detail
from agent.dispatch.fill import independent_charge
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, UpDr, updr_reachable
from agent.dispatch.member_lp import EvMembers, member_losses, plan_members, trajectories
from agent.dispatch.plan import net_of
from agent.dispatch.pricing import plan_cost

T, STEP_S = 48, 1800.0


def fleet(seed: int, n: int = 40, import_limit: float = float("inf"), updr: bool = False) -> PlanInputs:
    rng = np.random.default_rng(seed)
    steps = np.arange(T)
    assets = []
    for i in range(n):
        cap = float(rng.choice([40_000.0, 60_000.0, 80_000.0]))
        arrive = int(rng.integers(0, 30))
        depart = int(rng.integers(arrive + 1, T + 12))  # some leave after the horizon
        energy = cap * float(rng.uniform(0.1, 0.9))
        assets.append(
            AssetPlan(
                id=f"ev{i}", energy_wh=energy, min_wh=min(0.1 * cap, energy), max_wh=cap,
                charge_w=float(rng.choice([3_700.0, 7_000.0, 11_000.0])), discharge_w=0.0,
                efficiency=float(rng.choice([0.9, 0.95])), available=(steps >= arrive) & (steps < depart),
                target_wh=min(cap, energy + float(rng.uniform(0, 60_000))), target_step=depart,
                calendar_price_per_wh_h=float(rng.choice([0.0, 1e-5, 2e-5])), is_ev=True,
            )
        )  # fmt: skip
    prices = 15.0 + 12.0 * np.sin(steps / 5.0) + rng.normal(0, 4, T)
    prices[rng.integers(0, T, 3)] = -5.0  # paid to consume
    base = np.full(T, 30_000.0)
    site = SiteForecast(prices, base, np.zeros(T), import_limit_w=import_limit)
    window = (steps >= 20) & (steps < 28)
    dr = UpDr(window, base + 10_000.0, 40_000.0, 25.0) if updr else None
    return PlanInputs(T, STEP_S, assets, site, updr=dr)


def members_of(inputs: PlanInputs) -> EvMembers:
    _, grouping = aggregate(inputs, 16)
    zeros = np.zeros((len(inputs.assets), inputs.steps))
    split = Split(zeros, np.zeros((len(inputs.assets), inputs.steps + 1)), zeros, zeros, 0.0)
    return refine.ev_members(inputs, grouping.members, split, v2g=False)


def net_cost(inputs: PlanInputs, m: EvMembers, power: np.ndarray, energy: np.ndarray) -> float:
    full_p = np.zeros((len(inputs.assets), T))
    full_e = np.array([[a.energy_wh] * (T + 1) for a in inputs.assets])
    full_p[m.index], full_e[m.index] = power, energy
    return float(net_of(plan_cost(inputs, full_p, full_e)[0]))


@pytest.mark.parametrize("seed", range(8))
def test_the_fill_is_the_member_lps_optimum_without_coupling(seed: int) -> None:
    inputs = fleet(seed)
    m = members_of(inputs)
    lp = plan_members(inputs, m, np.zeros(T), 60.0)[:2]
    price = np.asarray(inputs.site.price_per_kwh, dtype=float) * inputs.step_h / 1000.0
    filled = trajectories(inputs, m, independent_charge(inputs, m, price))
    assert np.all(filled[0] >= -1e-9) and np.all(filled[0] <= m.charge_w[:, None] * m.plugged + 1e-9)
    assert np.all(filled[1] <= m.ceiling[:, None] + 1e-6)
    expected = net_cost(inputs, m, *lp)
    assert net_cost(inputs, m, *filled) == pytest.approx(expected, rel=1e-7, abs=1e-4)
    assert plan_cost(inputs, *_full(inputs, m, *lp))[1]["ev_short_kwh"] > 0 or seed, "some fleets miss needs"


def _full(inputs: PlanInputs, m: EvMembers, power: np.ndarray, energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    full_p = np.zeros((len(inputs.assets), T))
    full_e = np.array([[a.energy_wh] * (T + 1) for a in inputs.assets])
    full_p[m.index], full_e[m.index] = power, energy
    return full_p, full_e


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("coupled", ["none", "import_limit", "updr"])
def test_refined_schedules_match_the_lp_with_binding_coupling_rows(
    seed: int, coupled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 30_000.0 + 60_000.0 if coupled == "import_limit" else float("inf")
    inputs = fleet(seed, import_limit=limit, updr=coupled == "updr")
    refine.FILLED.clear()
    with_fill = solve_aggregated_detail(inputs, 16)
    tried = list(refine.FILLED)
    monkeypatch.setattr(refine, "_filled", lambda *args: None)
    with_lp = solve_aggregated_detail(inputs, 16)
    assert tried, "the charge-only block was offered to the fill"
    if coupled == "none":
        assert set(tried) == {"certified"}, "without coupling rows the fill is the block's optimum"
    assert with_fill.plan.net_cost == pytest.approx(with_lp.plan.net_cost, rel=1e-6, abs=1e-3)
    net = inputs.site.base_load_w + with_fill.plan.power_w.sum(axis=0)
    assert np.all(net <= limit + 1e-3), "the import limit holds"
    assert with_fill.plan.violations["ev_short_kwh"] == pytest.approx(with_lp.plan.violations["ev_short_kwh"], abs=1e-3)
    if coupled == "updr":
        assert updr_reachable(inputs).any()


@pytest.mark.parametrize("seed", range(4))
def test_the_fill_keeps_the_members_bands_as_the_member_lp_does(seed: int) -> None:
    """Charge-only members holding bands the split gave them: up (charge at least that much), down (room under the
    charge limit), and the up band's round-trip loss taken from their energy; fill and LP must agree."""
    plain = fleet(seed)
    zeros = np.zeros(T)
    band = Reserve("RegD", np.full(T, 2.0), np.full(T, 2.0), zeros, zeros, activation_per_h=0.2)
    inputs = dataclasses.replace(plain, reserves=[band])
    m = members_of(inputs)
    rng = np.random.default_rng(seed)
    # an up band makes a charge-only member charge: only where its room can take that at every plugged step
    roomy = (m.ceiling - m.energy) > 0.2 * m.charge_w * inputs.step_h * m.plugged.sum(axis=1)
    up = np.where(m.plugged & roomy[:, None] & (rng.random(m.plugged.shape) < 0.3), 0.2 * m.charge_w[:, None], 0.0)
    down = np.where(m.plugged & (rng.random(m.plugged.shape) < 0.3), 0.3 * m.charge_w[:, None], 0.0)
    m = dataclasses.replace(
        m,
        low_w=up,
        high_w=np.where(m.plugged, m.charge_w[:, None] - down, 0.0),
        up_w=up,
        down_w=down,
        banded=np.zeros(len(m.index), dtype=bool),  # the bands the split gave, held fixed
    )
    assert member_losses(inputs, m).sum() > 0, "the bands lose energy"
    lp = plan_members(inputs, m, np.zeros(T), 60.0)[:2]
    price = np.asarray(inputs.site.price_per_kwh, dtype=float) * inputs.step_h / 1000.0
    filled = trajectories(inputs, m, independent_charge(inputs, m, price))
    assert np.all(filled[0] >= up - 1e-6) and np.all(filled[0] <= m.charge_w[:, None] - down + 1e-6)
    assert net_cost(inputs, m, *filled) == pytest.approx(net_cost(inputs, m, *lp), rel=1e-7, abs=1e-4)


def test_a_price_inside_the_subdifferential_at_a_kink_is_a_certificate() -> None:
    """Step 1: the other load sits exactly on the import limit and no member is plugged in there, so the site's cost
    has a kink at that step's total; its midpoint price is inside [left, right] and the fill is the LP's optimum.
    The rounding tolerance used to narrow the interval (the right slope below the kink, the left one above)."""
    ev = AssetPlan(id="ev", energy_wh=10e3, min_wh=5e3, max_wh=40e3, charge_w=7e3, discharge_w=0.0, efficiency=0.9,
                   available=np.array([True, False]), target_wh=15e3, target_step=1, is_ev=True)  # fmt: skip
    site = SiteForecast(np.array([10.0, 10.0]), np.array([0.0, 20e3]), np.zeros(2), import_limit_w=20e3)
    inputs = PlanInputs(2, 3600.0, [ev], site)
    m, reach = members_of(inputs), updr_reachable(inputs)
    refine.FILLED.clear()
    filled = refine._filled(inputs, m, np.zeros(2), np.zeros((1, 2)), reach)
    assert refine.FILLED == ["certified"] and filled is not None
    assert filled[0] == pytest.approx(plan_members(inputs, m, np.zeros(2), 30.0, reach)[0])


def test_a_negative_up_dr_price_is_no_reason_to_certify_a_fill_that_stays_idle() -> None:
    """A window paying -200 per kWh above the baseline: the LP leaves the paid increase at 0 and charges at the
    negative energy price; the certificate read the site's slope as energy minus that price and accepted 0 W."""
    steps = np.arange(4)
    ev = AssetPlan(id="ev", energy_wh=10_000.0, min_wh=5_000.0, max_wh=30_000.0, charge_w=10_000.0, discharge_w=0.0,
                   efficiency=1.0, available=np.ones(4, bool), is_ev=True)  # fmt: skip
    site = SiteForecast(np.array([-10.0, 20, 20, 20]), np.zeros(4), np.zeros(4))
    inputs = PlanInputs(4, 3600.0, [ev], site, updr=UpDr(steps == 0, np.full(4, 1_000.0), 50_000.0, -200.0))
    m, reach = members_of(inputs), updr_reachable(inputs)
    rest = np.array([5_000.0, 0, 0, 0])
    lp_power = plan_members(inputs, m, rest, 60.0, reach)[0]
    filled = refine._filled(inputs, m, rest, np.zeros((1, 4)), reach)
    assert lp_power[0, 0] > 1_000.0
    assert filled is None or filled[0] == pytest.approx(lp_power, abs=1e-3)
