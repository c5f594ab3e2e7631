"""The exact LP of a set of EVs with the rest of the site held fixed: the step agent.dispatch.refine takes.

Both kinds of EV in one LP, so that they share the site's limits and an up-DR window as the full LP shares them:
* **charge-only** EVs only ever add energy, so each one is a handful of numbers: one column per plugged-in step
  (its charge), a room row (it cannot take more than it has room for) and a departure-need row, plus, with a taper
  that can bind, an energy column, a dynamics row and a taper row per step from the first where it can;
* **V2G** EVs carry Xu's wear segments as the planner's model does (agent.dispatch.formulation): per plugged-in step
  and segment a charge, a discharge and an energy column, one dynamics row per segment and step, and charge and
  discharge limit rows. Steps where an EV is not plugged in have no columns: its energy is held.
A member's limits in the step it leaves during are its rating times the minutes it is still there (inputs.presence,
via `present`). Its charge taper (agent.dispatch.taper) is formulation._taper's row, η·h·c + η·h·(1 − β)·down ≤
β·(ceiling − energy at the step's start), β of its minutes there: on a V2G member's segment columns, and for a
charge-only member on energy columns chained from its first step where the row can bind (`_charge_only_taper`).
Rows that cannot bind are left out (`taper_binds`: its reachable ceiling at the step's start stays below
ceiling − η·C·h·f/β), so a fleet without a taper, or far from full, gets no extra row.
Costs are the planner's own terms for these assets, so the optimum here is priced the same by `plan_cost`: energy at
the site price, cycle wear per kWh discharged from each segment, calendar ageing of the energy held (as flows: a Wh
stored at step k is held at the T − k step boundaries after it), the tiered departure shortfall, site-limit excess
(soft, as in the planner) and up-DR (its reward and the shortfall penalty it avoids).

Reserves. With one reserve product the LP chooses each `banded` member's band as the full LP does (`_charge_only_bands`,
`_v2g_bands`, formulation._reserves): band columns per whole plugged-in step (one shared column for a symmetric
product), earning the capacity price less the activation wear, with power headroom rows, the band's round-trip loss
taken from the energy (its calendar saving priced), and, with an award, one covering row per step and side counting
every other asset's band and a priced shortfall. Why: the split fills a charge-only member to full power or zero, where
a symmetric band needs it in the middle of its range, so holding the split's shares fixed left most of the regulation
revenue the full LP earns (bench/dispatch.py --regd at 1000 EVs: 14.6 % above the full LP, 15.5 points of it reserve
revenue). A V2G member holds its band's energy by exact rows on its segment columns; a charge-only member's energy is
the cumulative sum of its charges, so its energy rows are added only where a solution's band is not sustained
(round after round until one adds none, `LAZY_ROUNDS`; out of time, the last solution stands) and what is still
not sustained after that is cut from the band and followed again (`_sustained`, `CUT_ROUNDS`). Otherwise (several
products) a member keeps the reserve the split gave it deliverable: its net power keeps the headroom (up ≤ discharge
limit + power, down ≤ charge limit − power), and a V2G member keeps the energy to sustain it for the longest awarded
product at the start and the end of each step (soft, priced at the reserve-shortfall penalty); a charge-only member's
room for a down reserve is not checked. The expected round-trip loss of following activations is taken from a member's
energy as the planner's LP takes it (formulation._activation_losses): a column of a chosen band, else a constant per
step (`band_loss_wh`, from inputs.activation_loss_wh).
Prices are the coefficients of agent.dispatch.costs; `plan_members_detail` reports each term's part of the optimum.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from agent.dispatch import costs
from agent.dispatch.highs_lp import INF, ArrayLp
from agent.dispatch.inputs import SYMMETRIC_PRODUCTS, PlanInputs, activation_loss_wh, updr_reachable
from agent.dispatch.plan import PlanError
from agent.dispatch.reserve_check import longest_product


@dataclass(frozen=True)
class EvMembers:
    """The EVs to re-plan (rows of inputs.assets), as arrays of one row per EV."""

    index: np.ndarray  # position in inputs.assets
    plugged: np.ndarray  # (n, T) bool: plugged in for some of the step
    # (n, T) fraction of the step plugged in (inputs.presence): the step's limits scale by it; None: whole steps
    # (`plugged`). None, like `taper` and `upper` without a taper: each (n, T) array here is copied for every block
    # (refine._subset), ~0.3 s each at 100 000 EVs
    present: np.ndarray | None
    energy: np.ndarray  # Wh now, within [floor, ceiling]
    floor: np.ndarray  # Wh, hard
    ceiling: np.ndarray  # Wh, hard
    charge_w: np.ndarray
    discharge_w: np.ndarray  # 0 = charge-only
    efficiency: np.ndarray
    taper: np.ndarray | None  # (n, T) β of each step (taper.held_step_fractions, its minutes there; 1: no taper)
    upper: np.ndarray | None  # (n, T+1) Wh it can hold at most at each step boundary (aggregate._tapered_ceiling)
    calendar: np.ndarray  # currency per Wh held at a step's end (costs.calendar_per_wh)
    need: np.ndarray  # Wh it should hold at its checkpoint (clipped to what it can reach; ≤ floor: none)
    tier1: np.ndarray  # Wh of a shortfall priced at tier 1
    check: np.ndarray  # step of the checkpoint (departure, or T)
    wear: np.ndarray  # (n, J) currency per W discharged for a step from each segment (costs.wear_per_w; 0: charge-only)
    segments: np.ndarray  # (n,) segments each EV's energy range is cut into
    low_w: np.ndarray  # (n, T) net power kept at least this (up reserve held)
    high_w: np.ndarray  # (n, T) and at most this (down reserve held)
    up_w: np.ndarray  # (n, T) reserves the member holds (for the energy it must keep, V2G only)
    down_w: np.ndarray
    # (n,) members whose band this LP chooses (`_band_columns`, one product only) instead of holding up_w/down_w
    # (0 for them); their blocks skip the sort and fill (refine._chunks), which plans no band
    banded: np.ndarray
    activation: np.ndarray  # (n,) currency per W of up band held for a step (costs.activation_per_w), banded only

    @property
    def v2g(self) -> np.ndarray:
        return self.discharge_w > 0

    def fraction(self, rows: np.ndarray | slice, steps: np.ndarray | int) -> np.ndarray:
        """The fraction of each (member, step) plugged in, from `present` (or `plugged` for whole steps)."""
        return (self.plugged if self.present is None else self.present)[rows, steps].astype(float)


@dataclass
class _Bands:
    """The band columns of one LP (`_plan`), as its builders make them."""

    # per builder: ((member rows, steps), up columns, down columns) (the same columns for a symmetric product)
    chosen: list[tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]] = field(default_factory=list)
    # per charge-only builder, every pair of its banded members, member-major: (rows, charge cols, up cols, down cols
    # (−1: no band at that pair), Wh stored per W charged, Wh lost per W of up band, the pair of the member's first
    # step); their energy rows are added lazily (`_energy_rows`)
    light: list[tuple[np.ndarray, ...]] = field(default_factory=list)


# at most this many rounds of charge-only energy rows added where the last solution's band was not sustained
# (`_energy_rows`), each a re-solve from scratch, until a round adds none or the time is up: one round left gaps of
# 1-10 % over the full LP on 10-EV fleets (a member filling up in a step loses its band there, which the next round's
# row moves power for), 2-3 rounds closed them to 0.00 %. At 1000 EVs with RegD (bench re-solve inputs): 1 round
# 3.2 s and 4.90 % over the full LP, 2: 5.0 s 4.72 %, 3: 5.4 s 4.62 %, 20: 19.6 s 4.56 %. Whatever is still
# unsustained is cut after (`_sustained`)
LAZY_ROUNDS = 3
# rounds of cutting the unsustained bands and following the cut: a smaller up band loses less, so the energy rises
# and can break the down band's room the round before held (converges fast: the band's loss is ~1.5 % of it)
CUT_ROUNDS = 5


@dataclass
class _Coupling:
    """Every power column with its step and sign at the site meter (+ charge, − discharge)."""

    cols: list[np.ndarray]
    steps: list[np.ndarray]
    signs: list[np.ndarray]

    def add(self, cols: np.ndarray, steps: np.ndarray, sign: float) -> None:
        self.cols.append(cols)
        self.steps.append(steps)
        self.signs.append(np.full(len(cols), sign))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self.cols), np.concatenate(self.steps), np.concatenate(self.signs)


def band_activation_per_h(inputs: PlanInputs) -> float:
    """kWh an up activation moves per kW·h of an asset's summed up reserve (Reserve.activation_per_h): the largest
    of the products, as a Plan keeps no per-product split (see `band_loss_wh`)."""
    return max((r.activation_per_h for r in inputs.reserves), default=0.0)


def band_loss_wh(inputs: PlanInputs, efficiency: np.ndarray) -> np.ndarray:
    """Wh a member of each `efficiency` loses per W of up reserve (summed) held for a step (inputs.activation_loss_wh).

    A Plan's reserve is summed over products, so a member's band cannot be told apart by product: with several
    activated products it loses at the largest product's rate (it keeps at least what the group's LP took; with one
    activated product, the usual case, this is that product's rate exactly). 0 without activated products."""
    alpha = band_activation_per_h(inputs)
    if alpha <= 0:
        return np.zeros_like(efficiency, dtype=float)
    return np.asarray(activation_loss_wh(alpha, efficiency, inputs.step_h), dtype=float)


def member_losses(inputs: PlanInputs, m: EvMembers) -> np.ndarray:
    """(n, T) Wh each member's band takes from its energy per step (`band_loss_wh` times the up reserve it holds)."""
    return band_loss_wh(inputs, m.efficiency)[:, None] * m.up_w


def v2g_columns(members: EvMembers) -> int:
    """Columns the V2G members add to the LP (3 per plugged-in step and segment): what sizes its solve time."""
    v2g = members.v2g
    return int(3 * (members.plugged[v2g].sum(axis=1) * members.segments[v2g]).sum())


def taper_binds(inputs: PlanInputs, m: EvMembers) -> np.ndarray:
    """(n, T) where a member's taper row can bind: plugged in, with a taper, and able to be within η·C·h·f/β of
    full at the step's start (its reachable ceiling `upper` above ceiling − η·C·h·f/β). Elsewhere the row
    η·h·c ≤ β·(ceiling − e) is implied by the charge limit c ≤ C·f, so it is left out (rows and the fill's proof,
    agent.dispatch.fill.fillable, both read this)."""
    beta, upper = m.taper, m.upper
    if beta is None or upper is None:
        return np.zeros(m.plugged.shape, dtype=bool)
    most = (m.efficiency * m.charge_w * inputs.step_h)[:, None] * m.fraction(slice(None), slice(None))
    slack = np.divide(most, beta, out=np.full_like(most, np.inf), where=beta > 0)
    return m.plugged & (beta < 1.0) & (upper[:, :-1] > m.ceiling[:, None] - slack)


def plan_members(
    inputs: PlanInputs,
    members: EvMembers,
    other_w: np.ndarray,
    time_limit_s: float,
    reachable: np.ndarray | None = None,
    other_band_w: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Optimal powers (n, T), energies (n, T+1) and up and down bands (n, T) of `members`, everything else drawing
    `other_w` at the meter and holding `other_band_w` (up, down W per step: read only with an award and `banded`
    members). A member that is not banded keeps its up_w / down_w.

    `reachable`: inputs.updr_reachable(inputs), when the caller has it (it costs ~0.2 s at 100 000 EVs and a caller
    solving blocks of one fleet asks for the same answer each time). Raises planner.PlanError when HiGHS does not
    return an optimal solution (the caller keeps what it had).
    """
    power, energy, up, down, _ = _plan(inputs, members, other_w, time_limit_s, reachable, other_band_w)
    return power, energy, up, down


def plan_members_detail(
    inputs: PlanInputs,
    members: EvMembers,
    other_w: np.ndarray,
    time_limit_s: float,
    reachable: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """`plan_members`, with each cost term's part of the LP's optimum (ArrayLp.term_values: costs positive, revenues
    negative, in the LP's own reading: energy of these EVs only, calendar as flows, up-DR without constants)."""
    power, energy, _, _, terms = _plan(inputs, members, other_w, time_limit_s, reachable, None)
    return power, energy, terms


def _plan(
    inputs: PlanInputs,
    members: EvMembers,
    other_w: np.ndarray,
    time_limit_s: float,
    reachable: np.ndarray | None,
    other_band_w: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    deadline = time.perf_counter() + time_limit_s
    lp = ArrayLp("EV refinement")
    coupling = _Coupling([], [], [])
    bands = _Bands()
    if members.banded.any() and len(inputs.reserves) != 1:
        raise ValueError(f"member_lp: banded members need exactly one reserve product, got {len(inputs.reserves)}")
    charge_only = _charge_only(lp, inputs, members, coupling, bands)
    v2g = _v2g(lp, inputs, members, coupling, bands)
    _award_rows(lp, inputs, bands, other_band_w)
    _site_rows(lp, inputs, other_w, coupling, updr_reachable(inputs) if reachable is None else reachable)
    _loss_calendar(lp, inputs, members)
    solution = lp.solve(time_limit_s)
    done: set[tuple[int, int, int]] = set()
    for _ in range(LAZY_ROUNDS):
        left = deadline - time.perf_counter()
        if left <= 0 or not bands.light or not _energy_rows(lp, inputs, members, bands, solution, done):
            break
        try:
            solution = lp.solve(left)
        except PlanError:
            break  # out of time or no answer: keep the last solution, whose unsustained bands are cut below
    terms = lp.term_values(solution)
    t = inputs.steps
    power = np.zeros((len(members.index), t))
    rows, steps, cols, lower, upper = charge_only
    power[rows, steps] = np.clip(solution[cols], lower, upper)
    rows, steps, charge, discharge = v2g
    if len(rows):
        power[rows, steps] = solution[charge].sum(axis=0) - solution[discharge].sum(axis=0)
    up, down = members.up_w, members.down_w
    if bands.chosen:
        up, down = up.copy(), down.copy()
        for (b_rows, b_steps), up_cols, down_cols in bands.chosen:
            up[b_rows, b_steps] = np.maximum(solution[up_cols], 0.0)
            down[b_rows, b_steps] = np.maximum(solution[down_cols], 0.0)
        members = dataclasses.replace(members, up_w=up, down_w=down)  # _follow takes the chosen bands' loss
    power, energy = _follow(inputs, members, power)
    for _ in range(CUT_ROUNDS if bands.light else 0):
        cut_up, cut_down = _sustained(inputs, members, energy)
        if np.array_equal(cut_up, members.up_w) and np.array_equal(cut_down, members.down_w):
            break
        up, down = cut_up, cut_down
        members = dataclasses.replace(members, up_w=up, down_w=down)
        power, energy = _follow(inputs, members, power)
    return power, energy, up, down, terms


def _sustained(inputs: PlanInputs, m: EvMembers, energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bands, a banded charge-only member's cut to what its `energy` sustains for the product's duration at the
    step's start and end (reserve_check's rule), both sides for a symmetric product: what `LAZY_ROUNDS` of energy
    rows left unsustained. The caller follows the cut bands again: an up band cut loses less, which moves the energy
    by that loss only."""
    hours = longest_product(inputs).duration_h
    eta = m.efficiency[:, None]
    above = energy - m.floor[:, None]
    room = m.ceiling[:, None] - energy
    cap_up = np.minimum(above[:, :-1], above[:, 1:]).clip(0.0) * eta / hours
    cap_down = np.minimum(room[:, :-1], room[:, 1:]).clip(0.0) / (eta * hours)
    if inputs.reserves[0].product in SYMMETRIC_PRODUCTS:
        cap_up = cap_down = np.minimum(cap_up, cap_down)
    light = m.banded & ~m.v2g
    up, down = m.up_w.copy(), m.down_w.copy()
    up[light] = np.minimum(up, cap_up)[light]
    down[light] = np.minimum(down, cap_down)[light]
    return up, down


def _charge_only(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, coupling: _Coupling, bands: _Bands
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t, h = inputs.steps, inputs.step_h
    rows, steps = np.nonzero(m.plugged & ~m.v2g[:, None])  # member-major
    eta = m.efficiency[rows]
    energy_per_w = costs.energy_per_w(inputs)
    # a W charged at step k costs its energy and the calendar ageing of η·h Wh held at the T − k boundaries after it
    cost = {"energy": energy_per_w[steps], "wear_calendar": m.calendar[rows] * eta * h * (t - steps)}
    upper = np.clip(m.high_w[rows, steps], 0.0, m.charge_w[rows])  # never above the EV's own limit
    lower = np.clip(m.low_w[rows, steps], 0.0, upper)
    cols = lp.columns(cost, lower, upper, size=len(rows))
    coupling.add(cols, steps, 1.0)
    gain = eta * h  # Wh stored per W charged for one step
    owners = np.unique(rows)
    if not len(owners):
        return rows, steps, cols, lower, upper
    row_of = np.full(len(m.index), -1)
    row_of[owners] = np.arange(len(owners))
    # the band's round-trip loss (constants: the reserve is fixed) frees room and must be charged back for the need
    loss = member_losses(inputs, m)
    room = lp.rows(-INF, np.maximum(m.ceiling[owners] - m.energy[owners] + loss[owners].sum(axis=1), 0.0))
    lp.entries(room[row_of[rows]], cols, gain)
    room_of = row_of.copy()
    # departure needs: Σ_{k < check} η·h·c + short1 + short2 ≥ need − energy + Σ_{k < check} loss (short1 ≤ tier 1)
    before_check = np.arange(t)[None, :] < m.check[:, None]
    missing = m.need - m.energy + (loss * before_check).sum(axis=1)
    # a banded member's loss is a column: it keeps its need row wherever it has a need above its floor
    needy = owners[(missing[owners] > 0) | (m.banded[owners] & (m.need[owners] > m.floor[owners]))]
    need_of = np.full(len(m.index), -1)
    if len(needy):
        need_row = _need_rows(lp, inputs, m, needy, missing[needy])
        need_of[needy] = need_row
        take = (steps < m.check[rows]) & (need_of[rows] >= 0)
        lp.entries(need_of[rows[take]], cols[take], gain[take])
    banded = _charge_only_bands(lp, inputs, m, rows, steps, cols, room[room_of[rows]], need_of[rows], bands)
    _charge_only_taper(lp, inputs, m, rows, steps, cols, loss, banded)
    return rows, steps, cols, lower, upper


def _charge_only_bands(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, rows: np.ndarray, steps: np.ndarray, cols: np.ndarray,
    room_row: np.ndarray, need_row: np.ndarray, bands: _Bands,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Band columns of the banded charge-only members' whole plugged-in steps (`_band_columns`): power headroom
    (up ≤ c, c + down ≤ charge limit), the band's loss freeing room (`room_row`, per pair) and charged back for the
    need (`need_row`, per pair, −1: none; before the checkpoint only). Returns (pairs banded, their up and down
    columns) for the taper rows; their energy rows come later (`_energy_rows`)."""
    mine = np.flatnonzero(m.banded[rows])  # every pair of a banded member: its energy is the sum of all its charges
    whole = m.fraction(rows[mine], steps[mine]) >= 1.0  # a band is held for whole steps only
    at = mine[whole]
    empty = np.zeros(0, dtype=int)
    if not len(at):
        return empty, empty, empty
    b_rows, b_steps = rows[at], steps[at]
    up, down = _band_columns(lp, inputs, m, b_rows, b_steps)
    r = lp.rows(-INF, np.zeros(len(at)))  # up − c ≤ 0: a member that only charges gives up by charging less
    lp.entries(r, up, 1.0)
    lp.entries(r, cols[at], -1.0)
    r = lp.rows(-INF, m.charge_w[b_rows])
    lp.entries(r, down, 1.0)
    lp.entries(r, cols[at], 1.0)
    band = band_loss_wh(inputs, m.efficiency[b_rows])
    if band.any():  # the loss frees room and must be charged back for the need
        lp.entries(room_row[at], up, -band)
        take = (b_steps < m.check[b_rows]) & (need_row[at] >= 0)
        lp.entries(need_row[at][take], up[take], -band[take])
    bands.chosen.append(((b_rows, b_steps), up, down))
    # the energy rows' view: all the banded members' pairs, −1 for a band column where a pair holds none
    m_rows = rows[mine]
    first = np.concatenate([[True], m_rows[1:] != m_rows[:-1]])
    start_of = np.maximum.accumulate(np.where(first, np.arange(len(mine)), 0))
    up_all, down_all, loss_all = np.full(len(mine), -1), np.full(len(mine), -1), np.zeros(len(mine))
    up_all[whole], down_all[whole], loss_all[whole] = up, down, band
    gain = m.efficiency[m_rows] * inputs.step_h
    bands.light.append((m_rows, cols[mine], up_all, down_all, gain, loss_all, start_of))
    return at, up, down


def _band_columns(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, rows: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Up and down band columns of (member, step) pairs (one shared column for a symmetric product): revenue at the
    capacity prices, activation wear, and the calendar ageing the band's loss saves (`_loss_calendar`'s rule)."""
    t, h = inputs.steps, inputs.step_h
    (reserve,) = inputs.reserves
    up_price, down_price = costs.reserve_per_w(reserve, t, h)
    band = band_loss_wh(inputs, m.efficiency[rows])
    up_cost = {
        "reserve_revenue": -up_price[steps],
        "reserve_activation": m.activation[rows],
        "wear_calendar": -m.calendar[rows] * band * (t - steps),  # the loss is energy not held at the T − k ends
    }
    if reserve.product in SYMMETRIC_PRODUCTS:
        up_cost["reserve_revenue"] = up_cost["reserve_revenue"] - down_price[steps]
        up = lp.columns(up_cost, 0.0, INF, size=len(rows))
        return up, up
    up = lp.columns(up_cost, 0.0, INF, size=len(rows))
    return up, lp.columns({"reserve_revenue": -down_price[steps]}, 0.0, INF, size=len(rows))


def _energy_rows(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, bands: _Bands, solution: np.ndarray, done: set[tuple[int, int, int]]
) -> int:
    """Rows holding the energy a banded charge-only member's band needs (reserve_check's rule, at the step's start
    and end), added only for pairs whose band `solution` does not sustain: a charge-only member's energy is the
    cumulative sum of its charges less the band's loss, so a row for every pair would be dense (T² entries per
    member). `done` keeps (side, light set, pair) already written. Returns the rows added."""
    hours = longest_product(inputs).duration_h
    added = 0
    for number, (rows, c, up, down, gain, band, start_of) in enumerate(bands.light):
        held_up = np.where(up >= 0, solution[up], 0.0)
        held_down = np.where(down >= 0, solution[down], 0.0)
        delta = gain * solution[c] - band * held_up
        csum = np.cumsum(delta)
        end = m.energy[rows] + csum - (csum - delta)[start_of]
        start = end - delta
        eta = m.efficiency[rows]
        low = np.minimum(start, end) - m.floor[rows] - held_up * hours / eta
        high = m.ceiling[rows] - np.maximum(start, end) - held_down * hours * eta
        for side, short in ((0, low), (1, high)):
            # only pairs holding a band (Wh: the solution's rounding, not a tolerance on the rule)
            for k in np.flatnonzero((short < -1.0) & (up >= 0)):
                if (side, number, k) in done:
                    continue
                done.add((side, number, k))
                band_col, coef = (up[k], -hours / eta[k]) if side == 0 else (down[k], hours * eta[k])
                base = m.energy[rows[k]]
                for upto in (k, k + 1):  # the step's start (the member's pairs before it) and end (with it)
                    prior = np.arange(start_of[k], upto)
                    lossy = prior[up[prior] >= 0]
                    cols = np.concatenate([c[prior], up[lossy], [band_col]])
                    vals = np.concatenate([gain[prior], -band[lossy], [coef]])
                    cols, inverse = np.unique(cols, return_inverse=True)  # a symmetric band's column once
                    vals = np.bincount(inverse, weights=vals)
                    bound = (m.floor[rows[k]] - base, INF) if side == 0 else (-INF, m.ceiling[rows[k]] - base)
                    r = lp.rows(*bound)
                    lp.entries(np.full(len(cols), r[0]), cols, vals)
                    added += 1
    return added


def _award_rows(
    lp: ArrayLp, inputs: PlanInputs, bands: _Bands, other_band_w: tuple[np.ndarray, np.ndarray] | None
) -> None:
    """With an award, one row per step and side: every chosen band plus `other_band_w` (what every other asset
    holds) covers it, or the rest is priced as the shortfall (formulation._reserves' award rows)."""
    if not bands.chosen:
        return
    t = inputs.steps
    (reserve,) = inputs.reserves
    awarded = [np.asarray(reserve.awarded_up_w[:t], dtype=float), np.asarray(reserve.awarded_down_w[:t], dtype=float)]
    if not any(a.any() for a in awarded):
        return
    others = other_band_w or (np.zeros(t), np.zeros(t))
    short_price = costs.reserve_short_per_w(inputs.penalties, inputs.step_h)
    for side, (award, other) in enumerate(zip(awarded, others, strict=True)):
        short = lp.columns({"reserve_shortfall_penalty": np.full(t, short_price)}, 0.0, INF, size=t)
        r = lp.rows(award - np.asarray(other, dtype=float), INF)
        lp.entries(r, short, 1.0)
        for (_, steps), up, down in bands.chosen:
            lp.entries(r[steps], (up, down)[side], 1.0)


def _charge_only_taper(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, rows: np.ndarray, steps: np.ndarray, cols: np.ndarray,
    loss: np.ndarray, banded: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:  # fmt: skip
    """The taper rows of charge-only members (formulation._taper): η·h·c(k) + β(k)·x(k) ≤ β(k)·ceiling − η·h·(1 −
    β(k))·down(k), x(k) the energy at step k's start, at the steps where the row can bind (`taper_binds`).

    x is an energy column per step from a member's first such step k0 to its last, chained by its dynamics
    (x(k+1) = x(k) + η·h·c(k) − loss(k); x(k0) = its energy now plus its charge before k0, less the band's loss):
    three entries per step, where the cumulative form (every earlier charge in every row) grew with T².

    A chosen band (`banded`: pairs, up and down columns from `_charge_only_bands`) enters as formulation._taper
    writes it: its loss in the chain (−band·up(k−1), and before k0 in the first row) and its down column in the row,
    η·h·(1 − β)·down(k) on the left instead of the constant."""
    t, h = inputs.steps, inputs.step_h
    binds = taper_binds(inputs, m) & ~m.v2g[:, None]
    who = np.flatnonzero(binds.any(axis=1))
    if not len(who):
        return
    first_k = np.argmax(binds[who], axis=1)
    last_k = t - 1 - np.argmax(binds[who][:, ::-1], axis=1)
    counts = last_k - first_k + 1
    owner = np.repeat(np.arange(len(who)), counts)
    start = np.cumsum(counts) - counts
    k = first_k[owner] + np.arange(int(counts.sum())) - start[owner]
    member = who[owner]
    first = k == first_k[owner]
    col_at = np.full((len(m.index), t), -1)
    col_at[rows, steps] = cols
    at_pairs, band_up, band_down = banded
    up_at, down_at = np.full((len(m.index), t), -1), np.full((len(m.index), t), -1)
    up_at[rows[at_pairs], steps[at_pairs]] = band_up
    down_at[rows[at_pairs], steps[at_pairs]] = band_down
    band = band_loss_wh(inputs, m.efficiency)
    gain = m.efficiency * h
    lost = np.concatenate([np.zeros((len(m.index), 1)), np.cumsum(loss, axis=1)], axis=1)  # before each boundary
    x = lp.columns(np.zeros(len(k)), -INF, INF)  # pinned by the rows below
    rhs = np.where(first, m.energy[member] - lost[member, k], -loss[member, np.maximum(k - 1, 0)])
    dyn = lp.rows(rhs, rhs)
    lp.entries(dyn, x, 1.0)
    chain = np.flatnonzero(~first)  # x(k) − x(k−1) − η·h·c(k−1) = −loss(k−1)
    lp.entries(dyn[chain], x[chain - 1], -1.0)
    prev = col_at[member[chain], k[chain] - 1]
    has = prev >= 0
    lp.entries(dyn[chain[has]], prev[has], -gain[member[chain[has]]])
    prev = up_at[member[chain], k[chain] - 1]
    has = prev >= 0
    lp.entries(dyn[chain[has]], prev[has], band[member[chain[has]]])
    # the first row: every charge before k0 (x(k0) − Σ η·h·c = energy now − losses)
    first_row = np.full(len(m.index), -1)
    first_row[who] = dyn[start]
    k0 = np.full(len(m.index), -1)
    k0[who] = first_k
    early = (first_row[rows] >= 0) & (steps < k0[rows])
    lp.entries(first_row[rows[early]], cols[early], -gain[rows[early]])
    if len(at_pairs):
        b_rows, b_steps = rows[at_pairs], steps[at_pairs]
        early = (first_row[b_rows] >= 0) & (b_steps < k0[b_rows])
        lp.entries(first_row[b_rows[early]], band_up[early], band[b_rows[early]])
    at = np.flatnonzero(binds[member, k])
    mem, kk = member[at], k[at]
    assert m.taper is not None  # rows bind only with a taper
    beta = m.taper[mem, kk]
    row = lp.rows(-INF, beta * m.ceiling[mem] - gain[mem] * (1.0 - beta) * m.down_w[mem, kk])
    lp.entries(row, x[at], beta)
    lp.entries(row, col_at[mem, kk], gain[mem])
    chosen = down_at[mem, kk] >= 0
    lp.entries(row[chosen], down_at[mem[chosen], kk[chosen]], (gain[mem] * (1.0 - beta))[chosen])


def _need_rows(lp: ArrayLp, inputs: PlanInputs, m: EvMembers, who: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Rows `(energy terms) + short1 + short2 ≥ rhs` for members `who`, with their tiered shortfall columns."""
    tier1, tier2 = costs.ev_shortfall_per_wh(inputs.penalties)
    k = len(who)
    s1 = lp.columns({"ev_shortfall_penalty": tier1}, 0.0, m.tier1[who], size=k)
    s2 = lp.columns({"ev_shortfall_penalty": tier2}, 0.0, INF, size=k)
    rows = lp.rows(rhs, INF)
    lp.entries(rows, s1, 1.0)
    lp.entries(rows, s2, 1.0)
    return rows


def _v2g(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, coupling: _Coupling, bands: _Bands
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segment storage model of the V2G members; returns (member rows, steps, charge cols (J, P), discharge cols)."""
    t, h = inputs.steps, inputs.step_h
    rows, steps = np.nonzero(m.plugged & m.v2g[:, None])  # member-major, steps ascending: one pair per column set
    if not len(rows):
        empty = np.zeros((0, 0), dtype=int)
        return rows, steps, empty, empty
    pairs = len(rows)
    first = np.concatenate([[True], rows[1:] != rows[:-1]])
    eta = m.efficiency[rows]
    cal = m.calendar[rows]
    price = costs.energy_per_w(inputs)[steps]
    held = t - steps  # step ends at which a Wh stored at this step is held
    room = np.maximum(m.ceiling - m.floor, 0.0)
    segments = m.wear.shape[1]
    cap = np.where(np.arange(segments)[None, :] < m.segments[:, None], (room / m.segments)[:, None], 0.0)
    initial = _cheapest_first(np.clip(m.energy - m.floor, 0.0, room), cap)
    charge, discharge, energy, dynamics = [], [], [], []
    for j in range(segments):
        c = lp.columns({"energy": price, "wear_calendar": cal * eta * h * held}, 0.0, INF, size=pairs)
        d = lp.columns(
            {"energy": -price, "wear_cycle": m.wear[rows, j], "wear_calendar": -cal * h / eta * held},
            0.0,
            INF,
            size=pairs,
        )
        e = lp.columns(np.zeros(pairs), 0.0, cap[rows, j])
        start = np.where(first, initial[rows, j], 0.0)
        dyn = lp.rows(start, start)  # e_j(k) − e_j(previous plugged step) − η·h·c + h/η·d = e_j(0) or 0
        lp.entries(dyn, e, 1.0)
        lp.entries(dyn[~first], e[np.flatnonzero(~first) - 1], -1.0)
        lp.entries(dyn, c, -eta * h)
        lp.entries(dyn, d, h / eta)
        coupling.add(c, steps, 1.0)
        coupling.add(d, steps, -1.0)
        charge.append(c)
        discharge.append(d)
        energy.append(e)
        dynamics.append(dyn)
    _band_losses(lp, inputs, m, rows, steps, dynamics)
    f = m.fraction(rows, steps)
    top, bottom = m.charge_w[rows] * f, m.discharge_w[rows] * f
    for cols, bound in ((charge, top), (discharge, bottom)):
        r = lp.rows(-INF, bound)
        for c in cols:
            lp.entries(r, c, 1.0)
    taper = _v2g_taper(lp, inputs, m, rows, steps, first, charge, energy, room)
    _v2g_bands(lp, inputs, m, rows, steps, first, (charge, discharge, energy, dynamics), room, taper, bands)
    if (m.low_w[rows, steps] > -bottom).any() or (m.high_w[rows, steps] < top).any():
        net = lp.rows(np.maximum(m.low_w[rows, steps], -bottom), m.high_w[rows, steps])
        for c, d in zip(charge, discharge, strict=True):
            lp.entries(net, c, 1.0)
            lp.entries(net, d, -1.0)
        _reserve_energy(lp, inputs, m, rows, steps, first, energy, room)
    _v2g_needs(lp, inputs, m, rows, steps, energy)
    return rows, steps, np.array(charge), np.array(discharge)


def _v2g_taper(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, rows: np.ndarray, steps: np.ndarray, first: np.ndarray,
    charge: list[np.ndarray], energy: list[np.ndarray], room: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The taper rows of V2G members where they can bind (`taper_binds`), on their segment columns as
    formulation._taper writes them: η·h·Σ_j c_j + β·(energy above the floor at the step's start) ≤ β·room −
    η·h·(1 − β)·down. The step's start is the previous plugged-in pair's energy columns, or (a member's first pair)
    its energy now, a constant moved into the bound. Returns (pairs, rows, η·h·(1 − β)) for a chosen down band's
    entries (`_v2g_bands`)."""
    at = np.flatnonzero(taper_binds(inputs, m)[rows, steps])
    if not len(at):
        return at, at, np.zeros(0)
    r, k = rows[at], steps[at]
    assert m.taper is not None  # rows bind only with a taper
    beta = m.taper[r, k]
    gain = m.efficiency[r] * inputs.step_h
    initial = np.where(first[at], np.clip(m.energy[r] - m.floor[r], 0.0, room[r]), 0.0)
    row = lp.rows(-INF, beta * (room[r] - initial) - gain * (1.0 - beta) * m.down_w[r, k])
    for c in charge:
        lp.entries(row, c[at], gain)
    later = ~first[at]
    for e in energy:
        lp.entries(row[later], e[at[later] - 1], beta[later])
    return at, row, gain * (1.0 - beta)


def _v2g_bands(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, rows_all: np.ndarray, steps_all: np.ndarray, first_all: np.ndarray,
    columns: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]], room_all: np.ndarray,
    taper: tuple[np.ndarray, np.ndarray, np.ndarray], bands: _Bands,
) -> None:  # fmt: skip
    """Band columns of the banded V2G members' whole plugged-in steps (`_band_columns`), as the full LP holds them
    (formulation._reserves): power headroom (up ≤ discharge limit + power, down ≤ charge limit − power), the energy
    to sustain them for the product's duration at the step's start and end (hard: a band is held only where it can
    be), the band's round-trip loss drawn from any segment (formulation._activation_losses), and a down band in its
    taper row (`taper`: pairs, rows, coefficients from `_v2g_taper`). `columns`: charge, discharge, energy columns and
    dynamics rows per segment, over all V2G pairs (`rows_all`, `steps_all`)."""
    charge, discharge, energy, dynamics = columns
    pick = np.flatnonzero(m.banded[rows_all] & (m.fraction(rows_all, steps_all) >= 1.0))
    if not len(pick):
        return
    rows, steps = rows_all[pick], steps_all[pick]
    hours = longest_product(inputs).duration_h
    eta = m.efficiency[rows]
    band = band_loss_wh(inputs, eta)
    up, down = _band_columns(lp, inputs, m, rows, steps)
    # power headroom: Σd − Σc + up ≤ discharge limit, Σc − Σd + down ≤ charge limit
    for cols, limit, sign in ((up, m.discharge_w[rows], -1.0), (down, m.charge_w[rows], 1.0)):
        r = lp.rows(-INF, limit)
        lp.entries(r, cols, 1.0)
        for c, d in zip(charge, discharge, strict=True):
            lp.entries(r, c[pick], sign)
            lp.entries(r, d[pick], -sign)
    if band.any():  # the loss, drawn from any segment: shares s_j ≥ 0 in the dynamics rows, Σ s_j = band · up
        total = lp.rows(np.zeros(len(rows)), np.zeros(len(rows)))
        lp.entries(total, up, -band)
        for dyn in dynamics:
            share = lp.columns(np.zeros(len(rows)), 0.0, INF)
            lp.entries(total, share, 1.0)
            lp.entries(dyn[pick], share, 1.0)
    # energy to sustain the band at the step's end (its own energy columns) and start (the previous pair's, or the
    # energy now above the floor for a member's first pair, a constant moved into the bounds)
    room = room_all[rows]
    first = first_all[pick]
    initial = np.clip(m.energy - m.floor, 0.0, room_all)[rows]
    for cols, coef, lower, upper in ((up, -hours / eta, 0.0, INF), (down, hours * eta, -INF, room)):
        lower = np.broadcast_to(lower, (len(rows),))
        upper = np.broadcast_to(upper, (len(rows),))
        end = lp.rows(lower, upper)
        lp.entries(end, cols, coef)
        for e in energy:
            lp.entries(end, e[pick], 1.0)
        start = np.where(first, initial, 0.0)
        begin = lp.rows(lower - start, upper - start)
        lp.entries(begin, cols, coef)
        later = ~first
        for e in energy:
            lp.entries(begin[later], e[pick[later] - 1], 1.0)
    at, taper_row, coef = taper
    down_of = np.full(len(rows_all), -1)
    down_of[pick] = down
    chosen = down_of[at] >= 0
    lp.entries(taper_row[chosen], down_of[at[chosen]], coef[chosen])
    bands.chosen.append(((rows, steps), up, down))


def _band_losses(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, rows: np.ndarray, steps: np.ndarray, dynamics: list[np.ndarray]
) -> None:
    """The band's round-trip loss taken from the V2G members' segments, as formulation._activation_losses takes it:
    per pair holding an up reserve, one non-negative share per segment entering its dynamics row (e_j(k) falls by
    it), the shares summing to the loss. A loss the segments cannot give (a member at its floor) is left untaken at
    the price of the reserve energy it leaves unheld, so the LP stays feasible."""
    loss = member_losses(inputs, m)[rows, steps]
    held = np.flatnonzero(loss > 0)
    if not len(held):
        return
    hours = longest_product(inputs).duration_h
    price = costs.reserve_short_per_w(inputs.penalties, inputs.step_h) / max(hours, 1e-9)
    total = lp.rows(loss[held], loss[held])
    untaken = lp.columns(np.full(len(held), price), 0.0, INF)
    lp.entries(total, untaken, 1.0)
    for dyn in dynamics:  # e_j(k) − e_j(previous) − η·h·c + h/η·d + share_j = e_j(0) or 0
        share = lp.columns(np.zeros(len(held)), 0.0, INF)
        lp.entries(total, share, 1.0)
        lp.entries(dyn[held], share, 1.0)


def _loss_calendar(lp: ArrayLp, inputs: PlanInputs, m: EvMembers) -> None:
    """The calendar ageing the band's loss saves (a Wh lost at step k is not held at the T − k boundaries after it):
    a constant, as the reserve is fixed, carried by one column fixed at 1 so that `term_values` reads the same
    calendar money as pricing.plan_cost of the schedule."""
    loss = member_losses(inputs, m)
    if not loss.any():
        return
    held = inputs.steps - np.arange(inputs.steps)
    lp.columns({"wear_calendar": -float(np.sum(m.calendar[:, None] * loss * held[None, :]))}, 1.0, 1.0, size=1)


def _cheapest_first(above: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Energy above the floor spread over segments shallowest first, as agent.dispatch.planner.fill does."""
    filled = np.minimum(np.cumsum(cap, axis=1), above[:, None])
    return np.diff(np.concatenate([np.zeros((len(above), 1)), filled], axis=1), axis=1)


def _v2g_needs(
    lp: ArrayLp, inputs: PlanInputs, m: EvMembers, rows: np.ndarray, steps: np.ndarray, energy: list[np.ndarray]
) -> None:
    """Σ_j e_j after the last plugged-in step before the checkpoint + shortfall ≥ need − floor."""
    before = np.flatnonzero(steps < m.check[rows])
    last = np.full(len(m.index), -1)
    np.maximum.at(last, rows[before], before)
    who = np.flatnonzero((last >= 0) & (m.need > m.floor))
    if not len(who):
        return
    need_row = _need_rows(lp, inputs, m, who, m.need[who] - m.floor[who])
    for e in energy:
        lp.entries(need_row, e[last[who]], 1.0)


def _reserve_energy(
    lp: ArrayLp,
    inputs: PlanInputs,
    m: EvMembers,
    rows: np.ndarray,
    steps: np.ndarray,
    first: np.ndarray,
    energy: list[np.ndarray],
    room: np.ndarray,
) -> None:
    """Soft: energy above the floor ≥ up·duration/η and room ≥ η·down·duration at the start and the end of each step
    holding reserves (agent.dispatch.reserve_check, same rule). A step's start is the end of the member's previous
    plugged-in step, or its initial energy (a constant, moved into the row's bounds) for its first one."""
    if not inputs.reserves:
        return
    hours = longest_product(inputs).duration_h
    eta = m.efficiency[rows]
    up = m.up_w[rows, steps] * hours / eta
    down = m.down_w[rows, steps] * hours * eta
    # a Wh not held is priced like the reserve it leaves undeliverable for one step
    price = costs.reserve_short_per_w(inputs.penalties, inputs.step_h) / max(hours, 1e-9)
    initial = np.clip(m.energy - m.floor, 0.0, room)[rows]
    for need, lower, upper, sign in (
        (up, up, np.full(len(rows), INF), 1.0),
        (down, np.full(len(rows), -INF), room[rows] - down, -1.0),
    ):
        held = np.flatnonzero(need > 0)
        if not len(held):
            continue
        # the step's end: its own energy columns
        r = lp.rows(lower[held], upper[held])
        slack = lp.columns(np.full(len(held), price), 0.0, INF)
        lp.entries(r, slack, sign)
        for e in energy:
            lp.entries(r, e[held], 1.0)
        # the step's start: the previous pair's columns, or the initial energy for a member's first pair
        start = np.where(first[held], initial[held], 0.0)
        r = lp.rows(lower[held] - start, upper[held] - start)
        slack = lp.columns(np.full(len(held), price), 0.0, INF)
        lp.entries(r, slack, sign)
        later = held[~first[held]]
        for e in energy:
            lp.entries(r[~first[held]], e[later - 1], 1.0)


def _site_rows(
    lp: ArrayLp, inputs: PlanInputs, other_w: np.ndarray, coupling: _Coupling, reachable: np.ndarray
) -> None:
    """Import/export limits (soft, like the planner's) and up-DR over every power column at its step."""
    t, h = inputs.steps, inputs.step_h
    pen = inputs.penalties
    site = inputs.site
    cols, steps, signs = coupling.arrays()
    fixed = np.asarray(site.base_load_w[:t] - site.pv_w[:t], dtype=float) + other_w
    if np.isfinite(site.import_limit_w) or np.isfinite(site.export_limit_w):  # over ≥ net − import, ≥ −export − net
        over = lp.columns({"site_limit_penalty": costs.site_excess_per_w(pen, h)}, 0.0, INF, size=t)
        imp = lp.rows(-INF, np.full(t, site.import_limit_w) - fixed)
        exp = lp.rows(-site.export_limit_w - fixed, np.full(t, INF))
        for r, sign in ((imp, -1.0), (exp, 1.0)):
            lp.entries(r[steps], cols, signs)
            lp.entries(r, over, sign)
    if inputs.updr is not None:
        # the planner's reformulation (agent.dispatch.formulation._updr): 0 ≤ u ≤ requested, u − b ≤ net − baseline,
        # u earns the price and the penalty it avoids, b (under the baseline) costs inputs.below_baseline_price
        dr = inputs.updr
        window = np.flatnonzero(reachable)  # as the planner's window (unreachable steps out)
        dr_prices = costs.updr_per_w(dr, pen, h)
        k = len(window)
        reward = {"updr_revenue": -dr_prices.revenue, "updr_shortfall_penalty": -dr_prices.shortfall}
        up = lp.columns(reward, 0.0, np.full(k, dr.requested_w), size=k)
        below = lp.columns({"updr_below_baseline_penalty": dr_prices.below}, 0.0, INF, size=k)
        r = lp.rows(-INF, fixed[window] - np.asarray(dr.baseline_w[:t])[window])
        row_of_step = np.full(t, -1)
        row_of_step[window] = r
        inside = row_of_step[steps] >= 0
        lp.entries(row_of_step[steps[inside]], cols[inside], -signs[inside])
        lp.entries(r, up, 1.0)
        lp.entries(r, below, -1.0)


def site_slopes(inputs: PlanInputs, net_w: np.ndarray, reachable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right derivatives (currency per W for one step, per step) of what the site costs at net load `net_w`:
    the energy price plus the rows of `_site_rows` at their optimum (limit excess; in a reachable up-DR window the
    stand-in under the baseline, then the paid increase up to the request). Their interval is the subdifferential a
    price must lie in for members filled at that price (agent.dispatch.fill) to be the LP's optimum."""
    t, h = inputs.steps, inputs.step_h
    site = inputs.site
    price = costs.energy_per_w(inputs)
    over = costs.site_excess_per_w(inputs.penalties, h)
    net = np.asarray(net_w, dtype=float)
    left = price + over * (net > site.import_limit_w) - over * (net <= -site.export_limit_w)
    right = price + over * (net >= site.import_limit_w) - over * (net < -site.export_limit_w)
    if inputs.updr is not None:
        dr = inputs.updr
        prices = costs.updr_per_w(dr, inputs.penalties, h)
        base = np.asarray(dr.baseline_w[:t], dtype=float)
        # a paid increase that would cost (a negative up-DR price) stays at 0 in the LP: the slope is energy alone
        paid = max(prices.revenue + prices.shortfall, 0.0)
        top = base + dr.requested_w
        left -= reachable * np.where(net <= base, prices.below, np.where(net <= top, paid, 0.0))
        right -= reachable * np.where(net < base, prices.below, np.where(net < top, paid, 0.0))
    return left, right


def trajectories(inputs: PlanInputs, m: EvMembers, power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Powers and energies of members following `power` (`_follow`): what a schedule from outside this LP (the fill
    of agent.dispatch.fill) becomes, by the rule this LP's own solutions go through."""
    return _follow(inputs, m, power)


def _follow(inputs: PlanInputs, m: EvMembers, power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies of the members following `power`, each step's power cut to what its energy range allows.

    The LP may charge and discharge one segment in the same step (burning energy through the losses, which pays in
    an up-DR window); its net power then stores more than its segments hold, and the cut keeps the EV in range.
    """
    h = inputs.step_h
    eta = m.efficiency
    energy = np.empty((len(m.index), inputs.steps + 1))
    energy[:, 0] = e = m.energy.copy()
    power = power.copy()
    loss = member_losses(inputs, m)  # the band's round-trip loss, taken as the LP took it
    for k in range(inputs.steps):
        # the step's limit for the minutes the member is there, and (to rounding, as the LP's rows hold it) its taper
        f = m.fraction(slice(None), k)
        limit = m.charge_w * f
        if m.taper is not None:
            tapered = m.taper[:, k] < 1.0
            limit[tapered] = np.minimum(limit, m.taper[:, k] * np.maximum(m.ceiling - e, 0.0) / (eta * h))[tapered]
        top = np.minimum(limit, np.maximum(m.ceiling - e + loss[:, k], 0.0) / (eta * h))
        bottom = np.minimum(m.discharge_w * f, np.maximum(e - loss[:, k] - m.floor, 0.0) * eta / h)
        p = np.where(m.plugged[:, k], np.clip(power[:, k], -bottom, top), 0.0)
        power[:, k] = p
        e = np.clip(e + np.where(p > 0, p * eta * h, p * h / eta) - loss[:, k], m.floor, m.ceiling)
        energy[:, k + 1] = e
    return power, energy
