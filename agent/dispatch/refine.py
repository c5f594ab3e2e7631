"""Refine an aggregated plan: re-plan the EVs exactly, then the stationary batteries, each against the rest of the
site held fixed (block coordinate descent on the full LP's own objective).

Why: the virtual batteries of agent.dispatch.aggregate are a relaxation whose plan the members cannot always
follow (a group's summed envelope forgets that a member that waited is nearly full, or has left), and what the
split cannot follow it charges at dearer steps. bench/dispatch.py measured the executed schedule 5.4–6 % dearer
than the full LP at 1000 EVs, although the aggregated LP itself was within 0.7 % of it. Two exact sub-problems
recover most of that:

* **EVs** (agent.dispatch.member_lp): one LP of every grouped EV with the batteries' split power fixed, built as
  arrays and solved by HiGHS directly. Charge-only EVs cost one column per plugged-in step; V2G EVs carry their
  wear segments (3 columns per plugged-in step and segment), so they join only while their columns stay within
  `V2G_MAX_COLUMNS`: past that the LP would cost more time than the aggregate saves, and they keep their split
  power (bench/dispatch.py: below that the V2G members were what was left of the gap). Past `EV_BLOCK_COLUMNS`
  the EVs are re-planned in blocks, one after the other, each against the others' latest power.
* **Stationary batteries** are re-planned with the planner's own model against the site load the EVs now make: they
  take up what the EVs' schedule leaves (an up-DR window the split under-filled, a dear step it over-filled).

Each step is the exact optimum of its assets with the rest fixed, priced as `plan_cost` prices; without reserves an
EV schedule is kept only where it prices lower than the split (see `_cheaper`), so the refined schedule never costs
more than the split (tests/dispatch/test_aggregate.py checks it on random fleets). With reserves it may: it trades
cost for the energy behind each member's reserve, which `plan_cost` does not price.

Reserves: a member keeps the reserve the split gave it deliverable and loses its up band's expected round-trip loss
from its energy (agent.dispatch.member_lp), and the batteries keep, together, the reserve the aggregate gave them
(`_battery_step`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np

from agent.dispatch import costs, planner
from agent.dispatch.inputs import PlanInputs, Reserve, updr_reachable
from agent.dispatch.member_lp import EvMembers, band_activation_per_h, plan_members, v2g_columns
from agent.dispatch.plan import net_of
from agent.dispatch.pricing import plan_cost
from agent.dispatch.reserve_check import longest_product

if TYPE_CHECKING:
    from agent.dispatch.aggregate import Members, Split

# V2G columns (3 per plugged-in step and wear segment) above which V2G members keep their split power. bench/dispatch.py
# (100 / 300 / 1000 EVs, 30 % of them V2G, 4 segments, 96 steps) measured the EV LP's solve time against them: see
# the README's dispatch figures for where this sits.
V2G_MAX_COLUMNS = 24_000
RESERVE_TOLERANCE_KWH = 1e-3  # solver rounding on a battery re-plan's reserve shortfall


def ev_members(inputs: PlanInputs, members: Members, split: Split, v2g: bool) -> EvMembers:
    """The grouped EVs to re-plan (the V2G ones only with `v2g`), with the reserves the split gave them."""
    chosen = (members.group >= 0) & ((members.discharge_w <= 0) | v2g)
    rows = np.flatnonzero(chosen)
    index = members.index[rows]
    plugged = members.plugged[rows]
    check = members.check[rows]
    reachable = members.need_path[rows, check]  # the departure need, clipped to what the EV can reach
    wanted = members.floor[rows] + members.need_above[rows]
    # the unreachable part of a need is a shortfall no decision changes: it uses up its tier-1 share first
    tier1 = np.maximum(costs.tier1_wh(members.need_above[rows], inputs.penalties) - (wanted - reachable), 0.0)
    charge, discharge = members.charge_w[rows], members.discharge_w[rows]
    up, down = split.up[index], split.down[index]
    segments = np.array([len(inputs.assets[i].wear_prices) for i in index], dtype=int).reshape(-1)
    wear = np.zeros((len(index), max(int(segments.max(initial=1)), 1)))
    for row, i in enumerate(index):
        if discharge[row] > 0:
            wear[row, : segments[row]] = costs.wear_per_w(inputs.assets[i], inputs.step_h)
    return EvMembers(
        index=index,
        plugged=plugged,
        energy=members.energy[rows],
        floor=members.floor[rows],
        ceiling=members.ceiling[rows],
        charge_w=charge,
        discharge_w=discharge,
        efficiency=members.efficiency[rows],
        calendar=np.array([costs.calendar_per_wh(inputs.assets[i], inputs.step_h) for i in index]).reshape(-1),
        need=reachable,
        tier1=tier1,
        check=check,
        wear=wear,
        segments=np.where(discharge > 0, segments, 1),
        low_w=np.where(plugged, up - discharge[:, None], 0.0),
        high_w=np.where(plugged, charge[:, None] - down, 0.0),
        up_w=np.where(plugged, up, 0.0),
        down_w=np.where(plugged, down, 0.0),
    )


def refine(inputs: PlanInputs, members: Members, batteries: np.ndarray, split: Split, time_limit_s: float) -> list[str]:
    """Re-plan the grouped EVs, then the `batteries` (rows of inputs.assets), in place in `split`, all within
    `time_limit_s` together.

    Returns what was done ("charge_only", "v2g", "batteries"); a step whose solve fails or runs out of time leaves its
    assets as they were (a failed LP with the V2G members is retried without them).
    """
    # One round: a second and third (EVs, batteries again) changed nothing measurable at 100 and 1000 EVs in
    # bench/dispatch.py.
    deadline = time.perf_counter() + time_limit_s
    done = _ev_step(inputs, members, split, deadline)
    if len(batteries) and _left(deadline) > 0 and _battery_step(inputs, batteries, split, _left(deadline)):
        done.append("batteries")
    return done


def _left(deadline: float) -> float:
    return deadline - time.perf_counter()


def _rest_w(split: Split, rows: np.ndarray) -> np.ndarray:
    """W per step that every asset but `rows` draws at the meter in `split` (all minus `rows`: a masked copy of the
    other assets' powers cost ~0.1 s per block at 100 000 EVs)."""
    return split.power.sum(axis=0) - split.power[rows].sum(axis=0)


def _with_rest_fixed(inputs: PlanInputs, rows: np.ndarray, split: Split, **changes: object) -> PlanInputs:
    """Inputs of `rows` alone, every other asset's split power added to the uncontrolled load at the meter."""
    t = inputs.steps
    site = dataclasses.replace(inputs.site, base_load_w=np.asarray(inputs.site.base_load_w[:t]) + _rest_w(split, rows))
    return dataclasses.replace(inputs, assets=[inputs.assets[i] for i in rows], site=site, **changes)


def _ev_step(inputs: PlanInputs, members: Members, split: Split, deadline: float) -> list[str]:
    with_v2g = ev_members(inputs, members, split, v2g=True)
    fits = with_v2g.v2g.any() and v2g_columns(with_v2g) <= V2G_MAX_COLUMNS
    # the charge-only EVs alone, built only when tried: past the cap, or after a failed LP with the V2G EVs
    attempts = [lambda: with_v2g] if fits else []
    attempts.append(lambda: ev_members(inputs, members, split, v2g=False))
    for attempt in attempts:
        chosen = attempt()
        if not len(chosen.index) or _left(deadline) <= 0:
            continue
        applied = _chunks(inputs, chosen, split, deadline)
        if applied is None:
            continue
        kinds = (("charge_only", (~chosen.v2g).any()), ("v2g", chosen.v2g.any()))
        return [kind for kind, has in kinds if has] if applied else []
    return []


# Columns above which the EV LP is solved in blocks of about this many columns, one after the other, each with every
# other asset held at its latest power (block coordinate descent, as between the EVs and the batteries). HiGHS' time
# grows faster than the LP: bench/dispatch.py at 100 000 EVs (~4 M columns) took ~30 s as one LP; blocks use the
# budget as they go, and whatever a block that runs out of time leaves stays as the split had it. At 100 000 EVs
# (~2 M charge-only columns) HiGHS took 16.8 s in 3 blocks of ~600 k columns and 10.1 s in 12 of ~150 k, for the same
# executed cost to 1e-6 (issue 13, a loaded 2-core machine).
EV_BLOCK_COLUMNS = 150_000


def _subset(m: EvMembers, rows: np.ndarray) -> EvMembers:
    """The members at `rows` (every field of EvMembers is an array with one row per member)."""
    return dataclasses.replace(m, **{f.name: getattr(m, f.name)[rows] for f in dataclasses.fields(m)})


def _chunks(inputs: PlanInputs, chosen: EvMembers, split: Split, deadline: float) -> bool | None:
    """Re-plan `chosen` in blocks of about EV_BLOCK_COLUMNS columns (one block below that), in place in `split`.

    Returns None when the first block's LP fails (the caller may try fewer members), else whether any block was
    kept. Without reserves a block's schedule is kept only where it prices lower than what it replaces (`_cheaper`)."""
    per_member = chosen.plugged.sum(axis=1) * np.where(chosen.v2g, 3 * chosen.segments, 1)
    blocks = max(1, int(np.ceil(per_member.sum() / EV_BLOCK_COLUMNS)))
    order = np.argsort(chosen.check, kind="stable")  # members leaving together share a block
    # blocks of about equal columns (not members: a block of long stays has several times the columns)
    cut = np.searchsorted(np.cumsum(per_member[order]), per_member.sum() * np.arange(1, blocks) / blocks)
    reachable = updr_reachable(inputs)  # once: the blocks' pricing asks for it on other inputs
    applied = False
    for number, rows in enumerate(np.split(order, cut)):
        if _left(deadline) <= 0:
            break
        block = _subset(chosen, np.sort(rows)) if blocks > 1 else chosen
        try:
            power, energy = plan_members(inputs, block, _rest_w(split, block.index), _left(deadline), reachable)
        except planner.PlanError:
            if number == 0:
                return None
            break
        if not inputs.reserves and not _cheaper(inputs, split, block.index, power, energy):
            continue
        split.power[block.index] = power
        split.stored[block.index] = energy
        applied = True
    return applied


def _cheaper(inputs: PlanInputs, split: Split, rows: np.ndarray, power: np.ndarray, energy: np.ndarray) -> bool:
    """Whether the EVs' new schedule prices lower than the split's, as `plan_cost` prices a plan.

    The LP's optimum always does, except where it charges and discharges a V2G EV in the same step (burning energy
    through the losses, which pays against an export limit or in an up-DR window, and which the full LP allows too):
    the EV cannot do both, member_lp cuts that power, and the cut may cost more than the split. Without reserves the
    cheaper schedule is kept; with reserves the refined one always is, as it holds them better.
    """
    # only these EVs change: price them alone, everything else as fixed load at the meter (the site terms see the
    # same totals, the per-asset terms skip the thousands of assets that did not move)
    sub = _with_rest_fixed(inputs, rows, split)

    def net(p: np.ndarray, e: np.ndarray) -> float:
        return float(net_of(plan_cost(sub, p, e)[0]))

    before = net(split.power[rows], split.stored[rows])
    return net(power, energy) <= before + 1e-9 * abs(before)


def _battery_step(inputs: PlanInputs, batteries: np.ndarray, split: Split, time_limit_s: float) -> bool:
    """Re-plan the batteries against the EVs' load. With reserves in the plan they must go on holding, together, at
    least the reserve the aggregate gave them, sustained for the longest awarded product (the aggregate keeps no
    per-product split of an asset's reserve); a re-plan that cannot is dropped and the batteries stay as planned."""
    held: list[Reserve] = []
    if inputs.reserves:
        longest = longest_product(inputs).product
        zeros = np.zeros(inputs.steps)
        up, down = split.up[batteries].sum(axis=0), split.down[batteries].sum(axis=0)
        # activated as the members' bands are: the loss leaves the batteries' energy too (member_lp.band_loss_wh)
        held = [Reserve(longest, zeros, zeros, up, down, band_activation_per_h(inputs))]
    sub = _with_rest_fixed(inputs, batteries, split, reserves=held)
    try:
        replanned = planner.solve(sub, time_limit_s)
    except planner.PlanError:
        return False
    if replanned.violations.get("reserve_short_kwh", 0.0) > RESERVE_TOLERANCE_KWH:
        return False
    split.power[batteries] = replanned.power_w
    split.stored[batteries] = replanned.energy_wh
    if held:
        split.up[batteries] = replanned.reserve_up_w
        split.down[batteries] = replanned.reserve_down_w
    return True
