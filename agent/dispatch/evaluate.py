"""Closed-loop evaluation of dispatch strategies on the simulator's physics, faster than real time.

Model predictive control as the agent runs it, minus sockets and wall clock: at every step, plan from the
measured state, apply the first step's power to the physics (which clamps it to its own limits), advance the
physics by one step (devices holding a regulation reservation follow the RegD-like signal around their setpoint),
and book what it actually did (agent.dispatch.evaluation.ledger). Strategies: `aware`,
`blind`, `oracle` (agent.dispatch.evaluation.policies), always scored against the `uncontrolled` reference (no
VPP: batteries idle, EVs charge at once), whose value is what a VPP adds to.

Public API: `EvalConfig`, `evaluate(config) -> Evaluation`, `run_strategy(scenario, name) -> StrategyResult`,
`Evaluation.to_dict()`; the `vpp-agent simulate` command wraps them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

from agent.dispatch.evaluation import blast_score
from agent.dispatch.evaluation.ledger import BatteryOutcome, Ledger, battery_outcomes, soc_time_series
from agent.dispatch.evaluation.plant import Plant, fast_substeps
from agent.dispatch.evaluation.policies import MpcPolicy, OraclePolicy, UncontrolledPolicy, Wear
from agent.dispatch.evaluation.scenario import Scenario, make_fleet, make_scenario

STRATEGIES = ("aware", "blind", "oracle")
REFERENCE = "uncontrolled"

Progress = Callable[[str, int, int], None]  # (strategy, steps done, steps in all): called as a strategy advances


@dataclass(frozen=True)
class EvalConfig:
    days: int = 7
    seed: int = 1
    fleet: str = "small"
    strategies: tuple[str, ...] = STRATEGIES
    step_s: float = 900.0
    horizon_h: float = 24.0
    oracle_horizon_h: float = 48.0
    wear_segments: int = 4
    area: str = "Kyushu"
    jobs: int = 1  # strategies run in parallel processes (each strategy is single-threaded)
    use_blast: bool = True
    progress_days: int = 0  # a progress line on stderr every this many simulated days per strategy (0: none)
    regulation_median_per_kw_h: float = 1.5  # capacity price of the regulation product; 0: not offered


@dataclass(frozen=True)
class StrategyResult:
    name: str
    energy_net: float  # revenue from the devices' energy at the meter (negative: they bought more than sold)
    updr_revenue: float
    regulation_revenue: float  # capacity payments x hourly performance score
    battery_degradation: float  # replacement cost x life used (Xu damage / damage at 20 % fade), simulator model
    ev_wear_paid: float  # owners' wear price x V2G kWh
    ev_penalty: float
    net_value: float  # energy_net + updr_revenue + regulation_revenue - battery_degradation - ev_wear_paid - ev_penalty
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
    gain_over_uncontrolled: float | None = None

    @property
    def mean_fade(self) -> float:
        return sum(b.fade for b in self.batteries) / len(self.batteries) if self.batteries else 0.0

    @property
    def battery_discharged_kwh(self) -> float:
        return sum(b.discharged_kwh for b in self.batteries)


def _policy(name: str, scenario: Scenario, config: EvalConfig) -> UncontrolledPolicy | MpcPolicy | OraclePolicy:
    if name == REFERENCE:
        return UncontrolledPolicy(scenario)
    if name in ("aware", "blind"):
        return MpcPolicy(scenario, Wear(name == "aware", config.wear_segments), config.horizon_h * 3600.0)
    if name == "aggregated":
        return MpcPolicy(scenario, Wear(True, config.wear_segments), config.horizon_h * 3600.0, aggregated=True)
    if name == "oracle":
        return OraclePolicy(scenario, Wear(True, config.wear_segments), config.oracle_horizon_h * 3600.0)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join((*STRATEGIES, 'aggregated', REFERENCE))}")


def run_strategy(
    scenario: Scenario, name: str, config: EvalConfig | None = None, progress: Progress | None = None
) -> StrategyResult:
    """Run one strategy over the whole scenario in closed loop and score it; `progress` hears about every step."""
    config = config or EvalConfig()
    policy = _policy(name, scenario, config)
    plant = Plant(scenario)
    ledger = Ledger(scenario)
    started = time.perf_counter()
    per_day = round(86400 / scenario.step_s)
    with fast_substeps():
        for k in range(scenario.steps):
            decision = policy.decide(plant)
            record = plant.step(decision.power_w, decision.reserve_up_w, decision.reserve_down_w)
            ledger.book(k, record, plant)
            if progress is not None:
                progress(name, k + 1, scenario.steps)
            if config.progress_days and (k + 1) % (per_day * config.progress_days) == 0:
                _progress(name, (k + 1) // per_day, scenario.days, time.perf_counter() - started)
    ledger.settle()  # the last hour's regulation
    wall = time.perf_counter() - started
    outcomes = battery_outcomes(ledger, plant)
    if config.use_blast and blast_score.available():
        scored = []
        for b, spec in zip(outcomes, scenario.fleet.batteries, strict=True):
            t, soc = soc_time_series(ledger, b.id, spec.soc)
            fade = blast_score.blast_fade(t, soc, spec.temperature_c)
            scored.append(BatteryOutcome(**{**asdict(b), "blast_fade": fade}))
        outcomes = scored
    energy_net = -(ledger.energy_cost - ledger.base_cost)
    degradation = sum(b.degradation_cost for b in outcomes)
    net = (
        energy_net + ledger.updr_revenue + ledger.regulation_revenue - degradation - ledger.ev_wear_paid
        - ledger.ev_penalty
    )
    return StrategyResult(
        name=name,
        energy_net=energy_net,
        updr_revenue=ledger.updr_revenue,
        regulation_revenue=ledger.regulation_revenue,
        battery_degradation=degradation,
        ev_wear_paid=ledger.ev_wear_paid,
        ev_penalty=ledger.ev_penalty,
        net_value=net,
        ev_shortfall_kwh=ledger.ev_shortfall_kwh,
        updr_delivered_kwh=ledger.updr_delivered_kwh,
        updr_requested_kwh=ledger.updr_requested_kwh,
        batteries=outcomes,
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
    )


@dataclass(frozen=True)
class Goals:
    """The issue's targets, each with the measured figure (None when a needed strategy was not run)."""

    aware_share_of_oracle: float | None  # target >= 0.97
    aware_over_blind: float | None  # target >= 0.20 (relative gain in net value)
    fade_reduction_vs_blind: float | None  # target >= 0.30

    def met(self) -> dict[str, bool | None]:
        def check(value: float | None, target: float) -> bool | None:
            return None if value is None else value >= target

        return {
            "aware >= 97 % of oracle": check(self.aware_share_of_oracle, 0.97),
            "aware beats blind by >= 20 %": check(self.aware_over_blind, 0.20),
            ">= 30 % less fade than blind": check(self.fade_reduction_vs_blind, 0.30),
        }


@dataclass(frozen=True)
class Evaluation:
    config: EvalConfig
    results: dict[str, StrategyResult]
    blast: bool
    wall_s: float
    goals: Goals = field(default_factory=lambda: Goals(None, None, None))

    def to_dict(self) -> dict[str, object]:
        def result(r: StrategyResult) -> dict[str, object]:
            d = asdict(r)
            d["mean_fade"] = r.mean_fade
            d["battery_discharged_kwh"] = r.battery_discharged_kwh
            return d

        return {
            "config": asdict(self.config),
            "blast_lite": self.blast,
            "wall_s": self.wall_s,
            "results": {k: result(v) for k, v in self.results.items()},
            "goals": {**asdict(self.goals), "met": self.goals.met()},
        }


def _ratio(a: float, b: float) -> float | None:
    return a / b if abs(b) > 1e-9 else None


def goals_of(results: dict[str, StrategyResult]) -> Goals:
    """Net values are compared as gains over the uncontrolled reference (the raw net includes the EVs' charging
    bill, which no strategy can avoid, and can be negative)."""
    aware, blind, oracle = (results.get(n) for n in ("aware", "blind", "oracle"))
    share = over = fade = None
    if aware and oracle and aware.gain_over_uncontrolled is not None and oracle.gain_over_uncontrolled is not None:
        share = _ratio(aware.gain_over_uncontrolled, oracle.gain_over_uncontrolled)
    if aware and blind and aware.gain_over_uncontrolled is not None and blind.gain_over_uncontrolled is not None:
        base = abs(blind.gain_over_uncontrolled)
        over = _ratio(aware.gain_over_uncontrolled - blind.gain_over_uncontrolled, base)
    if aware and blind and blind.mean_fade > 0:
        fade = 1.0 - aware.mean_fade / blind.mean_fade
    return Goals(share, over, fade)


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


def evaluate(config: EvalConfig, progress: Progress | None = None) -> Evaluation:
    """Build the scenario, run the reference and every requested strategy on it, and score them. `progress` is
    called in this process (from a relay thread when strategies run in worker processes)."""
    started = time.perf_counter()
    scenario = make_scenario(
        config.days, config.seed, make_fleet(config.fleet), step_s=config.step_s, area=config.area,
        regulation_median_per_kw_h=config.regulation_median_per_kw_h,
    )
    names = [REFERENCE, *(n for n in config.strategies if n != REFERENCE)]
    for n in names:
        _policy(n, scenario, config)  # unknown names fail before any long run
    if config.jobs > 1:
        done = _run_in_workers(scenario, names, config, progress)
    else:
        done = [run_strategy(scenario, n, config, progress) for n in names]
    reference = done[0].net_value
    results = {r.name: _with_gain(r, reference) for r in done}
    return Evaluation(config, results, config.use_blast and blast_score.available(), time.perf_counter() - started,
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


def _with_gain(r: StrategyResult, reference: float) -> StrategyResult:
    return StrategyResult(**{**r.__dict__, "gain_over_uncontrolled": r.net_value - reference})
