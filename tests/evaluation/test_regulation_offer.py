"""The evaluation sends regulation to the agent as an `as_offer` signal (evaluation.agent_view), and the agent's own
build turns it into exactly the Reserve the evaluation used to append by hand: the capacity prices as published,
the same persistence forecast beyond, nothing awarded, the signal's mean activation. Equal inputs at every step
(with and without foresight) are equal figures; the offer is also one the running agent's ingest would accept."""

from __future__ import annotations

import numpy as np
import pytest

from agent.signals.models import AsOffer, parse_signal
from evaluation.agent_view import AgentView
from evaluation.plant import Plant, fast_substeps
from evaluation.scenario import Scenario, make_fleet, make_scenario, persistence_forecast, published_until


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return make_scenario(2, 1, make_fleet("tiny"), step_s=3600.0)


def test_the_agent_plans_regulation_from_the_offer_as_the_evaluation_did_by_hand(scenario: Scenario) -> None:
    assert scenario.offers_regulation
    view = AgentView(scenario, {}, 86400.0)
    plant = Plant(scenario)
    steps, per_day = view.steps, round(86400 / scenario.step_s)
    with fast_substeps():
        for k in range(scenario.steps):
            for foresight in (False, True):
                known = scenario.steps + steps if foresight else published_until(scenario, k)
                # the rule agent_view applied before the offer existed, written out again here
                price = persistence_forecast(scenario.regulation_price_per_kw_h, k, steps, known, per_day)
                (reserve,) = view.inputs(plant, foresight).reserves
                assert reserve.product == "RegD"
                assert np.array_equal(reserve.up_price_per_kw_h, price), (k, foresight)
                assert np.array_equal(reserve.down_price_per_kw_h, price), (k, foresight)
                assert not reserve.awarded_up_w.any() and not reserve.awarded_down_w.any()
                assert reserve.activation_per_h == scenario.regulation_activation_per_h
            plant.step({})


def test_the_offer_in_the_book_is_one_the_agent_would_accept(scenario: Scenario) -> None:
    view = AgentView(scenario, {}, 86400.0)
    (offer,) = view.book(Plant(scenario))["as_offer"].values()
    assert isinstance(offer, AsOffer)
    again = parse_signal("as_offer", offer.model_dump_json().encode())  # strict, as from the broker
    assert again == offer and len(offer.capacity_price_per_kw_h) == view.steps
