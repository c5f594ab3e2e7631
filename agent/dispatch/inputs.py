"""What the dispatcher plans with: assets, site, forecasts and grid-service terms, as plain arrays per step.

Everything is per step of `step_s` over a horizon of `steps`; powers in W, energies in Wh, prices in currency per
kWh (per kW·h for capacity). Built from the live fleet and the signal book by agent.dispatch.build, or by hand in
tests and the evaluation harness.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from agent.products import PRODUCTS, product

# Views of the one product table (agent.products), kept for callers that read them by these names.
PRODUCT_DURATION_S: dict[str, float] = {name: p.sustain_s for name, p in PRODUCTS.items()}
SYMMETRIC_PRODUCTS = frozenset(name for name, p in PRODUCTS.items() if p.symmetric)


def product_duration_h(name: str) -> float:
    """Hours a reservation of product `name` must be sustainable from stored energy (its `sustain_s`)."""
    return product(name).sustain_s / 3600.0


def activation_loss_wh(activation_per_h: float, efficiency: float | np.ndarray, step_h: float) -> float | np.ndarray:
    """Wh the store loses per W of up reservation held for one step while following activations.

    An up activation discharges α kWh per kW·h reserved (α = Reserve.activation_per_h), taking α/η from the pack; the
    down activation that brings it back stores η·α: the round trip loses α·(1/η − η) per kW·h, i.e. per W held for
    a step of `step_h` hours, α·(1/η − η)·step_h Wh. One rule for every backend (the LP's energy balance)."""
    return activation_per_h * (1.0 / efficiency - efficiency) * step_h


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
    # a calendar cost convex in the energy held: (Wh, extra currency per Wh·h held above it), on top of
    # calendar_price_per_wh_h (degradation.calendar_bends); stationary packs only, () = linear
    calendar_bends: tuple[tuple[float, float], ...] = ()
    is_ev: bool = False
    # currency per kWh discharged while following activations (shallow cycles, degradation.shallow_cycle_price; an
    # EV: its owner's price); None: the cheapest wear segment
    activation_wear_per_kwh: float | None = None
    # the charge taper's knee: SoC (fraction of max_wh) above which the charge limit falls linearly to 0 at full
    # (agent.dispatch.taper); None: the rating up to full
    charge_taper_soc: float | None = None
    # currency per kWh (pack side) of energy above the floor left at the horizon's end, stationary assets only
    # (EVs: always 0, see `terminal_price`); None: the horizon's lowest price
    terminal_price_per_kwh: float | None = None
    # per step, the fraction of it the asset is plugged in (an EV leaving mid-step: build.departure_steps); limits
    # scale by it and the executor holds the step's average over it (plan.Plan.setpoints_w). None: whole steps.
    present_fraction: np.ndarray | None = None
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


def activation_price(asset: AssetPlan, reserve: Reserve, price_per_kwh: np.ndarray | None = None) -> float:
    """Expected wear cost per kW·h of `asset`'s up reservation of `reserve` from following its activations.

    Each kWh delivered up is discharged at the asset's activation wear price (regulation cycles are shallow). The
    round trip's loss is not priced here any more: it is taken from the stored energy (`activation_loss_wh`, in the
    LP's energy balance), so the plan buys it back at the step's own price and keeps departure needs whole.
    `price_per_kwh` is accepted for callers of the earlier signature and unused. A per-asset scalar on purpose: a
    per-step price here would be a Parameter times the (N, T) reserve variable, which cvxpy's DPP canonicalisation
    makes huge (formulation.Shape)."""
    if reserve.activation_per_h <= 0:
        return 0.0
    return reserve.activation_per_h * activation_wear(asset)


def activation_wear(asset: AssetPlan) -> float:
    """Currency per kWh `asset` discharges following activations: its own price, else its cheapest wear segment."""
    if asset.activation_wear_per_kwh is not None:
        return float(asset.activation_wear_per_kwh)
    return float(asset.wear_prices[0]) if len(asset.wear_prices) else 0.0


BELOW_BASELINE_MARGIN = 0.01  # relative: the price of a Wh under the baseline sits this far above price + penalty


def below_baseline_price(dr: UpDr, penalties: Penalties) -> float:
    """Currency per kWh the LP charges for each kWh the site stays under an up-DR baseline in a window step.

    Strictly above the up-DR price plus the shortfall penalty, so that no plan can earn a paid increase by going
    further under the baseline (formulation._updr explains the reformulation); it is the convex stand-in for the
    settlement's kink, not money, and is reported under its own name."""
    return (max(dr.price_per_kwh, 0.0) + penalties.dr_short_per_kwh) * (1.0 + BELOW_BASELINE_MARGIN)


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
    # the mean of the positive part of a RegD-like signal (~0.15). Priced by the planner at the activation wear
    # price (`activation_price`), its round-trip loss taken from the stored energy (`activation_loss_wh`); 0 for
    # products that are rarely activated (reserves held for contingencies)
    activation_per_h: float = 0.0

    @property
    def duration_h(self) -> float:
        return product_duration_h(self.product)


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
    """The asset's charge limit per step (W, a step's average): its per-step override, else nameplate x presence."""
    return _limits_w(asset.charge_limit_w, asset.charge_w, asset, steps)


def discharge_limits_w(asset: AssetPlan, steps: int) -> np.ndarray:
    """The asset's discharge limit per step (W, magnitude, a step's average): its per-step override, else nameplate
    x presence."""
    return _limits_w(asset.discharge_limit_w, asset.discharge_w, asset, steps)


def presence(asset: AssetPlan, steps: int) -> np.ndarray:
    """The fraction of each step the asset is plugged in: `present_fraction`, else `available` (whole steps)."""
    if asset.present_fraction is not None:
        return np.asarray(asset.present_fraction, dtype=float)[:steps]
    return np.ones(steps) if asset.available is None else np.asarray(asset.available, dtype=float)[:steps]


def _limits_w(override: np.ndarray | None, nameplate_w: float, asset: AssetPlan, steps: int) -> np.ndarray:
    if override is not None:
        return np.asarray(override, dtype=float)[:steps]
    return nameplate_w * presence(asset, steps)


def updr_reachable(inputs: PlanInputs) -> np.ndarray:
    """Up-DR window steps whose baseline the site can reach with every asset charging at its limit.

    Settlement pays for consumption above the baseline and nothing below, a kink an LP cannot hold: the planner
    prices the distance under the baseline as a convex stand-in (formulation._updr, `below_baseline_price`). In a
    step whose baseline no plan can reach that stand-in would only push load up for nothing paid, so such steps are
    taken out of the window; their request is reported as missed (planner._read_plan). The last answer is kept for
    the same inputs object: the backends ask several times per solve, and at 100 000 EVs each answer costs ~0.2 s.
    """
    dr = inputs.updr
    t = inputs.steps
    if dr is None:
        return np.zeros(t, dtype=bool)
    global _REACHABLE
    if _REACHABLE is not None and _REACHABLE[0]() is inputs:
        return _REACHABLE[1].copy()
    site = inputs.site
    most = np.asarray(site.base_load_w[:t] - site.pv_w[:t], dtype=float)
    flat = [a.charge_w for a in inputs.assets if a.charge_limit_w is None and a.available is None]
    per_step = [a for a in inputs.assets if not (a.charge_limit_w is None and a.available is None)]
    most = most + float(sum(flat))
    overrides = [np.asarray(a.charge_limit_w, dtype=float)[:t] for a in per_step if a.charge_limit_w is not None]
    masked = [a for a in per_step if a.charge_limit_w is None]
    if overrides:
        most = most + np.sum(overrides, axis=0)
    if masked:
        available = np.array([np.asarray(a.available, dtype=float)[:t] for a in masked]).reshape(len(masked), t)
        most = most + np.array([a.charge_w for a in masked]) @ available
    reachable = np.asarray(dr.window[:t], dtype=bool) & (most >= np.asarray(dr.baseline_w[:t], dtype=float))
    _REACHABLE = (weakref.ref(inputs), reachable)
    return reachable.copy()


_REACHABLE: tuple[weakref.ref[PlanInputs], np.ndarray] | None = None
