"""Large EV fleets: plan a few virtual batteries instead of thousands of EVs, then split their power over the members.

Why: the full LP has one set of charge/discharge/segment variables per EV and step, and HiGHS needs seconds for a
thousand EVs (REFERENCE.md "Solvers"). `aggregate` replaces the EVs by a fixed number of virtual AssetPlans
(stationary batteries pass through unchanged) and the planner solves that small LP with every cost term of the full
model (energy, wear, calendar, needs, site limits, up-DR, reserves); `disaggregate` splits each virtual battery's
planned power over its members, step by step, and the result is priced by `plan_cost` exactly as the full LP prices
a plan, so what is reported is what executing it costs.

Envelopes, not static sums. Each EV i has, per step boundary t, a reachable-energy envelope computed from its own
numbers: with f_i(k) the fraction of step k it is plugged in (inputs.presence: 1, 0, or its minutes there in the step
it leaves during), K_i(t) = Σ_{k<t} f_i(k) its plugged-in time before t, L_i(t) that left between t and its departure
checkpoint, and β_i(k) the share of its room to full a setpoint held for its time in step k can store under its
charge taper (agent.dispatch.taper.held_step_fractions; 1 without a taper),
  ceiling_i(t+1) = min(max_i, ceiling_i(t) + min(η_i·C_i·h·f_i(t), β_i(t)·(max_i − ceiling_i(t)))), ceiling_i(0) = e0_i
                                                               (it cannot have charged more than that by t)
  floor_i(t)   = max(min_i, e0_i − D_i·h/η_i·K_i(t))           (nor discharged more)
  need_i(t)    = min(ceiling_i(t), max(floor_i(t), need_i − η_i·C_i·h·L_i(t)))  (below: need out of reach)
and a virtual battery carries the sums of its members' envelopes (hard: ceiling, floor; soft, penalised like a
departure target: need), per step the sums of the members' charge/discharge limits times f_i, and a taper row with
the largest β of its members (`_group_knee`; none where a member has no taper). An EV that has not arrived yet sits in
the sum at its initial energy (its envelope is flat until it plugs in); one that has left stays at its final energy.
The ceiling is a recursion (one vectorised pass per step, `_tapered_ceiling`) because the taper's bound depends on
the energy reached; without a taper it is min(max_i, e0_i + η_i·C_i·h·K_i(t)). Summed static bounds (a pack's full
capacity, a window shared by the whole group) let the aggregate charge a pack it could not reach and were 29 % off
at 1000 EVs; the envelopes keep each member's own rates, arrival and departure in the sum.

Why it is a relaxation. Every constraint of a virtual battery is the sum of constraints every member's trajectory
satisfies in the full LP (the envelopes are implied by each member's dynamics and limits, its taper rows included:
the ceiling's step map e ↦ e + min(η·C·h·f, β·(max − e)) is nondecreasing, so a trajectory below the ceiling at t
stays below it at t + 1; its need path is implied by its departure need up to that member's shortfall, so the
group's shortfall is at most the members' summed shortfall; the group's taper row is the sum of its members' rows
with each β_i raised to the group's largest, `_group_knee`), so the sum of any feasible member trajectories is
feasible for the aggregate; priced at its members' lowest prices (agent.dispatch.bound) the aggregate's optimum is ≤
the full LP's ≤ the cost of the disaggregated schedule, which is a feasible point of the full LP. Priced at their
averages, as planned here, it is not a bound where members' prices differ within a category (a group pays the
average for what the full LP takes from its cheapest member: tests/dispatch/test_lower_bound.py). The need path
stays the untapered one for the relaxation's sake: the taper's need path (what must be held at t for the need to
stay reachable under the taper) grows a member's shortfall by 1/(1 − β) per step back, which a group's single
shortfall cannot hold; the split keeps members above it (`need_reach`). Exact where members share the per-kWh wear
and calendar prices and efficiency, which is why EVs are first split into categories of those (`_categories`); wear
segments of a group are the summed segments of its members (a further relaxation: the group may discharge from a
shallow segment while a member is deep). Charge-only groups get a single wear-free segment, as their members never
discharge: the LP then has no segment variables for them after HiGHS' presolve.

Where it is loose, and departure buckets. The sum forgets which member holds the energy: after a member leaves at
less than its own ceiling, the group still counts that member's unused room and could fill it with the members that
remain (and the converse for discharging). Grouping members by departure (`groups` virtual batteries split evenly
over the categories, each category's members cut into buckets of equal counts by departure step) bounds that to the
members leaving within one bucket. The number of virtual assets is always `groups` (+ the batteries), padding with
empty ones, so the planner's compiled (DPP) model is reused by every re-solve while the categories stay the same.

What disaggregation guarantees (`disaggregate`): every member's power stays within its own limits (its rating
times its minutes there, and no more than its taper lets it store from the energy it has at the step's start), is
zero when it is not plugged in, keeps its energy within [floor, ceiling] and keeps its departure need reachable under
its taper (a member below its need path charges what it must, even beyond its group's power: reported as
unrealised). A member's reserve band is held for whole steps only and its down band within its tapered limit, as
the full LP holds them. The Plan carries each EV's presence, so `Plan.setpoints_w` holds the departure step's energy
over the minutes the car is there, as on the full path. Within those limits the
group's power is tracked by moving every member to the same relative position λ between its own need-or-floor path
and its ceiling at the next step (one λ per group and step, found by bisection), so the members' energies stay
spread like the aggregate's envelope assumed. Not guaranteed: exact tracking where the relaxation was loose, and
per-member reserve energy (reserves are split by power headroom, each member at most its own, and an up band only as
far as the member can give its loss); what the executed schedule leaves unheld is measured
(`violations["reserve_energy_unheld_kwh"]`, agent.dispatch.reserve_check). Reserve money is booked from the bands the
members hold, never from the group plan (`_priced`): a group reserve no member holds earns nothing, and an award it
leaves uncovered is priced as a shortfall.
Reserves are split step by step inside the power split, because a member's up band takes its expected round-trip
loss from the member's energy (member_lp.band_loss_wh, from inputs.activation_loss_wh: the rule the full LP uses),
so the next step is split from the energy the member really has; the loss of the band a member is likely to hold is
kept reachable like its need, and the need tiers charge it back.

`solve_aggregated_detail` then refines the split (agent.dispatch.refine): the EVs (V2G ones while their LP stays
small) and then the batteries are re-planned exactly with the rest fixed, which is where what the split gave up
comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.dispatch import costs, planner, refine
from agent.dispatch.inputs import SYMMETRIC_PRODUCTS, AssetPlan, PlanInputs, presence
from agent.dispatch.member_lp import band_loss_wh
from agent.dispatch.planner import Plan
from agent.dispatch.pricing import (
    needs_above,
    plan_cost,  # re-exported: callers price schedules through the aggregate
    reserve_cost,
)
from agent.dispatch.reserve_check import reserve_energy_unheld_kwh
from agent.dispatch.taper import held_step_fractions

DEFAULT_GROUPS = 16
PRICE_BIN = 0.02  # members whose wear/calendar prices differ by less than this (relative) share a category
# the split aims each tapering member this fraction of its capacity below its departure need (`_tapered_need`)
NEED_REACH_SLACK = 0.01
MIN_BUCKETS = 4  # prices split categories only while each category keeps this many departure buckets (`_categories`)
MAX_PRICE_BIN = 1.0  # past this width (prices within 2x) prices no longer split categories (`_categories`)
ARRIVAL_BUCKETS = 2  # per category: EVs plugged in now and those arriving later (see "Where it is loose")


@dataclass(frozen=True)
class Members:
    """The aggregated EVs as arrays (one row per EV), everything disaggregation needs."""

    index: np.ndarray  # position of each EV in inputs.assets
    group: np.ndarray  # virtual asset index, −1 = idle (never plugged in within the horizon: power stays 0)
    plugged: np.ndarray  # (n, T) bool: plugged in for some of the step
    present: np.ndarray  # (n, T) fraction of each step plugged in (inputs.presence: < 1 in a mid-step departure's)
    energy: np.ndarray  # Wh now, clipped into [floor, ceiling] as the planner does
    floor: np.ndarray
    ceiling: np.ndarray
    charge_w: np.ndarray
    discharge_w: np.ndarray
    efficiency: np.ndarray
    taper: np.ndarray  # (n, T) β: the share of its room to full a step can store (taper.held_step_fractions; 1: none)
    tapered: np.ndarray  # (n,) bool: the member has a taper (some β < 1)
    partial: np.ndarray  # (n,) bool: the member leaves during a step (some presence strictly between 0 and 1)
    need_above: np.ndarray  # Wh above the floor at the checkpoint, as the planner asks (0 without a target)
    lower: np.ndarray  # (n, T+1) reachable floor envelope
    upper: np.ndarray  # (n, T+1) reachable ceiling envelope
    need_path: np.ndarray  # (n, T+1) energy below which the departure need is out of reach (≥ lower, ≤ upper)
    need_reach: np.ndarray  # (n, T+1) the same under the member's taper (≥ need_path): what the split keeps
    check: np.ndarray  # step of each member's departure checkpoint (T without a target)
    left: np.ndarray  # (n, T+1) plugged-in time (steps x presence) from each step boundary to the checkpoint


@dataclass(frozen=True)
class Grouping:
    """How the original assets map onto the virtual ones of the aggregated PlanInputs."""

    groups: int  # EV virtual assets (padded); batteries follow them
    used: int  # non-empty EV groups
    categories: int  # distinct (efficiency, V2G, wear and calendar price) classes
    buckets: int  # departure buckets per category
    members: Members
    passthrough: np.ndarray  # (k, 2): (index in inputs.assets, index in the aggregated assets) of non-EVs
    price_bin: float = PRICE_BIN  # relative width of the price bins the categories used (`_categories`; inf: none)


@dataclass(frozen=True)
class AggregatedSolve:
    """A solve through the aggregate: the per-asset plan, the virtual plan it came from, and where time went."""

    plan: Plan
    aggregate_plan: Plan
    grouping: Grouping
    aggregate_s: float
    solve_s: float
    disaggregate_s: float  # the split and its pricing
    refine_s: float = 0.0
    refined: tuple[str, ...] = ()  # what agent.dispatch.refine re-planned

    @property
    def total_s(self) -> float:
        return self.aggregate_s + self.solve_s + self.disaggregate_s + self.refine_s


# -- aggregation ----------------------------------------------------------------------------------------------


def _members(inputs: PlanInputs, evs: list[int]) -> tuple[Members, np.ndarray]:
    """Every EV's numbers and envelopes as arrays (vectorised over the fleet), and each EV's checkpoint step."""
    t, h = inputs.steps, inputs.step_h
    assets = [inputs.assets[i] for i in evs]
    n = len(assets)
    # one pass over the assets for every scalar (a comprehension per field cost ~1 s at 100 000 EVs)
    scalars = np.array(
        [
            (a.min_wh, a.max_wh, a.energy_wh, a.charge_w, a.discharge_w, a.efficiency,
             a.target_wh is not None and a.target_step is not None, t if a.target_step is None else a.target_step,
             1.0 if a.charge_taper_soc is None else a.charge_taper_soc)
            for a in assets
        ],
        dtype=float,
    ).reshape(n, 9)  # fmt: skip
    floor = scalars[:, 0]
    ceiling = np.maximum(scalars[:, 1], floor)
    energy = np.clip(scalars[:, 2], floor, ceiling)
    charge = np.maximum(scalars[:, 3], 0.0)
    discharge = np.maximum(scalars[:, 4], 0.0)
    eff = scalars[:, 5].copy()
    present = np.ones((n, t))
    for row, a in enumerate(assets):
        if a.available is not None or a.present_fraction is not None:
            present[row] = presence(a, t)  # the planner's one rule: an EV leaving mid-step is there for its minutes
    plugged = present > 0
    # β per member and step (agent.dispatch.taper): what a setpoint held for the step (for the minutes the car is
    # there, in its departure step) can store of the room to full; 1 without a taper
    tapered = scalars[:, 8] < 1.0
    # (n, T) arrays cost ~0.1 s per pass at 100 000 EVs: made only where a member tapers, else a read-only view of 1
    taper: np.ndarray = np.broadcast_to(1.0, (n, t))
    if tapered.any():
        taper = np.ones((n, t))
        knee, capacity, rate = scalars[tapered, 8:9], scalars[tapered, 1:2], charge[tapered, None]
        taper[tapered] = held_step_fractions(knee, capacity, rate, eff[tapered, None], present[tapered] * h)
    targeted = scalars[:, 6] > 0
    check = np.where(targeted, np.minimum(scalars[:, 7], t), t).astype(int)
    need_above = needs_above(assets, t, h)
    # plugged-in time (in steps) before each step boundary, and that left before the checkpoint
    before = np.concatenate([np.zeros((n, 1)), np.cumsum(present, axis=1)], axis=1)
    at_check = before[np.arange(n), check][:, None]
    gain = (eff * charge * h)[:, None]
    loss = (discharge * h / eff)[:, None]
    upper = np.minimum(ceiling[:, None], energy[:, None] + gain * before)  # without a taper
    if tapered.any():
        upper[tapered] = _tapered_ceiling(energy[tapered], ceiling[tapered], (gain * present)[tapered], taper[tapered])
    lower = np.maximum(floor[:, None], energy[:, None] - loss * before)
    need = (floor + need_above)[:, None] - np.where(
        before <= at_check, gain * (at_check - before), loss * (before - at_check)
    )  # after the checkpoint it falls by what discharging since then can have taken off a need met on time
    # per member the need path never lies below its own floor envelope: summed, one member's surplus above its need
    # must not count for another's need (it would, summing the bare need paths)
    need_path = np.clip(np.where(targeted[:, None], need, floor[:, None]), lower, upper)
    need_reach = need_path  # without a taper the same path (not changed in place: shared)
    if tapered.any():
        need_reach = need_path.copy()
        reach = _tapered_need(need[tapered], (floor + need_above)[tapered], check[tapered], (gain * present)[tapered],
                              taper[tapered], ceiling[tapered])  # fmt: skip
        reach = np.where(targeted[tapered, None], reach, floor[tapered, None])
        need_reach[tapered] = np.clip(reach, need_path[tapered], upper[tapered])
    members = Members(
        index=np.array(evs, dtype=int),
        group=np.full(n, -1, dtype=int),
        plugged=plugged,
        present=present,
        energy=energy,
        floor=floor,
        ceiling=ceiling,
        charge_w=charge,
        discharge_w=discharge,
        efficiency=eff,
        taper=taper,
        tapered=tapered,
        partial=((present > 0) & (present < 1)).any(axis=1),
        need_above=need_above,
        lower=lower,
        upper=upper,
        need_path=need_path,
        need_reach=need_reach,
        check=check,
        left=np.maximum(at_check - before, 0.0),
    )
    return members, check


def _tapered_ceiling(energy: np.ndarray, ceiling: np.ndarray, most: np.ndarray, taper: np.ndarray) -> np.ndarray:
    """(n, T+1) the most each member can hold at each step boundary: from its energy now, each step stores at most
    `most` (η·C·h x presence, Wh) and β of its room to full (`taper`), u(k+1) = u(k) + min(most, β·(ceiling − u(k))).

    An upper bound on every trajectory the member's own rows allow: the step map e ↦ e + min(most, β·(ceiling − e))
    is nondecreasing in e (slope 1 or 1 − β ≥ 0), so e(k) ≤ u(k) gives e(k+1) ≤ u(k+1); discharging and a band's
    loss only take energy off. Vectorised over members, one pass per step."""
    t = most.shape[1]
    upper = np.empty((len(energy), t + 1))
    upper[:, 0] = u = energy
    for k in range(t):
        u = np.minimum(ceiling, u + np.minimum(most[:, k], taper[:, k] * np.maximum(ceiling - u, 0.0)))
        upper[:, k + 1] = u
    return upper


def _tapered_need(
    need: np.ndarray, wanted: np.ndarray, check: np.ndarray, most: np.ndarray, taper: np.ndarray, ceiling: np.ndarray
) -> np.ndarray:
    """(n, T+1) `need` (the untapered need path) with, before each member's checkpoint, the least energy from which
    its `wanted` energy there stays reachable under its taper: the inverse of `_tapered_ceiling`'s step map,
    r(k) = max(r(k+1) − most, (r(k+1) − β·ceiling)/(1 − β)) (both pieces of the min must reach r(k+1)).

    For the split only (`_split` keeps each member above it): summed into a virtual battery it would not stay a
    relaxation, as a member's shortfall at its checkpoint grows by 1/(1 − β) per step back along it, while the
    group's shortfall is one number per group (module docstring).

    The pass starts at most (1 − NEED_REACH_SLACK) of the capacity: under a linear taper the room to full shrinks by
    (1 − β) per step and never closes, so an exact target of full (a fifth of the scenario's sessions) would pin the
    member to its tapered ceiling from plug-in, charging through the dearest steps, where the full LP leaves a few
    hundred Wh short at tier 1. From there the pass relaxes by 1/(1 − β) per step back. A need below that is kept
    whole: it can be met exactly, and a V2G member kept at its split power would otherwise leave up to the slack short.
    """
    out = need.copy()
    r = np.minimum(wanted.astype(float), (1.0 - NEED_REACH_SLACK) * ceiling)
    tapered = taper < 1.0
    for k in range(most.shape[1] - 1, -1, -1):
        active = k < check
        if not active.any():
            continue
        beta = taper[:, k]
        held = np.divide(r - beta * ceiling, 1.0 - beta, out=np.full_like(r, -np.inf), where=tapered[:, k])
        r = np.where(active, np.maximum(r - most[:, k], held), r)
        out[active, k] = r[active]
    return out


def _price_bins(values: np.ndarray, width: float) -> np.ndarray:
    """Prices on a relative grid of `width` (0 stays its own bin), so near-equal prices share a category."""
    positive = values > 0
    logs = np.log(np.where(positive, values, 1.0)) / np.log1p(width)
    return np.where(positive, np.round(logs).astype(np.int64) + 1, 0)


def _categories(inputs: PlanInputs, evs: list[int], m: Members, groups: int) -> tuple[np.ndarray, float]:
    """Category of each EV (efficiency, V2G or charge-only, wear-segment prices and calendar price, binned) and the
    relative width of the price bins used.

    Members of one category share what the aggregate cannot average exactly: the dynamics (efficiency) and the
    per-kWh prices. Charge-only EVs ignore their wear prices: they never discharge, so never pay them. Prices are
    per Wh of each pack's usable energy, so packs of one model that aged differently differ in price: where bins
    of PRICE_BIN give more categories than `groups` // MIN_BUCKETS, the bins are widened (doubled, up to
    MAX_PRICE_BIN) until they fit, and past that prices no longer split categories. Why leave room for buckets:
    with as many categories as groups each category is one virtual battery with no departure buckets, where the
    module docstring says the sums are loose (a 48-EV fleet with a spread of SoH: the split's cost over the full
    LP 2034 at 14 categories × 1 bucket, 760 at 2 × 8). Wider bins only make the virtual batteries' averages coarser:
    the refinement re-plans each member at its own prices, and agent.dispatch.bound prices each group at its
    members' lowest. Only categories of efficiency and V2G alone beyond `groups` are refused (by `aggregate`).
    """
    n = len(evs)
    v2g = m.discharge_w > 0
    v2g_rows = np.flatnonzero(v2g)  # wear prices are read for these only (~0.3 s for every EV at 100 000)
    lengths = np.zeros(n, dtype=np.int64)
    lengths[v2g_rows] = [len(inputs.assets[evs[r]].wear_prices) for r in v2g_rows]
    wear = np.zeros((n, max(int(lengths.max(initial=1)), 1)))
    for row in v2g_rows:
        wear[row, : lengths[row]] = inputs.assets[evs[row]].wear_prices
    calendar = np.fromiter((inputs.assets[i].calendar_price_per_wh_h for i in evs), float, n)
    if n == 0:
        return np.zeros(0, dtype=int), PRICE_BIN
    active = m.plugged.any(axis=1)  # the idle ones are in no group: they do not count against `groups`
    dynamics = np.concatenate(
        [np.round(m.efficiency * 1000).astype(np.int64)[:, None], v2g[:, None].astype(np.int64), lengths[:, None]],
        axis=1,
    )
    width = PRICE_BIN
    fits = max(groups // MIN_BUCKETS, 1)
    while True:
        if width == float("inf"):
            key = dynamics
        else:
            prices = [np.where(v2g[:, None], _price_bins(wear, width), 0), _price_bins(calendar, width)[:, None]]
            key = np.concatenate([dynamics, *prices], axis=1)
        _, category = np.unique(key, axis=0, return_inverse=True)
        category = category.reshape(-1)
        if width == float("inf") or len(np.unique(category[active])) <= fits:
            return category, width
        width = min(2.0 * width, MAX_PRICE_BIN) if width < MAX_PRICE_BIN else float("inf")


def _buckets(check: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of each member by a step (arrival, checkpoint): equal counts, members on the same step together."""
    _, inverse, counts = np.unique(check, return_inverse=True, return_counts=True)
    before = np.cumsum(counts) - counts
    bucket_of_value = np.minimum((before * buckets) // max(len(check), 1), buckets - 1)
    return bucket_of_value[inverse.reshape(-1)]


def aggregate(inputs: PlanInputs, groups: int | None = None) -> tuple[PlanInputs, Grouping]:
    """PlanInputs with the EVs replaced by `groups` virtual batteries (padded), and the mapping back.

    Raises ValueError when the EVs fall into more categories than `groups` (each category needs a group).
    """
    groups = DEFAULT_GROUPS if groups is None else groups
    t = inputs.steps
    evs = [i for i, a in enumerate(inputs.assets) if a.is_ev]
    others = [i for i, a in enumerate(inputs.assets) if not a.is_ev]
    m, check = _members(inputs, evs)
    category, price_bin = _categories(inputs, evs, m, groups)
    active = m.plugged.any(axis=1)
    category = np.where(active, category, -1)  # never plugged in: in no group, power stays 0
    kinds = np.unique(category[active])
    if len(kinds) > groups:
        raise ValueError(f"the EVs fall into {len(kinds)} categories of efficiency, V2G and wear segments (prices "
                         f"aside), more than {groups} virtual batteries")  # fmt: skip
    per = groups // max(len(kinds), 1)
    group = m.group
    arrivals = max(1, min(ARRIVAL_BUCKETS, per // 2))
    departures = per // arrivals
    first = np.argmax(m.plugged, axis=1)
    for rank, kind in enumerate(kinds):
        sel = np.flatnonzero(category == kind)
        arrival = _buckets(first[sel], arrivals)
        for a in range(arrivals):
            sub = sel[arrival == a]
            group[sub] = rank * per + a * departures + _buckets(check[sub], departures)

    seg_max = max((len(a.wear_prices) for a in inputs.assets), default=1)
    virtual: list[AssetPlan] = []
    room = m.ceiling - m.floor
    for g in range(groups):
        sel = np.flatnonzero(group == g)
        kind = g // per if per else 0
        if len(sel) == 0:
            same = np.flatnonzero(category == kinds[kind]) if kind < len(kinds) else sel
            virtual.append(_empty(g, t, float(m.efficiency[same[0]]) if len(same) else 0.95))
            continue
        virtual.append(_virtual(g, inputs, [evs[i] for i in sel], m, sel, room, seg_max))
    virtual += [inputs.assets[i] for i in others]
    passthrough = np.array([(i, groups + k) for k, i in enumerate(others)], dtype=int).reshape(-1, 2)
    grouping = Grouping(
        groups=groups,
        used=len(np.unique(group[group >= 0])),
        categories=len(kinds),
        buckets=per,
        members=m,
        passthrough=passthrough,
        price_bin=price_bin,
    )
    aggregated = PlanInputs(
        inputs.steps, inputs.step_s, virtual, inputs.site, inputs.updr, inputs.reserves, inputs.penalties
    )
    return aggregated, grouping


def _virtual(
    g: int, inputs: PlanInputs, ids: list[int], m: Members, sel: np.ndarray, room: np.ndarray, seg_max: int
) -> AssetPlan:
    """One virtual battery: summed energies, envelopes and per-step limits of its members, their mean prices."""
    plugged = m.plugged[sel]
    weight = room[sel] if room[sel].sum() > 0 else np.ones(len(sel))
    v2g = bool((m.discharge_w[sel] > 0).any())
    if v2g:
        wear = np.zeros((len(sel), seg_max))
        for row, i in enumerate(ids):
            wear[row, : len(inputs.assets[i].wear_prices)] = inputs.assets[i].wear_prices
        segments = max(len(inputs.assets[i].wear_prices) for i in ids)
        wear_prices = np.average(wear[:, :segments], axis=0, weights=weight)
    else:
        wear_prices = np.zeros(1)  # never discharges: one segment, nothing to price
    calendar = float(np.average([inputs.assets[i].calendar_price_per_wh_h for i in ids], weights=weight))
    present = m.present[sel]  # a member leaving mid-step adds its limits for its minutes there only
    charge = (m.charge_w[sel][:, None] * present).sum(axis=0)
    discharge = (m.discharge_w[sel][:, None] * present).sum(axis=0)
    efficiency = float(m.efficiency[sel][0])  # one category, one efficiency
    ceiling = float(m.ceiling[sel].sum())
    return AssetPlan(
        id=f"ev-group-{g}",
        energy_wh=float(m.energy[sel].sum()),
        min_wh=float(m.floor[sel].sum()),
        max_wh=float(m.ceiling[sel].sum()),
        charge_w=float(charge.max()),
        discharge_w=float(discharge.max()),
        efficiency=efficiency,
        wear_prices=wear_prices,
        calendar_price_per_wh_h=calendar,
        is_ev=True,
        charge_taper_soc=_group_knee(m.taper[sel][plugged], ceiling, float(charge.max()), efficiency, inputs.step_h),
        charge_limit_w=charge,
        discharge_limit_w=discharge,
        floor_path_wh=m.lower[sel].sum(axis=0),
        ceiling_path_wh=m.upper[sel].sum(axis=0),
        need_path_wh=m.need_path[sel].sum(axis=0),
        need_total_wh=float(m.need_above[sel].sum()),
    )


KNEE_MARGIN = 1e-9  # relative: the group's β sits this far above its members' largest, so rounding keeps it a bound


def _group_knee(
    beta: np.ndarray, capacity_wh: float, charge_w: float, efficiency: float, step_h: float
) -> float | None:
    """The knee SoC to give a virtual battery so that its taper row (formulation._taper, β from
    taper.held_step_fraction of the group's capacity and rating) has the largest β of its members' plugged steps
    (`beta`), or None (no row) where some member has no taper (β = 1).

    Why a relaxation: each member's row says η·h·c_i + η·h·(1 − β_i)·down_i ≤ β_i·(cap_i − e_i), with cap_i − e_i ≥ 0
    (and 0 ≤ β_i(cap_i − e_i) when it is not plugged in), so with β ≥ every β_i the sum gives the group's row
    η·h·Σc + η·h·(1 − β)·Σdown ≤ β·(Σcap − Σe). The knee is only how the planner is told that β (it may lie below 0
    for a group whose summed rating is small against its summed capacity; the formula holds for any knee < 1)."""
    if not len(beta) or capacity_wh <= 0 or charge_w <= 0:
        return None
    most = float(beta.max())
    if most >= 1.0:
        return None
    x = most / (1.0 - most) * (1.0 + KNEE_MARGIN)  # β = x / (1 + x)
    knee = 1.0 - efficiency * charge_w * step_h / (capacity_wh * x)
    return knee


def _empty(g: int, steps: int, efficiency: float) -> AssetPlan:
    """Padding: a virtual battery with no energy and no power, so the problem shape never depends on the fleet."""
    zeros = np.zeros(steps + 1)
    return AssetPlan(
        f"ev-group-{g}", 0.0, 0.0, 0.0, 0.0, 0.0, efficiency, wear_prices=np.zeros(1), is_ev=True,
        floor_path_wh=zeros, ceiling_path_wh=zeros,
    )  # fmt: skip


# -- disaggregation -------------------------------------------------------------------------------------------


def _fill(amount: np.ndarray, caps: np.ndarray, key: np.ndarray | None, group: np.ndarray, groups: int) -> np.ndarray:
    """Split each group's `amount` (≥ 0) over its members, each up to its cap.

    With a `key`: in key order, lowest first (a running sum of caps inside each group, all groups at once). Without:
    the same fraction of every member's cap (no sort, for tiers where order does not matter).
    """
    total = np.bincount(group, weights=caps, minlength=groups)
    if key is None:
        share = np.divide(amount, total, out=np.zeros(groups), where=total > 0)
        return caps * np.clip(share, 0.0, 1.0)[group]
    order = np.lexsort((key, group))
    g = group[order]
    c = caps[order]
    before = np.cumsum(c) - c
    offset = np.cumsum(total) - total
    out = np.empty_like(caps)
    out[order] = np.clip(amount[g] - (before - offset[g]), 0.0, c)
    return out


def _step(
    power: np.ndarray,
    g: np.ndarray,
    groups: int,
    e: np.ndarray,
    need_next: np.ndarray,
    final: np.ndarray,
    left: np.ndarray,
    floor: np.ndarray,
    ceiling: np.ndarray,
    charge: np.ndarray,
    discharge: np.ndarray,
    up_gain: np.ndarray,
    down_gain: np.ndarray,
    charge_gain: np.ndarray,
    before_check: np.ndarray,
    expected: np.ndarray,
) -> np.ndarray:
    """The plugged-in members' powers for one step, given their groups' planned `power` (W per group).

    Charging, in tiers: (1) what a member must take now to keep its need reachable; (2) towards its departure need,
    least laxity first (the members that can least wait); (3) room it could not fill later anyway (more room than
    its remaining steps at full power can fill: charging it now costs no later flexibility); (4) the rest in
    proportion to what each can take. Discharging: from what members hold above their need path, in proportion.
    """
    cmax = np.minimum(charge, np.maximum(0.0, ceiling - e) / up_gain)
    dmax = np.minimum(discharge, np.maximum(0.0, e - floor) / down_gain)
    gap = need_next - e  # > 0: must charge now to keep the departure need reachable
    must = np.where(gap > 0, np.minimum(gap / up_gain, cmax), 0.0)
    p = must.copy()
    planned_charge = np.maximum(power, 0.0)
    rest = planned_charge - np.bincount(g, weights=must, minlength=groups)
    remaining = np.where(before_check, np.maximum(final - e, 0.0), 0.0)
    laxity = left - remaining / np.maximum(charge_gain, 1e-9)
    deficit = np.clip((remaining - expected) / up_gain, 0.0, cmax)  # need the plan's later charging won't bring
    spare = np.clip((ceiling - e - expected) / up_gain, 0.0, cmax)  # room the plan's later charging won't use
    # The caps are computed once, from `must`: a member served in tier 1 can be served again up to its tier-2 cap, and
    # the final clip takes the excess back (reported as unrealised power). Recomputing the caps after each tier keeps
    # every tier within limits but measured worse (7.7 % vs 6.2 % gap at 1000 EVs in bench/dispatch.py): the split
    # needs a better rule, not that fix.
    for caps, key in ((deficit - p, laxity), (np.maximum(deficit, spare) - p, None), (cmax - p, None)):
        got = _fill(np.maximum(rest, 0.0), np.maximum(caps, 0.0), key, g, groups)
        p += got
        rest -= np.bincount(g, weights=got, minlength=groups)
    if (power < 0).any():
        discharging = power[g] < 0
        spare = np.where(gap < 0, np.minimum(dmax, -gap / down_gain), 0.0)
        wanted = np.maximum(-power, 0.0) + np.bincount(g, weights=must, minlength=groups)
        caps = np.where(discharging, spare, 0.0)
        p = np.where(discharging, must - _fill(np.where(power < 0, wanted, 0.0), caps, None, g, groups), p)
    return np.clip(p, -dmax, cmax)  # the member's own limits, whatever rounding in the tiers left


def disaggregate(plan: Plan, grouping: Grouping, inputs: PlanInputs) -> Plan:
    """Per-asset plan from a plan of the aggregated inputs (see the module docstring for what it guarantees).

    `breakdown` and `violations` are recomputed on the per-asset schedule (`plan_cost`), so the result is what
    executing it would cost; `violations["unrealised_kwh"]` is the group power the members could not follow.
    """
    return _priced(plan, inputs, _split(plan, grouping, inputs), grouping.members)


@dataclass
class Split:
    """Per-asset trajectories from a virtual plan, before pricing (arrays (N, T) / (N, T+1), changed in place by
    agent.dispatch.refine)."""

    power: np.ndarray
    stored: np.ndarray
    up: np.ndarray
    down: np.ndarray
    unrealised_kwh: float


def _group_sums(values: np.ndarray, g: np.ndarray, groups: int) -> np.ndarray:
    """(groups, T) sums of step-major member `values` (T, n) by each member's group `g` (a one-hot product: np.add.at
    took ~0.4 s per call at 100 000 EVs)."""
    onehot = np.zeros((len(g), groups))
    onehot[np.arange(len(g)), g] = 1.0
    return (values @ onehot).T


def _split(plan: Plan, grouping: Grouping, inputs: PlanInputs) -> Split:
    """Each group's planned power over its members, step by step; batteries copied from the plan."""
    t, h = inputs.steps, inputs.step_h
    m = grouping.members
    groups = grouping.groups
    rows = np.flatnonzero(m.group >= 0)
    g = m.group[rows]
    eff = m.efficiency[rows]
    up_gain, down_gain = eff * h, h / eff
    floor, ceiling = m.floor[rows], m.ceiling[rows]
    charge, discharge = m.charge_w[rows], m.discharge_w[rows]
    charge_gain = charge * up_gain
    # step-major copies (T, n): each step of the loop below reads one contiguous row instead of a strided column
    plugged = np.ascontiguousarray(m.plugged[rows].T)
    present = np.ascontiguousarray(m.present[rows].T)
    beta: np.ndarray = np.broadcast_to(1.0, (t, len(rows)))  # no member tapers: no (T, n) copy to make or scan
    if m.tapered[rows].any():
        beta = np.ascontiguousarray(m.taper[rows].T)
    tapers = bool(beta.size) and beta.min() < 1.0
    # the need path under the member's taper: kept, the need stays reachable by what the taper lets it store
    need, left = np.ascontiguousarray(m.need_reach[rows].T), np.ascontiguousarray(m.left[rows].T)
    final = m.need_reach[rows, m.check[rows]]  # the need at the checkpoint, as reachable as it can be
    check = m.check[rows]
    energy = m.energy[rows].copy()
    member_power = np.zeros((t, len(rows)))
    member_energy = np.empty((t + 1, len(rows)))
    member_energy[0] = energy
    group_power = plan.power_w[:groups]
    # what each member can expect to take later if every later step's group charge is shared in proportion to the
    # members' rates: room kept for it now lets the group follow its plan then (Wh, per step boundary)
    limit = _group_sums(present * charge, g, groups)
    use = np.clip(np.divide(group_power, limit, out=np.zeros_like(limit), where=limit > 0), 0.0, 1.0)
    share = present * charge_gain * use[g].T
    later = np.concatenate([np.cumsum(share[::-1], axis=0)[::-1], np.zeros((1, len(rows)))], axis=0)
    n_all = len(inputs.assets)
    up = np.zeros((n_all, t))
    down = np.zeros((n_all, t))
    group_up, group_down = plan.reserve_up_w[:groups], plan.reserve_down_w[:groups]
    reserved = bool(inputs.reserves) and bool(group_up.any() or group_down.any())
    symmetric = bool(inputs.reserves) and all(r.product in SYMMETRIC_PRODUCTS for r in inputs.reserves)
    band = band_loss_wh(inputs, eff)  # Wh per W of up reserve held for a step: the band's round-trip loss
    lossy = reserved and bool(band.any())
    for k in range(t):
        on = np.flatnonzero(plugged[k])
        if len(on):
            e, f = energy[on], present[k, on]
            # this step's limits: the minutes the member is there, and what its taper lets it store from the energy
            # it has now (formulation._taper's row, one member at a time)
            top = charge[on] * f
            room = np.zeros(len(on))  # β x the room to full: read only where β < 1
            if tapers:
                room = beta[k, on] * np.maximum(ceiling[on] - e, 0.0)
                top = np.minimum(top, room / up_gain[on])
            bands = _band_limits(charge[on], discharge[on], f, beta[k, on], room, up_gain[on])
            groups_k, tail = (group_up[:, k], group_down[:, k]), (g[on], groups, symmetric, band[on])
            # the loss of the band a member is likely to hold (its share at zero power) is kept reachable as need
            idle = np.zeros(len(on))
            expected = 0.0
            if lossy:
                expected = band[on] * _share_reserves(idle, e - floor[on], *groups_k, *bands(idle), *tail)[0]
            p = _step(group_power[:, k], g[on], groups, e, need[k + 1, on] + expected, final[on], left[k, on],
                      floor[on], ceiling[on], top, discharge[on] * f, up_gain[on], down_gain[on], charge_gain[on],
                      k < check[on], later[k + 1, on])  # fmt: skip
            moved = np.where(p > 0, p * up_gain[on], p * down_gain[on])
            loss = 0.0
            if reserved:
                held_up, held_down = _share_reserves(p, e + moved - floor[on], *groups_k, *bands(p), *tail)
                up[m.index[rows[on]], k], down[m.index[rows[on]], k] = held_up, held_down
                loss = band[on] * held_up
            energy[on] = np.clip(energy[on] + moved - loss, floor[on], ceiling[on])
            member_power[k, on] = p
        member_energy[k + 1] = energy
    power = np.zeros((n_all, t))
    stored = np.zeros((n_all, t + 1))
    stored[m.index] = m.energy[:, None]  # idle EVs (in no group) hold their energy
    power[m.index[rows]] = member_power.T
    stored[m.index[rows]] = member_energy.T
    unrealised = 0.0
    if len(rows):
        summed = _group_sums(member_power, g, groups)
        unrealised = float(np.abs(summed - group_power).sum()) * h / 1000.0
    if len(grouping.passthrough):
        src, dst = grouping.passthrough[:, 0], grouping.passthrough[:, 1]
        power[src] = plan.power_w[dst]
        stored[src] = plan.energy_wh[dst]
        up[src] = plan.reserve_up_w[dst]
        down[src] = plan.reserve_down_w[dst]
    return Split(power, stored, up, down, unrealised)


def _band_limits(
    charge: np.ndarray, discharge: np.ndarray, present: np.ndarray, beta: np.ndarray, room: np.ndarray, gain: np.ndarray
) -> Callable[[np.ndarray | float], tuple[np.ndarray, np.ndarray]]:
    """The charge and discharge limits a member's reserve headroom is read against at a power p (`_share_reserves`):
    0 in a step it leaves during (a band is held for whole steps, as planner.fill holds it), and a down band within
    its tapered limit with the charge, η·h·p + η·h·(1 − β)·down ≤ β·(room to full) (formulation._taper; `room` is
    β x that room in Wh, `gain` η·h), written as the charge limit p + that down."""
    whole = present >= 1.0
    tapered = beta < 1.0

    def limits(p: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        free = np.maximum(room - gain * np.maximum(p, 0.0), 0.0)
        down = np.divide(free, gain * (1.0 - beta), out=np.full_like(room, np.inf), where=tapered)
        return np.where(whole, np.minimum(charge, p + down), 0.0), np.where(whole, discharge, 0.0)

    return limits


def _plan_presence(inputs: PlanInputs, members: Members) -> np.ndarray | None:
    """The Plan's `presence` (planner.plan_presence, the full path's), the EVs' rows taken from `members` (already
    inputs.presence of each): asking every asset again cost ~0.2 s at 100 000 EVs."""
    if all(a.present_fraction is None for a in inputs.assets):
        return None
    present = np.ones((len(inputs.assets), inputs.steps))
    present[members.index] = members.present
    others = np.ones(len(inputs.assets), dtype=bool)
    others[members.index] = False
    for i in np.flatnonzero(others):
        present[i] = presence(inputs.assets[i], inputs.steps)
    return present


def _priced(plan: Plan, inputs: PlanInputs, split: Split, members: Members) -> Plan:
    """The per-asset Plan of `split`, priced by `plan_cost`; reserve terms by `reserve_cost` of what the assets hold.

    The reserve is booked from the members' own bands (`split.up`, `split.down`), not from the virtual `plan`: a group
    may plan more than its members' headroom can hold (`reserve_unheld_kwh`), and booking the group's figure
    reported revenue no one earns (7.5 % of the cost at 1000 EVs with RegD in bench/dispatch.py). An award the
    members do not cover is priced as the shortfall it is."""
    power, stored, up, down = split.power, split.stored, split.up, split.down
    breakdown, violations = plan_cost(inputs, power, stored)
    if inputs.reserves:
        held_up, held_down = _by_product(inputs, up, down)
        reserve_terms, reserve_violations = reserve_cost(inputs, held_up, held_down)
        breakdown.update(reserve_terms)
        violations.update(reserve_violations)
    violations["unrealised_kwh"] = split.unrealised_kwh
    unheld = _group_reserve_unheld_kwh(plan, inputs, split, members)
    if unheld:
        violations["reserve_unheld_kwh"] = unheld
    if inputs.reserves:
        violations["reserve_energy_unheld_kwh"] = reserve_energy_unheld_kwh(inputs, stored, up, down)
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
        presence=_plan_presence(inputs, members),  # the setpoints of EVs leaving mid-step, as the full path's
    )


def _group_reserve_unheld_kwh(plan: Plan, inputs: PlanInputs, split: Split, members: Members) -> float:
    """kWh of the groups' planned reserve (both sides) the EVs do not hold in `split` as it is priced, fleet-wide per
    step: the refinement's member LP chooses bands across groups, so a group's own gap would count a band it moved to
    another group's member as missing."""
    rows = np.flatnonzero(members.group >= 0)
    if not inputs.reserves or not len(rows):
        return 0.0
    groups = int(members.group[rows].max()) + 1
    gap = 0.0
    for planned, held in ((plan.reserve_up_w, split.up), (plan.reserve_down_w, split.down)):
        gap += float(np.maximum(planned[:groups].sum(axis=0) - held[members.index[rows]].sum(axis=0), 0.0).sum())
    return gap * inputs.step_h / 1000.0


def _by_product(inputs: PlanInputs, up: np.ndarray, down: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each asset's band (summed over products, as a Plan keeps it) cut into the products of `inputs.reserves`.

    A Plan keeps no per-product split, so each step's held totals are booked as the products allow at the least pay:
    the awards first (in product order), then the rest to the product that pays least at that step on that side, so
    what is booked never exceeds what the band could earn and no side books more than it holds. A symmetric product
    (inputs.SYMMETRIC_PRODUCTS; the full LP's r_up == r_down) is one band, booked as much down as up within what both
    sides have left: its award at the larger of the award's two sides (the one band meeting both, as the LP holds
    it), and the rest only where its up and down prices together pay less than the cheapest one-sided products'; with
    no one-sided product, one side's excess over the other is booked to none (no product pays for it). Cut side by
    side, a symmetric product would be booked with up and down bands that differ, which the market does not pay
    for: the revenue would be mispriced and part of an award's shortfall hidden.
    Every asset's band is cut in the same proportions per side; with one product this is the band itself."""
    if len(inputs.reserves) == 1:
        return [up], [down]
    t, reserves = inputs.steps, inputs.reserves
    symmetric = np.array([r.product in SYMMETRIC_PRODUCTS for r in reserves])
    totals = (up.sum(axis=0), down.sum(axis=0))
    left = [totals[0].copy(), totals[1].copy()]
    parts = np.zeros((2, len(reserves), t))  # side, product, step: W booked fleet-wide
    for k, reserve in enumerate(reserves):
        award = [np.asarray(a, dtype=float)[:t] for a in (reserve.awarded_up_w, reserve.awarded_down_w)]
        if symmetric[k]:
            award = [np.minimum(np.maximum(*award), np.minimum(*left))] * 2
        for side in (0, 1):
            parts[side, k] = np.minimum(award[side], left[side])
            left[side] = left[side] - parts[side, k]
    prices = np.array([costs.reserve_per_w(r, t, inputs.step_h) for r in reserves])  # product, side, step
    steps = np.arange(t)
    one_sided = np.flatnonzero(~symmetric)
    band = np.zeros(t)
    if symmetric.any():
        both = prices[symmetric].sum(axis=1)  # a symmetric band's pay per W (up and down)
        band = np.minimum(*left)
        if len(one_sided):
            band = np.where(both.min(axis=0) < prices[one_sided].min(axis=0).sum(axis=0), band, 0.0)
        parts[:, np.flatnonzero(symmetric)[np.argmin(both, axis=0)], steps] += band
    if len(one_sided):
        for side in (0, 1):
            parts[side, one_sided[np.argmin(prices[one_sided, side], axis=0)], steps] += left[side] - band
    cut = [
        [band_w * np.divide(p, total, out=np.zeros(t), where=total > 0)[None, :] for p in parts[side]]
        for side, (band_w, total) in enumerate(zip((up, down), totals, strict=True))
    ]
    return cut[0], cut[1]


def _share_reserves(
    power: np.ndarray,
    above: np.ndarray,
    group_up: np.ndarray,
    group_down: np.ndarray,
    charge: np.ndarray,
    discharge: np.ndarray,
    g: np.ndarray,
    groups: int,
    symmetric: bool,
    band: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One step: each group's reserve shared by its plugged members' headroom at `power`, each member at most its
    own. Returns the members' up and down W (what the groups planned beyond it: `_group_reserve_unheld_kwh`).

    Headroom is power (up ≤ discharge limit + power, down ≤ charge limit − power) and, for up, the band's loss
    (`band`, Wh per W): no more than the Wh `above` its floor at the step's end (before the loss) can give, so a
    member at its floor holds no up band, whose loss it could not give (nor follow its activations). The energy a
    band needs for the product's duration is not checked here (reserve_check measures it).

    Per step, inside the split, because a member's up band takes its round-trip loss from the member's energy
    (`member_lp.band_loss_wh`) before the next step is split. `symmetric` (every product a symmetric band,
    inputs.SYMMETRIC_PRODUCTS): each member holds as much down as up, shared by the smaller of its two headrooms;
    shared separately, a member could get up only and, under an energy-neutral signal, only discharge."""
    head_up = np.maximum(0.0, discharge + power)
    head_down = np.maximum(0.0, charge - power)
    lossy = band > 0
    head_up[lossy] = np.minimum(head_up[lossy], np.maximum(above[lossy], 0.0) / band[lossy])
    if symmetric:
        head_up = head_down = np.minimum(head_up, head_down)
    held = []
    for head, src in ((head_up, group_up), (head_down, group_down)):
        total = np.bincount(g, weights=head, minlength=groups)
        share = np.divide(head, total[g], out=np.zeros_like(head), where=total[g] > 0)
        held.append(np.minimum(share * src[g], head))
    return held[0], held[1]


# -- convenience ----------------------------------------------------------------------------------------------


def solve_aggregated_detail(
    inputs: PlanInputs, groups: int | None = None, time_limit_s: float = 30.0, refined: bool = True
) -> AggregatedSolve:
    """Aggregate, solve with the planner (its compiled model for the padded shape is cached), split, and (unless
    `refined` is False) refine the split with agent.dispatch.refine."""
    started = time.perf_counter()
    aggregated, grouping = aggregate(inputs, groups)
    aggregated_at = time.perf_counter()
    # HiGHS' own choice (simplex here): with highspy 1.16 it re-solved the 1000-EV aggregate in 0.21 s, interior
    # point in 0.34 s; where simplex gives up (a 10 000-EV aggregate), planner.solve falls back to interior point
    virtual_plan = planner.solve(aggregated, time_limit_s)
    solved_at = time.perf_counter()
    split = _split(virtual_plan, grouping, inputs)
    split_at = time.perf_counter()
    steps: list[str] = []
    if refined:
        budget = max(1.0, time_limit_s - (split_at - started))
        steps = refine.refine(inputs, grouping.members, grouping.passthrough[:, 0], split, budget)
    refined_at = time.perf_counter()
    plan = _priced(virtual_plan, inputs, split, grouping.members)
    done = time.perf_counter()
    return AggregatedSolve(
        plan,
        virtual_plan,
        grouping,
        aggregated_at - started,
        solved_at - aggregated_at,
        (split_at - solved_at) + (done - refined_at),
        refined_at - split_at,
        tuple(steps),
    )


def solve_aggregated(inputs: PlanInputs, groups: int | None = None, time_limit_s: float = 30.0) -> Plan:
    """Drop-in for agent.dispatch.planner.solve on large fleets: a per-asset Plan through the aggregate."""
    return solve_aggregated_detail(inputs, groups, time_limit_s).plan
