"""What each strategy decides at a step: PlanInputs built from the plant's state and what the strategy may know.

* `MpcPolicy` (aware / blind): re-plans every step over `horizon_s` from the measured SoC, SoH and the EVs plugged
  in now (their departure and target known, future arrivals not), with the day-ahead prices and up-DR events
  published so far (tomorrow's from 10:00 JST; beyond them a persistence forecast: the same time on the last
  published day, and no event).
  Aware prices wear (segment_prices from the pack's replacement cost, SoH-scaled, plus calendar ageing; the EV
  owner's price per kWh); blind is the same model with every wear price 0.
* `OraclePolicy`: perfect foresight as MPC: every step (`replan_steps`) one LP over the next `horizon_s` (48 h by
  default, twice the others') with the true prices, events and every EV session in it, future ones included (each
  session its own asset, so arrival SoC, dwell and target are known before the car comes), degradation-aware, from
  the measured state and with the plugged car's live (tapered) charge limit, like the MPC. It knows everything the
  MPC knows and more, and corrects itself as often, so it bounds what the MPC can reach. (Solved once a day and
  applied open loop, the "oracle" fell short of the MPC: its plans promised charging the BMS taper did not
  deliver.) One LP over a whole year is out of reach (one asset per session, ~35 k steps).
* `UncontrolledPolicy`: the no-VPP reference: batteries idle, EVs charge at full power from arrival.

The plan's storage window is the physics' untapered range (batteries 10-90 % SoC, EVs from their floor + 5 %):
inside it the BMS never cuts power, so a planned step is what the physics does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from agent.dispatch.aggregate import solve_aggregated
from agent.dispatch.degradation import calendar_price_per_wh_h, segment_prices, shallow_cycle_price
from agent.dispatch.evaluation.plant import Plant
from agent.dispatch.evaluation.scenario import BatterySpec, Scenario, persistence_forecast, published_until
from agent.dispatch.inputs import AssetPlan, Penalties, PlanInputs, Reserve, SiteForecast, UpDr
from agent.dispatch.planner import Plan, PlanError, solve
from sim_devices.battery import CHARGE_TAPER_START_SOC, DISCHARGE_TAPER_END_SOC
from sim_devices.ev_charger import DISCHARGE_TAPER_WIDTH
from sim_devices.scenarios import SessionSpec

# Up-DR here pays per kWh delivered above the baseline; a shortfall is not fined (the request is a cap), so the
# optimiser's own shortfall penalty is off and the objective matches the score.
PENALTIES = Penalties(dr_short_per_kwh=0.0)
ORACLE_SLOTS_PER_CHARGER = 3


@dataclass(frozen=True)
class Decision:
    """What a strategy sets for the next step: power per device (W, + charge) and the regulation capacity each
    device holds around it (W up = more discharge, W down = more charge)."""

    power_w: dict[str, float]
    reserve_up_w: dict[str, float] = field(default_factory=dict)
    reserve_down_w: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Wear:
    """How a strategy prices wear."""

    aware: bool
    segments: int = 4


def battery_asset(spec: BatterySpec, plant: Plant, steps: int, wear: Wear) -> AssetPlan:
    battery = plant.batteries[spec.id]
    usable = battery.usable_wh
    energy = battery.soc * usable
    if wear.aware:
        prices = segment_prices(spec.replacement_cost, spec.capacity_wh, battery.soh, spec.efficiency, wear.segments)
        calendar = calendar_price_per_wh_h(spec.replacement_cost, spec.capacity_wh)
        # regulation cycles: the signal's typical half cycle at full power, as a depth of the usable energy (the
        # deepest a band of this battery swings, so the cheapest per kWh: smaller bands cycle shallower and cost
        # more per kWh, which an LP cannot price by the reserved amount)
        depth = plant.scenario.regulation_swing_h * spec.power_w / max(usable, 1.0)
        activation = shallow_cycle_price(spec.replacement_cost, spec.capacity_wh, battery.soh, spec.efficiency, depth)
    else:
        prices, calendar, activation = np.zeros(1), 0.0, 0.0
    return AssetPlan(
        id=spec.id,
        energy_wh=energy,
        min_wh=min(DISCHARGE_TAPER_END_SOC * usable, energy),
        max_wh=max(CHARGE_TAPER_START_SOC * usable, energy),
        charge_w=spec.power_w,
        discharge_w=spec.power_w,
        efficiency=spec.efficiency,
        wear_prices=prices,
        calendar_price_per_wh_h=calendar,
        activation_wear_per_kwh=activation,
    )


def ev_asset(
    asset_id: str,
    session: SessionSpec,
    soc: float,
    plant: Plant,
    t0_s: float,
    steps: int,
    power_w: tuple[float, float],
    efficiency: float,
    wear_price: float,
) -> AssetPlan:
    """One EV session as a storage asset over the horizon starting at sim time `t0_s`.

    Only whole steps inside the session are available (a car arriving or leaving mid-step is not planned for
    that step), and the target is checked at the last step boundary before departure.
    """
    step_s = plant.scenario.step_s
    start = plant.scenario.start
    arrive = max((session.arrival - start).total_seconds(), t0_s)
    depart = (session.departure - start).total_seconds()
    first = math.ceil((arrive - t0_s) / step_s - 1e-9)
    target_step = math.floor((depart - t0_s) / step_s + 1e-9)
    k = np.arange(steps)
    available = (k >= first) & (k < target_step)
    capacity = session.capacity_wh
    energy = soc * capacity
    floor = min((session.min_soc + DISCHARGE_TAPER_WIDTH) * capacity, energy)
    has_target = target_step >= 1 and target_step > first
    return AssetPlan(
        id=asset_id,
        energy_wh=energy,
        min_wh=floor,
        max_wh=max(capacity, energy),
        charge_w=power_w[0],
        discharge_w=power_w[1],
        efficiency=efficiency,
        available=available,
        target_wh=session.target_soc * capacity if has_target else None,
        target_step=target_step if has_target else None,
        wear_prices=np.array([wear_price]),
        is_ev=True,
    )


def _regulation(scenario: Scenario, k: int, steps: int, foresight: bool) -> list[Reserve]:
    """The regulation product as the planner sees it from step k: capacity prices as published (persistence past
    them, like energy prices), nothing awarded in advance (the site offers what it likes each step), and the
    signal's mean up-activation."""
    if not scenario.offers_regulation:
        return []
    if foresight:
        price = scenario.window(scenario.regulation_price_per_kw_h, k, steps)
    else:
        per_day = round(86400 / scenario.step_s)
        price = persistence_forecast(
            scenario.regulation_price_per_kw_h, k, steps, published_until(scenario, k), per_day
        )
    zeros = np.zeros(steps)
    return [Reserve("RegD", price, price, zeros, zeros, activation_per_h=scenario.regulation_activation_per_h)]


def _site(scenario: Scenario, k: int, steps: int, foresight: bool = False) -> tuple[SiteForecast, UpDr]:
    """Forecasts from step k: prices and up-DR events as published at k (all of them with `foresight`), base load."""
    base = scenario.window(scenario.base_load_w, k, steps)
    if foresight:
        price = scenario.window(scenario.price_per_kwh, k, steps)
        window = scenario.window(scenario.updr_window, k, steps, fill=False)
    else:
        known = published_until(scenario, k)
        per_day = round(86400 / scenario.step_s)
        price = persistence_forecast(scenario.price_per_kwh, k, steps, known, per_day)
        window = scenario.window(scenario.updr_window, k, steps, fill=False) & (np.arange(k, k + steps) < known)
    site = SiteForecast(price_per_kwh=price, base_load_w=base, pv_w=np.zeros(steps))
    requested = scenario.window(scenario.updr_requested_w, k, steps)
    price = scenario.window(scenario.updr_price_per_kwh, k, steps)
    # UpDr carries one request and one price: take the nearest event's (the one being delivered or next)
    first = int(np.argmax(window)) if window.any() else 0
    return site, UpDr(window, base, float(requested[first]), float(price[first]))


class UncontrolledPolicy:
    name = "uncontrolled"
    solves = 0
    failures = 0

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario

    def decide(self, plant: Plant) -> Decision:
        return Decision({c.id: c.power_w for c in self.scenario.fleet.chargers})


class MpcPolicy:
    """Re-plan every step, apply the first step; on a solver failure keep following the last plan.

    `aggregated`: plan the EVs as virtual batteries (agent.dispatch.aggregate) as the running agent does past
    `aggregate_above_evs`, so its closed-loop value can be compared with the full per-EV MPC on the same physics.
    """

    def __init__(self, scenario: Scenario, wear: Wear, horizon_s: float = 86400.0, aggregated: bool = False) -> None:
        self.scenario = scenario
        self.wear = wear
        self.aggregated = aggregated
        self.name = "aggregated" if aggregated else "aware" if wear.aware else "blind"
        self.steps = round(horizon_s / scenario.step_s)
        self.solves = 0
        self.failures = 0
        self._last: tuple[Plan, int] | None = None
        self._sessions = _session_index(scenario)

    def inputs(self, plant: Plant) -> PlanInputs:
        sc, k = self.scenario, plant.k
        assets = [battery_asset(b, plant, self.steps, self.wear) for b in sc.fleet.batteries]
        for spec in sc.fleet.chargers:
            charger = plant.chargers[spec.id]
            if charger.session is None:
                continue
            session = self._sessions[spec.id, round(charger.session.departure_s)]
            live_charge, _ = charger.live_limits()  # tapered above 80 % SoC: the plan must not promise more
            asset = ev_asset(
                spec.id, session, charger.soc, plant, plant.t_s, self.steps,
                (min(spec.power_w, live_charge), spec.power_w), spec.efficiency,
                sc.fleet.ev_wear_price_per_kwh if self.wear.aware else 0.0,
            )
            assets.append(asset)
        site, updr = _site(sc, k, self.steps)
        reserves = _regulation(sc, k, self.steps, foresight=False)
        return PlanInputs(self.steps, sc.step_s, assets, site, updr=updr, reserves=reserves, penalties=PENALTIES)

    def decide(self, plant: Plant) -> Decision:
        try:
            plan = solve_aggregated(self.inputs(plant)) if self.aggregated else solve(self.inputs(plant))
            self.solves += 1
            self._last = (plan, plant.k)
            return _step_of(plan, 0)
        except PlanError:
            self.failures += 1
            if self._last is None:
                return Decision({})
            plan, at = self._last
            index = plant.k - at
            if index >= plan.power_w.shape[1]:
                return Decision({})
            return _step_of(plan, index)


class OraclePolicy:
    """Perfect foresight over `horizon_s`, re-planned every `replan_steps` from the measured state."""

    name = "oracle"

    def __init__(
        self, scenario: Scenario, wear: Wear | None = None, horizon_s: float = 2 * 86400.0, replan_steps: int = 1
    ) -> None:
        self.scenario = scenario
        self.wear = wear or Wear(aware=True)
        self.steps = round(horizon_s / scenario.step_s)
        self.replan_steps = replan_steps
        self.solves = 0
        self.failures = 0
        self.dropped_sessions = 0
        self._plan: Plan | None = None
        self._plan_k = 0
        self._slots: dict[str, list[str]] = {}

    def inputs(self, plant: Plant) -> PlanInputs:
        sc, k, t0 = self.scenario, plant.k, plant.t_s
        assets = [battery_asset(b, plant, self.steps, self.wear) for b in sc.fleet.batteries]
        horizon_end = t0 + self.steps * sc.step_s
        self._pending_slots: dict[str, list[str]] = {}
        for spec in sc.fleet.chargers:
            charger = plant.chargers[spec.id]
            sessions = [
                s for s in sc.sessions.get(spec.id, [])
                if (s.departure - sc.start).total_seconds() > t0
                and (s.arrival - sc.start).total_seconds() < horizon_end
            ]
            if len(sessions) > ORACLE_SLOTS_PER_CHARGER:
                self.dropped_sessions += len(sessions) - ORACLE_SLOTS_PER_CHARGER
                sessions = sessions[:ORACLE_SLOTS_PER_CHARGER]
            ids = []
            for n in range(ORACLE_SLOTS_PER_CHARGER):
                slot_id = f"{spec.id}#{n}"
                ids.append(slot_id)
                if n < len(sessions):
                    s = sessions[n]
                    plugged = charger.session is not None and (s.arrival - sc.start).total_seconds() <= t0
                    soc = charger.soc if plugged else s.arrival_soc
                    charge_w = min(spec.power_w, charger.live_limits()[0]) if plugged else spec.power_w
                    assets.append(ev_asset(
                        slot_id, s, soc, plant, t0, self.steps, (charge_w, spec.power_w), spec.efficiency,
                        sc.fleet.ev_wear_price_per_kwh if self.wear.aware else 0.0,
                    ))
                else:  # an empty slot keeps the problem's shape (and its compiled model) the same every day
                    assets.append(AssetPlan(
                        id=slot_id, energy_wh=0.0, min_wh=0.0, max_wh=0.0, charge_w=0.0, discharge_w=0.0,
                        available=np.zeros(self.steps, dtype=bool), wear_prices=np.zeros(1), is_ev=True,
                    ))
            self._pending_slots[spec.id] = ids
        site, updr = _site(sc, k, self.steps, foresight=True)
        reserves = _regulation(sc, k, self.steps, foresight=True)
        return PlanInputs(self.steps, sc.step_s, assets, site, updr=updr, reserves=reserves, penalties=PENALTIES)

    def decide(self, plant: Plant) -> Decision:
        if self._plan is None or plant.k - self._plan_k >= self.replan_steps:
            try:
                self._plan = solve(self.inputs(plant), time_limit_s=120.0)
                self._plan_k = plant.k
                self._slots = self._pending_slots
                self.solves += 1
            except PlanError:
                self.failures += 1
                if self._plan is None:
                    return Decision({})
        j = plant.k - self._plan_k
        plan = self._plan
        if j >= plan.power_w.shape[1]:
            return Decision({})
        index = {a: i for i, a in enumerate(plan.asset_ids)}
        rows = {b.id: [index[b.id]] for b in self.scenario.fleet.batteries}
        rows.update({charger_id: [index[s] for s in slots] for charger_id, slots in self._slots.items()})

        def per_device(values: np.ndarray) -> dict[str, float]:
            return {device: float(sum(values[r, j] for r in at)) for device, at in rows.items()}

        return Decision(per_device(plan.power_w), per_device(plan.reserve_up_w), per_device(plan.reserve_down_w))


def _step_of(plan: Plan, index: int) -> Decision:
    """Step `index` of a plan whose assets are the devices themselves (batteries and plugged-in chargers)."""
    ids = plan.asset_ids
    return Decision(
        {a: float(plan.power_w[i, index]) for i, a in enumerate(ids)},
        {a: float(plan.reserve_up_w[i, index]) for i, a in enumerate(ids)},
        {a: float(plan.reserve_down_w[i, index]) for i, a in enumerate(ids)},
    )


def _session_index(scenario: Scenario) -> dict[tuple[str, int], SessionSpec]:
    """Scenario sessions by (charger, departure second): how a plugged-in EV is matched to its owner's wishes."""
    return {
        (charger_id, round((s.departure - scenario.start).total_seconds())): s
        for charger_id, sessions in scenario.sessions.items()
        for s in sessions
    }
