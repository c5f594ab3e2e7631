"""What a strategy actually earned and cost, booked from what the physics did (never from what the plan said).

* Energy: the site meter's energy each step × that step's price (import pays, export earns at the same price, as
  the optimiser assumes). `energy_net` is the devices' share with the sign of a revenue (−Σ device Wh × price); the
  base load's own cost is the same for every strategy and kept apart.
* Up-DR: in event steps, the site's mean power above the baseline (the base-load forecast, which is exact here),
  capped at the request, × the event price. Shortfalls are reported, not fined.
* EV: at each departure, energy short of the owner's target; fined with the optimiser's tiered prices (the first
  10 % of the need at tier 1, the rest at tier 2) so the score and the objective agree. V2G discharge pays the
  owner's wear price per kWh (whatever the strategy assumed when planning).
* Regulation: each step's reservation (kW of up and of down) × that hour's capacity price, times the hour's
  PJM-style performance score (agent.events.mv.performance, on the signal's 10-s samples: what the devices did beyond
  their setpoints against signal × reservation, both over the larger side's reservation). Its energy is in the
  site meter's energy and its cycling in the simulator's fade, like everything else the devices did.
* Batteries: not valued here. The ledger keeps each pack's SoC path (for BLAST-Lite) and the simulator's Xu fade at
  every step; evaluation.scoring turns fade into money, one rule for both scorers.
* Time series (per step, for `--out` and the plots): the cumulative cash above (energy, up-DR, regulation settled so
  far, less EV wear and penalties), each pack's SoC and its Xu fade.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.dispatch.inputs import Penalties
from agent.events.mv.performance import score
from evaluation.plant import Plant, RegulationRecord, StepRecord
from evaluation.scenario import Scenario
from sim_devices.scenarios import turning_points

PENALTIES = Penalties()  # the EV shortfall tiers the agent plans with: the score fines a shortfall alike
PASS_SCORE = 0.75  # PJM's qualification threshold (REFERENCE.md); below it an hour counts as failed


@dataclass
class Ledger:
    scenario: Scenario
    energy_cost: float = 0.0  # site meter × price, base load included
    base_cost: float = 0.0
    updr_revenue: float = 0.0
    updr_delivered_kwh: float = 0.0
    updr_requested_kwh: float = 0.0
    ev_wear_paid: float = 0.0
    ev_shortfall_kwh: float = 0.0
    ev_penalty: float = 0.0
    ev_sessions_scored: int = 0
    site_wh: float = 0.0
    base_wh: float = 0.0
    device_wh: dict[str, float] = field(default_factory=dict)
    discharged_wh: dict[str, float] = field(default_factory=dict)
    # battery SoC over time for BLAST-Lite: step boundaries, plus the turning points inside regulating steps
    soc_series: dict[str, list[float]] = field(default_factory=dict)
    soc_times: dict[str, list[float]] = field(default_factory=dict)
    regulation_revenue: float = 0.0  # capacity payments x performance score
    regulation_capacity_value: float = 0.0  # the same payments at a perfect score
    regulation_reserved_kwh: float = 0.0  # kW·h reserved, up and down summed
    regulation_hours: int = 0
    regulation_failed_hours: int = 0  # scored below PASS_SCORE
    _hour: int = -1
    _hour_payment: float = 0.0
    _hour_capacity: float = 0.0
    _hour_signal: list[np.ndarray] = field(default_factory=list)
    _hour_response: list[np.ndarray] = field(default_factory=list)
    # per step (end of step k): cumulative cash, and per pack SoC and Xu fade
    cash_series: list[float] = field(default_factory=list)
    step_soc: dict[str, list[float]] = field(default_factory=dict)
    step_fade_xu: dict[str, list[float]] = field(default_factory=dict)

    @property
    def cash(self) -> float:
        """Money so far besides battery wear: energy (devices' share), up-DR, settled regulation, EV costs."""
        return (
            -(self.energy_cost - self.base_cost)
            + self.updr_revenue
            + self.regulation_revenue
            - self.ev_wear_paid
            - self.ev_penalty
        )

    def book(self, k: int, record: StepRecord, plant: Plant) -> None:
        sc = self.scenario
        self._book_regulation(k, record.regulation)
        price = float(sc.price_per_kwh[k])
        self.energy_cost += record.site_wh / 1000.0 * price
        self.base_cost += record.base_wh / 1000.0 * price
        self.site_wh += record.site_wh
        self.base_wh += record.base_wh
        for device_id, wh in record.device_wh.items():
            self.device_wh[device_id] = self.device_wh.get(device_id, 0.0) + wh
            self.discharged_wh[device_id] = self.discharged_wh.get(device_id, 0.0) + record.discharged_wh[device_id]
        if sc.updr_window[k]:
            site_w = record.site_wh / sc.step_h
            increase_w = min(max(site_w - float(sc.base_load_w[k]), 0.0), float(sc.updr_requested_w[k]))
            kwh = increase_w * sc.step_h / 1000.0
            self.updr_delivered_kwh += kwh
            self.updr_requested_kwh += float(sc.updr_requested_w[k]) * sc.step_h / 1000.0
            self.updr_revenue += kwh * float(sc.updr_price_per_kwh[k])
        ev_ids = {c.id for c in sc.fleet.chargers}
        v2g_kwh = sum(record.discharged_wh[i] for i in ev_ids) / 1000.0
        self.ev_wear_paid += v2g_kwh * sc.fleet.ev_wear_price_per_kwh
        for departure in record.departures:
            s = departure.session
            need_wh = max(0.0, (s.target_soc - min(s.min_soc, s.soc)) * s.capacity_wh)
            short_wh = max(0.0, (s.target_soc - departure.soc) * s.capacity_wh)
            tier1_wh = PENALTIES.ev_tier1_fraction * need_wh
            self.ev_shortfall_kwh += short_wh / 1000.0
            self.ev_penalty += (
                min(short_wh, tier1_wh) * PENALTIES.ev_short_tier1_per_kwh
                + max(0.0, short_wh - tier1_wh) * PENALTIES.ev_short_tier2_per_kwh
            ) / 1000.0
            self.ev_sessions_scored += 1
        t0 = k * sc.step_s
        for battery_id, battery in plant.batteries.items():
            times = self.soc_times.setdefault(battery_id, [])
            socs = self.soc_series.setdefault(battery_id, [])
            path = record.soc_path.get(battery_id)
            if path is not None and len(path) > 2:
                inner = turning_points(path[:-1])
                dt = sc.step_s / len(path)
                times.extend((t0 + (inner + 1) * dt).tolist())
                socs.extend(path[inner].tolist())
            times.append(t0 + sc.step_s)
            socs.append(battery.soc)
            self.step_soc.setdefault(battery_id, []).append(battery.soc)
            self.step_fade_xu.setdefault(battery_id, []).append(1.0 - battery.soh)
        self.cash_series.append(self.cash)

    def _book_regulation(self, k: int, reg: RegulationRecord | None) -> None:
        sc = self.scenario
        hour = int(k * sc.step_s // 3600)
        if hour != self._hour:
            self.settle()
            self._hour = hour
        if reg is None or reg.capacity_w <= 0:
            return
        price = float(sc.regulation_price_per_kw_h[k])
        self._hour_payment += regulation_payment(reg.up_w, reg.down_w, sc.step_h, price)
        self.regulation_reserved_kwh += (reg.up_w + reg.down_w) / 1000.0 * sc.step_h
        self._hour_capacity = max(self._hour_capacity, reg.capacity_w)
        self._hour_signal.append(reg.target_w)
        self._hour_response.append(reg.response_w)

    def settle(self) -> None:
        """Score the hour booked so far and pay its capacity (call once more after the last step)."""
        if self._hour_payment > 0 and self._hour_signal:
            # normalised by the hour's largest band, as PJM normalises by the hour's assigned capability: per step,
            # a 1 W band turned a setpoint's ramp into an error of ~80 and failed the whole hour
            signal = np.concatenate(self._hour_signal) / self._hour_capacity
            response = np.concatenate(self._hour_response) / self._hour_capacity
            composite = score(signal, response).composite if signal.size >= 3 else 0.0
            self.regulation_revenue += self._hour_payment * composite
            self.regulation_capacity_value += self._hour_payment
            hours = max(1, round(self.scenario.step_s / 3600))  # a step longer than an hour is scored as one
            self.regulation_hours += hours
            self.regulation_failed_hours += hours * (composite < PASS_SCORE)
        self._hour_payment = 0.0
        self._hour_capacity = 0.0
        self._hour_signal, self._hour_response = [], []

    @property
    def regulation_score(self) -> float | None:
        """Payment-weighted mean performance score (None: nothing reserved)."""
        if self.regulation_capacity_value <= 0:
            return None
        return self.regulation_revenue / self.regulation_capacity_value


def regulation_payment(up_w: float, down_w: float, step_h: float, price_per_kw_h: float) -> float:
    """The capacity payment for holding `up_w` and `down_w` W of regulation for a step of `step_h` hours, each side
    paid `price_per_kw_h` per kW·h, before the hour's performance score. The one rule: the ledger books it for the
    site, the opportunity-priced packs' wear book (evaluation.policies) for each pack's own band."""
    return (up_w + down_w) / 1000.0 * step_h * price_per_kw_h


@dataclass(frozen=True)
class BatteryOutcome:
    id: str
    fade: dict[str, float]  # fraction of nominal capacity lost, per scorer that ran (evaluation.scoring.SCORERS)
    degradation_cost: dict[str, float]  # per scorer: evaluation.scoring.fade_cost of that fade
    discharged_kwh: float
    equivalent_full_cycles: float


def soc_time_series(ledger: Ledger, battery_id: str, initial_soc: float) -> tuple[np.ndarray, np.ndarray]:
    """(Time_s, SOC) at step boundaries and regulation turning points, starting with the initial SoC at 0 s."""
    soc = np.array([initial_soc, *ledger.soc_series.get(battery_id, [])])
    times = np.array([0.0, *ledger.soc_times.get(battery_id, [])])
    return times, soc
