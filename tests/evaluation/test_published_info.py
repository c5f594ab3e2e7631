"""What the agent may know in the evaluation: day-ahead prices and up-DR events only once published; the
full-information MPC sees all of them."""

from __future__ import annotations

import numpy as np

from evaluation.agent_view import AgentView
from evaluation.plant import Plant
from evaluation.scenario import make_fleet, make_scenario, persistence_forecast, published_until


def test_tomorrow_is_published_at_10_jst_and_forecast_by_persistence_before() -> None:
    scenario = make_scenario(4, 1, make_fleet("tiny"), step_s=1800)  # starts at midnight JST
    assert published_until(scenario, 0) == 48  # 00:00: today only
    assert published_until(scenario, 19) == 48  # 09:30
    assert published_until(scenario, 20) == 96  # 10:00: tomorrow's auction results are out
    series = np.arange(200, dtype=float)
    forecast = persistence_forecast(series, 40, 24, known_until=48, per_day=48)
    assert list(forecast[:8]) == list(series[40:48])  # published: exact
    assert list(forecast[8:]) == list(series[0:16])  # tomorrow 00:00 onward: today's values at the same time


def test_the_agent_sees_forecast_prices_and_no_unpublished_event_while_full_information_sees_all() -> None:
    scenario = make_scenario(30, 1, make_fleet("tiny"), step_s=1800)
    event_steps = np.flatnonzero(scenario.updr_window)
    assert event_steps.size, "seed 1 has curtailment days with up-DR events in 30 days"
    first = int(event_steps[0])
    plant = Plant(scenario)
    plant.k = (first // 48 - 1) * 48 + 2  # 01:00 the day before the event: not announced yet
    plant.site.t_s = plant.k * scenario.step_s  # where the clock would be (nothing is stepped here)
    view = AgentView(scenario, {}, 2 * 86400.0)
    informed, all_known = view.inputs(plant), view.inputs(plant, foresight=True)
    assert informed.updr is None and all_known.updr is not None and all_known.updr.window.any()
    assert np.array_equal(informed.site.price_per_kwh[:46], all_known.site.price_per_kwh[:46])
    assert not np.array_equal(informed.site.price_per_kwh, all_known.site.price_per_kwh)
    assert np.allclose(all_known.site.price_per_kwh, scenario.price_per_kwh[plant.k : plant.k + 96], atol=1e-4)
