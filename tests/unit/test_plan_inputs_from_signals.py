"""The signal book as the planner sees it: which price applies to which step, up-DR windows and award reserves.

Expected values are written out by hand from the signals, so the vectorised lookup cannot share a mistake with them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from agent.config import AppConfig
from agent.dispatch.build import plan_inputs
from agent.fleet import Fleet
from agent.signals.models import AsAward, PriceSeries, UpDrEvent

NOW = datetime(2026, 12, 2, 0, 7, tzinfo=UTC)  # inside the step 00:00-00:15


def config() -> AppConfig:
    return AppConfig.model_validate({"dispatch": {"step_s": 900, "horizon_steps": 8, "default_price_per_kwh": 25.0}})


def test_newest_covering_price_wins_and_uncovered_steps_keep_the_default() -> None:
    start = datetime(2026, 12, 2, tzinfo=UTC)
    older = PriceSeries(id="p1", start=start, interval_s=1800, prices_per_kwh=[10, 11, 12])  # 00:00-01:30
    newer = PriceSeries(id="p2", start=start + timedelta(minutes=30), interval_s=900, prices_per_kwh=[7, 8])
    inputs, step_start = plan_inputs(Fleet({}), config(), NOW, {"prices": {"p1": older, "p2": newer}}, 0.0)
    assert step_start == start
    # steps: 00:00 00:15 | 00:30 00:45 (p2) | 01:00 01:15 (p1's third half hour) | 01:30 01:45 (default)
    assert inputs.site.price_per_kwh.tolist() == [10, 10, 7, 8, 12, 12, 25, 25]


def test_updr_window_and_award_reserves_cover_the_steps_they_overlap() -> None:
    start = datetime(2026, 12, 2, tzinfo=UTC)
    event = UpDrEvent(id="dr", start=start + timedelta(minutes=20), end=start + timedelta(minutes=50),
                      requested_increase_w=5_000, price_per_kwh=3)  # fmt: skip
    award = AsAward(id="a", product="S-RR", block_start=start + timedelta(hours=1),
                    block_end=start + timedelta(hours=2), up_w=4_000, down_w=1_000)  # fmt: skip
    inputs, _ = plan_inputs(Fleet({}), config(), NOW, {"up_dr": {"dr": event}, "as_award": {"a": award}}, 0.0)
    assert inputs.updr is not None
    assert inputs.updr.window.tolist() == [False, True, True, True, False, False, False, False]
    (reserve,) = inputs.reserves
    assert reserve.product == "S-RR"
    assert np.array_equal(reserve.awarded_up_w, [0, 0, 0, 0, 4_000, 4_000, 4_000, 4_000])
    assert np.array_equal(reserve.awarded_down_w, [0, 0, 0, 0, 1_000, 1_000, 1_000, 1_000])
