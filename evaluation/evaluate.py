"""Closed-loop evaluation of dispatch strategies on the simulator's physics, faster than real time.

The agent as it runs, minus sockets and wall clock: at every planning step each strategy builds its plan inputs
through the agent's own fleet -> inputs path (evaluation.agent_view), solves with the agent's planner, passes the
first step through the agent's SafetyEnvelope, and the physics (sim_devices' Battery, EVCharger and Site, advanced by
hand: the plant is its own manual clock) runs one step; devices holding a regulation band follow the RegD-like
signal around their setpoint. The ledger books what the physics did, never what the plan said, and every strategy
is scored by two degradation models valued by one rule (evaluation.scoring). All strategies run on one fixed world
(evaluation.scenario) and are compared by their gain over `uncontrolled` (no VPP).

Public API: `EvalConfig`, `evaluate(config) -> Evaluation`, `run_strategy(scenario, name, config) ->
StrategyResult`, `run_policy(scenario, policy, config)`, `Evaluation.to_dict()`; `vpp-agent simulate` wraps them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np

from evaluation import scoring
from evaluation.agent_view import AgentView, Safe
from evaluation.ledger import BatteryOutcome, Ledger, soc_time_series
from evaluation.plant import Plant, fast_substeps
from evaluation.policies import CONST_MULTIPLIERS, CONST_PATTERN, FULL_INFO, make_policy
from evaluation.scenario import Scenario, make_fleet, make_scenario

CONST_STRATEGIES = tuple(f"const-{m:g}x" for m in CONST_MULTIPLIERS)
STRATEGIES = ("blind", *CONST_STRATEGIES, "aware", FULL_INFO)
REFERENCE = "uncontrolled"

Progress = Callable[[str, int, int], None]  # (strategy, steps done, steps in all): called as a strategy advances


class Policy(Protocol):
    name: str
    solves: int
    failures: int
    view: AgentView

    def decide(self, plant: Plant) -> Safe: ...


@dataclass(frozen=True)
class EvalConfig:
    days: int = 7
    seed: int = 1
    fleet: str = "small"
    strategies: tuple[str, ...] = STRATEGIES
    step_s: float = 900.0
    horizon_h: float = 24.0
    full_info_horizon_h: float = 48.0
    wear_segments: int = 4
    area: str = "Kyushu"
    jobs: int = 1  # strategies run in parallel processes (each strategy is single-threaded)
    use_blast: bool = True
    progress_days: int = 0  # a progress line on stderr every this many simulated days per strategy (0: none)
    regulation_median_per_kw_h: float = 1.5  # capacity price of the regulation product; 0: not offered
    chemistry: str = "lfp"  # the packs' chemistry: BLAST-Lite's cell, and the rated cycles constant prices read
    replacement_cost_per_kwh: float = 30_000.0  # the packs' replacement cost (world, valuation and wear prices alike)
    price_error: float = 0.0  # relative std of the error on the energy prices the forecasting strategies see


@dataclass(frozen=True)
class StrategyResult:
    name: str
    energy_net: float  # revenue from the devices' energy at the meter (negative: they bought more than sold)
    updr_revenue: float
    regulation_revenue: float  # capacity payments x hourly performance score
    ev_wear_paid: float  # owners' wear price x V2G kWh
    ev_penalty: float
    cash: float  # energy_net + updr_revenue + regulation_revenue - ev_wear_paid - ev_penalty
    battery_degradation: dict[str, float]  # per scorer: fade valued by evaluation.scoring.fade_cost, all packs
    net_value: dict[str, float]  # per scorer: cash - battery_degradation
    fade: dict[str, float]  # per scorer: mean capacity fade of the packs
    ev_shortfall_kwh: float
    updr_delivered_kwh: float
    updr_requested_kwh: float
    batteries: list[BatteryOutcome]
    base_cost: float
    site_kwh: float
    base_kwh: float
    device_kwh: dict[str, float]
    ev_sessions_scored: int
    solves: int
    solve_failures: int
    wall_s: float
    regulation_reserved_kwh: float = 0.0  # kW·h held, up and down summed
    regulation_score: float | None = None  # payment-weighted mean performance score
    regulation_hours: int = 0
    regulation_failed_hours: int = 0  # hours scored below 0.75
    envelope_cuts: int = 0  # setpoints the SafetyEnvelope moved
    envelope_band_cuts: int = 0  # regulation bands it narrowed
    envelope_reasons: dict[str, int] = field(default_factory=dict)
    # per step: t_h (end of step), cash, net[scorer], soc[pack], fade[scorer][pack]
    series: dict[str, object] = field(default_factory=dict)
    gain_over_uncontrolled: dict[str, float] | None = None
    wear_basis: dict[str, float] = field(default_factory=dict)  # aware-value: per pack, the value of a life at the end

    @property
    def battery_discharged_kwh(self) -> float:
        return sum(b.discharged_kwh for b in self.batteries)


def run_strategy(
    scenario: Scenario, name: str, config: EvalConfig | None = None, progress: Progress | None = None
) -> StrategyResult:
    """Run one named strategy over the whole scenario in closed loop and score it."""
    config = config or EvalConfig()
    policy = make_policy(
        name, scenario, config.horizon_h, config.full_info_horizon_h, config.wear_segments, config.price_error,
        config.seed,
    )
    return run_policy(scenario, policy, config, progress)


def run_policy(
    scenario: Scenario, policy: Policy, config: EvalConfig | None = None, progress: Progress | None = None
) -> StrategyResult:
    """Run `policy` (whose requests pass its AgentView's SafetyEnvelope) in closed loop and score it; `progress`
    hears about every step."""
    config = config or EvalConfig()
    name = policy.name
    plant = Plant(scenario)
    ledger = Ledger(scenario)
    started = time.perf_counter()
    per_day = round(86400 / scenario.step_s)
    with fast_substeps():
        for k in range(scenario.steps):
            safe = policy.decide(plant)
            record = plant.step(safe.power_w, safe.reserve_up_w, safe.reserve_down_w)
            ledger.book(k, record, plant)
            if progress is not None:
                progress(name, k + 1, scenario.steps)
            if config.progress_days and (k + 1) % (per_day * config.progress_days) == 0:
                _progress(name, (k + 1) // per_day, scenario.days, time.perf_counter() - started)
    ledger.settle()  # the last hour's regulation
    ledger.cash_series[-1] = ledger.cash
    wall = time.perf_counter() - started
    batteries, fade_series = _score_batteries(ledger, plant, config.use_blast)
    scorers = list(batteries[0].fade) if batteries else ["xu"]
    degradation = {s: sum(b.degradation_cost[s] for b in batteries) for s in scorers}
    mean_fade = {s: float(np.mean([b.fade[s] for b in batteries])) if batteries else 0.0 for s in scorers}
    t_h = ((np.arange(scenario.steps) + 1) * scenario.step_h).tolist()
    cash = np.asarray(ledger.cash_series)
    costs = {spec.id: spec.replacement_cost for spec in scenario.fleet.batteries}
    net_series = {
        s: (cash - sum(scoring.fade_cost(costs[b], np.asarray(f)) for b, f in fade_series[s].items())).tolist()
        for s in scorers
    }
    log = policy.view.log
    return StrategyResult(
        name=name,
        energy_net=-(ledger.energy_cost - ledger.base_cost),
        updr_revenue=ledger.updr_revenue,
        regulation_revenue=ledger.regulation_revenue,
        ev_wear_paid=ledger.ev_wear_paid,
        ev_penalty=ledger.ev_penalty,
        cash=ledger.cash,
        battery_degradation=degradation,
        net_value={s: ledger.cash - degradation[s] for s in scorers},
        fade=mean_fade,
        ev_shortfall_kwh=ledger.ev_shortfall_kwh,
        updr_delivered_kwh=ledger.updr_delivered_kwh,
        updr_requested_kwh=ledger.updr_requested_kwh,
        batteries=batteries,
        base_cost=ledger.base_cost,
        site_kwh=ledger.site_wh / 1000.0,
        base_kwh=ledger.base_wh / 1000.0,
        device_kwh={k: v / 1000.0 for k, v in ledger.device_wh.items()},
        ev_sessions_scored=ledger.ev_sessions_scored,
        solves=policy.solves,
        solve_failures=policy.failures,
        wall_s=wall,
        regulation_reserved_kwh=ledger.regulation_reserved_kwh,
        regulation_score=ledger.regulation_score,
        regulation_hours=ledger.regulation_hours,
        regulation_failed_hours=ledger.regulation_failed_hours,
        envelope_cuts=log.cuts,
        envelope_band_cuts=log.band_cuts,
        envelope_reasons=dict(log.reasons),
        series={"t_h": t_h, "cash": cash.tolist(), "net": net_series,
                "soc": {b: list(v) for b, v in ledger.step_soc.items()}, "fade": fade_series},
        wear_basis=dict(getattr(policy, "wear_basis", {})),
    )


def _score_batteries(
    ledger: Ledger, plant: Plant, use_blast: bool
) -> tuple[list[BatteryOutcome], dict[str, dict[str, list[float]]]]:
    """Each pack's fade by every scorer that can run (Xu always; BLAST-Lite when installed and wanted), valued by
    the one rule, and the per-step fade series of each."""
    sc = ledger.scenario
    blast = use_blast and scoring.blast_available()
    step_t = (np.arange(sc.steps) + 1) * sc.step_s
    out: list[BatteryOutcome] = []
    series: dict[str, dict[str, list[float]]] = {"xu": {}, **({"blast": {}} if blast else {})}
    for spec in sc.fleet.batteries:
        battery = plant.batteries[spec.id]
        fade = {"xu": 1.0 - battery.soh}
        series["xu"][spec.id] = list(ledger.step_fade_xu.get(spec.id, []))
        if blast:
            t, soc = soc_time_series(ledger, spec.id, spec.soc)
            scored = scoring.blast_fade_series(t, soc, spec.temperature_c, spec.chemistry)
            assert scored is not None  # blast_available() said so
            fade["blast"] = float(scored[1][-1])
            series["blast"][spec.id] = np.interp(step_t, *scored).tolist()
        discharged = ledger.discharged_wh.get(spec.id, 0.0) / 1000.0
        out.append(BatteryOutcome(
            id=spec.id,
            fade=fade,
            degradation_cost={s: scoring.fade_cost(spec.replacement_cost, f) for s, f in fade.items()},
            discharged_kwh=discharged,
            equivalent_full_cycles=discharged * 1000.0 / spec.capacity_wh,
        ))  # fmt: skip
    return out, series


@dataclass(frozen=True)
class GoalRow:
    """The issue's targets for one aware strategy in one scorer column, each with its measured figure (None when a
    needed strategy did not run). `best_const` is the constant-price strategy chosen in hindsight on this scorer."""

    aware: str
    scorer: str
    over_blind: float | None  # target >= 0.20: relative gain over uncontrolled, aware vs blind
    best_const: str | None
    over_best_const: float | None  # target >= 0.03
    fade_reduction_vs_blind: float | None  # target >= 0.30

    def met(self) -> dict[str, bool | None]:
        def check(value: float | None, target: float) -> bool | None:
            return None if value is None else value >= target

        return {
            "beats blind by >= 20 %": check(self.over_blind, 0.20),
            "beats hindsight-best constant by >= 3 %": check(self.over_best_const, 0.03),
            ">= 30 % less fade than blind": check(self.fade_reduction_vs_blind, 0.30),
        }


def _relative(a: float, b: float) -> float | None:
    return (a - b) / abs(b) if abs(b) > 1e-9 else None


def best_constant(results: dict[str, StrategyResult], scorer: str) -> str | None:
    """The constant-price strategy with the highest net value on `scorer` (chosen in hindsight, on the scorer)."""
    consts = [r for n, r in results.items() if CONST_PATTERN.match(n) and scorer in r.net_value]
    return max(consts, key=lambda r: r.net_value[scorer]).name if consts else None


def goals_of(results: dict[str, StrategyResult]) -> list[GoalRow]:
    """Per aware strategy and scorer. Net values are compared as gains over the uncontrolled reference (the raw net
    includes the EVs' charging bill, which no strategy can avoid)."""
    rows = []
    blind = results.get("blind")
    for name, aware in results.items():
        if not name.startswith("aware") or aware.gain_over_uncontrolled is None:
            continue
        for scorer, gain in aware.gain_over_uncontrolled.items():
            over_blind = fade = over_best = None
            if blind is not None and blind.gain_over_uncontrolled is not None:
                over_blind = _relative(gain, blind.gain_over_uncontrolled[scorer])
                if blind.fade.get(scorer, 0.0) > 0:
                    fade = 1.0 - aware.fade[scorer] / blind.fade[scorer]
            best = best_constant(results, scorer)
            if best is not None and results[best].gain_over_uncontrolled is not None:
                over_best = _relative(gain, results[best].gain_over_uncontrolled[scorer])
            rows.append(GoalRow(name, scorer, over_blind, best, over_best, fade))
    return rows


@dataclass(frozen=True)
class Evaluation:
    config: EvalConfig
    results: dict[str, StrategyResult]
    blast: bool
    wall_s: float
    goals: list[GoalRow] = field(default_factory=list)

    @property
    def scorers(self) -> list[str]:
        first = next(iter(self.results.values()), None)
        return list(first.net_value) if first else []

    def to_dict(self) -> dict[str, object]:
        def result(r: StrategyResult) -> dict[str, object]:
            d = asdict(r)
            d["battery_discharged_kwh"] = r.battery_discharged_kwh
            return d

        return {
            "config": asdict(self.config),
            "blast_lite": self.blast,
            "scorers": self.scorers,
            "valuation": f"replacement cost x fade / {scoring.END_OF_LIFE_FADE:g}",
            "wall_s": self.wall_s,
            "results": {k: result(v) for k, v in self.results.items()},
            "hindsight_best_constant": {s: best_constant(self.results, s) for s in self.scorers},
            "goals": [{**asdict(g), "met": g.met()} for g in self.goals],
        }


def _progress(name: str, day: int, days: int, elapsed_s: float) -> None:
    """One line per milestone on stderr (workers share it): a year of MPC takes many minutes."""
    left = elapsed_s / day * (days - day)
    line = f"simulate: {name} day {day}/{days}, {elapsed_s:.0f} s so far, ~{left:.0f} s left"
    print(line, file=sys.stderr, flush=True)


class _Relay:
    """A worker's progress, sent to the parent through a queue about 200 times per strategy (not every step)."""

    def __init__(self, queue: object) -> None:
        self.queue = queue

    def __call__(self, name: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 200) == 0:
            self.queue.put((name, done, total))  # type: ignore[attr-defined]


def _run_named(args: tuple[Scenario, str, EvalConfig, Progress | None]) -> StrategyResult:
    return run_strategy(*args)


def scenario_of(config: EvalConfig) -> Scenario:
    """The one world of an evaluation: fixed by (days, seed, fleet, chemistry, costs, prices), whatever is compared."""
    fleet = make_fleet(config.fleet, config.replacement_cost_per_kwh, chemistry=config.chemistry)
    return make_scenario(
        config.days, config.seed, fleet, step_s=config.step_s, area=config.area,
        regulation_median_per_kw_h=config.regulation_median_per_kw_h,
    )


def evaluate(config: EvalConfig, progress: Progress | None = None) -> Evaluation:
    """Build the scenario, run the reference and every requested strategy on it, and score them. `progress` is
    called in this process (from a relay thread when strategies run in worker processes)."""
    started = time.perf_counter()
    if config.price_error < 0:
        raise ValueError(f"price_error must be >= 0, got {config.price_error}")
    scenario = scenario_of(config)
    names = list(dict.fromkeys([REFERENCE, *config.strategies]))
    for n in names:
        make_policy(n, scenario, config.horizon_h, config.full_info_horizon_h, config.wear_segments)  # fail early
    if config.jobs > 1:
        done = _run_in_workers(scenario, names, config, progress)
    else:
        done = [run_strategy(scenario, n, config, progress) for n in names]
    reference = done[0].net_value
    results = {r.name: _with_gain(r, reference) for r in done}
    return Evaluation(config, results, config.use_blast and scoring.blast_available(), time.perf_counter() - started,
                      goals_of(results))


def _run_in_workers(
    scenario: Scenario, names: list[str], config: EvalConfig, progress: Progress | None
) -> list[StrategyResult]:
    if progress is None:
        with ProcessPoolExecutor(max_workers=config.jobs) as pool:
            return list(pool.map(_run_named, [(scenario, n, config, None) for n in names]))
    import multiprocessing
    import threading

    with multiprocessing.Manager() as manager:
        queue = manager.Queue()

        def relay() -> None:
            while (item := queue.get()) is not None:
                progress(*item)

        thread = threading.Thread(target=relay, name="simulate-progress", daemon=True)
        thread.start()
        try:
            with ProcessPoolExecutor(max_workers=config.jobs) as pool:
                return list(pool.map(_run_named, [(scenario, n, config, _Relay(queue)) for n in names]))
        finally:
            queue.put(None)
            thread.join(timeout=5)


def _with_gain(r: StrategyResult, reference: dict[str, float]) -> StrategyResult:
    return replace(r, gain_over_uncontrolled={s: v - reference[s] for s, v in r.net_value.items()})
