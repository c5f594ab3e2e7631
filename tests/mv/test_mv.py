"""Baselines and performance scores on hand-made data."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from agent.events.mv.baseline import (
    BaselineError,
    delivered_increase,
    high_4_of_5,
    pre_event_average,
    same_day_adjustment,
)
from agent.events.mv.performance import score

EVENT_DAY = date(2026, 11, 20)  # a Friday
WINDOW = slice(16, 32)  # 08:00-16:00 in 30-min intervals


def history_with_levels(levels: dict[int, float]) -> dict[date, np.ndarray]:
    """Days back from the event day -> flat demand at the given level."""
    return {EVENT_DAY - timedelta(days=k): np.full(48, level) for k, level in levels.items()}


def test_high_4_of_5_drops_the_lowest_like_day_and_skips_weekends_and_events() -> None:
    # Thu 19 (1): 10, Wed 18 (2): 20, Tue 17 (3): event day, Mon 16 (4): 30, Sun/Sat (5,6): weekend,
    # Fri 13 (7): 40, Thu 12 (8): 5 (lowest of the five like-days: dropped)
    history = history_with_levels({1: 10, 2: 20, 3: 999, 4: 30, 5: 777, 6: 777, 7: 40, 8: 5})
    baseline = high_4_of_5(history, EVENT_DAY, WINDOW, excluded={EVENT_DAY - timedelta(days=3)})
    assert baseline == pytest.approx(np.full(48, (10 + 20 + 30 + 40) / 4))


def test_high_4_of_5_needs_five_like_days() -> None:
    with pytest.raises(BaselineError, match="found 2"):
        high_4_of_5(history_with_levels({1: 10, 2: 20}), EVENT_DAY, WINDOW)


def test_same_day_adjustment_and_delivered_increase() -> None:
    baseline = np.full(48, 10_000.0)
    actual = np.full(48, 12_000.0)  # the site runs 2 kW above its baseline today
    actual[WINDOW] = 30_000.0
    adjustment = same_day_adjustment(actual, baseline, event_start=16)
    assert adjustment == pytest.approx(2000)
    delivered = delivered_increase(actual, baseline + adjustment, WINDOW)
    assert delivered == pytest.approx(np.full(16, 18_000.0))
    assert pre_event_average(actual, 16) == pytest.approx(12_000)


def test_perfect_follower_scores_one_and_a_late_one_loses_delay_score() -> None:
    rng = np.random.default_rng(1)
    signal = np.convolve(rng.uniform(-1, 1, 400), np.ones(6) / 6, mode="same")
    perfect = score(signal, signal)
    assert perfect.composite == pytest.approx(1.0)
    late = score(signal, np.concatenate([np.zeros(3), signal[:-3]]))  # the same moves, 30 s late
    assert late.delay_s == 30 and late.delay == pytest.approx(0.9)
    assert late.accuracy > 0.99
    assert score(signal, np.zeros_like(signal)).composite < 0.75
