"""What the MPC may know in the evaluation: day-ahead prices and up-DR events only once published."""

from __future__ import annotations

import numpy as np

from agent.dispatch.evaluation.policies import _site
from agent.dispatch.evaluation.scenario import make_fleet, make_scenario, persistence_forecast, published_until


def test_tomorrow_is_published_at_10_jst_and_forecast_by_persistence_before() -> None:
    scenario = make_scenario(4, 1, make_fleet("tiny"), step_s=1800)  # starts at midnight JST
    assert published_until(scenario, 0) == 48  # 00:00: today only
    assert published_until(scenario, 19) == 48  # 09:30
    assert published_until(scenario, 20) == 96  # 10:00: tomorrow's auction results are out
    series = np.arange(200, dtype=float)
    forecast = persistence_forecast(series, 40, 24, known_until=48, per_day=48)
    assert list(forecast[:8]) == list(series[40:48])  # published: exact
    assert list(forecast[8:]) == list(series[0:16])  # tomorrow 00:00 onward: today's values at the same time


def test_the_mpc_sees_forecast_prices_and_no_unpublished_event_while_the_oracle_sees_all() -> None:
    scenario = make_scenario(30, 1, make_fleet("tiny"), step_s=1800)
    event_steps = np.flatnonzero(scenario.updr_window)
    assert event_steps.size, "seed 1 has curtailment days with up-DR events in 30 days"
    first = int(event_steps[0])
    k = (first // 48 - 1) * 48 + 2  # 01:00 the day before the event: not announced yet
    informed, updr = _site(scenario, k, 96)
    oracle, updr_all = _site(scenario, k, 96, foresight=True)
    assert not updr.window.any() and updr_all.window.any()
    assert np.array_equal(informed.price_per_kwh[:46], oracle.price_per_kwh[:46])
    assert not np.array_equal(informed.price_per_kwh, oracle.price_per_kwh)
