"""agent.dispatch.highs_lp.ArrayLp: a small LP with a known optimum, and the edge cases the refinement can hit."""

from __future__ import annotations

import numpy as np
import pytest

from agent.dispatch.highs_lp import INF, ArrayLp
from agent.dispatch.planner import PlanError


def test_a_two_column_lp_reaches_its_known_optimum() -> None:
    """min x + 2y with x + y ≥ 3, x ≤ 2: x = 2, y = 1."""
    lp = ArrayLp("test")
    cols = lp.columns(np.array([1.0, 2.0]), 0.0, np.array([2.0, INF]))
    row = lp.rows(3.0, INF)
    lp.entries(np.repeat(row, 2), cols, 1.0)
    assert lp.solve(10.0) == pytest.approx([2.0, 1.0])


def test_an_empty_row_block_adds_no_rows() -> None:
    lp = ArrayLp("test")
    lp.columns(np.ones(1), 0.0, 1.0)
    assert len(lp.rows(-INF, np.zeros(0))) == 0
    assert lp.n_rows == 0
    assert lp.solve(10.0) == pytest.approx([0.0])


def test_no_columns_or_a_rejected_model_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="no columns"):
        ArrayLp("empty").solve(1.0)
    lp = ArrayLp("twice")
    cols = lp.columns(np.ones(2), 0.0, 1.0)
    row = lp.rows(1.0, 2.0)
    lp.entries(row, cols[:1], 1.0)
    lp.entries(row, cols[:1], 1.0)  # the same (row, column) twice: HiGHS rejects the matrix
    with pytest.raises(PlanError, match="rejected"):
        lp.solve(1.0)


def test_an_infeasible_lp_is_a_plan_error() -> None:
    lp = ArrayLp("infeasible")
    cols = lp.columns(np.ones(1), 0.0, 1.0)
    lp.entries(lp.rows(2.0, INF), cols, 1.0)
    with pytest.raises(PlanError, match="infeasible"):
        lp.solve(1.0)
