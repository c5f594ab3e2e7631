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
  the EVs are re-planned in blocks, one after the other, each against the others' latest power. A block of
  charge-only EVs is first planned by sort and fill at the site's prices (agent.dispatch.fill, `_filled`), kept
  where a certificate proves it the block LP's optimum, else solved by the LP: at 100 000 EVs 19 of 24 blocks were
  filled, and HiGHS' share of the re-solve fell from ~8 s to ~1.5 s for the same executed cost. A block where a
  member's charge taper row can bind (member_lp.taper_binds) is not filled: the fill has no taper. Those rows (an
  energy column and two rows per step) count towards the block's size, as HiGHS' time grows with them.
* **Stationary batteries** are re-planned with the planner's own model against the site load the EVs now make: they
  take up what the EVs' schedule leaves (an up-DR window the split under-filled, a dear step it over-filled).

Each step is the exact optimum of its assets with the rest fixed, priced as `plan_cost` prices; without reserves an
EV schedule with V2G members is kept only where it prices lower than the split (see `_cheaper`; a charge-only
block's optimum cannot price higher, the split being feasible for it), so the refined schedule never costs more
than the split (tests/dispatch/test_aggregate.py checks it on random fleets). With reserves it may: it trades
cost for the energy behind each member's reserve, which `plan_cost` does not price.

Reserves: with one reserve product the member LP chooses every re-planned member's band, as the full LP does
(member_lp._band_columns: the split shares a group's reserve by its members' headroom at the power it gave them, all or
nothing for a charge-only member, so bands held at its shares left most of the regulation revenue); such blocks skip
the sort and fill, which plans no band. With several products a member keeps the reserve the split gave it
deliverable. Either way it loses its up band's expected round-trip loss from its energy (agent.dispatch.member_lp),
and the batteries keep, together, the reserve the aggregate gave them (`_battery_step`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np

from agent.dispatch import costs, planner
from agent.dispatch.fill import fillable, independent_charge
from agent.dispatch.inputs import PlanInputs, Reserve, updr_reachable
from agent.dispatch.member_lp import (
    EvMembers,
    band_activation_per_h,
    plan_members,
    site_slopes,
    taper_binds,
    trajectories,
    v2g_columns,
)
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
    """The grouped EVs to re-plan (the V2G ones only with `v2g`), with the reserves the split gave them, or with
    one reserve product `banded`: the member LP chooses their bands (up_w, down_w 0 here)."""
    chosen = (members.group >= 0) & ((members.discharge_w <= 0) | v2g)
    rows = np.flatnonzero(chosen)
    index = members.index[rows]
    plugged = members.plugged[rows]
    present = members.present[rows] if members.partial[rows].any() else None  # < 1 in a step it leaves during
    tapered = members.tapered[rows].any()
    check = members.check[rows]
    reachable = members.need_path[rows, check]  # the departure need, clipped to what the EV can reach
    wanted = members.floor[rows] + members.need_above[rows]
    # the unreachable part of a need is a shortfall no decision changes: it uses up its tier-1 share first
    tier1 = np.maximum(costs.tier1_wh(members.need_above[rows], inputs.penalties) - (wanted - reachable), 0.0)
    charge, discharge = members.charge_w[rows], members.discharge_w[rows]
    banded = np.full(len(index), len(inputs.reserves) == 1)
    up = np.where(banded[:, None], 0.0, split.up[index])
    down = np.where(banded[:, None], 0.0, split.down[index])
    # per-asset attributes in one pass; wear prices read only for the V2G members (charge-only ones never pay them)
    assets = [inputs.assets[i] for i in index]
    v2g_rows = np.flatnonzero(discharge > 0)
    segments = np.ones(len(index), dtype=int)
    segments[v2g_rows] = [len(assets[r].wear_prices) for r in v2g_rows]
    wear = np.zeros((len(index), max(int(segments.max(initial=1)), 1)))
    for row in v2g_rows:
        wear[row, : segments[row]] = costs.wear_per_w(assets[row], inputs.step_h)
    calendar = np.fromiter((costs.calendar_per_wh(a, inputs.step_h) for a in assets), float, len(assets))
    activation = np.zeros(len(index))
    if banded.any():
        reserve = inputs.reserves[0]
        per_w = (costs.activation_per_w(a, reserve, inputs.step_h) for a in assets)
        activation = np.fromiter(per_w, float, len(assets))
    return EvMembers(
        index=index,
        plugged=plugged,
        present=present,
        energy=members.energy[rows],
        floor=members.floor[rows],
        ceiling=members.ceiling[rows],
        charge_w=charge,
        discharge_w=discharge,
        efficiency=members.efficiency[rows],
        taper=members.taper[rows] if tapered else None,
        upper=members.upper[rows] if tapered else None,
        calendar=calendar,
        need=reachable,
        tier1=tier1,
        check=check,
        wear=wear,
        segments=segments,
        low_w=np.where(plugged, up - discharge[:, None] * (1.0 if present is None else present), 0.0),
        high_w=np.where(plugged, charge[:, None] * (1.0 if present is None else present) - down, 0.0),
        up_w=np.where(plugged, up, 0.0),
        down_w=np.where(plugged, down, 0.0),
        banded=banded,
        activation=activation,
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
    FILLED.clear()
    done = _ev_step(inputs, members, split, deadline)
    if len(batteries) and _left(deadline) > 0 and _battery_step(inputs, batteries, split, _left(deadline)):
        done.append("batteries")
    return done


def _left(deadline: float) -> float:
    return deadline - time.perf_counter()


def _rest_w(split: Split, rows: np.ndarray) -> np.ndarray:
    """W per step that every asset but `rows` draws at the meter in `split` (all minus `rows`: a masked copy of the
    other assets' powers cost ~0.1 s per block at 100 000 EVs)."""
    return _rest_w_of(split.power, rows)


def _rest_w_of(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per step, the sum of `values` (N, T) over every asset but `rows`."""
    return values.sum(axis=0) - values[rows].sum(axis=0)


def _with_rest_fixed(inputs: PlanInputs, rows: np.ndarray, split: Split, **changes: object) -> PlanInputs:
    """Inputs of `rows` alone, every other asset's split power added to the uncontrolled load at the meter."""
    t = inputs.steps
    site = dataclasses.replace(inputs.site, base_load_w=np.asarray(inputs.site.base_load_w[:t]) + _rest_w(split, rows))
    return dataclasses.replace(inputs, assets=[inputs.assets[i] for i in rows], site=site, **changes)


def _ev_step(inputs: PlanInputs, members: Members, split: Split, deadline: float) -> list[str]:
    with_v2g = ev_members(inputs, members, split, v2g=True)
    fits = with_v2g.v2g.any() and v2g_columns(with_v2g) <= V2G_MAX_COLUMNS
    # the charge-only EVs alone (a subset, not built again): past the cap, or after a failed LP with the V2G EVs
    attempts = [lambda: with_v2g] if fits else []
    attempts.append(lambda: _subset(with_v2g, np.flatnonzero(~with_v2g.v2g)))
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
# executed cost to 1e-6 (issue 13, a loaded 2-core machine). With the fill, only the blocks it cannot certify reach
# HiGHS, and smaller blocks leave less to it: 24 blocks of ~75 k gave the same executed cost as 12 of ~150 k (to 1e-9)
# in 9.7 s against 10.8 s; 45 of ~40 k cost 3e-3 more per 6e7 (block coordinate descent loses a little per cut).
EV_BLOCK_COLUMNS = 75_000
# columns a charge-only member's step counts for in a block's size where its taper rows are written (an energy
# column and two rows on top of its charge column). HiGHS took ~8x as long on a block of tapered members as on the
# same block without the rows, and smaller blocks cut that more than their number adds: bench/dispatch.py
# --taper-soc 0.8 at 10 000 EVs, refinement 12.1 s in 7 blocks (2 here), 8.9 s in 15 (6), 5.9-7.8 s in 28 (12),
# 3.7-5.5 s in 103 (48), the executed cost the same to 3 per 6.25e6; 12 keeps the blocks' count (and their fixed
# cost per block, ~10 ms at 100 000 EVs) moderate on larger fleets
TAPER_COLUMNS = 12


def _subset(m: EvMembers, rows: np.ndarray) -> EvMembers:
    """The members at `rows` (every field of EvMembers is an array with one row per member)."""
    fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
    return dataclasses.replace(m, **{name: None if v is None else v[rows] for name, v in fields.items()})


def _chunks(inputs: PlanInputs, chosen: EvMembers, split: Split, deadline: float) -> bool | None:
    """Re-plan `chosen` in blocks of about EV_BLOCK_COLUMNS columns (one block below that), in place in `split`.

    Returns None when the first block's LP fails (the caller may try fewer members), else whether any block was
    kept. Without reserves a block with V2G members is kept only where it prices lower than what it replaces
    (`_cheaper`)."""
    # a chosen band adds its columns and rows per step (member_lp._charge_only_bands: ~2 to a charge-only member's
    # 1, and to a V2G member's 3 per segment)
    per_member = chosen.plugged.sum(axis=1) * (np.where(chosen.v2g, 3 * chosen.segments, 1) + 2 * chosen.banded)
    # a charge-only member's taper adds an energy column and two rows per step from its first row that can bind
    # (member_lp._charge_only_taper): counted as TAPER_COLUMNS more columns there, so tapered blocks stay quick
    binds = taper_binds(inputs, chosen) & ~chosen.v2g[:, None]
    if binds.any():
        last = binds.shape[1] - np.argmax(binds[:, ::-1], axis=1)
        per_member = per_member + TAPER_COLUMNS * np.where(binds.any(axis=1), last - np.argmax(binds, axis=1), 0)
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
        rest = _rest_w(split, block.index)
        filled = None
        if not block.v2g.any() and not block.banded.any():  # the fill plans no band: a banded block goes to its LP
            if fillable(inputs, block):
                filled = _filled(inputs, block, rest, split.power[block.index], reachable)
            else:
                FILLED.append("taper")  # a taper row can bind: the fill is no proof, the member LP plans it
        elif not block.v2g.any():
            FILLED.append("bands")
        bands: tuple[np.ndarray, np.ndarray] | None = None
        try:
            if filled:
                power, energy = filled
            else:
                # every other asset's band, for an award's covering rows (member_lp._award_rows)
                others = None
                if block.banded.any():
                    others = (_rest_w_of(split.up, block.index), _rest_w_of(split.down, block.index))
                power, energy, up, down = plan_members(inputs, block, rest, _left(deadline), reachable, others)
                bands = (up, down)
        except planner.PlanError:
            if number == 0:
                return None
            break
        # a block of charge-only EVs needs no check: the split's schedule is a feasible point of its LP, so the
        # optimum prices no higher (pricing it cost ~0.3 s per block at 100 000 EVs)
        if not inputs.reserves and block.v2g.any() and not _cheaper(inputs, split, block.index, power, energy):
            continue
        split.power[block.index] = power
        split.stored[block.index] = energy
        if bands is not None and block.banded.any():
            split.up[block.index], split.down[block.index] = bands
        applied = True
    return applied


# prices re-read from the filled totals before a charge-only block goes to its LP: at 10 000 and 100 000 EVs every
# block certified was certified at the first prices (21 of 27), and a block that was not never settled in 4 rounds
FILL_ROUNDS = 2
# per charge-only block of the last refinement, "certified", "lp" (not certified), "taper" (not filled: a member's
# taper row can bind, fill.fillable) or "bands" (not filled: the member LP chooses its bands) (read by
# bench/dispatch.py and the tests; cleared by every `refine`, so a long-running solver process keeps one
# refinement's worth)
FILLED: list[str] = []


def _filled(
    inputs: PlanInputs, block: EvMembers, rest_w: np.ndarray, start: np.ndarray, reachable: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The charge-only `block`'s LP optimum by sort and fill (agent.dispatch.fill), or None where it is not proven.

    Each step is priced at the site's slope where the block's totals stand (starting from `start`, its current
    powers) and the members are filled at those prices. Where every step's price lies in the site's subdifferential
    at the filled totals the fill is the block LP's optimum (Lagrangian sufficiency: each member is optimal at the
    prices, and the prices are what the coupling rows charge there). Otherwise prices are re-read at the new totals,
    up to FILL_ROUNDS times, and the block goes to its LP.

    Where the totals sit on a kink of the site's cost (a binding limit, the top of an up-DR request) no price settles
    them: the members are indifferent between the kinked steps at the right price (the same ordering of steps), and
    splitting the tie to meet the kink exactly is what the LP does. Bisecting those prices was tried at 100 000 EVs
    and measured: the prices converged but the block's total at a window step kept jumping between 7 and 34 MW, so
    nearly every member stays at the margin and the LP is the repair."""
    t = inputs.steps
    fixed = np.asarray(inputs.site.base_load_w[:t] - inputs.site.pv_w[:t], dtype=float) + rest_w
    net = fixed + start.sum(axis=0)
    for _ in range(FILL_ROUNDS):
        price = _slope(inputs, net, reachable)
        power = independent_charge(inputs, block, price)
        net = fixed + power.sum(axis=0)
        if _settled(inputs, price, net, reachable).all():
            FILLED.append("certified")
            return trajectories(inputs, block, power)
    FILLED.append("lp")
    return None


def _slope(inputs: PlanInputs, net: np.ndarray, reachable: np.ndarray) -> np.ndarray:
    left, right = site_slopes(inputs, net, reachable)
    return 0.5 * (left + right)


def _settled(inputs: PlanInputs, price: np.ndarray, net: np.ndarray, reachable: np.ndarray) -> np.ndarray:
    """Per step, whether `price` lies in the site's subdifferential at `net` (to rounding)."""
    tol = 1e-9 * np.maximum(np.abs(net), 1.0)  # W: the fill's rounding, not a tolerance on the site's limits
    # widened by the rounding on both sides: the left slope just below `net`, the right slope just above it
    low, _ = site_slopes(inputs, net - tol, reachable)
    _, high = site_slopes(inputs, net + tol, reachable)
    slack = 1e-12 + 1e-9 * np.abs(price)
    return (price >= low - slack) & (price <= high + slack)


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
