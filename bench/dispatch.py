"""Dispatch benchmark: the full per-EV LP against the aggregated path (agent.dispatch.aggregate), same run.

For each fleet size N: N EV sessions from `sim_devices.scenarios.generate_sessions` (mixed workplace/residential,
those overlapping a 24 h horizon of 96 × 15 min starting at noon, including EVs that arrive later in it), two
stationary batteries, JEPX-like system prices from `generate_prices`, a little PV and an up-DR window. Then:
  * naive      – agent.dispatch.planner.solve on the full per-EV PlanInputs: first solve (the planner's model cache
                 cleared, so it includes cvxpy compilation) and a re-solve;
  * aggregated – agent.dispatch.aggregate.solve_aggregated_detail, first (cache cleared) and re-solve.
The re-solve is a genuine MPC step: the horizon moves 15 min on, prices are re-forecast (noise) and every EV's
energy is taken from the first plan's next step plus measurement noise; the same inputs go to both paths.
Printed: seconds, the aggregated/naive ratio, the objective gap of the executed (disaggregated) schedule against
the full LP optimum (costs net of the fixed uncontrolled-load and floor parts), the EV energy missing at departure
(kWh, both paths) and the group power the members could not follow. Timings are wall seconds on a shared machine:
compare within a run. Where the full LP is skipped, the gap reference is agent.dispatch.bound.lower_bound (the
aggregate with each group at its members' lowest prices: no schedule costs less); the aggregated LP's own optimum is
printed too, but it is no bound (its prices are its members' averages). The split line also counts the re-solve's
charge-only blocks planned by sort and fill with a certificate of optimality (agent.dispatch.fill) against all of
them (the others went to the member LP). Where the V2G members are not re-planned (refine.V2G_MAX_COLUMNS), the same
re-solve is run once more with them re-planned, to show the time it would take and the gap it leaves.
With --taper-soc K every EV's charge tapers above SoC K (AssetPlan.charge_taper_soc, linear to 0 at full), on both
paths: the full LP's taper rows, the aggregated path's tapered envelopes, split and member LP (charge-only blocks
with a taper row that can bind are not filled: the split line's "taper" count).
With --regd the site also offers regulation: a `RegD` Reserve with hourly capacity prices and the signal's mean
activation, nothing awarded, as evaluation/agent_view.py appends it to the agent's inputs, so the reserve path (the
split's per-member bands, the refinement's reserve rows) is timed too.
Usage: python bench/dispatch.py [--sizes 10 100 1000 10000 100000] [--groups 32] [--naive-max 60] [--budget 600]
       [--skip-v2g] [--regd] [--taper-soc 0.8]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import cvxpy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.dispatch import planner, refine
from agent.dispatch.aggregate import AggregatedSolve, solve_aggregated_detail
from agent.dispatch.bound import lower_bound
from agent.dispatch.degradation import calendar_price_per_wh_h, segment_prices
from agent.dispatch.formulation import DispatchModel, Shape
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, UpDr
from agent.dispatch.planner import Plan, PlanError
from sim_devices.scenarios import (
    JST,
    SessionSpec,
    generate_prices,
    generate_sessions,
    regulation_capacity_prices,
    regulation_values,
)

STEPS = 96
STEP_S = 900.0
H = STEP_S / 3600.0
DAY = date(2025, 4, 8)  # a spring Tuesday: curtailment-season prices, workplace and residential sessions
START = datetime.combine(DAY, dtime(12, 0), JST)
EV_PACK_COST_PER_KWH = 20_000.0  # JPY, replacement cost of an EV pack per kWh
BATTERY_COST_PER_KWH = 40_000.0
SEGMENTS = 4
REGD_MEDIAN_PER_KW_H = 1.5  # evaluation's default regulation capacity price (evaluation/evaluate.py)
REGD_SAMPLE_S = 10.0  # the regulation signal's sample period, as evaluation/scenario.py draws it
REGD = False  # --regd: offer regulation (see the module docstring)
TAPER_SOC: float | None = None  # --taper-soc: every EV's charge taper knee (see the module docstring)


def regd_reserve(start: datetime, seed: int = 11) -> Reserve:
    """The `RegD` product as evaluation/agent_view.py appends it: capacity prices (hourly, held over each hour's
    steps, the same price up and down), nothing awarded, the signal's mean up activation."""
    first_hour = int((start - datetime.combine(DAY, dtime(0, 0), JST)).total_seconds() // 3600)
    hourly = regulation_capacity_prices(72, seed, REGD_MEDIAN_PER_KW_H)
    hours = first_hour + (np.arange(STEPS) * STEP_S // 3600).astype(int)
    price = hourly[np.minimum(hours, len(hourly) - 1)]
    activation = float(np.maximum(regulation_values(86400, seed, REGD_SAMPLE_S), 0.0).mean())
    zeros = np.zeros(STEPS)
    return Reserve("RegD", price, price, zeros, zeros, activation_per_h=activation)


def sessions_for(n: int, seed: int) -> list[SessionSpec]:
    """Exactly n sessions that overlap the first horizon (more chargers until there are enough)."""
    chargers = max(4, n)
    end = START + timedelta(seconds=STEPS * STEP_S)
    while True:
        drawn = generate_sessions(DAY - timedelta(days=1), 3, chargers, seed, "mixed")
        live = [s for s in drawn if s.departure > START + timedelta(seconds=STEP_S) and s.arrival < end]
        if len(live) >= n:
            return live[:n]
        chargers = int(chargers * 1.5) + 1


def quarter_hour_prices(seed: int) -> tuple[datetime, np.ndarray]:
    """System prices from generate_prices (half-hourly, JPY/kWh) repeated to 15-min steps, and their start."""
    prices = generate_prices(DAY, 3, seed)
    return prices.times[0], np.repeat(np.asarray(prices.system, dtype=float), 2)


def ev_plans(sessions: list[SessionSpec], start: datetime, energy: dict[int, float] | None = None) -> list[AssetPlan]:
    """One AssetPlan per session, as agent.dispatch.build makes them (floor, target, departure, wear prices)."""
    plans = []
    for k, s in enumerate(sessions):
        rng = np.random.default_rng([7, k])
        cap = s.capacity_wh
        charge = float(rng.choice([6_000.0, 11_000.0], p=[0.6, 0.4]))
        discharge = charge if rng.random() < 0.3 else 0.0  # 30 % are V2G-capable
        eff = 0.95 if rng.random() < 0.8 else 0.92
        arrive = max(0, math.ceil((s.arrival - start).total_seconds() / STEP_S))
        depart = max(1, math.ceil((s.departure - start).total_seconds() / STEP_S))
        steps = np.arange(STEPS)
        now = s.arrival_soc * cap if energy is None else energy[k]
        plans.append(
            AssetPlan(
                id=f"ev{k}",
                energy_wh=now,
                min_wh=min(s.min_soc * cap, now),
                max_wh=cap,
                charge_w=charge,
                discharge_w=discharge,
                efficiency=eff,
                available=(steps >= arrive) & (steps < depart),
                target_wh=s.target_soc * cap,
                target_step=depart,
                wear_prices=segment_prices(EV_PACK_COST_PER_KWH * cap / 1000, cap, 1.0, eff, SEGMENTS),
                calendar_price_per_wh_h=calendar_price_per_wh_h(EV_PACK_COST_PER_KWH * cap / 1000, cap),
                is_ev=True,
                charge_taper_soc=TAPER_SOC,
            )
        )
    return plans


def batteries(energy: list[float] | None = None) -> list[AssetPlan]:
    cap = 500_000.0
    out = []
    for k in range(2):
        out.append(
            AssetPlan(
                id=f"bess{k}",
                energy_wh=(0.5 * cap) if energy is None else energy[k],
                min_wh=0.1 * cap,
                max_wh=cap,
                charge_w=250_000.0,
                discharge_w=250_000.0,
                efficiency=0.96,
                wear_prices=segment_prices(BATTERY_COST_PER_KWH * cap / 1000, cap, 0.95, 0.96, SEGMENTS),
                calendar_price_per_wh_h=calendar_price_per_wh_h(BATTERY_COST_PER_KWH * cap / 1000, cap),
            )
        )
    return out


def fleet_inputs(
    sessions: list[SessionSpec],
    start: datetime,
    prices: tuple[datetime, np.ndarray],
    ev_energy: dict[int, float] | None = None,
    bess_energy: list[float] | None = None,
) -> PlanInputs:
    t0, series = prices
    first = int((start - t0).total_seconds() // STEP_S)
    price = series[first : first + STEPS]
    evs = ev_plans(sessions, start, ev_energy)
    n = len(evs)
    hours = np.array([(start + timedelta(seconds=STEP_S * k)).hour + 0.25 * (k % 4) for k in range(STEPS)])
    base = np.full(STEPS, 20_000.0 + 1_500.0 * n)
    pv = np.maximum(0.0, np.sin((hours - 6.0) / 12.0 * math.pi)) * 800.0 * n
    site = SiteForecast(price, base, pv, import_limit_w=base[0] + 0.4 * sum(a.charge_w for a in evs) + 500_000.0)
    window = (hours >= 10) & (hours < 14) & (np.arange(STEPS) > 40)  # tomorrow 10:00–14:00
    updr = UpDr(window, base - pv, 800.0 * n, 8.0)
    reserves = [regd_reserve(start)] if REGD else []
    return PlanInputs(STEPS, STEP_S, evs + batteries(bess_energy), site, updr=updr, reserves=reserves)


def next_step(sessions: list[SessionSpec], plan: Plan, prices: tuple[datetime, np.ndarray], seed: int) -> PlanInputs:
    """The MPC re-solve 15 min later: energies from the plan's next step plus noise, re-forecast prices."""
    rng = np.random.default_rng(seed)
    t0, series = prices
    noisy = (t0, np.maximum(0.01, series * rng.lognormal(0.0, 0.08, len(series))))
    n = len(sessions)
    ev_energy = {}
    for k, s in enumerate(sessions):
        e = float(plan.energy_wh[k, 1]) + rng.normal(0.0, 0.005) * s.capacity_wh
        ev_energy[k] = float(np.clip(e, 0.0, s.capacity_wh))
    bess = [float(plan.energy_wh[n + k, 1]) for k in range(2)]
    return fleet_inputs(sessions, START + timedelta(seconds=STEP_S), noisy, ev_energy, bess)


def fixed_cost(inputs: PlanInputs) -> float:
    """The part of net_cost no decision changes: uncontrolled load's energy and calendar ageing of the floors."""
    site = inputs.site
    t = inputs.steps
    energy = H / 1000.0 * float(np.dot(site.price_per_kwh[:t], site.base_load_w[:t] - site.pv_w[:t]))
    return energy + H * t * sum(a.calendar_price_per_wh_h * a.min_wh for a in inputs.assets)


DPP_MAX_EVS = 100_000  # was 100 while the planner's DPP compile needed O((N·T)²) memory (fixed in formulation.py)


def timed_naive(inputs: PlanInputs) -> tuple[Plan, float, str]:
    """The full per-EV LP: planner.solve (DPP, compiled once per shape) where it compiles, else the same
    DispatchModel solved with cvxpy's ignore_dpp (parameters as constants, recompiled on every solve)."""
    started = time.perf_counter()
    evs = sum(a.is_ev for a in inputs.assets)
    if evs <= DPP_MAX_EVS:
        plan = planner.solve(inputs, time_limit_s=600.0)
        return plan, time.perf_counter() - started, "dpp"
    model = DispatchModel(Shape.of(inputs), inputs.step_h)
    planner.fill(model, inputs)
    model.problem.solve(solver=cp.HIGHS, ignore_dpp=True, time_limit=600.0)
    plan = planner._read_plan(model, inputs, time.perf_counter() - started)
    return plan, time.perf_counter() - started, "no-dpp"


NAIVE_FIRST_MAX_EVS = 2000  # ~30 s at 1000 EVs here
BUDGET_S = 600.0  # the aggregated path's time limit (--budget): refinement steps that overrun it are dropped


def timed_aggregated(inputs: PlanInputs, groups: int) -> tuple[AggregatedSolve, float]:
    started = time.perf_counter()
    result = solve_aggregated_detail(inputs, groups, time_limit_s=BUDGET_S)
    return result, time.perf_counter() - started


def bound_gap_percent(result: AggregatedSolve, inputs: PlanInputs, bound: float) -> float:
    """Executed cost over `bound` (agent.dispatch.bound: no schedule costs less), in % of the controllable cost: an
    upper bound on the gap to the full LP's optimum where the full LP cannot be solved."""
    return 100.0 * (result.plan.net_cost - bound) / max(abs(bound - fixed_cost(inputs)), 1e-9)


def timed_bound(inputs: PlanInputs, groups: int) -> tuple[float | None, str]:
    """The lower bound and how it went, for the printout (None: no bound, with the reason)."""
    started = time.perf_counter()
    try:
        bound = lower_bound(inputs, groups, time_limit_s=BUDGET_S)
    except (ValueError, PlanError) as exc:
        return None, f"no lower bound ({exc})"
    return bound.net_cost, f"lower bound {bound.net_cost:.0f} in {time.perf_counter() - started:.2f} s"


def with_v2g_replanned(inputs: PlanInputs, groups: int) -> tuple[AggregatedSolve, float]:
    """The aggregated path with the V2G members re-planned whatever their columns (refine.V2G_MAX_COLUMNS lifted):
    what keeping their split power leaves, measured."""
    cap = refine.V2G_MAX_COLUMNS
    refine.V2G_MAX_COLUMNS = 10**9
    try:
        return timed_aggregated(inputs, groups)
    finally:
        refine.V2G_MAX_COLUMNS = cap


def gap_percent(agg: Plan, naive: Plan, inputs: PlanInputs) -> float:
    controllable = naive.net_cost - fixed_cost(inputs)
    return 100.0 * (agg.net_cost - naive.net_cost) / max(abs(controllable), 1e-9)


def run(sizes: list[int], groups: int, naive_max_s: float, skip_v2g: bool = False) -> None:
    prices = quarter_hour_prices(seed=11)
    head = (
        f"{'N':>6} {'naive 1st':>9} {'naive re':>9} {'agg 1st':>8} {'agg re':>8} {'re ratio':>8} "
        f"{'gap % 1st':>9} {'gap % re':>8} {'EV short kWh agg/naive':>22} {'unreal. kWh':>11} "
        f"{'groups':>6} {'cat x bkt':>9}"
    )
    print(head)
    print("(naive 're' suffix: dpp = planner.solve on its cached model; no- = same LP recompiled, see DPP_MAX_EVS)")
    per_ev_naive_s: float | None = None
    for n in sizes:
        sessions = sessions_for(n, seed=3)
        first_inputs = fleet_inputs(sessions, START, prices)
        estimate = None if per_ev_naive_s is None else per_ev_naive_s * n
        # without an estimate (the first size), the naive LP runs only where it is known to be quick
        run_naive = n <= NAIVE_FIRST_MAX_EVS if estimate is None else estimate <= naive_max_s
        naive = naive_re = None
        t_naive = t_naive_re = float("nan")
        if run_naive:
            planner._MODELS.clear()  # first solve includes compilation
            naive, t_naive, how = timed_naive(first_inputs)
        planner._MODELS.clear()
        try:
            agg, t_agg = timed_aggregated(first_inputs, groups)
        except ValueError as exc:  # too many distinct plug-in windows for the group count
            print(f"{n:6d}  aggregated path failed: {exc}", flush=True)
            continue
        re_inputs = next_step(sessions, agg.plan, prices, seed=5)
        if run_naive:
            naive_re, t_naive_re, how = timed_naive(re_inputs)
            per_ev_naive_s = t_naive_re / n
        refine.FILLED.clear()
        agg_re, t_agg_re = timed_aggregated(re_inputs, groups)
        filled = f"{refine.FILLED.count('certified')}/{len(refine.FILLED)}"
        if refine.FILLED.count("taper"):
            filled += f" ({refine.FILLED.count('taper')} not filled: a taper row can bind)"
        if naive is not None and naive_re is not None:
            ratio = f"{t_agg_re / t_naive_re:8.3f}"
            gap1 = f"{gap_percent(agg.plan, naive, first_inputs):9.3f}"
            gap2 = f"{gap_percent(agg_re.plan, naive_re, re_inputs):8.3f}"
            short = f"{agg_re.plan.violations['ev_short_kwh']:.2f}/{naive_re.violations['ev_short_kwh']:.2f}"
            n1, n2 = f"{t_naive:9.2f}", f"{t_naive_re:6.2f}{how[:3]:>3}"
        else:
            ratio, gap1, gap2 = f"{'-':>8}", f"{'-':>9}", f"{'-':>8}"
            short = f"{agg_re.plan.violations['ev_short_kwh']:.2f}/-"
            n1 = n2 = f"{'skipped':>9}"
        print(
            f"{n:>6} {n1} {n2} {t_agg:8.3f} {t_agg_re:8.3f} {ratio} {gap1} {gap2} {short:>22} "
            f"{agg_re.plan.violations['unrealised_kwh']:11.3f} {agg_re.grouping.used:>6} "
            f"{f'{agg_re.grouping.categories}x{agg_re.grouping.buckets}':>9}",
            flush=True,
        )
        if not run_naive and estimate is not None:
            print(f"{'':>6} naive skipped: estimated {estimate:.0f} s per solve > {naive_max_s:.0f} s (linear in N)")
        detail = agg_re
        bound, bound_note = timed_bound(re_inputs, groups)
        over = "-" if bound is None else f"{bound_gap_percent(detail, re_inputs, bound):.3f}"
        print(
            f"{'':>6} agg re-solve split: aggregate {detail.aggregate_s:.3f} s, LP {detail.solve_s:.3f} s "
            f"(HiGHS {detail.aggregate_plan.solve_s:.3f} s), split {detail.disaggregate_s:.3f} s, "
            f"refine {detail.refine_s:.3f} s ({'+'.join(detail.refined) or 'none'}; charge-only blocks filled "
            f"with a certificate {filled}, the rest by their LP); "
            f"aggregated LP net cost {detail.aggregate_plan.net_cost:.0f} (no bound), executed "
            f"{detail.plan.net_cost:.0f}; {bound_note}, executed over it: {over} % of the controllable cost",
            flush=True,
        )
        v2g = any(a.is_ev and a.discharge_w > 0 for a in re_inputs.assets)
        if v2g and "v2g" not in detail.refined and not skip_v2g:
            forced, t_forced = with_v2g_replanned(re_inputs, groups)
            versus = (
                f"gap {gap_percent(forced.plan, naive_re, re_inputs):.3f} % vs the full LP"
                if naive_re is not None
                else "-" if bound is None
                else f"{bound_gap_percent(forced, re_inputs, bound):.3f} % over the lower bound"
            )
            print(
                f"{'':>6} V2G members not re-planned (past refine.V2G_MAX_COLUMNS); re-planned anyway: "
                f"{t_forced:.3f} s ({t_forced / t_agg_re:.2f}x), refine {forced.refine_s:.3f} s "
                f"({'+'.join(forced.refined) or 'none'}), {versus}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000, 100000])
    parser.add_argument("--groups", type=int, default=None, help="EV groups (default: the module's DEFAULT_GROUPS)")
    parser.add_argument("--naive-max", type=float, default=60.0, help="skip the naive LP above this estimate (s)")
    parser.add_argument("--budget", type=float, default=600.0, help="time limit of an aggregated solve (s)")
    parser.add_argument("--skip-v2g", action="store_true", help="do not measure the V2G members re-planned")
    parser.add_argument("--regd", action="store_true", help="offer a RegD regulation product (no award)")
    parser.add_argument("--taper-soc", type=float, default=None, help="every EV's charge taper knee SoC (0..1)")
    args = parser.parse_args()
    from agent.dispatch.aggregate import DEFAULT_GROUPS

    if args.taper_soc is not None and not 0.0 <= args.taper_soc <= 1.0:
        parser.error(f"--taper-soc must be within 0..1, got {args.taper_soc}")
    global BUDGET_S, REGD, TAPER_SOC
    BUDGET_S = args.budget
    REGD = args.regd
    TAPER_SOC = None if args.taper_soc is None or args.taper_soc >= 1.0 else args.taper_soc
    run(args.sizes, args.groups or DEFAULT_GROUPS, args.naive_max, args.skip_v2g)


if __name__ == "__main__":
    main()
