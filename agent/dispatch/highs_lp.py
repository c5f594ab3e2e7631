"""An LP assembled from numpy blocks of columns, rows and (row, column, value) triplets, solved once by HiGHS.

Why not cvxpy: the refinement LPs of agent.dispatch.member_lp have one column per plugged-in (EV, step), so their
shape changes on every re-solve and cvxpy would compile each one anew (seconds at a thousand EVs); built as arrays
they cost milliseconds to assemble.
"""

from __future__ import annotations

from collections.abc import Mapping

import highspy
import numpy as np

from agent.dispatch.plan import PlanError

INF = highspy.kHighsInf


class ArrayLp:
    """Minimise cost·x subject to row_lower ≤ A·x ≤ row_upper and col_lower ≤ x ≤ col_upper."""

    def __init__(self, what: str) -> None:
        self.what = what  # names the LP in errors
        self.cost: list[np.ndarray] = []
        self.col_lower: list[np.ndarray] = []
        self.col_upper: list[np.ndarray] = []
        self.n_cols = 0
        self.row_lower: list[np.ndarray] = []
        self.row_upper: list[np.ndarray] = []
        self.n_rows = 0
        self.triplets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # per cost term (agent.dispatch.costs names), the columns it prices and its part of their cost
        self.terms: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def columns(
        self,
        cost: np.ndarray | Mapping[str, np.ndarray | float],
        lower: float | np.ndarray,
        upper: float | np.ndarray,
        size: int | None = None,
    ) -> np.ndarray:
        """Add columns (len(cost), or `size` with a scalar cost); returns their indices.

        `cost` may be given per term of the cost model ({"energy": ..., "wear_calendar": ...}): the column's cost is
        their sum, and `term_values` reports each term's part of a solution's objective (tests compare it with the
        other backends)."""
        parts = dict(cost) if isinstance(cost, Mapping) else None
        if parts is not None:
            k = size if size is not None else max(np.size(v) for v in parts.values())
            parts = {name: np.broadcast_to(np.asarray(v, dtype=float), (k,)) for name, v in parts.items()}
            cost = np.sum(list(parts.values()), axis=0) if parts else np.zeros(k)
        cost = np.atleast_1d(np.asarray(cost, dtype=float))
        if size is not None and cost.size == 1:
            cost = np.full(size, float(cost[0]))
        k = len(cost)
        cols = np.arange(self.n_cols, self.n_cols + k)
        for name, part in (parts or {}).items():
            self.terms.setdefault(name, []).append((cols, part))
        self.cost.append(cost)
        self.col_lower.append(np.broadcast_to(np.asarray(lower, dtype=float), (k,)))
        self.col_upper.append(np.broadcast_to(np.asarray(upper, dtype=float), (k,)))
        self.n_cols += k
        return cols

    def term_values(self, solution: np.ndarray) -> dict[str, float]:
        """Each tagged term's part of the objective at `solution` (costs positive, revenues negative)."""
        return {name: float(sum(np.dot(v, solution[c]) for c, v in parts)) for name, parts in self.terms.items()}

    def rows(self, lower: float | np.ndarray, upper: float | np.ndarray) -> np.ndarray:
        """Add rows (as many as the array bound has entries, none for an empty one; a scalar bound is shared by
        them); returns their indices."""
        lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        sizes = [b.size for b in (lower, upper) if b.ndim > 0]
        k = max(sizes) if sizes else 1
        self.row_lower.append(np.broadcast_to(lower, (k,)))
        self.row_upper.append(np.broadcast_to(upper, (k,)))
        self.n_rows += k
        return np.arange(self.n_rows - k, self.n_rows)

    def entries(self, rows: np.ndarray, cols: np.ndarray, values: float | np.ndarray) -> None:
        rows, cols = np.asarray(rows), np.asarray(cols)
        self.triplets.append((rows, cols, np.broadcast_to(np.asarray(values, dtype=float), rows.shape)))

    def solve(self, time_limit_s: float) -> np.ndarray:
        """Column values of the optimum; raises PlanError when HiGHS rejects the model or reports no optimum."""
        if self.n_cols == 0:
            raise PlanError(f"{self.what}: no columns")
        rows = np.concatenate([r for r, _, _ in self.triplets]).astype(np.int64) if self.triplets else np.zeros(0)
        cols = np.concatenate([c for _, c, _ in self.triplets]).astype(np.int64) if self.triplets else np.zeros(0)
        vals = np.concatenate([v for _, _, v in self.triplets]) if self.triplets else np.zeros(0)
        # column-major order: one integer key sorts ~3 times faster than lexsort on millions of entries
        order = np.argsort(cols * max(self.n_rows, 1) + rows)
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
        if solver.passModel(lp) != highspy.HighsStatus.kOk:  # e.g. a (row, column) entered twice
            raise PlanError(f"{self.what}: HiGHS rejected the model")
        solver.run()
        status = solver.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            raise PlanError(f"{self.what}: HiGHS status {solver.modelStatusToString(status)}")
        return np.asarray(solver.getSolution().col_value)
