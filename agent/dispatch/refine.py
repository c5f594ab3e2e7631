"""Refine an aggregated plan: re-plan the charge-only EVs one by one, then the stationary batteries, each against the
rest of the site held fixed (block coordinate descent on the full LP's own objective).

Why: the virtual batteries of agent.dispatch.aggregate are a relaxation whose plan the members cannot always
follow (a group's summed envelope forgets that a member that waited is nearly full, or has left), and what the
split cannot follow it charges at dearer steps. bench/dispatch.py measured the executed schedule 5.4–6 % dearer
than the full LP at 1000 EVs, although the aggregated LP itself was within 0.7 % of it. Two cheap exact
sub-problems recover most of that:

* **Charge-only EVs** (no V2G: most of a fleet) only ever add energy, so each one's whole model is a handful of
  numbers: a per-step rate while plugged in, the energy it may still take (room) and its departure need. Priced at
  the site's energy price, its calendar ageing and the up-DR reward, with the site's import/export limits as the
  only coupling, they form a transport-like LP of one column per plugged-in (EV, step) pair and two rows per EV,
  which HiGHS solves directly (built as arrays, no cvxpy compile: the columns change with every re-solve).
* **Stationary batteries** are re-planned with the planner's own model against the site load the EVs now make: they
  take up what the EVs' schedule leaves (an up-DR window the split under-filled, a dear step it over-filled).

V2G members keep their split power (their wear segments make them a full storage model each).

Reserves: a charge-only member keeps the reserve the split gave it deliverable (its charge stays at least its up
reserve and at most its limit less its down reserve). The battery step is skipped when reserve products are in the
plan: re-planning a battery's share of an award needs the per-product split the aggregate does not keep.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import highspy
import numpy as np

from agent.dispatch import planner
from agent.dispatch.inputs import PlanInputs

if TYPE_CHECKING:
    from agent.dispatch.aggregate import Members, Split

_INF = highspy.kHighsInf


@dataclasses.dataclass(frozen=True)
class ChargeOnly:
    """The charge-only EVs to re-plan (rows of inputs.assets) and what their LP needs."""

    index: np.ndarray  # position in inputs.assets
    plugged: np.ndarray  # (n, T) bool
    energy: np.ndarray  # Wh now
    room: np.ndarray  # Wh it may still take
    need: np.ndarray  # Wh it must take before `check` (reachable; 0 = none)
    tier1: np.ndarray  # Wh of the shortfall priced at tier 1
    check: np.ndarray  # step of the departure checkpoint
    efficiency: np.ndarray
    calendar: np.ndarray  # currency per Wh·h held
    low_w: np.ndarray  # (n, T) charge kept at least this (up reserve held)
    high_w: np.ndarray  # (n, T) and at most this (limit less down reserve held)


def charge_only_lp(inputs: PlanInputs, members: ChargeOnly, other_w: np.ndarray, time_limit_s: float) -> np.ndarray:
    """Optimal powers (n, T) of the charge-only members, everything else drawing `other_w` at the meter (W per step).

    Raises planner.PlanError when HiGHS does not return an optimal solution (the caller keeps what it had).
    """
    t, h = inputs.steps, inputs.step_h
    n = len(members.index)
    rows_i, steps = np.nonzero(members.plugged)  # one column per plugged-in (member, step), member-major
    eta = members.efficiency[rows_i]
    price = np.asarray(inputs.site.price_per_kwh[:t], dtype=float)
    # a W charged at step k costs its energy and the calendar ageing of η·h Wh held at the T − k boundaries after it
    cost = price[steps] * h / 1000.0 + members.calendar[rows_i] * eta * h * h * (t - steps)
    upper = members.high_w[rows_i, steps]  # never above the EV's own limit, whatever the reserves asked
    lower = np.minimum(members.low_w[rows_i, steps], upper)
    gain = eta * h  # Wh stored per W charged for one step
    cols = len(steps)
    pen = inputs.penalties
    builder = _Lp(cols, cost, lower, upper)
    # departure needs: Σ_{k < check} η·h·c + short1 + short2 ≥ need (short1 ≤ tier 1 share)
    needy = np.flatnonzero(members.need > 0)
    if len(needy):
        s1 = builder.columns(np.full(len(needy), pen.ev_short_tier1_per_kwh / 1000.0), 0.0, members.tier1[needy])
        s2 = builder.columns(np.full(len(needy), pen.ev_short_tier2_per_kwh / 1000.0), 0.0, _INF)
        before = steps < members.check[rows_i]
        row_of = np.full(n, -1)
        row_of[needy] = np.arange(len(needy))
        take = before & (row_of[rows_i] >= 0)
        r = builder.rows(members.need[needy], _INF)
        builder.entries(r[row_of[rows_i[take]]], np.flatnonzero(take), gain[take])
        builder.entries(r, s1, np.ones(len(needy)))
        builder.entries(r, s2, np.ones(len(needy)))
    # room: Σ_k η·h·c ≤ room
    r = builder.rows(np.full(n, -_INF), members.room)
    builder.entries(r[rows_i], np.arange(cols), gain)
    site = inputs.site
    fixed = np.asarray(site.base_load_w[:t] - site.pv_w[:t], dtype=float) + other_w
    limited = np.isfinite(site.import_limit_w) or np.isfinite(site.export_limit_w)
    if limited:  # site_over ≥ net − import and ≥ −export − net
        over = builder.columns(np.full(t, pen.site_limit_per_kwh * h / 1000.0), 0.0, _INF)
        imp = builder.rows(np.full(t, -_INF), np.full(t, site.import_limit_w) - fixed)
        exp = builder.rows(-site.export_limit_w - fixed, np.full(t, _INF))
        for r, sign in ((imp, -1.0), (exp, 1.0)):
            builder.entries(r[steps], np.arange(cols), np.ones(cols))
            builder.entries(r, over, np.full(t, sign))
    if inputs.updr is not None:  # dr_up ≤ net − baseline in the window; each W of it earns the price and the penalty
        dr = inputs.updr
        window = np.flatnonzero(np.asarray(dr.window[:t], dtype=bool))
        reward = -(dr.price_per_kwh + pen.dr_short_per_kwh) * h / 1000.0
        up = builder.columns(np.full(len(window), reward), 0.0, np.full(len(window), dr.requested_w))
        r = builder.rows(np.full(len(window), -_INF), fixed[window] - np.asarray(dr.baseline_w[:t])[window])
        row_of_step = np.full(t, -1)
        row_of_step[window] = r
        inside = row_of_step[steps] >= 0
        builder.entries(row_of_step[steps[inside]], np.flatnonzero(inside), -np.ones(int(inside.sum())))
        builder.entries(r, up, np.ones(len(window)))
    solution = builder.solve(time_limit_s)
    power = np.zeros((n, t))
    power[rows_i, steps] = np.clip(solution[:cols], lower, upper)
    return power


class _Lp:
    """An LP assembled as column/row blocks and (row, column, value) triplets, solved once by HiGHS."""

    def __init__(self, cols: int, cost: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        self.cost = [np.asarray(cost, dtype=float)]
        self.col_lower = [np.asarray(lower, dtype=float)]
        self.col_upper = [np.asarray(upper, dtype=float)]
        self.n_cols = cols
        self.row_lower: list[np.ndarray] = []
        self.row_upper: list[np.ndarray] = []
        self.n_rows = 0
        self.triplets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def columns(self, cost: np.ndarray, lower: float | np.ndarray, upper: float | np.ndarray) -> np.ndarray:
        k = len(cost)
        self.cost.append(np.asarray(cost, dtype=float))
        self.col_lower.append(np.broadcast_to(np.asarray(lower, dtype=float), (k,)))
        self.col_upper.append(np.broadcast_to(np.asarray(upper, dtype=float), (k,)))
        self.n_cols += k
        return np.arange(self.n_cols - k, self.n_cols)

    def rows(self, lower: float | np.ndarray, upper: float | np.ndarray) -> np.ndarray:
        lower = np.atleast_1d(np.asarray(lower, dtype=float))
        upper = np.atleast_1d(np.asarray(upper, dtype=float))
        k = max(len(lower), len(upper))
        self.row_lower.append(np.broadcast_to(lower, (k,)))
        self.row_upper.append(np.broadcast_to(upper, (k,)))
        self.n_rows += k
        return np.arange(self.n_rows - k, self.n_rows)

    def entries(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        self.triplets.append((np.asarray(rows), np.asarray(cols), np.asarray(values, dtype=float)))

    def solve(self, time_limit_s: float) -> np.ndarray:
        rows = np.concatenate([r for r, _, _ in self.triplets]).astype(np.int64)
        cols = np.concatenate([c for _, c, _ in self.triplets]).astype(np.int64)
        vals = np.concatenate([v for _, _, v in self.triplets])
        order = np.lexsort((rows, cols))
        start = np.searchsorted(cols[order], np.arange(self.n_cols + 1)).astype(np.int32)
        lp = highspy.HighsLp()
        lp.num_col_ = self.n_cols
        lp.num_row_ = self.n_rows
        lp.col_cost_ = np.concatenate(self.cost)
        lp.col_lower_ = np.concatenate(self.col_lower)
        lp.col_upper_ = np.concatenate(self.col_upper)
        lp.row_lower_ = np.concatenate(self.row_lower) if self.row_lower else np.zeros(0)
        lp.row_upper_ = np.concatenate(self.row_upper) if self.row_upper else np.zeros(0)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = start
        lp.a_matrix_.index_ = rows[order].astype(np.int32)
        lp.a_matrix_.value_ = vals[order]
        solver = highspy.Highs()
        solver.setOptionValue("output_flag", False)
        solver.setOptionValue("time_limit", float(time_limit_s))
        solver.passModel(lp)
        solver.run()
        status = solver.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            raise planner.PlanError(f"charge-only refinement: HiGHS status {solver.modelStatusToString(status)}")
        return np.asarray(solver.getSolution().col_value)


def charge_only_members(inputs: PlanInputs, members: Members, up_w: np.ndarray, down_w: np.ndarray) -> ChargeOnly:
    """The grouped EVs that cannot discharge, with the reserves the split gave them (up_w, down_w: (N, T) per asset)."""
    rows = np.flatnonzero((members.group >= 0) & (members.discharge_w <= 0))
    index = members.index[rows]
    plugged = members.plugged[rows]
    energy = members.energy[rows]
    check = members.check[rows]
    reachable = members.need_path[rows, check]  # the departure need, clipped to what the EV can reach
    need = np.maximum(reachable - energy, 0.0)
    wanted = members.floor[rows] + members.need_above[rows]
    tier1 = np.maximum(members.need_above[rows] * inputs.penalties.ev_tier1_fraction - (wanted - reachable), 0.0)
    charge = members.charge_w[rows]
    return ChargeOnly(
        index=index,
        plugged=plugged,
        energy=energy,
        room=np.maximum(members.ceiling[rows] - energy, 0.0),
        need=need,
        tier1=tier1,
        check=check,
        efficiency=members.efficiency[rows],
        calendar=np.array([inputs.assets[i].calendar_price_per_wh_h for i in index], dtype=float).reshape(-1),
        low_w=np.where(plugged, np.minimum(up_w[index], charge[:, None]), 0.0),
        high_w=np.where(plugged, np.clip(charge[:, None] - down_w[index], 0.0, charge[:, None]), 0.0),
    )


def refine(inputs: PlanInputs, members: Members, batteries: np.ndarray, split: Split, time_limit_s: float) -> list[str]:
    """Re-plan the charge-only EVs, then the `batteries` (rows of inputs.assets), in place in `split`.

    Returns what was done ("charge_only", "batteries"); a step whose solve fails leaves its assets as they were.
    """
    # One round: a second and third (charge-only, batteries again) changed nothing measurable at 100 and 1000 EVs
    # in bench/dispatch.py, and V2G members, which stay as split, are where the rest of the gap is.
    done: list[str] = []
    if _charge_only_step(inputs, members, split, time_limit_s):
        done.append("charge_only")
    if len(batteries) and not inputs.reserves and _battery_step(inputs, batteries, split, time_limit_s):
        done.append("batteries")
    return done


def _charge_only_step(inputs: PlanInputs, members: Members, split: Split, time_limit_s: float) -> bool:
    chosen = charge_only_members(inputs, members, split.up, split.down)
    if not len(chosen.index):
        return False
    others = np.ones(len(inputs.assets), dtype=bool)
    others[chosen.index] = False
    try:
        planned = charge_only_lp(inputs, chosen, split.power[others].sum(axis=0), time_limit_s)
    except planner.PlanError:
        return False
    split.power[chosen.index] = planned
    stored = np.cumsum(planned * chosen.efficiency[:, None] * inputs.step_h, axis=1)
    split.stored[chosen.index] = np.concatenate([chosen.energy[:, None], chosen.energy[:, None] + stored], axis=1)
    return True


def _battery_step(inputs: PlanInputs, batteries: np.ndarray, split: Split, time_limit_s: float) -> bool:
    rest = np.ones(len(inputs.assets), dtype=bool)
    rest[batteries] = False
    site = inputs.site
    t = inputs.steps
    loaded = dataclasses.replace(site, base_load_w=np.asarray(site.base_load_w[:t]) + split.power[rest].sum(axis=0))
    sub = dataclasses.replace(inputs, assets=[inputs.assets[i] for i in batteries], site=loaded)
    try:
        replanned = planner.solve(sub, time_limit_s)
    except planner.PlanError:
        return False
    split.power[batteries] = replanned.power_w
    split.stored[batteries] = replanned.energy_wh
    return True
