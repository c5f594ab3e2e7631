"""The running agent's dispatcher plans large EV fleets through the aggregate, small ones with the full LP."""

from __future__ import annotations

import operator
from datetime import UTC, datetime

import pytest
from test_aggregate import fixed_fleet

from agent.config import parse_config
from agent.dispatch.runner import Dispatcher


def dispatcher(threshold: int) -> Dispatcher:
    config = parse_config(f"[control]\nmode = 'dispatch'\n[dispatch]\naggregate_above_evs = {threshold}\n")
    return Dispatcher(config, lambda: datetime(2026, 11, 20, tzinfo=UTC))


def test_past_the_threshold_the_plan_comes_from_the_aggregate_with_one_row_per_asset() -> None:
    inputs = fixed_fleet(30)
    small = dispatcher(threshold=100)
    full = small._solver(inputs)(inputs, 30.0)
    assert small.method == "full"
    large = dispatcher(threshold=10)
    plan = large._solver(inputs)(inputs, 30.0)
    assert large.method == "aggregated"
    assert plan.asset_ids == full.asset_ids == [a.id for a in inputs.assets]
    assert plan.power_w.shape == full.power_w.shape
    assert plan.net_cost >= full.net_cost - 1e-6  # the executed split is a feasible point of the full LP


async def test_a_crash_inside_the_optimiser_keeps_the_last_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception from a solve (a bug, not a PlanError) is logged and counted; the last plan stays."""
    from agent.dispatch import runner

    inputs = fixed_fleet(5)
    start = datetime(2026, 11, 20, tzinfo=UTC)
    monkeypatch.setattr(runner, "plan_inputs", lambda *args: (inputs, start))
    d = dispatcher(threshold=100)
    first = await d.replan(None, 0.0)  # type: ignore[arg-type]  # plan_inputs is replaced: the fleet is not read
    assert first is not None and d.plan is first

    # a solver function that raises inside the solver process (dividing the inputs by the budget: a TypeError)
    monkeypatch.setattr(d, "_solver", lambda _inputs: operator.truediv)
    assert await d.replan(None, 0.0) is None  # type: ignore[arg-type]
    assert d.failures == 1 and d.plan is first
    assert d.requests(start) is not None, "the last plan still covers its step"
