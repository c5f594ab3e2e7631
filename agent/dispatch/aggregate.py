"""Large EV fleets: plan a few virtual batteries instead of thousands of EVs, then split their power over the members.

Why: the full LP has one set of charge/discharge/segment variables per EV and step, and HiGHS needs seconds for a
thousand EVs (REFERENCE.md "Solvers"). EVs that share a plug-in window, efficiency and wear-segment count differ only
in their sizes, so their *sum* behaves like one storage asset. `aggregate` turns the EVs into a fixed number of such
virtual AssetPlans (stationary batteries pass through unchanged) and the existing planner solves that small LP —
every cost term of the full model (energy, wear, calendar, targets, site limits, up-DR, reserves) comes with it.
`disaggregate` then splits each virtual battery's planned power over its members, step by step.

Why the aggregate is a relaxation. Member i of a group is the polytope X_i of its power/energy trajectories:
energy floor/ceiling, charge/discharge limits during the shared window, the shared efficiency, its initial energy
and its own departure need. The virtual battery has the summed floor, ceiling, limits, initial energy and need, so
for any x_i ∈ X_i the sum Σ x_i satisfies every constraint of the virtual battery (each constraint is a sum of the
members' constraints): X_1 ⊕ … ⊕ X_n ⊆ X_agg (Minkowski sum inside the aggregate polytope). The inclusion is strict
in general — the aggregate may charge energy "into" a member that is already full while another is empty — which is
why disaggregation can fall short. Costs: energy and site terms are linear in the summed power, and the tiered EV
shortfall penalty of the summed need is the infimal convolution of the members' identical-slope penalties, so it is
never dearer. Wear segment prices and the calendar price are capacity-weighted means of the members': exact when
members share the per-kWh prices (same replacement cost per kWh and SoH, as `segment_prices` gives), otherwise an
approximation. So, with exact windows and equal per-kWh prices, aggregated LP cost ≤ full LP cost ≤ cost of the
disaggregated schedule (which is a feasible point of the full LP), and the last two are what the bench compares.

Windows and a stable shape. A group needs one plug-in window: the virtual AssetPlan carries one availability mask
and one charge limit. With more distinct windows than `groups`, windows are coarsened on a grid of q steps: a member
available over [a, f) is planned over [ceil(a/q)·q, floor(f/q)·q) — a sub-window, so each member is *restricted*
(never relaxed): it charges only inside it and must reach its need by the window's end. The number of virtual
assets is always `groups` (+ the batteries), padding with empty ones, so the planner's compiled model for that shape
is reused by every re-solve and only the solver runs.

What disaggregation guarantees (`disaggregate`): every member's power stays within its own charge/discharge
limits, is zero outside its (restricted) window, and keeps its energy within [floor, ceiling]; within a step all
members of a group move in the direction of the group's power (no member discharges into another), so energy is
conserved between the group and its members except where a member has to charge to keep its departure need
reachable while its group discharges. A member's need gets the power it *must* have now to stay reachable (even
beyond the group's power: that excess is reported as unrealised aggregate power), then the group's power goes by
least laxity first to reaching needs, then to charging beyond them. Discharge comes from the members with the most
slack first, never below what their departure need allows. Not guaranteed: exact tracking of the group's power when
the aggregate relaxation was loose, and per-member reserve energy (reserves are split by power headroom only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from agent.dispatch.inputs import AssetPlan, PlanInputs
from agent.dispatch.planner import Plan, PlanError, _read_plan, fill, model_for

DEFAULT_GROUPS = 24
# HiGHS' interior point is 2-3x faster than its default simplex on these banded LPs, and a cold start is faster than
# cvxpy's warm start from the previous solution (measured in bench/dispatch.py); crossover keeps a vertex solution
HIGHS_OPTIONS: dict[str, object] = {"solver": "ipm"}
# coarsening grids tried in order until the distinct windows fit in `groups` (steps)
QUANTA = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96)
_EPS_W = 1e-6


@dataclass(frozen=True)
class Members:
    """The aggregated EVs as arrays (one entry per EV), everything disaggregation and evaluation need."""

    index: np.ndarray  # position of each EV in inputs.assets
    group: np.ndarray  # virtual asset index, −1 = idle (no usable window in the horizon: power stays 0)
    start: np.ndarray  # first step of the (restricted) window
    end: np.ndarray  # one past its last step; also where its need is checked
    has_target: np.ndarray  # bool
    need_above: np.ndarray  # Wh above the floor to hold at `end` (0 without a target), as the planner computes it
    energy: np.ndarray  # Wh now, clipped into [floor, ceiling] as the planner does
    floor: np.ndarray
    ceiling: np.ndarray
    charge_w: np.ndarray
    discharge_w: np.ndarray
    efficiency: np.ndarray


@dataclass(frozen=True)
class Grouping:
    """How the original assets map onto the virtual ones of the aggregated PlanInputs."""

    groups: int  # EV virtual assets (padded); batteries follow them
    used: int  # non-empty EV groups
    quantum: tuple[int, int]  # coarsening grids of window starts and ends, in steps ((1, 1) = exact windows)
    members: Members
    passthrough: np.ndarray  # (k, 2): (index in inputs.assets, index in the aggregated assets) of non-EVs


@dataclass(frozen=True)
class AggregatedSolve:
    """A solve through the aggregate: the per-asset plan, the virtual plan it came from, and where time went."""

    plan: Plan
    aggregate_plan: Plan
    grouping: Grouping
    aggregate_s: float
    solve_s: float
    disaggregate_s: float

    @property
    def total_s(self) -> float:
        return self.aggregate_s + self.solve_s + self.disaggregate_s


# -- aggregation ----------------------------------------------------------------------------------------------


def _need_above(a: AssetPlan, steps: int, step_h: float) -> float:
    """The energy above the floor the planner asks for at departure (agent.dispatch.planner.fill, same formula)."""
    if a.target_wh is None or a.target_step is None:
        return 0.0
    room = max(0.0, a.max_wh - a.min_wh)
    beyond_h = max(0, a.target_step - steps) * step_h  # departure after the horizon: the rest is charged later
    return float(np.clip(a.target_wh - a.min_wh - a.charge_w * a.efficiency * beyond_h, 0.0, room))


def _window(a: AssetPlan, steps: int) -> tuple[int, int]:
    """First contiguous run of available steps, cut at the departure checkpoint: [first, end)."""
    if a.available is None:
        first, end = 0, steps
    else:
        mask = np.asarray(a.available, dtype=bool)[:steps]
        if not mask.any():
            return 0, 0
        first = int(np.argmax(mask))
        rest = mask[first:]
        end = first + (int(np.argmin(rest)) if not rest.all() else len(rest))
    if a.target_wh is not None and a.target_step is not None:
        end = min(end, a.target_step)
    return first, end


def _grid(first: np.ndarray, end: np.ndarray, qs: int, qe: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-windows: start rounded up to a multiple of qs, end down to one of qe (the horizon's end stays the end);
    a window too short for the grid keeps its exact bounds."""
    start = -(-first // qs) * qs
    stop = np.where(end >= steps, steps, (end // qe) * qe)
    short = stop <= start
    return np.where(short, first, start), np.where(short, end, stop)


def _choose_grid(
    first: np.ndarray, end: np.ndarray, category: np.ndarray, idle: np.ndarray, groups: int, steps: int
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The (start, end) grids that fit the distinct groups into `groups` losing the fewest member-steps of window.

    Works on the distinct exact (window, category) rows with their counts, so it costs little for any fleet size.
    Returns the grids, every member's sub-window, the distinct group rows and each active member's row index.
    """
    rows = np.concatenate([first[:, None], end[:, None], category], axis=1)[~idle]
    exact, counts = np.unique(rows, axis=0, return_counts=True)
    best = None
    for qs in QUANTA:
        for qe in QUANTA:
            s, e = _grid(exact[:, 0], exact[:, 1], qs, qe, steps)
            keyed = np.concatenate([s[:, None], e[:, None], exact[:, 2:]], axis=1)
            unique = np.unique(keyed, axis=0) if len(keyed) else keyed
            if len(unique) > groups:
                continue
            lost = float(np.dot(counts, (exact[:, 1] - exact[:, 0]) - (e - s)))
            if best is None or lost < best[0]:
                best = (lost, qs, qe)
    if best is None:
        raise ValueError(f"{len(first)} EVs need more than {groups} groups even on the coarsest grid; raise `groups`")
    _, qs, qe = best
    start, stop = _grid(first, end, qs, qe, steps)
    keyed = np.concatenate([start[:, None], stop[:, None], category], axis=1)[~idle]
    unique, inverse = np.unique(keyed, axis=0, return_inverse=True) if len(keyed) else (keyed, np.zeros(0, int))
    return qs, qe, start, stop, unique, inverse.reshape(-1)


def aggregate(inputs: PlanInputs, groups: int | None = None) -> tuple[PlanInputs, Grouping]:
    """PlanInputs with the EVs replaced by `groups` virtual batteries (padded), and the mapping back.

    Raises ValueError when even the coarsest grid leaves more distinct windows than `groups`.
    """
    groups = DEFAULT_GROUPS if groups is None else groups
    t, h = inputs.steps, inputs.step_h
    evs = [i for i, a in enumerate(inputs.assets) if a.is_ev]
    others = [i for i, a in enumerate(inputs.assets) if not a.is_ev]
    assets = [inputs.assets[i] for i in evs]
    n = len(assets)
    windows = np.array([_window(a, t) for a in assets], dtype=int).reshape(n, 2)
    first, end = windows[:, 0], windows[:, 1]
    floor = np.array([a.min_wh for a in assets], dtype=float)
    ceiling = np.maximum(np.array([a.max_wh for a in assets], dtype=float), floor)
    energy = np.clip(np.array([a.energy_wh for a in assets], dtype=float), floor, ceiling)
    charge = np.array([max(0.0, a.charge_w) for a in assets], dtype=float)
    discharge = np.array([max(0.0, a.discharge_w) for a in assets], dtype=float)
    eff = np.array([a.efficiency for a in assets], dtype=float)
    has_target = np.array([a.target_wh is not None and a.target_step is not None for a in assets], dtype=bool)
    need = np.array([_need_above(a, t, h) for a in assets], dtype=float)
    segments = np.array([len(a.wear_prices) for a in assets], dtype=int)
    idle = end <= first
    category = np.stack(
        [has_target.astype(int), np.round(eff * 1000).astype(int), segments, (discharge > 0).astype(int)], axis=1
    )
    q_start, q_end, start, stop, unique, inverse = _choose_grid(first, end, category, idle, groups, t)
    group = np.full(n, -1, dtype=int)
    group[~idle] = inverse
    start = np.where(idle, 0, start)
    stop = np.where(idle, 0, stop)

    seg_max = max((len(a.wear_prices) for a in inputs.assets), default=1)
    virtual: list[AssetPlan] = []
    room = ceiling - floor
    for g in range(groups):
        sel = np.flatnonzero(group == g)
        if len(sel) == 0:
            virtual.append(_empty(g, seg_max))
            continue
        a0, d0 = int(start[sel[0]]), int(stop[sel[0]])
        weight = room[sel] if room[sel].sum() > 0 else np.ones(len(sel))
        wear = np.average(np.stack([assets[i].wear_prices for i in sel]), axis=0, weights=weight)
        calendar = float(np.average([assets[i].calendar_price_per_wh_h for i in sel], weights=weight))
        mask = np.zeros(t, dtype=bool)
        mask[a0:d0] = True
        targeted = bool(has_target[sel[0]])
        virtual.append(
            AssetPlan(
                id=f"ev-group-{g}",
                energy_wh=float(energy[sel].sum()),
                min_wh=float(floor[sel].sum()),
                max_wh=float(ceiling[sel].sum()),
                charge_w=float(charge[sel].sum()),
                discharge_w=float(discharge[sel].sum()),
                efficiency=float(eff[sel].mean()),
                available=mask,
                # the planner recomputes need = target − floor (no beyond-horizon term at a checkpoint ≤ steps)
                target_wh=float(floor[sel].sum() + need[sel].sum()) if targeted else None,
                target_step=d0 if targeted else None,
                wear_prices=wear,
                calendar_price_per_wh_h=calendar,
                is_ev=True,
            )
        )
    virtual += [inputs.assets[i] for i in others]
    passthrough = np.array([(i, groups + k) for k, i in enumerate(others)], dtype=int).reshape(-1, 2)
    members = Members(
        index=np.array(evs, dtype=int),
        group=group,
        start=start,
        end=stop,
        has_target=has_target,
        need_above=need,
        energy=energy,
        floor=floor,
        ceiling=ceiling,
        charge_w=charge,
        discharge_w=discharge,
        efficiency=eff,
    )
    grouping = Grouping(
        groups=groups, used=len(unique), quantum=(q_start, q_end), members=members, passthrough=passthrough
    )
    aggregated = PlanInputs(
        inputs.steps, inputs.step_s, virtual, inputs.site, inputs.updr, inputs.reserves, inputs.penalties
    )
    return aggregated, grouping


def _empty(g: int, segments: int) -> AssetPlan:
    """Padding: a virtual battery with no energy and no power, so the problem shape never depends on the fleet."""
    return AssetPlan(f"ev-group-{g}", 0.0, 0.0, 0.0, 0.0, 0.0, wear_prices=np.zeros(segments), is_ev=True)


# -- disaggregation -------------------------------------------------------------------------------------------


def _fill(amount: np.ndarray, caps: np.ndarray, key: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """Split each group's `amount` over its members in `key` order (lowest first), each up to its cap.

    Vectorised over all groups: members sorted by (group, key), a running sum of caps inside each group says how much
    of the group's amount is left when a member's turn comes.
    """
    order = np.lexsort((key, group))
    g = group[order]
    c = caps[order]
    before = np.cumsum(c) - c
    offset = np.cumsum(np.bincount(g, weights=c, minlength=groups)) - np.bincount(g, weights=c, minlength=groups)
    out = np.empty_like(caps)
    out[order] = np.clip(amount[g] - (before - offset[g]), 0.0, c)
    return out


def disaggregate(plan: Plan, grouping: Grouping, inputs: PlanInputs) -> Plan:
    """Per-asset plan from a plan of the aggregated inputs (see the module docstring for what it guarantees).

    `breakdown` and `violations` are recomputed on the per-asset schedule (`plan_cost`), so the result is what
    executing it would cost; `violations["unrealised_kwh"]` is the group power the members could not follow.
    """
    t, h = inputs.steps, inputs.step_h
    m = grouping.members
    groups = grouping.groups
    active = m.group >= 0
    g = np.where(active, m.group, 0)
    eff = m.efficiency
    he = eff * h
    goal = m.floor + m.need_above
    energy = m.energy.copy()
    n_all = len(inputs.assets)
    power = np.zeros((n_all, t))
    stored = np.zeros((n_all, t + 1))
    up = np.zeros((n_all, t))
    down = np.zeros((n_all, t))
    ev_power = np.zeros((len(energy), t))
    ev_energy = np.zeros((len(energy), t + 1))
    ev_energy[:, 0] = energy
    target_p = plan.power_w[:groups]
    charge_ok = np.maximum(m.charge_w, 1e-9)
    count = np.bincount(g[active], minlength=groups)
    end_step = np.zeros(groups, dtype=int)
    end_step[g[active]] = m.end[active]
    target_end = plan.energy_wh[np.arange(groups), end_step] if len(energy) else np.zeros(groups)
    for k in range(t):
        on = active & (m.start <= k) & (k < m.end)
        cmax = np.where(on, np.minimum(m.charge_w, np.maximum(0.0, m.ceiling - energy) / he), 0.0)
        dmax = np.where(on, np.minimum(m.discharge_w, np.maximum(0.0, energy - m.floor) * eff / h), 0.0)
        future = np.maximum(m.end - k - 1, 0)
        later = m.charge_w * he * future  # what the rest of the window can still add at full power
        short = np.where(m.has_target, goal - energy, 0.0)
        must = np.where(on, np.clip((short - later) / he, 0.0, cmax), 0.0)
        want = np.where(on, np.clip(short / he, 0.0, cmax), 0.0)
        spare = np.where(m.has_target, np.maximum(0.0, energy + later - goal) * eff / h, np.inf)
        dallow = np.where(must > 0, 0.0, np.minimum(dmax, spare))
        laxity = np.where(short > 0, future + 1 - short / (he * charge_ok), 1e9)
        gp = target_p[:, k]
        charging = gp >= -_EPS_W
        p = must.copy()
        rest = np.where(charging, gp, 0.0) - np.bincount(g, weights=must * active, minlength=groups)
        in_charge = on & charging[g]
        # beyond the members' needs a group may only charge the surplus its own plan ends with: charging one
        # member past its need early would force another to charge later when the group plans not to
        held = np.bincount(g, weights=np.where(active, np.maximum(energy, goal), 0.0), minlength=groups)
        surplus = target_end - held
        beyond = np.maximum(surplus, 0.0) / np.maximum(
            np.bincount(g, weights=np.where(active, he, 0.0), minlength=groups) / np.maximum(count, 1), 1e-12
        )
        for caps, limit in ((want - must, np.inf), (cmax - want, beyond)):
            caps = np.where(in_charge, caps, 0.0)
            got = _fill(np.minimum(np.maximum(rest, 0.0), limit), caps, laxity, g, groups)
            p += got
            rest -= np.bincount(g, weights=got, minlength=groups)
        discharging = ~charging
        if discharging.any():
            wanted = np.where(discharging, -gp, 0.0) + np.bincount(g, weights=must * active, minlength=groups)
            caps = np.where(on & discharging[g], dallow, 0.0)
            p -= _fill(np.maximum(wanted, 0.0), caps, -laxity, g, groups)
        energy = np.clip(energy + np.where(p > 0, p * he, p * h / eff), m.floor, m.ceiling)
        ev_power[:, k] = p
        ev_energy[:, k + 1] = energy
    power[m.index] = ev_power
    stored[m.index] = ev_energy
    unrealised = 0.0
    if len(energy):
        summed = np.zeros((groups, t))
        np.add.at(summed, g[active], ev_power[active])
        unrealised = float(np.abs(summed - target_p).sum()) * h / 1000.0
        _split_reserves(plan, grouping, ev_power, up, down)
    if len(grouping.passthrough):
        src, dst = grouping.passthrough[:, 0], grouping.passthrough[:, 1]
        power[src] = plan.power_w[dst]
        stored[src] = plan.energy_wh[dst]
        up[src] = plan.reserve_up_w[dst]
        down[src] = plan.reserve_down_w[dst]
    breakdown, violations = plan_cost(inputs, power, stored)
    for key in ("reserve_revenue", "reserve_shortfall_penalty"):
        if key in plan.breakdown:
            breakdown[key] = plan.breakdown[key]
    if "reserve_short_kwh" in plan.violations:
        violations["reserve_short_kwh"] = plan.violations["reserve_short_kwh"]
    violations["unrealised_kwh"] = unrealised
    return Plan(
        asset_ids=[a.id for a in inputs.assets],
        step_s=inputs.step_s,
        power_w=power,
        energy_wh=stored,
        reserve_up_w=up,
        reserve_down_w=down,
        breakdown=breakdown,
        violations=violations,
        solve_s=plan.solve_s,
        status=plan.status,
    )


def _split_reserves(plan: Plan, grouping: Grouping, ev_power: np.ndarray, up: np.ndarray, down: np.ndarray) -> None:
    """Each group's reserve shared by its members' power headroom (no per-member energy guarantee)."""
    m = grouping.members
    t = ev_power.shape[1]
    steps = np.arange(t)
    on = (m.group[:, None] >= 0) & (m.start[:, None] <= steps) & (steps < m.end[:, None])
    head_up = np.where(on, np.maximum(0.0, m.discharge_w[:, None] + ev_power), 0.0)
    head_down = np.where(on, np.maximum(0.0, m.charge_w[:, None] - ev_power), 0.0)
    g = np.where(m.group >= 0, m.group, 0)
    for head, src, dst in ((head_up, plan.reserve_up_w, up), (head_down, plan.reserve_down_w, down)):
        total = np.zeros((grouping.groups, t))
        np.add.at(total, g, head)
        share = np.divide(head, total[g], out=np.zeros_like(head), where=total[g] > 0)
        dst[m.index] = share * src[: grouping.groups][g]


# -- evaluation -----------------------------------------------------------------------------------------------


def _cycle_wear(inputs: PlanInputs, power: np.ndarray) -> float:
    """Cycle wear of given net power trajectories, segments used cheapest first (what the LP itself would choose).

    Charging fills the cheapest non-full segment, discharging drains the cheapest non-empty one; with equal segment
    sizes and non-decreasing prices this keeps the most energy where discharging is cheapest, so it is the least
    wear cost the LP could assign to the same trajectories.
    """
    h = inputs.step_h
    total = 0.0
    by_segments: dict[int, list[int]] = {}
    for i, a in enumerate(inputs.assets):
        by_segments.setdefault(len(a.wear_prices), []).append(i)
    for j, idx in by_segments.items():
        assets = [inputs.assets[i] for i in idx]
        prices = np.stack([a.wear_prices for a in assets])
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
        p = power[idx]
        for step in range(inputs.steps):
            gain = np.maximum(p[:, step], 0.0) * eff * h
            loss = np.maximum(-p[:, step], 0.0) * h / eff
            for k in range(j):
                add = np.minimum(gain, cap - seg[:, k])
                seg[:, k] += add
                gain -= add
                take = np.minimum(loss, seg[:, k])
                seg[:, k] -= take
                loss -= take
                total += float(np.dot(prices[:, k], take * eff)) / 1000.0
    return total


def plan_cost(inputs: PlanInputs, power: np.ndarray, energy: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """Breakdown and violations of per-asset trajectories, priced as the planner prices a plan (its `Plan` keys).

    Reserves are not re-derived here (they depend on the reservation, not only on power); callers add them.
    """
    t, h = inputs.steps, inputs.step_h
    site = inputs.site
    pen = inputs.penalties
    price = np.asarray(site.price_per_kwh[:t], dtype=float)
    net = np.asarray(site.base_load_w[:t] - site.pv_w[:t], dtype=float) + power.sum(axis=0)
    breakdown = {"energy": float(h / 1000.0 * np.dot(price, net))}
    breakdown["wear_cycle"] = _cycle_wear(inputs, power)
    calendar = np.array([a.calendar_price_per_wh_h for a in inputs.assets])
    breakdown["wear_calendar"] = float(h * np.dot(calendar, energy[:, 1:].sum(axis=1))) if len(calendar) else 0.0
    short1 = short2 = 0.0
    for i, a in enumerate(inputs.assets):
        if a.target_wh is None or a.target_step is None:
            continue
        need = _need_above(a, t, h)
        have = energy[i, min(a.target_step, t)] - a.min_wh
        short = max(0.0, need - have)
        tier1 = min(short, need * pen.ev_tier1_fraction)
        short1 += tier1
        short2 += short - tier1
    penalty = pen.ev_short_tier1_per_kwh * short1 + pen.ev_short_tier2_per_kwh * short2
    breakdown["ev_shortfall_penalty"] = penalty / 1000.0
    over = np.maximum(0.0, np.maximum(net - site.import_limit_w, -site.export_limit_w - net))
    breakdown["site_limit_penalty"] = float(pen.site_limit_per_kwh * h / 1000.0 * over.sum())
    violations = {"ev_short_kwh": (short1 + short2) / 1000.0, "site_limit_excess_kwh": float(over.sum()) * h / 1e3}
    if inputs.updr is not None:
        dr = inputs.updr
        requested = dr.requested_w * np.asarray(dr.window[:t], dtype=float)
        raised = np.clip(net - np.asarray(dr.baseline_w[:t], dtype=float), 0.0, requested)
        dr_short = requested - raised
        breakdown["updr_revenue"] = float(dr.price_per_kwh * h / 1000.0 * raised.sum())
        breakdown["updr_shortfall_penalty"] = float(pen.dr_short_per_kwh * h / 1000.0 * dr_short.sum())
        violations["updr_short_kwh"] = float(dr_short.sum()) * h / 1000.0
    return breakdown, violations


# -- convenience ----------------------------------------------------------------------------------------------


def _solve(inputs: PlanInputs, time_limit_s: float) -> Plan:
    """agent.dispatch.planner.solve with HIGHS_OPTIONS and no warm start (same cached model, same read-back).

    Hook wanted in the planner: `solve(inputs, time_limit_s, solver_options=None, warm_start=True)`; this then
    becomes `solve(inputs, time_limit_s, HIGHS_OPTIONS, warm_start=False)`.
    """
    model = model_for(inputs)
    fill(model, inputs)
    started = time.perf_counter()
    try:
        model.problem.solve(
            solver=cp.HIGHS, warm_start=False, time_limit=time_limit_s, highs_options=dict(HIGHS_OPTIONS)
        )
    except cp.SolverError as exc:
        raise PlanError(f"solver failed: {exc}") from exc
    elapsed = time.perf_counter() - started
    if model.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or model.power.value is None:
        raise PlanError(f"no plan: solver status {model.problem.status}")
    return _read_plan(model, inputs, elapsed)


def solve_aggregated_detail(
    inputs: PlanInputs, groups: int | None = None, time_limit_s: float = 30.0
) -> AggregatedSolve:
    """Aggregate, solve with the planner (its compiled model for the padded shape is cached), disaggregate."""
    started = time.perf_counter()
    aggregated, grouping = aggregate(inputs, groups)
    aggregated_at = time.perf_counter()
    virtual_plan = _solve(aggregated, time_limit_s)
    solved_at = time.perf_counter()
    plan = disaggregate(virtual_plan, grouping, inputs)
    done = time.perf_counter()
    return AggregatedSolve(
        plan, virtual_plan, grouping, aggregated_at - started, solved_at - aggregated_at, done - solved_at
    )


def solve_aggregated(inputs: PlanInputs, groups: int | None = None, time_limit_s: float = 30.0) -> Plan:
    """Drop-in for agent.dispatch.planner.solve on large fleets: a per-asset Plan through the aggregate."""
    return solve_aggregated_detail(inputs, groups, time_limit_s).plan
