"""Charge-only EVs planned without an LP: each member's own optimum at given step prices, by sort and fill.

Why: at 100 000 EVs the refinement's member LP (agent.dispatch.member_lp) spent 8–10 s in HiGHS on ~2 M charge-only
columns, although a charge-only member is a handful of numbers: charge per plugged-in step within its limits, one
room row, one departure-need row with two shortfall tiers. Given a price per W at each step (the site's energy price
plus what the coupling rows charge there), members are independent and each one's LP is a fractional knapsack:
  * every plugged-in step offers η·h Wh per W at its price per Wh stored (energy and calendar ageing, the member
    LP's own column cost: `costs.energy_per_w`, `costs.calendar_per_wh`);
  * a Wh stored before the checkpoint is worth the tier it saves (tier 2 while the shortfall is beyond tier 1, then
    tier 1, then nothing: `costs.ev_shortfall_per_wh`), a Wh after it nothing;
  * the member takes the pieces of positive worth, best first, until its room is full.
Steps before the checkpoint are filled cheapest first, so their worth falls as they fill and the greedy order is the
LP's optimum (a concave separable objective under one capacity). All members at once, vectorised.

With the coupling rows (site limits, up-DR) the members are not independent; `agent.dispatch.refine` prices each step
at its coupling slope and accepts the fill only with a certificate of optimality (the price lies in the
subdifferential of the coupling at the filled totals: `member_lp.site_slopes`), else solves the LP.

The knapsack has no charge taper (agent.dispatch.taper): a block where a member's taper row can bind is not filled at
all (`fillable`), so every certified fill is still the LP's optimum. A member leaving mid-step is filled within its
minutes there (its `high_w` is its rating times that fraction, refine.ev_members).
"""

from __future__ import annotations

import numpy as np

from agent.dispatch import costs
from agent.dispatch.inputs import PlanInputs
from agent.dispatch.member_lp import EvMembers, member_losses, taper_binds


def fillable(inputs: PlanInputs, m: EvMembers) -> bool:
    """Whether the sort and fill can plan `m` at all: it is the member LP without taper rows, so where one of them
    can bind (member_lp.taper_binds: a tapered member that may come within its taper's reach of full) the fill is
    not that LP's optimum, and its certificate (which checks the prices, not the members' rows) would not notice.
    Such blocks go to the member LP. Where no row can bind the LP has none, and the fill is still its optimum."""
    return not taper_binds(inputs, m).any()


def independent_charge(inputs: PlanInputs, m: EvMembers, price_w: np.ndarray) -> np.ndarray:
    """(n, T) W: each charge-only member's optimum when a W drawn at step k costs `price_w[k]` (currency per W for one
    step), its own calendar ageing and need shortfall priced as the member LP prices them. V2G members get 0.

    Honours what member_lp._charge_only honours: power within [low_w, high_w] ∩ [0, charge_w] while plugged in, room
    below the ceiling, the band's round-trip loss (constants taken from energy, freeing room and adding to the need).
    """
    t, h = inputs.steps, inputs.step_h
    n = len(m.index)
    power = np.zeros((n, t))
    rows, steps = np.nonzero(m.plugged & ~m.v2g[:, None])  # member-major
    if not len(rows):
        return power
    gain = m.efficiency[rows] * h  # Wh stored per W for one step
    cost = price_w[steps] + m.calendar[rows] * gain * (t - steps)  # currency per W (member_lp._charge_only)
    upper = np.clip(m.high_w[rows, steps], 0.0, m.charge_w[rows])
    lower = np.clip(m.low_w[rows, steps], 0.0, upper)
    loss = member_losses(inputs, m)
    before = steps < m.check[rows]
    forced = np.bincount(rows, weights=gain * lower, minlength=n)
    forced_before = np.bincount(rows[before], weights=(gain * lower)[before], minlength=n)
    room = np.maximum(np.maximum(m.ceiling - m.energy + loss.sum(axis=1), 0.0) - forced, 0.0)
    before_check = np.arange(t)[None, :] < m.check[:, None]
    short = np.maximum(m.need - m.energy + (loss * before_check).sum(axis=1) - forced_before, 0.0)
    tier1_cap = np.minimum(short, m.tier1)
    tier2_cap = short - tier1_cap  # the first Wh stored saves tier 2, the next tier1_cap save tier 1
    tier1, tier2 = costs.ev_shortfall_per_wh(inputs.penalties)
    size = gain * (upper - lower)  # Wh each column can still store
    unit = cost / gain  # currency per Wh stored
    col = np.arange(len(rows))
    # before the checkpoint: cheapest first within each member, each column cut by the tier boundaries it straddles
    b = np.flatnonzero(before)
    b = b[np.lexsort((unit[b], rows[b]))]
    end = _member_cumsum(size[b], rows[b])
    start = end - size[b]
    pieces = [(col[~before], size[~before], -unit[~before])]
    met = tier2_cap + tier1_cap
    tiers = ((np.zeros(n), tier2_cap, tier2), (tier2_cap, met, tier1), (met, np.full(n, np.inf), 0.0))
    for low, high, value in tiers:
        length = np.maximum(np.minimum(end, high[rows[b]]) - np.maximum(start, low[rows[b]]), 0.0)
        keep = length > 0
        pieces.append((col[b][keep], length[keep], value - unit[b][keep]))
    which = np.concatenate([p[0] for p in pieces])
    length = np.concatenate([p[1] for p in pieces])
    worth = np.concatenate([p[2] for p in pieces])
    good = worth > 0
    which, length, worth = which[good], length[good], worth[good]
    owner = rows[which]
    order = np.lexsort((-worth, owner))
    which, length, owner = which[order], length[order], owner[order]
    took = np.clip(room[owner] - (_member_cumsum(length, owner) - length), 0.0, length)
    stored = np.bincount(which, weights=took, minlength=len(rows))
    power[rows, steps] = lower + stored / gain
    return power


def _member_cumsum(values: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Running sum of `values` restarting at each owner (`owner` sorted, each owner's entries contiguous)."""
    total = np.cumsum(values)
    first = np.concatenate([[True], owner[1:] != owner[:-1]]) if len(owner) else np.zeros(0, dtype=bool)
    offset = np.where(first, total - values, 0.0)
    return total - np.maximum.accumulate(offset)
