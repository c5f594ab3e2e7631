"""The running agent's dispatcher plans large EV fleets through the aggregate, small ones with the full LP."""

from __future__ import annotations

from datetime import UTC, datetime

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
