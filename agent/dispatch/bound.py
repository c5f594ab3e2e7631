"""A lower bound on the full LP's optimum where it is too large to solve: the aggregate at its members' lowest prices.

Why: the aggregated path (agent.dispatch.aggregate) reports how far its executed schedule is from the best one, and
where the full LP cannot be solved (10 000 EVs and more) the reference has to be a number no schedule can beat. The
aggregate's own optimum is not one: a virtual battery prices wear, calendar ageing and activations at its members'
*average* prices within a 2 % bin (`aggregate._categories`), so where the full LP discharges only the cheaper members
of a group, it costs less than the aggregate does.

The relaxation here is the same aggregate with, per group, every price a member pays at its lowest over the members:
each wear segment's price, the calendar price per Wh·h and the activation wear. Then every constraint of a virtual
battery is a sum of constraints each member's trajectory meets in the full LP (aggregate.py's module docstring), and
for any feasible member trajectories the group's cost at the lowest prices is at most their summed cost, term by term:
energy and site terms are the same function of the same site power; wear, calendar and activation are linear in
summed quantities at a price no member undercuts; a group's need shortfall is at most its members' summed shortfall
and its penalty tiers are their sums (convex, so pooling never costs more); EVs carry no terminal value and no
calendar bends. So the relaxation's LP optimum ≤ the full LP's optimum ≤ the cost of any schedule the agent executes.

Two conditions the argument needs are checked, not assumed: a group's members share one efficiency exactly (the
category key rounds it to 0.1 %, and a different efficiency changes the dynamics, not just a price), and the bound is
the first LP solve's optimum, before planner.solve forbids burning (which only restricts the LP further, so the
optimum stays below what any restricted solve returns).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agent.dispatch import planner
from agent.dispatch.aggregate import DEFAULT_GROUPS, Grouping, aggregate
from agent.dispatch.inputs import AssetPlan, PlanInputs, activation_wear
from agent.dispatch.plan import PlanError


@dataclass(frozen=True)
class LowerBound:
    """The bound and what it was solved from."""

    net_cost: float  # currency: no schedule of the fleet over this horizon costs less
    solve_s: float
    groups: int


def relaxation(inputs: PlanInputs, groups: int | None = None) -> tuple[PlanInputs, Grouping]:
    """The aggregated inputs with each virtual battery's prices at its members' lowest (module docstring).

    Raises ValueError where a group's members differ in efficiency: the aggregate is then no relaxation."""
    aggregated, grouping = aggregate(inputs, groups)
    m = grouping.members
    assets = list(aggregated.assets)
    for g in range(grouping.groups):
        rows = np.flatnonzero(m.group == g)
        if len(rows) == 0:
            continue
        members = [inputs.assets[i] for i in m.index[rows]]
        assets[g] = _cheapest(assets[g], members, g)
    return replace(aggregated, assets=assets), grouping


def _cheapest(virtual: AssetPlan, members: list[AssetPlan], g: int) -> AssetPlan:
    """`virtual` with its wear, calendar and activation prices at the lowest any of `members` pays."""
    efficiencies = {a.efficiency for a in members}
    if len(efficiencies) > 1:
        raise ValueError(
            f"ev-group-{g} mixes efficiencies {sorted(efficiencies)}: the aggregate is no relaxation of its members"
        )
    segments = len(virtual.wear_prices)
    wear = np.full(segments, np.inf)
    for a in members:
        own = np.asarray(a.wear_prices, dtype=float)
        if virtual.discharge_w > 0 and len(own) != segments:
            raise ValueError(f"ev-group-{g}: a member has {len(own)} wear segments, the group {segments}")
        if len(own) == segments:
            wear = np.minimum(wear, own)
    wear = np.where(np.isfinite(wear), wear, 0.0)  # a charge-only group: its one segment is never used
    return replace(
        virtual,
        wear_prices=wear,
        calendar_price_per_wh_h=min(a.calendar_price_per_wh_h for a in members),
        activation_wear_per_kwh=min(activation_wear(a) for a in members),
    )


def lower_bound(inputs: PlanInputs, groups: int | None = None, time_limit_s: float = 60.0) -> LowerBound:
    """Solve the relaxation once (no burning passes) and return its optimum: a lower bound on the full LP's.

    Raises PlanError unless the solver reports the optimum (an inaccurate or stopped solve's objective bounds nothing).
    """
    relaxed, _ = relaxation(inputs, groups)
    plan = planner.solve(relaxed, time_limit_s, forbid_burning=False)
    if plan.status != "optimal":
        raise PlanError(f"no lower bound: the relaxation's solve ended {plan.status!r}, not at its optimum")
    return LowerBound(plan.net_cost, plan.solve_s, DEFAULT_GROUPS if groups is None else groups)
