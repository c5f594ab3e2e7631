"""What a strategy actually earned and cost, booked from what the physics did (never from what the plan said).

* Energy: the site meter's energy each step × that step's price (import pays, export earns at the same price, as
  the optimiser assumes). `energy_net` is the devices' share with the sign of a revenue (−Σ device Wh × price); the
  base load's own cost is the same for every strategy and kept apart.
* Up-DR: in event steps, the site's mean power above the baseline (the base-load forecast, which is exact here),
  capped at the request, × the event price. Shortfalls are reported, not fined.
* EV: at each departure, energy short of the owner's target; fined with the optimiser's tiered prices (the first
  10 % of the need at tier 1, the rest at tier 2) so the score and the objective agree. V2G discharge pays the
  owner's wear price per kWh (whatever the strategy assumed when planning).
* Batteries: degradation is valued at replacement cost × capacity fade / 20 % (end of life), with fade from the
  simulator's own Xu model — not the optimiser's price model — read at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.dispatch.degradation import END_OF_LIFE_FADE
from agent.dispatch.evaluation.plant import Plant, StepRecord
from agent.dispatch.evaluation.policies import PENALTIES
from agent.dispatch.evaluation.scenario import Scenario


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
    soc_series: dict[str, list[float]] = field(default_factory=dict)

    def book(self, k: int, record: StepRecord, plant: Plant) -> None:
        sc = self.scenario
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
        for battery_id, battery in plant.batteries.items():
            self.soc_series.setdefault(battery_id, []).append(battery.soc)


@dataclass(frozen=True)
class BatteryOutcome:
    id: str
    fade: float  # fraction of nominal capacity lost (simulator's Xu model)
    degradation_cost: float
    discharged_kwh: float
    equivalent_full_cycles: float
    blast_fade: float | None = None


def battery_outcomes(ledger: Ledger, plant: Plant) -> list[BatteryOutcome]:
    out = []
    for spec in ledger.scenario.fleet.batteries:
        battery = plant.batteries[spec.id]
        fade = 1.0 - battery.soh
        discharged = ledger.discharged_wh.get(spec.id, 0.0) / 1000.0
        out.append(BatteryOutcome(
            id=spec.id,
            fade=fade,
            degradation_cost=spec.replacement_cost * fade / END_OF_LIFE_FADE,
            discharged_kwh=discharged,
            equivalent_full_cycles=discharged * 1000.0 / spec.capacity_wh,
        ))
    return out


def soc_time_series(ledger: Ledger, battery_id: str, initial_soc: float) -> tuple[np.ndarray, np.ndarray]:
    """(Time_s, SOC) at step boundaries, starting with the initial SoC."""
    soc = np.array([initial_soc, *ledger.soc_series.get(battery_id, [])])
    return np.arange(len(soc)) * ledger.scenario.step_s, soc
