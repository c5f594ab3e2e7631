"""The closed-loop evaluation: the agent's own path drives the physics, accounting closes, both scorers fill their
columns, the SafetyEnvelope cuts what it must, and the CLI prints, saves and plots.

Runs are 1-2 days of a tiny fleet (1 battery, 2 V2G chargers) at 30-min steps. BLAST-Lite is optional (the `eval`
extra): without it the BLAST column is absent and only the tests that need it skip, saying why.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from agent.cli import main
from evaluation import scoring
from evaluation.agent_view import AgentView, AssetWear
from evaluation.evaluate import STRATEGIES, EvalConfig, Evaluation, StrategyResult, evaluate, run_policy
from evaluation.ledger import Ledger
from evaluation.plant import Plant, fast_substeps
from evaluation.policies import Decision, throughput_price
from evaluation.report import results_table
from evaluation.scenario import Scenario, make_fleet, make_scenario

CONFIG = EvalConfig(days=2, seed=1, fleet="tiny", step_s=1800.0, strategies=("blind", "const-1x", "aware"))
needs_blast = pytest.mark.skipif(not scoring.blast_available(), reason="BLAST-Lite not installed (the eval extra)")


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return make_scenario(CONFIG.days, CONFIG.seed, make_fleet(CONFIG.fleet), step_s=CONFIG.step_s)


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    return evaluate(CONFIG)


def test_scenario_has_something_to_decide(scenario: Scenario) -> None:
    # the comparisons below mean little without EVs, a curtailment day and a price spread
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
    assert devices == pytest.approx(plant.site.device_energy_wh, abs=1e-6)
    assert ledger.base_wh == pytest.approx(plant.site.base_load_energy_wh, abs=1e-6)


@pytest.mark.parametrize("name", ["uncontrolled", *CONFIG.strategies])
def test_every_strategy_closes_its_books_in_every_scorer_column(evaluation: Evaluation, name: str) -> None:
    r = evaluation.results[name]
    assert r.site_kwh == pytest.approx(sum(r.device_kwh.values()) + r.base_kwh, abs=1e-6)
    assert r.cash == pytest.approx(r.energy_net + r.updr_revenue + r.regulation_revenue - r.ev_wear_paid - r.ev_penalty)
    assert set(r.net_value) == set(evaluation.scorers) and "xu" in r.net_value
    for s in evaluation.scorers:
        assert r.net_value[s] == pytest.approx(r.cash - r.battery_degradation[s])
        cost = sum(scoring.fade_cost(3_000_000.0, b.fade[s]) for b in r.batteries)
        assert r.battery_degradation[s] == pytest.approx(cost)  # one valuation rule for every scorer
        # the series the plots draw end where the table does
        assert r.series["net"][s][-1] == pytest.approx(r.net_value[s])
    assert len(r.series["t_h"]) == len(r.series["cash"]) == round(CONFIG.days * 48)


def test_the_table_has_a_column_per_scorer(evaluation: Evaluation) -> None:
    headers = [c.header for c in results_table(evaluation).columns]
    assert "net Xu" in headers and "gain Xu" in headers
    assert ("net BLAST" in headers) == scoring.blast_available()


@needs_blast
def test_blast_scores_every_strategy(evaluation: Evaluation) -> None:
    assert evaluation.scorers == ["xu", "blast"]
    for r in evaluation.results.values():
        assert all(0 < b.fade["blast"] < 0.05 for b in r.batteries)  # calendar ageing alone fades a little


def test_pricing_wear_cycles_less_than_blind(evaluation: Evaluation) -> None:
    blind, aware = evaluation.results["blind"], evaluation.results["aware"]
    assert blind.battery_discharged_kwh >= aware.battery_discharged_kwh - 1e-6
    assert blind.fade["xu"] >= aware.fade["xu"]


def test_the_goals_name_the_hindsight_best_constant_per_scorer(evaluation: Evaluation) -> None:
    rows = {(g.aware, g.scorer): g for g in evaluation.goals}
    assert set(rows) == {("aware", s) for s in evaluation.scorers}
    assert all(g.best_const == "const-1x" for g in rows.values())  # the only constant run here
    assert all(g.over_blind is not None and g.fade_reduction_vs_blind is not None for g in rows.values())


def test_each_strategy_runs() -> None:
    config = EvalConfig(days=1, seed=2, fleet="tiny", step_s=3600.0, use_blast=False, strategies=STRATEGIES)
    results = evaluate(config).results
    assert list(results) == ["uncontrolled", *STRATEGIES]
    assert all(r.solve_failures == 0 for r in results.values())
    assert all(r.solves == 24 for n, r in results.items() if n != "uncontrolled")


def test_constant_price_is_the_emhass_throughput_price_on_both_directions(scenario: Scenario) -> None:
    spec = scenario.fleet.batteries[0]
    assert throughput_price(spec) == pytest.approx(3_000_000 / (2 * 6000 * 100))  # JPY per kWh either way
    from evaluation.policies import strategy_wear

    wear = strategy_wear("const-2x", scenario)
    assert wear is not None and wear["bat-1"].wear_price_per_kwh == pytest.approx(2 * 2 * throughput_price(spec))


def test_aware_fitted_to_blast_or_xu_differ_only_in_the_wear_source(scenario: Scenario) -> None:
    from agent.config import AssetConfig
    from evaluation.policies import strategy_wear

    if "wear_source" not in AssetConfig.model_fields:  # the agent does not take the source yet: refused, not faked
        for name in ("aware-blast", "aware-xu"):
            with pytest.raises(ValueError, match="wear_source"):
                strategy_wear(name, scenario)
        return
    blast, xu = strategy_wear("aware-blast", scenario), strategy_wear("aware-xu", scenario)
    assert blast is not None and xu is not None
    assert blast["bat-1"].wear_source == "blast" and xu["bat-1"].wear_source == "xu"
    assert dataclasses.replace(blast["bat-1"], wear_source="xu") == xu["bat-1"]


def test_scaled_aware_prices_the_packs_life_at_a_multiple_of_their_cost_and_nothing_else(scenario: Scenario) -> None:
    from evaluation.policies import strategy_wear

    aware, scaled = strategy_wear("aware", scenario), strategy_wear("aware-4x", scenario)
    assert aware is not None and scaled is not None
    spec = scenario.fleet.batteries[0]
    assert scaled["bat-1"].replacement_cost == pytest.approx(4 * spec.replacement_cost)
    assert dataclasses.replace(scaled["bat-1"], replacement_cost=spec.replacement_cost) == aware["bat-1"]
    assert {k: v for k, v in scaled.items() if k != "bat-1" and k != "bat-2"} == {
        k: v for k, v in aware.items() if k != "bat-1" and k != "bat-2"
    }  # the EVs keep their owner's price
    with pytest.raises(ValueError, match="> 0"):
        strategy_wear("aware-0x", scenario)


class Reckless:
    """A strategy asking for what no device may do: 1 MW each way, a 1 MW regulation band, EVs drained."""

    name = "reckless"
    solves = failures = 0

    def __init__(self, scenario: Scenario) -> None:
        self.view = AgentView(scenario, {}, 86400.0)
        self.k = 0

    def decide(self, plant: Plant):  # type: ignore[no-untyped-def]
        self.k += 1
        sign = 1.0 if self.k % 2 else -1.0
        request = Decision({"bat-1": sign * 1e6, "ev-1": -1e6, "ev-2": -1e6}, {"bat-1": 1e6}, {"bat-1": 1e6})
        return self.view.safe(plant, request.power_w, request.reserve_up_w, request.reserve_down_w)


def test_a_strategy_beyond_the_envelope_is_cut_and_counted(scenario: Scenario) -> None:
    policy = Reckless(scenario)
    plant = Plant(scenario)
    with fast_substeps():
        for _ in range(scenario.steps):
            safe = policy.decide(plant)
            record = plant.step(safe.power_w, safe.reserve_up_w, safe.reserve_down_w)
            for d in record.departures:  # the envelope kept every car above its owner's minimum
                assert d.soc >= d.session.min_soc - 1e-3
    # what reached the devices stayed inside their nameplate: the simulator counts every write outside it
    assert all(d.writes_outside_nameplate == 0 for d in plant.devices.values())
    log = policy.view.log
    assert log.cuts >= scenario.steps and log.band_cuts >= scenario.steps
    assert log.reasons["nameplate charge limit"] + log.reasons["live charge limit"] > 0
    assert log.reasons["regulation band beyond bounds"] == log.band_cuts
    result = run_policy(scenario, Reckless(scenario), CONFIG)
    assert result.envelope_cuts >= scenario.steps and result.envelope_reasons


def test_the_agent_view_reads_the_devices_not_the_scenario(scenario: Scenario) -> None:
    view = AgentView(scenario, {"bat-1": AssetWear(replacement_cost=3_000_000.0)}, 86400.0)
    plant = Plant(scenario)
    inputs = view.inputs(plant)
    battery = next(a for a in inputs.assets if a.id == "bat-1")
    assert battery.energy_wh == pytest.approx(plant.batteries["bat-1"].soc * plant.batteries["bat-1"].usable_wh)
    assert len(battery.wear_prices) == 4 and battery.calendar_price_per_wh_h > 0  # the agent's degradation path
    assert [r.product for r in inputs.reserves] == ["RegD"]


def test_cli_simulate_prints_saves_the_series(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    code = main(["simulate", "--days", "1", "--fleet", "tiny", "--step-s", "3600", "--strategies", "aware",
                 "--no-blast", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "net Xu" in printed and "aware" in printed and "uncontrolled" in printed
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"uncontrolled", "aware"}
    series = data["results"]["aware"]["series"]
    assert len(series["t_h"]) == 24 and set(series["net"]) == {"xu"} and set(series["soc"]) == {"bat-1"}


def test_cli_simulate_plots(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the plot extra)")
    code = main(["simulate", "--days", "1", "--fleet", "tiny", "--step-s", "3600", "--strategies", "blind,aware",
                 "--no-blast", "--plot", str(tmp_path / "figs")])
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == sorted(f"{s}.{e}" for s in ("net_value", "soc", "fade") for e in ("png", "svg"))
    assert all((tmp_path / "figs" / n).stat().st_size > 1000 for n in names)


def test_cli_simulate_without_matplotlib_names_the_extra(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import fails
    assert main(["simulate", "--days", "1", "--fleet", "tiny", "--plot", "figs", "--no-blast"]) == 2
    assert "vpp-agent[plot]" in capsys.readouterr().err


def test_cli_simulate_rejects_an_unknown_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--days", "1", "--fleet", "tiny", "--strategies", "psychic", "--no-blast"]) == 2
    err = capsys.readouterr().err
    assert "psychic" in err and "full-info-mpc" in err


def test_results_keep_their_gain_per_scorer(evaluation: Evaluation) -> None:
    ref = evaluation.results["uncontrolled"]
    r: StrategyResult = evaluation.results["aware"]
    assert r.gain_over_uncontrolled is not None
    for s in evaluation.scorers:
        assert r.gain_over_uncontrolled[s] == pytest.approx(r.net_value[s] - ref.net_value[s])
