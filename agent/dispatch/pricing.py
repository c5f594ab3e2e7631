"""Numpy pricing of a given schedule: the third backend of the dispatch cost model (after the cvxpy LP of
agent.dispatch.formulation and the HiGHS arrays of agent.dispatch.member_lp).

Given per-asset powers and energies, `plan_cost` returns the breakdown the planner would report for them, term by
term under the same names (agent.dispatch.plan), priced as settlement prices them where the LP must approximate: an
up-DR increase is paid only above the baseline and up to the request (agent.events.mv.baseline). Used to price the
aggregated path's split and refined schedules, so what is reported is what executing them costs. Its own module so
that the aggregate and the refinement, which both price schedules, do not import each other.
"""

from __future__ import annotations

import numpy as np

from agent.dispatch import costs
from agent.dispatch.inputs import AssetPlan, PlanInputs, updr_reachable


def needs_above(assets: list[AssetPlan], steps: int, step_h: float) -> np.ndarray:
    """Per asset, the energy above its floor (Wh) the planner asks for at its departure checkpoint; 0 without a target.

    A departure after the horizon asks only for what cannot be charged after it (at full rate); never more than the
    window holds. The one rule: the LP's targets (planner.fill), the aggregate's envelopes and this pricing use it."""
    n = len(assets)
    targeted = np.array([a.target_wh is not None and a.target_step is not None for a in assets], dtype=bool)
    target = np.array([a.target_wh if a.target_wh is not None else 0.0 for a in assets], dtype=float).reshape(n)
    step = np.array([a.target_step if a.target_step is not None else 0 for a in assets], dtype=float).reshape(n)
    floor = np.array([a.min_wh for a in assets], dtype=float).reshape(n)
    room = np.maximum(0.0, np.array([a.max_wh for a in assets], dtype=float).reshape(n) - floor)
    gain = np.array([a.charge_w * a.efficiency for a in assets], dtype=float).reshape(n)
    need = np.clip(target - floor - gain * np.maximum(0.0, step - steps) * step_h, 0.0, room)
    return np.where(targeted, need, 0.0)


def need_above(a: AssetPlan, steps: int, step_h: float) -> float:
    """`needs_above` of one asset."""
    return float(needs_above([a], steps, step_h)[0])


def _cycle_wear(inputs: PlanInputs, power: np.ndarray) -> float:
    """Cycle wear of given net power trajectories, segments used cheapest first (what the LP itself would choose).

    Charging fills the cheapest non-full segment, discharging drains the cheapest non-empty one; with equal segment
    sizes and non-decreasing prices this keeps the most energy where discharging is cheapest, so it is the least
    wear cost the LP could assign to the same trajectories.
    """
    h = inputs.step_h
    total = 0.0
    by_segments: dict[int, list[int]] = {}
    discharging = np.flatnonzero((power < 0).any(axis=1))  # wear is paid on discharge only: skip the others
    for i in discharging:
        a = inputs.assets[i]
        by_segments.setdefault(len(a.wear_prices), []).append(int(i))
    for j, idx in by_segments.items():
        assets = [inputs.assets[i] for i in idx]
        prices = np.stack([costs.wear_per_w(a, h) for a in assets])
        if not prices.any():
            continue
        room = np.array([max(0.0, a.max_wh - a.min_wh) for a in assets])
        cap = room / j
        left = np.minimum(np.maximum(0.0, np.array([a.energy_wh - a.min_wh for a in assets])), room)
        seg = np.zeros((len(idx), j))
        for k in range(j):
            seg[:, k] = np.minimum(left, cap)
            left -= seg[:, k]
        eff = np.array([a.efficiency for a in assets])
        # steps as rows (contiguous per step), segments as rows of `seg`, and the Wh drained from each segment
        # summed over the steps, priced once: the step loop is sequential, its body ~30 k wide at 100 000 EVs
        p = power[idx].T
        gains = np.maximum(p, 0.0) * (eff * h)
        losses = np.maximum(-p, 0.0) * (h / eff)
        seg = np.ascontiguousarray(seg.T)
        drained = np.zeros_like(seg)
        for step in np.flatnonzero((p != 0).any(axis=1)):
            gain, loss = gains[step], losses[step]
            for k in range(j):
                add = np.minimum(gain, cap - seg[k])
                seg[k] += add
                gain -= add
                take = np.minimum(loss, seg[k])
                seg[k] -= take
                loss -= take
                drained[k] += take
        total += float(np.sum(prices.T * drained * (eff / h)))  # W discharged for a step, per segment price
    return total


def _ev_shortfalls(inputs: PlanInputs, energy: np.ndarray) -> tuple[float, float]:
    """Wh short of departure needs (`needs_above`), summed over assets, split into tier 1 and tier 2."""
    t, h = inputs.steps, inputs.step_h
    rows = [i for i, a in enumerate(inputs.assets) if a.target_wh is not None and a.target_step is not None]
    if not rows:
        return 0.0, 0.0
    assets = [inputs.assets[i] for i in rows]
    need = needs_above(assets, t, h)
    step = np.array([a.target_step for a in assets], dtype=int)
    floor = np.array([a.min_wh for a in assets], dtype=float)
    have = energy[np.array(rows), np.minimum(step, t)] - floor
    short = np.maximum(0.0, need - have)
    tier1 = np.minimum(short, costs.tier1_wh(need, inputs.penalties))
    return float(tier1.sum()), float((short - tier1).sum())


def _calendar_bends_cost(inputs: PlanInputs, energy: np.ndarray) -> float:
    """The convex part of calendar ageing: each bend's price times the Wh held above it at each step end."""
    total = 0.0
    for i, asset in enumerate(inputs.assets):
        knees, per_wh = costs.calendar_bends_per_wh(asset, inputs.step_h)
        if len(knees):
            above = np.maximum(energy[i, 1:][None, :] - knees[:, None], 0.0)
            total += float(per_wh @ above.sum(axis=1))
    return total


def plan_cost(inputs: PlanInputs, power: np.ndarray, energy: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """Breakdown and violations of per-asset trajectories, priced as the planner prices a plan (its `Plan` keys).

    Reserves are not re-derived here (they depend on the reservation, not only on power): `reserve_cost` prices a
    given reservation, and callers add its terms.
    """
    t, h = inputs.steps, inputs.step_h
    site = inputs.site
    pen = inputs.penalties
    net = np.asarray(site.base_load_w[:t] - site.pv_w[:t], dtype=float) + power.sum(axis=0)
    breakdown = {"energy": float(np.dot(costs.energy_per_w(inputs), net))}
    breakdown["wear_cycle"] = _cycle_wear(inputs, power)
    calendar = np.array([costs.calendar_per_wh(a, h) for a in inputs.assets])
    breakdown["wear_calendar"] = float(np.dot(calendar, energy[:, 1:].sum(axis=1))) if len(calendar) else 0.0
    breakdown["wear_calendar"] += _calendar_bends_cost(inputs, energy)
    breakdown["terminal_value"] = sum(  # EVs' energy left is worth nothing to the plan (inputs.terminal_price)
        costs.terminal_per_wh(a, inputs) * max(0.0, float(energy[i, t]) - a.min_wh)
        for i, a in enumerate(inputs.assets)
        if not a.is_ev
    )
    short1, short2 = _ev_shortfalls(inputs, energy)
    tier1_price, tier2_price = costs.ev_shortfall_per_wh(pen)
    breakdown["ev_shortfall_penalty"] = tier1_price * short1 + tier2_price * short2
    over = np.maximum(0.0, np.maximum(net - site.import_limit_w, -site.export_limit_w - net))
    breakdown["site_limit_penalty"] = float(costs.site_excess_per_w(pen, h) * over.sum())
    violations = {"ev_short_kwh": (short1 + short2) / 1000.0, "site_limit_excess_kwh": float(over.sum()) * h / 1e3}
    if inputs.updr is not None:
        dr = inputs.updr
        prices = costs.updr_per_w(dr, pen, h)
        requested = dr.requested_w * np.asarray(dr.window[:t], dtype=float)
        # settlement's reading (agent.events.mv.baseline.delivered_increase), capped at the request
        raised = np.clip(net - np.asarray(dr.baseline_w[:t], dtype=float), 0.0, requested)
        dr_short = requested - raised
        breakdown["updr_revenue"] = float(prices.revenue * raised.sum())
        breakdown["updr_shortfall_penalty"] = float(prices.shortfall * dr_short.sum())
        # the LP's convex stand-in for the kink at the baseline (formulation._updr), in the steps it plans for
        under = np.where(updr_reachable(inputs), np.maximum(np.asarray(dr.baseline_w[:t], dtype=float) - net, 0.0), 0.0)
        breakdown["updr_below_baseline_penalty"] = float(prices.below * under.sum())
        violations["updr_short_kwh"] = float(dr_short.sum()) * h / 1000.0
    return breakdown, violations


def reserve_cost(
    inputs: PlanInputs, up_w: list[np.ndarray], down_w: list[np.ndarray]
) -> tuple[dict[str, float], dict[str, float]]:
    """Reserve terms of a reservation given per product (lists in `inputs.reserves` order, each (N, T) in W).

    Revenue at the capacity prices, activation wear of the up side, and the award not covered (the LP's
    `reserve_short` at its optimum: what the fleet's summed reservation leaves of each award)."""
    t, h = inputs.steps, inputs.step_h
    revenue = activation = penalty = short_w = 0.0
    for k, reserve in enumerate(inputs.reserves):
        up_price, down_price = costs.reserve_per_w(reserve, t, h)
        up, down = np.asarray(up_w[k], dtype=float), np.asarray(down_w[k], dtype=float)
        revenue += float(np.dot(up_price, up.sum(axis=0)) + np.dot(down_price, down.sum(axis=0)))
        per_asset = np.array([costs.activation_per_w(a, reserve, h) for a in inputs.assets])
        activation += float(np.dot(per_asset, up.sum(axis=1))) if len(per_asset) else 0.0
        short = np.maximum(np.asarray(reserve.awarded_up_w[:t]) - up.sum(axis=0), 0.0).sum()
        short += np.maximum(np.asarray(reserve.awarded_down_w[:t]) - down.sum(axis=0), 0.0).sum()
        short_w += float(short)
    penalty = costs.reserve_short_per_w(inputs.penalties, h) * short_w
    breakdown = {"reserve_revenue": revenue, "reserve_shortfall_penalty": penalty, "reserve_activation": activation}
    return breakdown, {"reserve_short_kwh": short_w * h / 1000.0}
