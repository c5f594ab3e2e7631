"""Fill the dispatch model from PlanInputs, solve it, and read back a Plan with its cost breakdown.

Compiled models are cached per problem shape, so an MPC re-solve with new numbers costs one solver call. The cache
is bounded and no solve leaves HiGHS' copy of the LP behind (`_run`): both grew the process by hundreds of MB.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import cvxpy as cp
import numpy as np

from agent.dispatch import costs
from agent.dispatch.formulation import BIG_W, DispatchModel, Shape
from agent.dispatch.inputs import (
    PlanInputs,
    charge_limits_w,
    discharge_limits_w,
    presence,
    updr_reachable,
)
from agent.dispatch.plan import Plan, PlanError
from agent.dispatch.pricing import need_above
from agent.dispatch.taper import held_step_fraction

PATH_MARGIN_WH = 1e-3

# Compiled models kept, least recently used first out. Each holds cvxpy's compiled parameter program (~40 MB at
# 100 EVs x 96 steps), and the shape changes whenever an asset comes or goes or an up-DR or award starts or ends, so
# an unbounded cache grew without end in a long run. Four are enough for `vpp-agent simulate` (3 days, small fleet,
# one process: 9 shapes, compiled 9 times as with an unbounded cache; a cache of 2 compiled 21 times).
MODEL_CACHE_SIZE = 4
_MODELS: OrderedDict[tuple[Shape, float], DispatchModel] = OrderedDict()


def model_for(inputs: PlanInputs) -> DispatchModel:
    key = (Shape.of(inputs), inputs.step_h)
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    _MODELS[key] = DispatchModel(key[0], inputs.step_h)
    while len(_MODELS) > MODEL_CACHE_SIZE:
        _MODELS.popitem(last=False)
    return _MODELS[key]


def plan_presence(inputs: PlanInputs) -> np.ndarray | None:
    """The Plan's `presence`: each asset's fraction of each step plugged in, where some asset leaves mid-step."""
    if all(a.present_fraction is None for a in inputs.assets):
        return None
    return np.array([presence(a, inputs.steps) for a in inputs.assets])


def fill(model: DispatchModel, inputs: PlanInputs) -> None:
    """Write every number of `inputs` into the model's Parameters."""
    p, shape = model.params, model.shape
    n, t, j = shape.assets, shape.steps, shape.segments
    headroom = np.zeros((n, 1))
    initial = np.zeros((n, j))
    segment_cap = np.zeros((n, j))
    wear = np.zeros((n, j))
    charge_max = np.zeros((n, t))
    discharge_max = np.zeros((n, t))
    departure = np.zeros((n, t + 1))
    target_above = np.zeros(n)
    need_at = np.zeros((n, t + 1))  # soft per-step needs of virtual batteries (0 = none)
    tier1 = np.zeros(n)
    floor_at = np.zeros((n, t + 1))
    ceiling_at = np.zeros((n, t + 1))
    for i, a in enumerate(inputs.assets):
        room = max(0.0, a.max_wh - a.min_wh)
        headroom[i, 0] = room
        segments = len(a.wear_prices)
        segment_cap[i, :segments] = room / segments
        wear[i, :segments] = costs.wear_per_w(a, inputs.step_h)
        left = min(max(0.0, a.energy_wh - a.min_wh), room)
        for k in range(segments):  # the shallowest (cheapest) segments hold the energy first
            initial[i, k] = min(left, segment_cap[i, k])
            left -= initial[i, k]
        charge_max[i] = charge_limits_w(a, t)
        discharge_max[i] = discharge_limits_w(a, t)
        # path bounds are sums over thousands of EVs: widened by a rounding margin, so that the initial energy
        # (summed separately) never sits a few ulps outside them and makes the LP infeasible
        margin = PATH_MARGIN_WH + 1e-9 * room
        low = 0.0 if a.floor_path_wh is None else np.asarray(a.floor_path_wh)[: t + 1] - a.min_wh - margin
        low = np.clip(low, 0.0, room)
        high = room if a.ceiling_path_wh is None else np.asarray(a.ceiling_path_wh)[: t + 1] - a.min_wh + margin
        ceiling_at[i] = np.clip(high, low, room)  # never below the floor: the envelope stays non-empty
        floor_at[i] = low
        if a.need_path_wh is not None:
            need_at[i] = np.clip(np.asarray(a.need_path_wh)[: t + 1] - a.min_wh, 0.0, room)
            total = need_at[i].max() if a.need_total_wh is None else a.need_total_wh
            tier1[i] = costs.tier1_wh(max(0.0, total), inputs.penalties)
        elif a.target_wh is not None and a.target_step is not None:
            departure[i, min(a.target_step, t)] = 1.0
            target_above[i] = need_above(a, t, inputs.step_h)
    p.headroom.value = headroom
    p.initial.value = initial
    p.segment_cap.value = segment_cap
    p.wear.value = wear
    h = inputs.step_h
    p.calendar.value = np.array([costs.calendar_per_wh(a, h) for a in inputs.assets])
    if model.shape.bent:
        bends = [(a.min_wh, *costs.calendar_bends_per_wh(a, h)) for a in inputs.assets if a.calendar_bends]
        above_floor = np.concatenate([knees - floor for floor, knees, _ in bends])
        p.bend_above_floor.value = np.repeat(above_floor[:, None], inputs.steps, axis=1)
        p.bend_price.value = np.concatenate([per_wh for _, _, per_wh in bends])
    p.terminal.value = np.array([costs.terminal_per_wh(a, inputs) for a in inputs.assets])
    # a reserve is held for whole steps: an EV leaving mid-step holds none in its departure step, whatever power its
    # minutes there allow (the flows keep that power, and the headroom rows their limits, so it can still charge)
    present = np.array([presence(a, t) for a in inputs.assets]).reshape(n, t)
    whole = (present >= 1.0).astype(float)
    p.charge_max.value = charge_max
    p.discharge_max.value = discharge_max
    p.reserve_cap.value = (charge_max + discharge_max) * whole
    p.charge_flow_max.value = charge_max  # the burning re-solve cuts these; a fill restores them
    p.discharge_flow_max.value = discharge_max
    site = inputs.site
    p.price.value = costs.energy_per_w(inputs)
    p.base_minus_pv.value = np.asarray(site.base_load_w[:t] - site.pv_w[:t], dtype=float)
    p.import_limit.value = np.full(t, min(site.import_limit_w, BIG_W))
    p.export_limit.value = np.full(t, min(site.export_limit_w, BIG_W))
    pen = inputs.penalties
    p.site_penalty.value = costs.site_excess_per_w(pen, h)
    p.target_at.value = departure * target_above.reshape(n, 1) + need_at
    p.tier1_wh.value = costs.tier1_wh(target_above, pen) + tier1
    if shape.paths:
        p.floor_at.value = floor_at
        p.ceiling_at.value = ceiling_at
    if shape.tapers:
        p.taper_fraction.value, p.taper_room.value, p.taper_down.value = _taper_rows(inputs, headroom, charge_max)
        p.taper_departure_fraction.value, p.taper_departure_room.value = _departure_taper_rows(
            inputs, headroom, present
        )
    p.ev_tier1_price.value, p.ev_tier2_price.value = costs.ev_shortfall_per_wh(pen)
    if shape.updr and inputs.updr is not None:
        dr = inputs.updr
        window = updr_reachable(inputs).astype(float)
        p.dr_baseline.value = np.asarray(dr.baseline_w[:t], dtype=float)
        p.dr_outside.value = np.where(window > 0, 0.0, BIG_W)
        p.dr_requested.value = dr.requested_w * window
        dr_prices = costs.updr_per_w(dr, pen, h)
        p.dr_price.value = max(dr_prices.revenue, 0.0)
        p.dr_penalty.value = dr_prices.shortfall
        p.dr_below_price.value = dr_prices.below
    for k, reserve in enumerate(inputs.reserves):
        p.award_up[k].value = np.asarray(reserve.awarded_up_w[:t], dtype=float)
        p.award_down[k].value = np.asarray(reserve.awarded_down_w[:t], dtype=float)
        p.up_price[k].value, p.down_price[k].value = costs.reserve_per_w(reserve, t, h)
        p.activation[k].value = np.array([costs.activation_per_w(a, reserve, h) for a in inputs.assets])
    if shape.products:
        p.reserve_penalty.value = costs.reserve_short_per_w(pen, h)


def _taper_rows(
    inputs: PlanInputs, headroom: np.ndarray, charge_max: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """β, β x headroom and the down reserve's weight η·h·(1 − β) per asset, for formulation._taper. An asset without a
    taper gets β = 0, no down weight and, as its right-hand side, the most its charge limit could store in a step (so
    its row never binds)."""
    h = inputs.step_h
    beta = np.zeros((len(inputs.assets), 1))
    room = np.zeros_like(beta)
    down = np.zeros_like(beta)
    for i, a in enumerate(inputs.assets):
        if a.charge_taper_soc is None:
            room[i, 0] = a.efficiency * h * float(np.max(charge_max[i], initial=0.0))
            continue
        beta[i, 0] = held_step_fraction(a.charge_taper_soc, a.max_wh, a.charge_w, a.efficiency, h)
        room[i, 0] = beta[i, 0] * headroom[i, 0]
        down[i, 0] = a.efficiency * h * (1.0 - beta[i, 0])
    return beta, room, down


def _departure_taper_rows(
    inputs: PlanInputs, headroom: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """β for the fraction f of its departure step a tapering EV is still plugged in (the setpoint held f·h; `present`:
    each asset's fraction per step) and the row's right-hand side per step: β_f x headroom at that step, BIG_W
    elsewhere (formulation._taper)."""
    n, t, h = len(inputs.assets), inputs.steps, inputs.step_h
    beta = np.zeros((n, 1))
    room = np.full((n, t), BIG_W)
    for i, a in enumerate(inputs.assets):
        if a.charge_taper_soc is None:
            continue
        share = present[i]
        partial = np.flatnonzero((share > 0) & (share < 1))
        if len(partial):
            k = int(partial[0])
            beta[i, 0] = held_step_fraction(a.charge_taper_soc, a.max_wh, a.charge_w, a.efficiency, share[k] * h)
            room[i, k] = beta[i, 0] * headroom[i, 0]
    return beta, room


FALLBACK_OPTIONS: dict[str, object] = {"solver": "ipm"}


def solve(
    inputs: PlanInputs,
    time_limit_s: float = 30.0,
    solver_options: dict[str, object] | None = None,
    *,
    forbid_burning: bool = True,
) -> Plan:
    """Solve the plan; raises PlanError when no optimal solution comes back.

    With `forbid_burning` False the LP's own optimum comes back, burning included (agent.dispatch.bound: a lower
    bound needs the unrestricted optimum); no device can follow such a plan.

    `solver_options` go to HiGHS. When that solve yields nothing usable and time is left, interior point
    (FALLBACK_OPTIONS) gets the rest: HiGHS' simplex gave up (status UNKNOWN) on a 10 000-EV aggregate whose sums
    reach 1e8 Wh, which interior point solved (bench/dispatch.py).
    """
    model = model_for(inputs)
    fill(model, inputs)
    started = time.perf_counter()
    try:
        _run(model, time_limit_s, solver_options or {})
    except PlanError:
        left = time_limit_s - (time.perf_counter() - started)
        if left <= 0 or (solver_options or {}).get("solver") == FALLBACK_OPTIONS["solver"]:
            raise
        _run(model, left, {**(solver_options or {}), **FALLBACK_OPTIONS})
    plan = _read_plan(model, inputs, time.perf_counter() - started)
    for _ in range(BURN_PASSES if forbid_burning else 0):
        burning = _forbid_burning(model)
        left = time_limit_s - (time.perf_counter() - started)
        if not burning.any() or left <= 0:
            break
        try:
            _run(model, left, solver_options or {})  # with the burning sides' flows at 0
        except PlanError:
            break  # keep the plan that burns: a lossy plan beats none
        plan = _read_plan(model, inputs, time.perf_counter() - started)
    return plan


BURN_PASSES = 12
BURN_TOLERANCE_W = 1e-3


def _forbid_burning(model: DispatchModel) -> np.ndarray:
    """Where the plan charges and discharges one asset in the same step, and forbid the smaller side there.

    The LP relaxation allows both at once, which burns energy through the losses; it pays where stored energy is
    capped but power is not, e.g. a full battery that keeps "charging" to keep its reserve headroom, or consumes
    more in an up-DR window than it can store, or counts the net charge of a full pack as up headroom. No device
    can do it. Zeroing the smaller side's *flow* bound at those (asset, step) pairs (Parameters, so the compiled
    problem is reused) and solving again removes it; it is rare, so the extra solve is too. The power limits the
    reserve headroom reads stay: an idle pack forbidden to discharge in a step can still discharge if an up reserve
    is activated there (a full pack kept no up reserve in its burning steps when the limits themselves were cut).
    Returns the mask of burning pairs (the flow bounds are already changed for a re-run).
    """
    charge = np.asarray(model.charge.value)
    discharge = np.asarray(model.discharge.value)
    burning = (charge > BURN_TOLERANCE_W) & (discharge > BURN_TOLERANCE_W)
    if burning.any():
        p = model.params
        charge_max = np.array(p.charge_flow_max.value)
        discharge_max = np.array(p.discharge_flow_max.value)
        discharge_max[burning & (discharge <= charge)] = 0.0
        charge_max[burning & (charge < discharge)] = 0.0
        p.charge_flow_max.value = charge_max
        p.discharge_flow_max.value = discharge_max
    return burning


def _run(model: DispatchModel, time_limit_s: float, solver_options: dict[str, object]) -> None:
    # warm_start=False: cvxpy's default hands HiGHS the previous primal solution (setSolution, no basis), and HiGHS
    # then took 25x longer on a re-solve of the same 100-EV problem (21.8 s vs 0.86 s) and 24x longer per
    # simulated day for the 192-step oracle of `vpp-agent simulate` (5 min 19 s vs 13.5 s), cvxpy 1.9.3, highspy 1.16
    try:
        model.problem.solve(
            solver=cp.HIGHS, warm_start=False, highs_options={"time_limit": time_limit_s, **solver_options}
        )
    except cp.SolverError as exc:
        raise PlanError(f"solver failed: {exc}") from exc
    except ValueError as exc:  # cvxpy cannot unpack a solution HiGHS left with status UNKNOWN
        raise PlanError(f"solver returned no usable solution: {exc}") from exc
    finally:
        _drop_solver(model.problem)
    if model.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or model.power.value is None:
        raise PlanError(f"no plan: solver status {model.problem.status}")


def _drop_solver(problem: cp.Problem) -> None:
    """Let go of the HiGHS instance cvxpy keeps in the Problem after a solve, with its data and results.

    cvxpy stores them (Problem._solver_cache, cvxpy 1.9) for warm starts whether or not one is asked for, and we
    never warm-start (`_run`). At 100 EVs x 96 steps that instance holds ~180 MB of native memory for as long as the
    compiled model stays cached, one per cached shape, and the next solve builds its own instance before the old one
    goes, doubling the peak: 30 re-solves of the same plan grew a process from 360 to 650 MB (bench/dispatch_memory.py).
    """
    problem._solver_cache.clear()


def _read_plan(model: DispatchModel, inputs: PlanInputs, elapsed: float) -> Plan:
    h = inputs.step_h
    t = inputs.steps
    floor = np.array([a.min_wh for a in inputs.assets]).reshape(-1, 1)
    energy = floor + np.asarray(model.above.value)
    breakdown = {name: float(term.value) for name, term in model.terms.items()}
    site = inputs.site
    uncontrolled = np.asarray(site.base_load_w[:t] - site.pv_w[:t])
    breakdown["energy"] += float(np.dot(costs.energy_per_w(inputs), uncontrolled))
    breakdown["wear_calendar"] += float(sum(costs.calendar_per_wh(a, h) * a.min_wh for a in inputs.assets) * t)
    violations = {
        "ev_short_kwh": float(np.sum(model.ev_short1.value) + np.sum(model.ev_short2.value)) / 1000.0,
        "site_limit_excess_kwh": float(np.sum(model.site_over.value)) * h / 1000.0,
    }
    if model.shape.updr and inputs.updr is not None:
        # steps whose baseline no plan can reach are out of the LP's window (inputs.updr_reachable): missed in full
        dr = inputs.updr
        lost = np.asarray(dr.window[:t], dtype=bool) & ~updr_reachable(inputs)
        lost_kwh = dr.requested_w * float(lost.sum()) * h / 1000.0
        violations["updr_short_kwh"] = float(np.sum(model.dr_short.value)) * h / 1000.0 + lost_kwh
        short_price = costs.updr_per_w(dr, inputs.penalties, h).shortfall
        breakdown["updr_shortfall_penalty"] += short_price * dr.requested_w * float(lost.sum())
    n = len(inputs.assets)
    up = np.zeros((n, t))
    down = np.zeros((n, t))
    if model.shape.products:
        up = sum(np.asarray(v.value) for v in model.r_up)
        down = sum(np.asarray(v.value) for v in model.r_down)
        violations["reserve_short_kwh"] = float(sum(np.sum(s.value) for s in model.r_short)) * h / 1000.0
    return Plan(
        asset_ids=[a.id for a in inputs.assets],
        step_s=inputs.step_s,
        power_w=np.asarray(model.power.value),
        energy_wh=energy,
        reserve_up_w=up,
        reserve_down_w=down,
        breakdown=breakdown,
        violations={k: v for k, v in violations.items()},
        solve_s=elapsed,
        status=str(model.problem.status),
        presence=plan_presence(inputs),
    )
