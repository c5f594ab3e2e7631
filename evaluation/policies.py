"""The strategies: the agent configured differently, plus the no-VPP reference and a full-information MPC.

Every strategy but `uncontrolled` re-plans every step with the agent's planner (agent.dispatch.planner.solve, or
agent.dispatch.aggregate for `aggregated`) on inputs the agent's own build path makes from the measured fleet
(evaluation.agent_view), applies the first step, and every request passes the agent's SafetyEnvelope. They differ
only in how the batteries' wear is configured (AssetConfig terms) and, for `full-info-mpc`, in what is known:

* `uncontrolled`: no VPP (batteries idle, EVs charge at full power from arrival): the reference.
* `blind`: no wear price at all, EVs included.
* `const-<m>x`: one constant battery wear price, m x the EMHASS throughput price C / (2 N E) charged on charge and
  discharge alike, i.e. 2 m C / (2 N E) per kWh discharged (C replacement cost, N rated cycles, E capacity); EVs at
  their owner's price. m in CONST_MULTIPLIERS: 0.5x, 1x, 2x are what EMHASS users set; the hindsight-best constant is
  the best of the grid on the scored run (evaluation.evaluate.best_constant: tuned on the scorer).
* `aware`: the agent's degradation-aware wear with its defaults (replacement cost and the pack's chemistry ->
  agent.dispatch.wear_fits: cycle-depth segments, shallow-cycle price of activations and calendar, fitted to
  BLAST-Lite, SoH-scaled); EVs at their owner's price.
* `aware-blast`, `aware-xu`: as aware with the wear fitted to BLAST-Lite, or to Xu (AssetConfig.wear_source): the two
  differ only in the wear source.
* `aware-value`: as aware with wear priced by its opportunity cost (AssetConfig.wear_pricing = "opportunity",
  docs/wear.md): every step the agent's own book (agent.dispatch.wear_book) settles what each pack did in the step
  before (terminal energy x that step's price, plus its regulation band x the capacity price at a perfect score, and
  the cycling and calendar life it used by its fitted wear) and the pack's wear is priced at the value of a life it
  implies, at most the replacement cost and seeded from it. Not in the default strategies.
* `aware-<s>x` (e.g. `aware-4x`): as aware with each pack's life priced at s x its replacement cost (its config's
  `replacement_cost` scaled; the world's pack still costs 1x). An analysis, not a setting to ship: a sweep of s shows
  whether any one level of the fitted wear meets the goals in both scorer columns (chosen in hindsight it is tuned on
  the scorer, like the best constant). Not in the default strategies.
* `aggregated`: aware planned through virtual batteries (agent.dispatch.aggregate), as the agent does past
  `aggregate_above_evs`.
* `full-info-mpc`: as aware, but every step it knows every price, event and EV session 48 h ahead (future sessions
  as their own assets) and sees no forecast error. Not a bound: a finite-horizon MPC on the planner's own model.

"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import numpy as np

from agent.config import AssetConfig
from agent.dispatch.aggregate import solve_aggregated
from agent.dispatch.inputs import AssetPlan, PlanInputs
from agent.dispatch.planner import Plan, PlanError, solve
from agent.dispatch.wear_book import WearBook
from evaluation.agent_view import AgentView, AssetWear, Safe
from evaluation.ledger import regulation_payment
from evaluation.plant import Plant
from evaluation.scenario import BatterySpec, Scenario

CONST_PATTERN = re.compile(r"^const-(\d+(?:\.\d+)?)x$")
AWARE_SCALED = re.compile(r"^aware-(\d+(?:\.\d+)?)x$")  # aware with its packs' life priced at s x their cost
# the constant wear prices EMHASS users set (0.5x, 1x, 2x) and the grid the hindsight-best is chosen from
CONST_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
FULL_INFO = "full-info-mpc"
AWARE_VALUE = "aware-value"


@dataclass(frozen=True)
class Decision:
    """What a strategy asks for the next step: power per device (W, + charge) and the regulation capacity each
    device holds around it (W up = more discharge, W down = more charge), before the SafetyEnvelope."""

    power_w: dict[str, float]
    reserve_up_w: dict[str, float] = field(default_factory=dict)
    reserve_down_w: dict[str, float] = field(default_factory=dict)


def throughput_price(spec: BatterySpec) -> float:
    """EMHASS's throughput wear price C / (2 N E), currency per kWh charged or discharged (REFERENCE.md)."""
    return spec.replacement_cost / (2.0 * spec.rated_cycles * spec.capacity_wh / 1000.0)


def strategy_wear(name: str, scenario: Scenario) -> dict[str, AssetWear] | None:
    """The AssetConfig wear terms of strategy `name` per asset; None for `uncontrolled`. ValueError when unknown."""
    fleet = scenario.fleet
    owner = {c.id: AssetWear(wear_price_per_kwh=fleet.ev_wear_price_per_kwh) for c in fleet.chargers}
    if name == "uncontrolled":
        return None
    if name == "blind":
        return {}
    if name in ("aware", "aggregated", FULL_INFO):
        return {
            **owner,
            **{b.id: AssetWear(replacement_cost=b.replacement_cost, chemistry=b.chemistry) for b in fleet.batteries},
        }
    if name in ("aware-blast", "aware-xu"):
        source = name.removeprefix("aware-")
        if "wear_source" not in AssetConfig.model_fields:
            raise ValueError(
                f"strategy {name!r} needs the agent to take the wear source per pack (AssetConfig.wear_source, "
                f"fits per chemistry in agent.dispatch.wear_fits): not offered yet; run 'aware' (the agent's default "
                f"wear) meanwhile"
            )
        return {**owner, **{
            b.id: AssetWear(replacement_cost=b.replacement_cost, chemistry=b.chemistry, wear_source=source)
            for b in fleet.batteries
        }}  # fmt: skip
    if name == AWARE_VALUE:
        return {**owner, **{
            b.id: AssetWear(replacement_cost=b.replacement_cost, chemistry=b.chemistry, wear_pricing="opportunity")
            for b in fleet.batteries
        }}  # fmt: skip
    if match := AWARE_SCALED.match(name):
        scale = float(match.group(1))
        if scale <= 0:
            raise ValueError(f"strategy {name!r}: the scale of the packs' life cost must be > 0")
        return {
            **owner,
            **{
                b.id: AssetWear(replacement_cost=scale * b.replacement_cost, chemistry=b.chemistry)
                for b in fleet.batteries
            },
        }
    if match := CONST_PATTERN.match(name):
        m = float(match.group(1))
        # per kWh discharged: EMHASS charges the price on both directions of the cycle
        return {**owner, **{b.id: AssetWear(wear_price_per_kwh=2.0 * m * throughput_price(b)) for b in fleet.batteries}}
    raise ValueError(
        f"unknown strategy {name!r}; known: uncontrolled, blind, aware, aware-xu, aware-blast, {AWARE_VALUE}, "
        f"aggregated, {FULL_INFO}, const-<m>x (e.g. const-1x), aware-<s>x (e.g. aware-4x)"
    )


class UncontrolledPolicy:
    """No VPP: batteries idle, EVs charge at their full power from arrival (through the envelope like the rest)."""

    name = "uncontrolled"
    solves = 0
    failures = 0

    def __init__(self, scenario: Scenario, view: AgentView) -> None:
        self.scenario = scenario
        self.view = view

    def decide(self, plant: Plant) -> Safe:
        plugged = [c for c in self.scenario.fleet.chargers if plant.chargers[c.id].session is not None]
        return self.view.safe(plant, {c.id: c.power_w for c in plugged})


class MpcPolicy:
    """The agent's MPC: re-plan every step from the measured fleet, apply step 0; on a solver failure keep
    following the last plan (as the dispatcher does). `price_noise`: relative error on the prices it sees."""

    def __init__(
        self,
        name: str,
        scenario: Scenario,
        view: AgentView,
        aggregated: bool = False,
        foresight: bool = False,
        price_error: float = 0.0,
        seed: int = 0,
        wear_book: WearBook | None = None,
    ) -> None:
        self.name = name
        self.scenario = scenario
        self.view = view
        self.aggregated = aggregated
        self.foresight = foresight
        self.price_error = price_error
        self.rng = np.random.default_rng(seed)
        self.solves = 0
        self.failures = 0
        self._last: tuple[Plan, int] | None = None
        # opportunity-priced packs (aware-value): the agent's book, fed from what the plant did each step
        self.wear_book = wear_book
        self.wear_basis: dict[str, float] = {}  # the basis of the last plan, per pack
        self._settled: tuple[int, dict[str, tuple[float, float]], Safe] | None = None

    def inputs(self, plant: Plant) -> PlanInputs:
        noise = None
        if self.price_error > 0:
            noise = self.rng.normal(0.0, self.price_error, self.view.steps)
        basis = None
        if self.wear_book is not None:
            basis = self.wear_basis = self.wear_book.basis(self.view.now(plant).timestamp())
        inputs = self.view.inputs(plant, self.foresight, noise, wear_basis=basis)
        if self.foresight:
            inputs = _with_future_sessions(inputs, self.scenario, plant)
        return inputs

    def decide(self, plant: Plant) -> Safe:
        if self.wear_book is not None:
            self._settle_wear(plant)
        safe = self.view.safe(plant, *self._request(plant))
        if self.wear_book is not None:
            counters = {i: (d.import_wh, d.export_wh) for i, d in plant.devices.items()}
            self._settled = (plant.k, counters, safe)
        return safe

    def _settle_wear(self, plant: Plant) -> None:
        """Feed the book what each opportunity-priced pack did in the step just run: its terminal energy (the
        device's own counters) at that step's price, its regulation band at the capacity price (the hour's
        performance score is the site's, not the pack's: counted at a perfect score), and its SoC at the step's
        start and end for its calendar life (the start's: the view's reading from the last decide, taken before
        this step's observe replaces it)."""
        assert self.wear_book is not None
        if self._settled is None or self._settled[0] != plant.k - 1:
            return
        k, before, safe = self._settled
        sc = self.scenario
        end_s = self.view.now(plant).timestamp()
        start_soc = {
            i: s.measurement.soc
            for i, s in self.view.fleet.assets.items()
            if s.measurement is not None and abs(s.measurement.at.timestamp() - (end_s - sc.step_s)) < 1.0  # read then
        }
        self.view.observe(plant)
        capacity_price = float(sc.regulation_price_per_kw_h[k]) if sc.offers_regulation else 0.0
        for asset_id, state in self.view.fleet.assets.items():
            if not WearBook.applies(state):
                continue
            device = plant.devices[asset_id]
            imported0, exported0 = before[asset_id]
            up, down = safe.reserve_up_w.get(asset_id, 0.0), safe.reserve_down_w.get(asset_id, 0.0)
            self.wear_book.settle(
                state, end_s - sc.step_s, end_s, exported_wh=device.export_wh - exported0,
                imported_wh=device.import_wh - imported0, price_per_kwh=float(sc.price_per_kwh[k]),
                reserve_revenue=regulation_payment(up, down, sc.step_h, capacity_price),
                soc_start=start_soc.get(asset_id), soc_end=state.measurement.soc if state.measurement else None,
            )  # fmt: skip

    def _request(self, plant: Plant) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        try:
            inputs = self.inputs(plant)
            plan = solve_aggregated(inputs) if self.aggregated else solve(inputs)
            self.solves += 1
            self._last = (plan, plant.k)
            return _step_of(plan, 0, plant)
        except PlanError:
            self.failures += 1
            if self._last is None:
                return {}, {}, {}
            plan, at = self._last
            index = plant.k - at
            if index >= plan.power_w.shape[1]:
                return {}, {}, {}
            return _step_of(plan, index, plant)


def make_policy(
    name: str, scenario: Scenario, horizon_h: float, full_info_horizon_h: float, wear_segments: int,
    price_error: float = 0.0, seed: int = 0,
) -> UncontrolledPolicy | MpcPolicy:  # fmt: skip
    """The policy of strategy `name` (ValueError naming the known ones when unknown)."""
    wear = strategy_wear(name, scenario)
    horizon = full_info_horizon_h if name == FULL_INFO else horizon_h
    view = AgentView(scenario, wear or {}, horizon * 3600.0, wear_segments)
    if wear is None:
        return UncontrolledPolicy(scenario, view)
    error = price_error if name != FULL_INFO else 0.0
    opportunity = any(w.wear_pricing == "opportunity" for w in wear.values())
    book = WearBook(scenario.step_s) if opportunity else None
    return MpcPolicy(name, scenario, view, aggregated=name == "aggregated", foresight=name == FULL_INFO,
                     price_error=error, seed=seed, wear_book=book)  # fmt: skip


def _step_of(plan: Plan, index: int, plant: Plant) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Step `index` of a plan for the plant's devices (rows of other assets, such as future sessions, are skipped)."""
    rows = [(i, a) for i, a in enumerate(plan.asset_ids) if a in plant.devices]
    setpoints = plan.setpoints_w(index)
    return (
        {a: setpoints[a] for _, a in rows},
        {a: float(plan.reserve_up_w[i, index]) for i, a in rows},
        {a: float(plan.reserve_down_w[i, index]) for i, a in rows},
    )


def _with_future_sessions(inputs: PlanInputs, scenario: Scenario, plant: Plant) -> PlanInputs:
    """The full-information MPC also plans every EV session that arrives inside its horizon, each its own asset
    (arrival SoC, dwell and target known before the car comes), on the EV's owner price."""
    t0 = plant.t_s
    step_s = scenario.step_s
    steps = inputs.steps
    horizon_end = t0 + steps * step_s
    extra = []
    for spec in scenario.fleet.chargers:
        for n, s in enumerate(scenario.sessions.get(spec.id, [])):
            arrive = (s.arrival - scenario.start).total_seconds()
            depart = (s.departure - scenario.start).total_seconds()
            if not t0 < arrive < horizon_end:
                continue
            first = math.ceil((arrive - t0) / step_s - 1e-9)
            target_step = max(first + 1, math.ceil((depart - t0) / step_s - 1e-9))
            available = (np.arange(steps) >= first) & (np.arange(steps) < target_step)
            capacity = s.capacity_wh
            energy = s.arrival_soc * capacity
            extra.append(AssetPlan(
                id=f"{spec.id}@{n}", energy_wh=energy, min_wh=min(s.min_soc * capacity, energy), max_wh=capacity,
                charge_w=spec.power_w, discharge_w=spec.power_w, efficiency=spec.efficiency, available=available,
                target_wh=s.target_soc * capacity if target_step <= steps else None,
                target_step=target_step if target_step <= steps else None,
                wear_prices=np.array([scenario.fleet.ev_wear_price_per_kwh]), is_ev=True,
            ))  # fmt: skip
    if not extra:
        return inputs
    return dataclasses.replace(inputs, assets=[*inputs.assets, *extra])
