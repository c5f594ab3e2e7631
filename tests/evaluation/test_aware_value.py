"""`aware-value`: the agent with wear priced by its opportunity cost, fed by what the plant did each step."""

from __future__ import annotations

import pytest

from evaluation.evaluate import STRATEGIES, EvalConfig, evaluate, run_policy, scenario_of
from evaluation.policies import AWARE_VALUE, make_policy, strategy_wear

CONFIG = EvalConfig(days=2, fleet="tiny", strategies=("aware", AWARE_VALUE), use_blast=False, step_s=3600)


def test_aware_value_is_aware_with_opportunity_pricing_and_not_a_default_strategy() -> None:
    scenario = scenario_of(CONFIG)
    aware, value = strategy_wear("aware", scenario), strategy_wear(AWARE_VALUE, scenario)
    assert aware is not None and value is not None
    for spec in scenario.fleet.batteries:
        assert value[spec.id].wear_pricing == "opportunity"
        assert value[spec.id].config_terms() == {**aware[spec.id].config_terms(), "wear_pricing": "opportunity"}
    assert AWARE_VALUE not in STRATEGIES


def test_the_books_basis_never_exceeds_the_replacement_cost() -> None:
    results = evaluate(CONFIG).results
    value, aware = results[AWARE_VALUE], results["aware"]
    assert value.solve_failures == 0 and value.solves == 48
    assert aware.wear_basis == {}
    costs = {b.id: b.replacement_cost for b in scenario_of(CONFIG).fleet.batteries}
    assert set(value.wear_basis) == set(costs)
    for pack, basis in value.wear_basis.items():
        assert basis <= costs[pack]  # a life is never priced above its replacement (wear_value.cost_basis)


def test_the_book_is_fed_the_packs_terminal_energy_every_step() -> None:
    scenario = scenario_of(CONFIG)
    policy = make_policy(AWARE_VALUE, scenario, CONFIG.horizon_h, CONFIG.full_info_horizon_h, CONFIG.wear_segments)
    assert policy.wear_book is not None  # type: ignore[union-attr]
    result = run_policy(scenario, policy, CONFIG)
    book = policy.wear_book  # type: ignore[union-attr]
    for spec in scenario.fleet.batteries:
        value = book.packs[spec.id].value
        assert len(value._history) == scenario.steps - 1  # every step but the last (settled before the next plan)
        end = scenario.steps * scenario.step_s + scenario.start.timestamp()
        assert value.history_life(end) > 0
        assert value.value_per_life(end) != pytest.approx(spec.replacement_cost, rel=0.01)  # it learnt from the plant
        assert value.cost_basis(end) == min(value.value_per_life(end), spec.replacement_cost)
    discharged = {b.id: b.discharged_kwh for b in result.batteries}
    assert all(kwh > 0 for kwh in discharged.values())
