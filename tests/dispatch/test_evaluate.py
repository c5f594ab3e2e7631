"""The closed-loop evaluation harness: accounting closes, strategies rank as they must, the CLI prints the table.

Runs are 2 days of a tiny fleet (1 battery, 2 V2G chargers) at 30-min steps, shared by the tests of this module.
"""

from __future__ import annotations

import json

import pytest

from agent.cli import main
from agent.dispatch.evaluate import EvalConfig, StrategyResult, run_strategy
from agent.dispatch.evaluation.ledger import Ledger
from agent.dispatch.evaluation.plant import Plant, fast_substeps
from agent.dispatch.evaluation.scenario import Scenario, make_fleet, make_scenario

CONFIG = EvalConfig(days=2, seed=1, fleet="tiny", step_s=1800.0, use_blast=False)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return make_scenario(CONFIG.days, CONFIG.seed, make_fleet(CONFIG.fleet), step_s=CONFIG.step_s)


@pytest.fixture(scope="module")
def results(scenario: Scenario) -> dict[str, StrategyResult]:
    return {name: run_strategy(scenario, name, CONFIG) for name in ("uncontrolled", "aware", "blind", "oracle")}


def test_scenario_has_something_to_decide(scenario: Scenario) -> None:
    # the ranking tests below mean little without EVs, a curtailment day and a price spread
    assert sum(len(s) for s in scenario.sessions.values()) >= 1
    assert scenario.updr_window.any()
    assert scenario.price_per_kwh.max() - scenario.price_per_kwh.min() > 5.0


def test_site_energy_is_devices_plus_base_load(scenario: Scenario) -> None:
    plant = Plant(scenario)
    ledger = Ledger(scenario)
    setpoints = [{"bat-1": 40_000.0, "ev-1": 11_000.0, "ev-2": -11_000.0}, {"bat-1": -50_000.0}, {}]
    with fast_substeps():
        for k in range(scenario.steps):
            ledger.book(k, plant.step(setpoints[k % 3]), plant)
    devices = sum(ledger.device_wh.values())
    assert ledger.site_wh == pytest.approx(devices + ledger.base_wh, abs=1e-6)
    # and the simulator's own bus totals agree with what the harness booked
    assert devices == pytest.approx(plant.site.device_energy_wh, abs=1e-6)
    assert ledger.base_wh == pytest.approx(plant.site.base_load_energy_wh, abs=1e-6)


@pytest.mark.parametrize("name", ["uncontrolled", "aware", "blind", "oracle"])
def test_every_strategy_closes_its_energy_books(results: dict[str, StrategyResult], name: str) -> None:
    r = results[name]
    assert r.site_kwh == pytest.approx(sum(r.device_kwh.values()) + r.base_kwh, abs=1e-6)
    assert r.net_value == pytest.approx(
        r.energy_net + r.updr_revenue + r.regulation_revenue - r.battery_degradation - r.ev_wear_paid - r.ev_penalty
    )


def test_ranking_oracle_aware_blind(results: dict[str, StrategyResult]) -> None:
    # Two days of one pack: wear dominates, so pricing it must pay, and perfect foresight cannot do worse than a
    # day-ahead MPC by more than the gap between the optimiser's wear prices and the simulator's Xu model.
    gain = {name: r.net_value - results["uncontrolled"].net_value for name, r in results.items()}
    tolerance = 0.05 * abs(gain["oracle"]) + 50.0  # JPY
    assert gain["oracle"] >= gain["aware"] - tolerance
    assert gain["aware"] >= gain["blind"] - tolerance
    assert gain["aware"] > 0  # a VPP that loses money against doing nothing is a bug


def test_blind_cycles_at_least_as_much_as_aware(results: dict[str, StrategyResult]) -> None:
    assert results["blind"].battery_discharged_kwh >= results["aware"].battery_discharged_kwh - 1e-6
    assert results["blind"].mean_fade >= results["aware"].mean_fade


def test_cli_simulate_prints_the_table(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    code = main(["simulate", "--days", "1", "--fleet", "tiny", "--step-s", "3600", "--strategies", "aware",
                 "--no-blast", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "net value" in printed and "aware" in printed and "uncontrolled" in printed
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"uncontrolled", "aware"}


def test_cli_simulate_rejects_an_unknown_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--days", "1", "--fleet", "tiny", "--strategies", "psychic", "--no-blast"]) == 2
    assert "psychic" in capsys.readouterr().err
