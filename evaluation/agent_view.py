"""The running agent's view of a simulated plant: its fleet, config and signal book, and what it does with them.

A strategy in the evaluation is the agent with a different config, so the plan inputs come from the agent's own
code (agent.dispatch.build.plan_inputs: fleet -> inputs) and every setpoint passes the agent's SafetyEnvelope
(agent.control.safety). What this module adds is only what the agent's drivers and signal ingest would give it:

* a Measurement per device from the simulated device's own domain fields (`device.fields()`, the values its
  register map serves), taken at the start of each planning step; an asset answers, so it is available;
* the signal book as the aggregator would feed it: the JEPX prices published so far (tomorrow's from 10:00 JST), under
  them a persistence forecast sent as an older price signal for the unpublished hours (newer signals win in the
  book), the up-DR events announced so far (the day before at 10:00), and the regulation product as a price-only
  reserve offer (`as_offer`, agent.signals.models.AsOffer): `RegD`, the capacity prices as published with the same
  persistence forecast beyond, and the signal's mean activation. The agent's build turns that offer into the
  Reserve the strategies plan with (agent.dispatch.build), nothing awarded.

Nothing here copies a simulator constant: limits (tapers included) reach the agent as the devices' live limits.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import numpy as np

from agent.config import AppConfig, AssetConfig, DispatchSettings
from agent.control.safety import SafetyEnvelope
from agent.dispatch.build import plan_inputs
from agent.dispatch.inputs import PlanInputs
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement
from agent.signals.models import MAX_CAPACITY_PRICE_PER_KW_H, AsOffer, PriceSeries, SignalModel, UpDrEvent
from evaluation.plant import Plant
from evaluation.scenario import Scenario, persistence_forecast, published_until

# the demo site's maps for these simulated devices (the config needs one; nothing here loads it)
MAPS = {AssetKind.BATTERY: "vppsim_battery", AssetKind.EV_CHARGER: "vppsim_v2g_dc"}
CUT_TOLERANCE_W = 1.0  # a setpoint moved by more than this counts as cut by the envelope


@dataclasses.dataclass(frozen=True)
class AssetWear:
    """How one strategy configures an asset's wear, in the agent's own config terms (AssetConfig)."""

    replacement_cost: float | None = None
    wear_price_per_kwh: float | None = None
    chemistry: str | None = None  # AssetConfig.chemistry, where the agent's config has it
    wear_source: str | None = None  # AssetConfig.wear_source (the model the wear is fitted to), where it has it
    wear_pricing: str | None = None  # AssetConfig.wear_pricing ("opportunity": the value of a life, learnt online)

    def config_terms(self) -> dict[str, object]:
        """The AssetConfig keys this wear sets. A key the agent's config does not offer (yet) is an error naming it,
        never silently dropped: a strategy must not run as something else."""
        terms: dict[str, object] = {
            "replacement_cost": self.replacement_cost,
            "wear_price_per_kwh": self.wear_price_per_kwh,
        }
        for key in ("chemistry", "wear_source", "wear_pricing"):
            value = getattr(self, key)
            if value is None:
                continue
            if key not in AssetConfig.model_fields:
                raise ValueError(f"the agent's AssetConfig has no {key!r} key yet: cannot configure {key} = {value!r}")
            terms[key] = value
        return terms


@dataclasses.dataclass
class EnvelopeLog:
    """What the SafetyEnvelope cut over a run: count of setpoints and regulation bands moved, and why."""

    cuts: int = 0
    band_cuts: int = 0
    reasons: Counter[str] = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass(frozen=True)
class Safe:
    """A step's setpoints and regulation bands after the envelope (W)."""

    power_w: dict[str, float]
    reserve_up_w: dict[str, float]
    reserve_down_w: dict[str, float]


def measurement(asset_id: str, kind: AssetKind, fields: Mapping[str, float], at: datetime) -> Measurement:
    """A Measurement from a simulated device's domain fields (SI, the agent's sign), as its driver would read it."""
    ev = kind is AssetKind.EV_CHARGER
    connected = bool(fields.get("ev_connected", 1))
    status = DeviceStatus(int(fields["status"]))
    return Measurement(
        asset_id=asset_id,
        at=at,
        power_w=float(fields["power_w"]),
        status=status,
        fault_code=int(fields["fault_code"]),
        setpoint_w=float(fields["setpoint_w"]),
        rated_charge_w=float(fields["rated_charge_w"]),
        rated_discharge_w=float(fields["rated_discharge_w"]),
        max_charge_w=float(fields["max_charge_w"]),
        max_discharge_w=float(fields["max_discharge_w"]),
        soc=float(fields["soc"]) if connected else None,
        soh=float(fields["soh"]) if "soh" in fields else None,
        capacity_wh=float(fields["capacity_wh"]) if connected else None,
        ev_connected=connected if ev else None,
        ev_target_soc=float(fields["ev_target_soc"]) if ev and connected else None,
        ev_min_soc=float(fields["ev_min_soc"]) if ev and connected else None,
        ev_departure=datetime.fromtimestamp(float(fields["ev_departure"]), UTC) if ev and connected else None,
    )


class AgentView:
    """The agent configured as one strategy, watching one plant."""

    def __init__(
        self,
        scenario: Scenario,
        wear: Mapping[str, AssetWear],
        horizon_s: float,
        wear_segments: int = 4,
    ) -> None:
        self.scenario = scenario
        steps = round(horizon_s / scenario.step_s)
        assets = []
        self.kinds: dict[str, AssetKind] = {}
        fleet = scenario.fleet
        specs = [(b.id, AssetKind.BATTERY, b.power_w, b.efficiency) for b in fleet.batteries]
        specs += [(c.id, AssetKind.EV_CHARGER, c.power_w, c.efficiency) for c in fleet.chargers]
        for n, (asset_id, kind, power_w, efficiency) in enumerate(specs):
            w = wear.get(asset_id, AssetWear())
            assets.append(AssetConfig(  # one Modbus address each, as a real site's config has (nothing connects)
                id=asset_id, map=MAPS[kind], port=502 + n // 247, unit_id=n % 247 + 1,
                rated_charge_w=power_w, rated_discharge_w=power_w, efficiency=efficiency, **w.config_terms(),
            ))  # fmt: skip
            self.kinds[asset_id] = kind
        self.config = AppConfig(
            dispatch=DispatchSettings(step_s=scenario.step_s, horizon_steps=steps, wear_segments=wear_segments),
            assets=assets,
        )
        self.fleet = Fleet({a.id: AssetState(a.id, self.kinds[a.id], a) for a in assets})
        self.envelope = SafetyEnvelope(self.config.site.import_limit_w, self.config.site.export_limit_w)
        self.log = EnvelopeLog()
        self._events = _event_runs(scenario)

    @property
    def steps(self) -> int:
        return self.config.dispatch.horizon_steps

    def now(self, plant: Plant) -> datetime:
        return (self.scenario.start + timedelta(seconds=plant.t_s)).astimezone(UTC)

    def observe(self, plant: Plant) -> None:
        """One poll of every device into the fleet (each answers, so each is available)."""
        at = self.now(plant)
        for asset_id, device in plant.devices.items():
            state = self.fleet.assets[asset_id]
            state.measurement = measurement(asset_id, self.kinds[asset_id], device.fields(), at)
            state.available = True

    def book(self, plant: Plant, foresight: bool = False, price_noise: np.ndarray | None = None) -> dict:
        """The signal book at the plant's step: prices, up-DR events and the regulation offer as published (all of
        them with `foresight`); `price_noise` (relative, per horizon step) perturbs every energy price after the
        current step (not the capacity prices)."""
        sc, k = self.scenario, plant.k
        steps = self.steps
        known = sc.steps + steps if foresight else published_until(sc, k)
        per_day = round(86400 / sc.step_s)
        start = self.now(plant)
        seen = persistence_forecast(sc.price_per_kwh, k, steps, known, per_day)
        if price_noise is not None:
            seen = seen * (1.0 + np.concatenate([[0.0], price_noise[1:steps]]))
        prices: dict[str, SignalModel] = {
            "prices": PriceSeries(
                id=f"price-{k}", area=sc.area, start=start, interval_s=round(sc.step_s),
                prices_per_kwh=[round(float(p), 4) for p in seen],
            ),
        }  # fmt: skip
        events: dict[str, SignalModel] = {}
        for first, last, requested, price in self._events:
            if first < known and last > k and first < k + steps:
                events[f"updr-{first}"] = UpDrEvent(
                    id=f"updr-{first}",
                    start=(sc.start + timedelta(seconds=first * sc.step_s)).astimezone(UTC),
                    end=(sc.start + timedelta(seconds=last * sc.step_s)).astimezone(UTC),
                    requested_increase_w=requested,
                    price_per_kwh=price,
                )
        return {"prices": prices, "up_dr": events, "as_offer": self._regulation(k, known, start)}

    def inputs(
        self,
        plant: Plant,
        foresight: bool = False,
        price_noise: np.ndarray | None = None,
        wear_basis: Mapping[str, float] | None = None,
    ) -> PlanInputs:
        """The agent's plan inputs at the plant's step (build.plan_inputs), the regulation offer's Reserve included;
        `wear_basis`: the opportunity-priced packs' value of a life (agent.dispatch.wear_book)."""
        self.observe(plant)
        uncontrolled = float(self.scenario.base_load_w[plant.k])
        inputs, _ = plan_inputs(
            self.fleet,
            self.config,
            self.now(plant),
            self.book(plant, foresight, price_noise),
            uncontrolled,
            wear_basis=wear_basis,
        )
        return inputs

    def _regulation(self, k: int, known: int, start: datetime) -> dict[str, SignalModel]:
        """The regulation product as the offer an aggregator would send (empty where none is offered): capacity
        prices over the horizon, published up to step `known`, the same persistence forecast beyond."""
        sc, steps = self.scenario, self.steps
        if not sc.offers_regulation:
            return {}
        price = persistence_forecast(sc.regulation_price_per_kw_h, k, steps, known, round(86400 / sc.step_s))
        # an offer dearer than the signal's bound would be refused by the agent; the ledger still pays the world's
        # price, so an hour above the bound (rare at the default median) is under-offered, never a crash
        price = np.minimum(price, MAX_CAPACITY_PRICE_PER_KW_H)
        offer = AsOffer(
            id=f"regd-{k}", product="RegD", start=start, interval_s=round(sc.step_s),
            capacity_price_per_kw_h=[float(p) for p in price], activation_per_h=float(sc.regulation_activation_per_h),
        )  # fmt: skip
        return {offer.id: offer}

    def safe(
        self,
        plant: Plant,
        power_w: Mapping[str, float],
        reserve_up_w: Mapping[str, float] | None = None,
        reserve_down_w: Mapping[str, float] | None = None,
    ) -> Safe:
        """Pass a strategy's requests through the agent's SafetyEnvelope, judged over the whole step (the setpoint
        is held that long); a regulation band is cut to what the bounds leave on each side of the setpoint. Every
        cut is counted with its reason."""
        self.observe(plant)
        now = self.now(plant)
        states = self.fleet.assets
        period = self.scenario.step_s
        bounds = {i: self.envelope.bounds(s, now, period, 0.0) for i, s in states.items()}
        requests = {i: float(power_w.get(i, 0.0)) for i in states}
        setpoints = self.envelope.apply(requests, states, bounds, float(self.scenario.base_load_w[plant.k]))
        power, up, down = {}, {}, {}
        for i, sp in setpoints.items():
            power[i] = sp.power_w
            if abs(sp.power_w - sp.requested_w) > CUT_TOLERANCE_W:
                self.log.cuts += 1
                self.log.reasons.update(sp.reasons or ("hard limit",))
            b = bounds[i]
            want_up = max(0.0, float((reserve_up_w or {}).get(i, 0.0)))
            want_down = max(0.0, float((reserve_down_w or {}).get(i, 0.0)))
            up[i] = min(want_up, max(0.0, sp.power_w - b.low_w))
            down[i] = min(want_down, max(0.0, b.high_w - sp.power_w))
            if want_up - up[i] > CUT_TOLERANCE_W or want_down - down[i] > CUT_TOLERANCE_W:
                self.log.band_cuts += 1
                self.log.reasons.update(("regulation band beyond bounds",))
        return Safe(power, up, down)


def _event_runs(scenario: Scenario) -> list[tuple[int, int, float, float]]:
    """The scenario's up-DR events as (first step, end step, requested W, price per kWh), from its per-step arrays."""
    runs = []
    window = np.asarray(scenario.updr_window, dtype=bool)
    k = 0
    while k < len(window):
        if not window[k]:
            k += 1
            continue
        first = k
        while k < len(window) and window[k] and scenario.updr_requested_w[k] == scenario.updr_requested_w[first]:
            k += 1
        runs.append((first, k, float(scenario.updr_requested_w[first]), float(scenario.updr_price_per_kwh[first])))
    return runs
