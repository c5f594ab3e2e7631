"""What the dispatcher plans with: assets, site, forecasts and grid-service terms, as plain arrays per step.

Everything is per step of `step_s` over a horizon of `steps`; powers in W, energies in Wh, prices in currency per
kWh (per kW·h for capacity). Built from the live fleet and the signal book by agent.dispatch.build, or by hand in
tests and the evaluation harness.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Sustain duration of each ancillary-service product (REFERENCE.md): energy headroom held for a reservation.
PRODUCT_DURATION_S: dict[str, float] = {
    "FCR": 5 * 60,
    "S-FRR": 30 * 60,
    "FRR": 30 * 60,
    "S-RR": 30 * 60,  # 30-min blocks from FY2026
    "RR": 30 * 60,
    # PJM-style regulation following a RegD-like signal (sim_devices.scenarios.regulation): the signal is energy
    # neutral over each 15 min, so holding 15 min of full output each way never runs out (conservative)
    "RegD": 15 * 60,
}
# Products offered as one symmetric band (as much down as up, PJM's regulation): an up-only or down-only share
# would drift the store's energy under an energy-neutral signal, which the plan's energy balance does not model.
SYMMETRIC_PRODUCTS = frozenset({"RegD"})


@dataclass(frozen=True)
class AssetPlan:
    """One storage asset over the horizon. EVs set `available` (plugged-in steps) and `target_wh`/`target_step`."""

    id: str
    energy_wh: float  # now, usable (pack side)
    min_wh: float  # hard floor (EV owner's minimum SoC, battery reserve)
    max_wh: float  # usable capacity now (nominal x SoH)
    charge_w: float  # max charge at the grid terminals
    discharge_w: float  # max discharge at the grid terminals (magnitude)
    efficiency: float = 0.95  # one-way
    available: np.ndarray | None = None  # bool per step; None = always
    target_wh: float | None = None  # owner's energy at departure
    target_step: int | None = None  # departure: the energy after this many steps must reach target_wh
    wear_prices: np.ndarray = field(default_factory=lambda: np.zeros(1))  # currency per kWh discharged, per segment
    calendar_price_per_wh_h: float = 0.0
    is_ev: bool = False
    # currency per kWh discharged while following activations (shallow cycles, degradation.shallow_cycle_price; an
    # EV: its owner's price); None: the cheapest wear segment
    activation_wear_per_kwh: float | None = None
    # currency per kWh (pack side) of energy above the floor left at the horizon's end, stationary assets only
    # (EVs: always 0, see `terminal_price`); None: the horizon's lowest price
    terminal_price_per_kwh: float | None = None
    # Per-step overrides, for virtual batteries standing for many EVs (agent.dispatch.aggregate): their members
    # plug in and leave at different steps, so limits and reachable energies change along the horizon. None = the
    # scalar fields above. Energies are pack Wh per step boundary (steps + 1 values), powers W per step.
    charge_limit_w: np.ndarray | None = None  # replaces charge_w x available
    discharge_limit_w: np.ndarray | None = None  # replaces discharge_w x available
    floor_path_wh: np.ndarray | None = None  # hard: energy never below this (within [min_wh, max_wh])
    ceiling_path_wh: np.ndarray | None = None  # hard: energy never above this
    need_path_wh: np.ndarray | None = None  # soft (penalised like a departure target): replaces target_wh/step
    need_total_wh: float | None = None  # with need_path_wh: the summed needs above the floor, sizes penalty tier 1

    @property
    def has_paths(self) -> bool:
        """Whether the asset carries hard per-step energy bounds (the compiled model then needs them)."""
        return self.floor_path_wh is not None or self.ceiling_path_wh is not None


def terminal_price(asset: AssetPlan, price_per_kwh: np.ndarray) -> float:
    """What a kWh still stored at the horizon's end is worth, currency per kWh (pack side).

    Without it, energy left over is worthless to the LP, so at any price above the wear cost it sells everything
    before the horizon ends: with a flat price the demo's batteries emptied at the export limit within seconds.
    A stationary battery's stored kWh is valued at the horizon's lowest price: what it would cost to buy the same
    energy back, less the charging loss (buying it back costs lowest / efficiency). So
      * holding never pays for itself: buying at the lowest price only to hold loses the charging loss;
      * selling now pays only where it would pay to sell and buy back later (price x efficiency > lowest), the
        ordinary arbitrage rule, so the plan inside the horizon is unchanged wherever a cheap step follows;
      * with a flat price, keeping beats selling now by the round-trip loss.
    A cheap step anywhere in the horizon (a curtailment day's 0.01 JPY/kWh) takes the value to about 0, as before:
    the plan then refills there. EVs get 0: what is left in a car belongs to its owner's driving, and its
    departure target already asks for what the owner wants.
    """
    if asset.is_ev:
        return 0.0
    if asset.terminal_price_per_kwh is not None:
        return float(asset.terminal_price_per_kwh)
    if len(price_per_kwh) == 0:
        return 0.0
    return max(0.0, float(np.min(price_per_kwh)))


def activation_price(asset: AssetPlan, reserve: Reserve, price_per_kwh: np.ndarray) -> float:
    """Expected cost per kW·h of `asset`'s up reservation of `reserve` from following its activations.

    Each kWh delivered up is discharged (at the asset's activation wear price: regulation cycles are shallow) and
    comes back through a down activation, losing 1/η² − 1 of it on the round trip, bought at the horizon's mean
    price. A per-asset scalar on purpose: a per-step price here would be a Parameter times the (N, T) reserve
    variable, which cvxpy's DPP canonicalisation makes huge (formulation.Shape)."""
    if reserve.activation_per_h <= 0:
        return 0.0
    if asset.activation_wear_per_kwh is not None:
        wear = float(asset.activation_wear_per_kwh)
    else:
        wear = float(asset.wear_prices[0]) if len(asset.wear_prices) else 0.0
    mean_price = max(0.0, float(np.mean(price_per_kwh))) if len(price_per_kwh) else 0.0
    loss = mean_price * (1.0 / asset.efficiency**2 - 1.0)
    return reserve.activation_per_h * (wear + loss)


@dataclass(frozen=True)
class SiteForecast:
    price_per_kwh: np.ndarray  # energy price per step (import cost = export revenue)
    base_load_w: np.ndarray
    pv_w: np.ndarray
    import_limit_w: float = float("inf")
    export_limit_w: float = float("inf")


@dataclass(frozen=True)
class UpDr:
    """Up-DR: in `window` steps, consumption above `baseline_w` earns `price_per_kwh` up to `requested_w`."""

    window: np.ndarray  # bool per step
    baseline_w: np.ndarray
    requested_w: float
    price_per_kwh: float


@dataclass(frozen=True)
class Reserve:
    """An ancillary-service product: capacity prices, and awarded minimums (commitments) per step."""

    product: str
    up_price_per_kw_h: np.ndarray
    down_price_per_kw_h: np.ndarray
    awarded_up_w: np.ndarray
    awarded_down_w: np.ndarray
    # energy an activation moves: kWh discharged per kW·h of up reservation (and charged per kW·h down), e.g.
    # the mean of the positive part of a RegD-like signal (~0.15). Priced by the planner as the cheapest wear
    # segment plus the round-trip loss at the horizon's mean price (`activation_price`); 0 for products that are
    # rarely activated (reserves held for contingencies)
    activation_per_h: float = 0.0

    @property
    def duration_h(self) -> float:
        return PRODUCT_DURATION_S[self.product] / 3600.0


@dataclass(frozen=True)
class Penalties:
    """Tiered prices (currency per kWh short) for soft preferences; hard physics is never softened.

    Tier 1 sits above any plausible energy price plus wear (JEPX rarely exceeds ~100 JPY/kWh), so a need that can be
    met is met; tier 2 makes a large shortfall far dearer than a small one, so an impossible target is missed by
    as little as physics allows rather than abandoned.
    """

    ev_short_tier1_per_kwh: float = 200.0  # the first `ev_tier1_fraction` of an EV target shortfall
    ev_short_tier2_per_kwh: float = 2000.0
    ev_tier1_fraction: float = 0.1
    dr_short_per_kwh: float = 100.0
    reserve_short_per_kwh: float = 1000.0
    site_limit_per_kwh: float = 10000.0  # only when uncontrolled load alone breaks a site limit


@dataclass(frozen=True)
class PlanInputs:
    steps: int
    step_s: float
    assets: list[AssetPlan]
    site: SiteForecast
    updr: UpDr | None = None
    reserves: list[Reserve] = field(default_factory=list)
    penalties: Penalties = Penalties()

    @property
    def step_h(self) -> float:
        return self.step_s / 3600.0


def charge_limits_w(asset: AssetPlan, steps: int) -> np.ndarray:
    """The asset's charge limit per step (W): its per-step override, else nameplate x availability."""
    return _limits_w(asset.charge_limit_w, asset.charge_w, asset.available, steps)


def discharge_limits_w(asset: AssetPlan, steps: int) -> np.ndarray:
    """The asset's discharge limit per step (W, magnitude): its per-step override, else nameplate x availability."""
    return _limits_w(asset.discharge_limit_w, asset.discharge_w, asset.available, steps)


def _limits_w(override: np.ndarray | None, nameplate_w: float, available: np.ndarray | None, steps: int) -> np.ndarray:
    if override is not None:
        return np.asarray(override, dtype=float)[:steps]
    mask = np.ones(steps) if available is None else np.asarray(available, dtype=float)[:steps]
    return nameplate_w * mask


def updr_reachable(inputs: PlanInputs) -> np.ndarray:
    """Up-DR window steps whose baseline the site can reach with every asset charging at its limit.

    Settlement pays for consumption above the baseline and nothing below, a kink an LP cannot hold. The planner
    therefore reads the increase with a free sign (below the baseline it counts against), which in a step whose
    baseline is out of reach would pay the LP for raising load settlement never pays for. Such steps are taken out
    of the window; their request is reported as missed (planner._read_plan).
    """
    dr = inputs.updr
    t = inputs.steps
    if dr is None:
        return np.zeros(t, dtype=bool)
    site = inputs.site
    most = np.asarray(site.base_load_w[:t] - site.pv_w[:t], dtype=float)
    for a in inputs.assets:
        most = most + charge_limits_w(a, t)
    return np.asarray(dr.window[:t], dtype=bool) & (most >= np.asarray(dr.baseline_w[:t], dtype=float))

