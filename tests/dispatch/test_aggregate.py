"""The aggregated path (agent.dispatch.aggregate) against the full per-EV LP on small fleets.

What is asserted, and why these bounds: with members sharing efficiency and per-kWh wear prices, the virtual batteries
(summed per-step envelopes and limits) are a relaxation, so their LP cost is a lower bound on the full LP's; the
disaggregated schedule is a feasible point of the full LP priced the same way, so its cost is an upper bound. The
full optimum is bracketed (the refinement of agent.dispatch.refine only moves the schedule down inside that
bracket). Per-EV physics and reachable targets are guarantees of `disaggregate` and are asserted
exactly; the gap is asserted only on a fleet where the envelopes are known to be tight (shared windows, different
charge rates), as a measured property, not a theorem.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.dispatch import planner
from agent.dispatch.aggregate import aggregate, disaggregate, plan_cost, solve_aggregated_detail
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast
from agent.dispatch.planner import solve

T = 24
STEP_S = 3600.0
H = 1.0
GROUPS = 16
WEAR = np.array([2.0, 4.0, 8.0, 16.0])  # same per-kWh prices for every EV (the relaxation's premise)
TOL = 1e-3


def ev(i: int, arrive: int, depart: int, cap: float, energy: float, need: float, charge: float, v2g: bool) -> AssetPlan:
    steps = np.arange(T)
    floor = 0.2 * cap
    energy = max(energy, 0.0)
    return AssetPlan(
        id=f"ev{i}", energy_wh=energy, min_wh=min(floor, energy), max_wh=cap, charge_w=charge,
        discharge_w=charge if v2g else 0.0, efficiency=0.95, available=(steps >= arrive) & (steps < depart),
        target_wh=min(cap, energy + need), target_step=depart, wear_prices=WEAR, is_ev=True,
    )  # fmt: skip


def battery() -> AssetPlan:
    return AssetPlan("bess", 100_000, 10_000, 200_000, 50_000, 50_000, 0.96, wear_prices=WEAR * 2)


@st.composite
def fleets(draw: st.DrawFn) -> PlanInputs:
    n = draw(st.integers(2, 8))
    assets = []
    for i in range(n):
        arrive = draw(st.integers(0, 8))
        depart = draw(st.integers(arrive + 2, T + 6))  # some depart after the horizon
        cap = draw(st.sampled_from([40_000.0, 60_000.0, 80_000.0]))
        energy = cap * draw(st.floats(0.1, 0.8))
        need = draw(st.floats(0, 40_000))
        charge = draw(st.sampled_from([6_000.0, 11_000.0]))
        assets.append(ev(i, arrive, depart, cap, energy, need, charge, draw(st.booleans())))
    prices = np.array(draw(st.lists(st.floats(1, 40), min_size=T, max_size=T)))
    base = draw(st.floats(0, 20_000))
    limit = draw(st.sampled_from([float("inf"), base + 30_000.0]))
    site = SiteForecast(prices, np.full(T, base), np.zeros(T), import_limit_w=limit)
    return PlanInputs(T, STEP_S, [*assets, battery()], site)


def check_member_physics(inputs: PlanInputs, power: np.ndarray, energy: np.ndarray) -> None:
    for i, a in enumerate(inputs.assets):
        if not a.is_ev:
            continue
        p, e = power[i], energy[i]
        assert np.all(p <= a.charge_w + TOL), (p.max(), a.charge_w)
        assert np.all(p >= -a.discharge_w - TOL), (p.min(), a.discharge_w)
        assert np.all(np.abs(p[~a.available]) <= TOL), "power only while plugged in"
        assert np.all(e >= a.min_wh - TOL) and np.all(e <= a.max_wh + TOL)
        gain = np.where(p > 0, p * a.efficiency * H, p * H / a.efficiency)
        assert np.allclose(np.diff(e), gain, atol=1e-3), "member energy follows its own power"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_aggregate_brackets_the_full_lp_and_members_keep_their_physics(inputs: PlanInputs) -> None:
    full = solve(inputs)
    result = solve_aggregated_detail(inputs, GROUPS)
    lower, upper = result.aggregate_plan.net_cost, result.plan.net_cost
    scale = max(1.0, abs(full.net_cost))
    assert lower <= full.net_cost + 1e-4 * scale, "aggregated LP is a relaxation"
    # solver tolerances: the LP optimum is only optimal to ~1e-7 of its largest terms (penalties), a few mJPY here
    assert upper >= full.net_cost - 1e-4 * scale - 0.01, "the executed schedule is feasible for the full LP"
    check_member_physics(inputs, result.plan.power_w, result.plan.energy_wh)
    # a target the EV can reach on its own (as the full LP then meets it) is met by the disaggregated schedule
    for i, a in enumerate(inputs.assets):
        if a.is_ev and a.target_step is not None and a.target_step <= T:
            window = int(np.sum(a.available[: a.target_step]))
            reachable = min(a.max_wh, a.energy_wh + a.charge_w * a.efficiency * H * window) >= a.target_wh
            if reachable:
                assert full.energy_wh[i, a.target_step] >= a.target_wh - 1.0
                assert result.plan.energy_wh[i, a.target_step] >= a.target_wh - 1.0


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_energy_is_conserved_between_groups_and_members(inputs: PlanInputs) -> None:
    aggregated, grouping = aggregate(inputs, GROUPS)
    virtual = solve(aggregated)
    plan = disaggregate(virtual, grouping, inputs)
    m = grouping.members
    for g in range(grouping.used):
        rows = m.index[m.group == g]
        summed_p = plan.power_w[rows].sum(axis=0)
        summed_e = plan.energy_wh[rows].sum(axis=0)
        # any difference in stored energy comes from group power the members did not follow (or vice versa)
        missed = np.concatenate([[0.0], np.cumsum(np.abs(summed_p - virtual.power_w[g]))]) * H / 0.95
        assert np.all(np.abs(summed_e - virtual.energy_wh[g]) <= missed + 1.0)
    assert plan.violations["unrealised_kwh"] >= 0


def fixed_fleet(n: int = 30) -> PlanInputs:
    rng = np.random.default_rng(4)
    assets = []
    for i in range(n):
        arrive = int(rng.choice([0, 0, 0, 3, 6]))
        depart = int(rng.choice([10, 14, 18, 30]))
        cap = float(rng.choice([40_000, 60_000, 80_000]))
        assets.append(ev(i, arrive, depart, cap, cap * rng.uniform(0.2, 0.6), rng.uniform(5_000, 25_000),
                         float(rng.choice([6_000, 11_000])), bool(rng.random() < 0.3)))  # fmt: skip
    prices = 15 + 10 * np.sin(np.arange(T) / T * 2 * np.pi) + rng.normal(0, 2, T)
    site = SiteForecast(prices, np.full(T, 20_000.0), np.zeros(T), import_limit_w=150_000.0)
    return PlanInputs(T, STEP_S, [*assets, battery()], site)


GAP = 0.01  # the goal, of the controllable cost (net cost minus the uncontrolled load's energy)


def _idle(inputs: PlanInputs) -> np.ndarray:
    return np.array([[a.energy_wh] * (inputs.steps + 1) for a in inputs.assets])


def test_plan_cost_prices_a_full_plan_like_the_planner() -> None:
    """The evaluator used for disaggregated plans agrees with the LP's own breakdown on the LP's solution."""
    inputs = fixed_fleet(12)
    full = solve(inputs)
    breakdown, violations = plan_cost(inputs, full.power_w, full.energy_wh)
    for key in ("energy", "wear_cycle", "wear_calendar", "ev_shortfall_penalty", "site_limit_penalty"):
        assert breakdown[key] == pytest.approx(full.breakdown[key], rel=1e-4, abs=1e-2), key
    assert violations["ev_short_kwh"] == pytest.approx(full.violations["ev_short_kwh"], abs=1e-4)


def test_shape_is_stable_across_fleets() -> None:
    """Padding keeps the aggregated problem's shape (and so its compiled model) whatever the fleet."""
    a, _ = aggregate(fixed_fleet(5), GROUPS)
    b, _ = aggregate(fixed_fleet(30), GROUPS)
    assert len(a.assets) == len(b.assets) == GROUPS + 1


def same_window_fleet(n: int = 10) -> PlanInputs:
    """EVs plugged in over the same window with different charge rates, capacities and needs."""
    rng = np.random.default_rng(7)
    assets = []
    for i in range(n):
        cap = float(rng.choice([40_000, 60_000, 80_000]))
        charge = 6_000.0 if i % 2 else 11_000.0
        assets.append(ev(i, 0, T, cap, cap * rng.uniform(0.2, 0.5), rng.uniform(5_000, 20_000), charge, False))
    prices = 15 + 10 * np.sin(np.arange(T) / T * 2 * np.pi) + rng.normal(0, 2, T)
    site = SiteForecast(prices, np.full(T, 20_000.0), np.zeros(T))
    return PlanInputs(T, STEP_S, assets, site)


def test_different_charge_rates_in_one_group_bracket_the_optimum() -> None:
    """Shared windows, 6 and 11 kW members in one virtual battery: relaxation below, executed schedule above, needs met.
    """
    inputs = same_window_fleet()
    full = solve(inputs)
    result = solve_aggregated_detail(inputs, GROUPS)
    assert result.grouping.used == 1, "one category (charge-only, same efficiency), one departure: one group"
    assert result.aggregate_plan.net_cost <= full.net_cost + 1e-6 * abs(full.net_cost)
    assert result.plan.net_cost >= full.net_cost - 1e-6 * abs(full.net_cost)
    check_member_physics(inputs, result.plan.power_w, result.plan.energy_wh)
    for i, a in enumerate(inputs.assets):
        assert result.plan.energy_wh[i, T] >= a.target_wh - 1.0, "every need here is reachable, so met"


def test_late_arrivals_keep_their_initial_energy_until_they_plug_in() -> None:
    """An EV that arrives later sits in its group at its initial energy: the group's envelope is flat until then."""
    inputs = fixed_fleet(12)
    aggregated, grouping = aggregate(inputs, GROUPS)
    m = grouping.members
    late = [j for j, i in enumerate(m.index) if not inputs.assets[i].available[0]]
    assert late, "the fixture has EVs arriving after the start"
    for j in late:
        arrive = int(np.argmax(inputs.assets[m.index[j]].available))
        assert np.allclose(m.upper[j, : arrive + 1], m.energy[j]) and np.allclose(m.lower[j, : arrive + 1], m.energy[j])
    for g in np.unique(m.group[m.group >= 0]):
        virtual = aggregated.assets[g]
        rows = m.group == g
        plugged = m.plugged[rows]
        assert np.allclose(virtual.charge_limit_w, (m.charge_w[rows][:, None] * plugged).sum(axis=0))
        assert np.all(virtual.floor_path_wh <= virtual.need_path_wh + 1e-6)
        assert np.all(virtual.need_path_wh <= virtual.ceiling_path_wh + 1e-6)


def test_compiled_model_is_reused_across_fleets_of_the_same_categories() -> None:
    """Re-solves only refill Parameters: two fleets with the same categories map onto one compiled model."""
    a, _ = aggregate(fixed_fleet(20), GROUPS)
    b, _ = aggregate(fixed_fleet(30), GROUPS)
    assert planner.model_for(a) is planner.model_for(b)
    assert planner.model_for(a).problem.is_dcp(dpp=True)


def test_different_charge_rates_in_one_group_keep_the_gap_within_the_goal() -> None:
    """Executed cost against the full LP on a charge-only fleet: within the issue's 1 %.

    The split alone measured 13.7 % here (a group's summed envelope forgets which member is nearly full); the
    charge-only refinement (agent.dispatch.refine) re-plans these EVs exactly, so nothing of the gap is left.
    """
    inputs = same_window_fleet()
    full = solve(inputs)
    controllable = full.net_cost - float(H / 1000.0 * np.dot(inputs.site.price_per_kwh, inputs.site.base_load_w))
    split_only = solve_aggregated_detail(inputs, GROUPS, refined=False)
    result = solve_aggregated_detail(inputs, GROUPS)
    assert result.refined == ("charge_only",)
    assert (split_only.plan.net_cost - full.net_cost) / abs(controllable) > GAP, "the fixture must test something"
    gap = (result.plan.net_cost - full.net_cost) / abs(controllable)
    assert -1e-9 <= gap <= GAP, gap


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_refinement_never_costs_more_than_the_split(inputs: PlanInputs) -> None:
    """Each refinement step is the exact optimum of its assets with the rest fixed, priced as `plan_cost` prices."""
    split_only = solve_aggregated_detail(inputs, GROUPS, refined=False)
    result = solve_aggregated_detail(inputs, GROUPS)
    scale = max(1.0, abs(split_only.plan.net_cost))
    assert result.plan.net_cost <= split_only.plan.net_cost + 1e-6 * scale + 0.01
    check_member_physics(inputs, result.plan.power_w, result.plan.energy_wh)


def awarded_fleet() -> PlanInputs:
    """fixed_fleet(20) with 30 kW of S-RR up and down awarded for the first 12 hours."""
    base = fixed_fleet(20)
    award = np.where(np.arange(T) < 12, 30_000.0, 0.0)
    reserve = Reserve("S-RR", np.full(T, 5.0), np.full(T, 5.0), award, award)
    return PlanInputs(T, STEP_S, base.assets, base.site, reserves=[reserve])


def test_a_symmetric_band_stays_symmetric_on_every_member() -> None:
    """RegD is one band (as much down as up); shared by each side's headroom apart, a member could get up only
    and, under an energy-neutral signal, only discharge (review finding)."""
    base = fixed_fleet(20)
    award = np.where(np.arange(T) < 12, 30_000.0, 0.0)
    reserve = Reserve("RegD", np.full(T, 5.0), np.full(T, 5.0), award, award)
    inputs = PlanInputs(T, STEP_S, base.assets, base.site, reserves=[reserve])
    plan = solve_aggregated_detail(inputs, GROUPS).plan
    evs = [i for i, a in enumerate(inputs.assets) if a.is_ev]
    assert plan.reserve_up_w[evs].sum() > 0
    assert plan.reserve_up_w[evs] == pytest.approx(plan.reserve_down_w[evs], abs=TOL)


def test_refined_charge_only_members_keep_their_reserve_deliverable() -> None:
    """With an award, a re-planned charge-only EV still holds its share: up ≤ charge, charge + down ≤ its limit."""
    inputs = awarded_fleet()
    result = solve_aggregated_detail(inputs, GROUPS)
    assert "charge_only" in result.refined
    plan = result.plan
    charge_only = [i for i, a in enumerate(inputs.assets) if a.is_ev and a.discharge_w <= 0]
    held = plan.reserve_up_w[charge_only] + plan.reserve_down_w[charge_only]
    assert held.sum() > 0, "some of the award sits on charge-only EVs"
    for i in charge_only:
        a = inputs.assets[i]
        assert np.all(plan.reserve_up_w[i] <= plan.power_w[i] + TOL)
        assert np.all(plan.power_w[i] + plan.reserve_down_w[i] <= a.charge_w * a.available + TOL)
    check_member_physics(inputs, plan.power_w, plan.energy_wh)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_the_ev_lp_is_the_full_lp_when_the_fleet_is_only_evs(inputs: PlanInputs) -> None:
    """Without batteries the EV refinement LP (agent.dispatch.member_lp) holds every asset: its schedule, priced by
    `plan_cost`, must cost what the full LP's optimum costs, V2G wear segments, needs and import limits included.

    These fleets have no PV and no export limit: with them the full LP may charge and discharge one EV in the same
    step (burning energy through its losses), which no EV can do and which the refinement cuts (refine._cheaper)."""
    evs_only = PlanInputs(T, STEP_S, [a for a in inputs.assets if a.is_ev], inputs.site)
    full = solve(evs_only)
    # 2 groups, not 16: with 16 nearly every EV of these small fleets has a group of its own and the split alone is
    # already exact (a review found it passing 23 of 25 draws; with 2 groups, 11 of 25)
    result = solve_aggregated_detail(evs_only, 2)
    assert "v2g" in result.refined or not any(a.discharge_w > 0 for a in evs_only.assets)
    scale = max(1.0, abs(full.net_cost))
    assert result.plan.net_cost == pytest.approx(full.net_cost, abs=1e-5 * scale + 0.01)
    check_member_physics(evs_only, result.plan.power_w, result.plan.energy_wh)


def test_v2g_members_are_replanned_within_the_goal() -> None:
    """30 EVs, 30 % V2G, a site limit: the split alone is far off the full LP; the refinement with V2G members is
    within the issue's 1 % (measured 71 % and 0.0 %; with only the charge-only EVs re-planned it was 27 %)."""
    inputs = fixed_fleet(30)
    full = solve(inputs)
    controllable = full.net_cost - float(H / 1000.0 * np.dot(inputs.site.price_per_kwh, inputs.site.base_load_w))
    split_only = solve_aggregated_detail(inputs, GROUPS, refined=False)
    result = solve_aggregated_detail(inputs, GROUPS)
    assert result.refined == ("charge_only", "v2g", "batteries")
    assert (split_only.plan.net_cost - full.net_cost) / abs(controllable) > GAP, "the fixture must test something"
    gap = (result.plan.net_cost - full.net_cost) / abs(controllable)
    assert -1e-6 <= gap <= GAP, gap
    check_member_physics(inputs, result.plan.power_w, result.plan.energy_wh)


def test_v2g_members_past_the_column_cap_keep_their_split_power(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past refine.V2G_MAX_COLUMNS the V2G members are left as split; the charge-only EVs are still re-planned."""
    from agent.dispatch import refine

    inputs = fixed_fleet(30)
    split_only = solve_aggregated_detail(inputs, GROUPS, refined=False)
    monkeypatch.setattr(refine, "V2G_MAX_COLUMNS", 0)
    result = solve_aggregated_detail(inputs, GROUPS)
    assert "v2g" not in result.refined and "charge_only" in result.refined
    v2g = [i for i, a in enumerate(inputs.assets) if a.is_ev and a.discharge_w > 0]
    assert np.array_equal(result.plan.power_w[v2g], split_only.plan.power_w[v2g])


def test_refined_v2g_members_keep_their_reserve_deliverable() -> None:
    """With an award, a re-planned V2G EV keeps its power headroom and holds more of the energy its reserve needs.

    The energy check (agent.dispatch.reserve_check) is the planner's own rule: the full LP's plan passes it exactly.
    """
    from agent.dispatch.reserve_check import reserve_energy_unheld_kwh

    inputs = awarded_fleet()
    full = solve(inputs)
    assert reserve_energy_unheld_kwh(inputs, full.energy_wh, full.reserve_up_w, full.reserve_down_w) < 1e-6
    split_only = solve_aggregated_detail(inputs, GROUPS, refined=False)
    result = solve_aggregated_detail(inputs, GROUPS)
    assert "v2g" in result.refined
    before = split_only.plan.violations["reserve_energy_unheld_kwh"]
    after = result.plan.violations["reserve_energy_unheld_kwh"]
    assert before > 1.0, "the fixture must test something"
    assert after < before
    plan = result.plan
    for i, a in enumerate(inputs.assets):
        if a.is_ev and a.discharge_w > 0:
            assert np.all(plan.reserve_up_w[i] <= plan.power_w[i] + a.discharge_w * a.available + TOL)
            assert np.all(plan.power_w[i] + plan.reserve_down_w[i] <= a.charge_w * a.available + TOL)
    check_member_physics(inputs, plan.power_w, plan.energy_wh)


def test_an_up_dr_window_outside_the_horizon_is_no_row() -> None:
    """An up-DR event whose window covers no step of the horizon (it has ended, or starts later) adds nothing; the
    EV LP once failed on its empty row block (found by `simulate --fleet large --strategies aggregated`)."""
    from agent.dispatch.inputs import UpDr

    base = fixed_fleet(12)
    updr = UpDr(np.zeros(T, dtype=bool), np.full(T, 20_000.0), 10_000.0, 8.0)
    with_event = PlanInputs(T, STEP_S, base.assets, base.site, updr=updr)
    result = solve_aggregated_detail(with_event, GROUPS)
    assert "charge_only" in result.refined and "v2g" in result.refined
    plain = solve_aggregated_detail(base, GROUPS)
    assert result.plan.net_cost == pytest.approx(plain.plan.net_cost, rel=1e-6)


def test_refined_batteries_keep_the_reserve_the_aggregate_gave_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an award the batteries are re-planned too, holding at least their reserve with the energy behind it, and
    the re-plan (the batteries' exact optimum with that reserve kept) costs no more than leaving them as planned."""
    from agent.dispatch import refine
    from agent.dispatch.reserve_check import reserve_energy_unheld_kwh

    inputs = awarded_fleet()
    split_only = solve_aggregated_detail(inputs, GROUPS, refined=False)
    result = solve_aggregated_detail(inputs, GROUPS)
    assert "batteries" in result.refined
    monkeypatch.setattr(refine, "_battery_step", lambda *args: False)
    evs_only = solve_aggregated_detail(inputs, GROUPS)
    assert "batteries" not in evs_only.refined
    bess = [i for i, a in enumerate(inputs.assets) if not a.is_ev]
    before, after = split_only.plan, result.plan
    assert before.reserve_up_w[bess].sum() > 0, "the fixture must put some of the award on the battery"
    assert np.all(after.reserve_up_w[bess].sum(axis=0) >= before.reserve_up_w[bess].sum(axis=0) - TOL)
    assert np.all(after.reserve_down_w[bess].sum(axis=0) >= before.reserve_down_w[bess].sum(axis=0) - TOL)
    only_bess = PlanInputs(T, STEP_S, [inputs.assets[i] for i in bess], inputs.site, reserves=inputs.reserves)
    assert reserve_energy_unheld_kwh(
        only_bess, after.energy_wh[bess], after.reserve_up_w[bess], after.reserve_down_w[bess]
    ) < 1e-6
    assert after.net_cost <= evs_only.plan.net_cost + 1e-6 * abs(evs_only.plan.net_cost)


def test_refinement_in_blocks_never_costs_more_than_the_split_and_nears_the_single_lp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past refine.EV_BLOCK_COLUMNS the EV LP is solved block after block (100 000 EVs): every block is the exact
    optimum of its members with the rest fixed, so the cost never rises above the split's, and on this fleet the
    blocks end where the single LP does (measured: within 0.1 % of the controllable cost)."""
    from agent.dispatch import refine

    inputs = fixed_fleet(40)
    split_only = solve_aggregated_detail(inputs, GROUPS, refined=False)
    whole = solve_aggregated_detail(inputs, GROUPS)
    monkeypatch.setattr(refine, "EV_BLOCK_COLUMNS", 150)  # ~ 5 to 10 blocks here
    blocks = solve_aggregated_detail(inputs, GROUPS)
    assert "charge_only" in blocks.refined
    scale = max(1.0, abs(split_only.plan.net_cost))
    assert blocks.plan.net_cost <= split_only.plan.net_cost + 1e-6 * scale + 0.01
    controllable = whole.plan.net_cost - float(H / 1000.0 * np.dot(inputs.site.price_per_kwh, inputs.site.base_load_w))
    assert blocks.plan.net_cost - whole.plan.net_cost <= 0.001 * abs(controllable) + 0.01
    check_member_physics(inputs, blocks.plan.power_w, blocks.plan.energy_wh)


def test_a_fleet_of_one_model_with_a_spread_of_soh_is_still_aggregated() -> None:
    """Prices are per Wh of a pack's usable energy (nominal × SoH), so 200 EVs of one model at SoH 0.70–1.00 carry
    200 calendar and wear prices: bins of 2 % made ~20 categories for 16 virtual batteries and the aggregate refused
    the fleet (the agent then never planned it). The bins widen until the categories fit."""
    rng = np.random.default_rng(5)
    assets = []
    for i in range(200):
        soh = rng.uniform(0.70, 1.0)
        base = ev(i, int(rng.integers(0, 6)), int(rng.integers(10, T)), 60_000.0 * soh, 20_000.0 * soh, 15_000.0,
                  11_000.0, v2g=i % 3 == 0)  # fmt: skip
        assets.append(replace(base, wear_prices=WEAR / soh, calendar_price_per_wh_h=2e-5 / soh))
    site = SiteForecast(np.linspace(5.0, 40.0, T), np.full(T, 50_000.0), np.zeros(T))
    inputs = PlanInputs(T, STEP_S, [*assets, battery()], site)
    _, grouping = aggregate(inputs, GROUPS)
    assert grouping.categories <= GROUPS and grouping.price_bin > 0.02
    result = solve_aggregated_detail(inputs, GROUPS)
    check_member_physics(inputs, result.plan.power_w, result.plan.energy_wh)


def test_a_v2g_members_need_path_falls_after_its_checkpoint() -> None:
    """Target due at step 6, plugged in until step 12: after step 6 the member may discharge what it holds above its
    need, so the energy the group must keep falls; it rose (a sign slip), which asked the group for energy its
    members need not hold and made the aggregate's optimum exceed the full LP's."""
    member = replace(ev(0, 0, 12, 60_000.0, 30_000.0, 20_000.0, 11_000.0, v2g=True), target_step=6)
    _, grouping = aggregate(PlanInputs(T, STEP_S, [member], SiteForecast(np.full(T, 10.0), np.zeros(T), np.zeros(T))))
    path = grouping.members.need_path[0]
    assert np.all(np.diff(path[6:]) <= 1e-9), path
    assert path[7] < path[6]
