"""The dispatch cost model: every cost and revenue term defined once, with its units. The backends compile it.

Three backends read these definitions and nothing else for their prices:
  * the cvxpy LP (agent.dispatch.formulation, filled by agent.dispatch.planner.fill),
  * the HiGHS arrays of the EV refinement (agent.dispatch.member_lp),
  * numpy pricing of a given schedule (agent.dispatch.pricing.plan_cost).
What differs between them is only how a coefficient meets its variable (a cvxpy expression, a column's cost, a dot
product); tests/dispatch/test_cost_model.py proves, term by term, that the three give the same money for the same
schedule on random inputs.

Units: powers W (+ from the grid into the device), energies Wh, prices currency per kWh (capacity: per kW·h), a step
lasts `step_h` hours. Every function here returns currency per W held for one step or per Wh, so a backend multiplies
it by its W or Wh variable and sums. Which terms are revenues (earned, subtracted in the net) is `plan.REVENUE_TERMS`.

Terms (name: what its coefficient multiplies → the coefficient function; "revenue" terms are earned):
  energy: W at the site meter per step (import cost = export revenue) → `energy_per_w`
  wear_cycle: W discharged from wear segment j per step (Xu's cycle depth) → `wear_per_w`
  wear_calendar: Wh held at each step end (SoC-dependent ageing) → `calendar_per_wh`, and Wh held above each of a
    stationary pack's calendar bends (convex in SoC) → `calendar_bends_per_wh`
  terminal_value (revenue): Wh left above the floor at the horizon's end → `terminal_per_wh`
  ev_shortfall_penalty: Wh short of a departure need, two tiers → `ev_shortfall_per_wh`, `tier1_wh`
  site_limit_penalty: W over an import/export limit per step → `site_excess_per_w`
  updr_revenue (revenue), updr_shortfall_penalty, updr_below_baseline_penalty: W paid above the baseline (up to the
    request), W of the request not delivered, W under the baseline, per window step → `updr_per_w`
  reserve_revenue (revenue): W reserved up / down per product and step → `reserve_per_w`
  reserve_activation: W reserved up per product and step (wear of following activations) → `activation_per_w`
  reserve_shortfall_penalty: W of an award not reserved per product and step → `reserve_short_per_w`
The round trip's loss of following activations is not a price: it is energy taken from the store
(inputs.activation_loss_wh), which the energy term then buys back. Every backend takes it by that one rule: the
cvxpy LP's energy balance (formulation._activation_losses), the aggregate's split of a group plan onto its members
and the member LP's dynamics (agent.dispatch.member_lp.band_loss_wh), and numpy pricing through the energies it is
given (a Wh lost is a Wh not held: calendar ageing; bought back: the energy term).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.dispatch.inputs import (
    AssetPlan,
    Penalties,
    PlanInputs,
    Reserve,
    UpDr,
    activation_price,
    below_baseline_price,
    terminal_price,
)

KWH = 1000.0  # Wh per kWh: prices are per kWh, variables in W and Wh


@dataclass(frozen=True)
class Term:
    name: str
    revenue: bool
    what: str  # the quantity the term's coefficient multiplies, with its unit


TERMS: dict[str, Term] = {
    t.name: t
    for t in (
        Term("energy", False, "W at the site meter per step"),
        Term("wear_cycle", False, "W discharged from each wear segment per step (grid side)"),
        Term("wear_calendar", False, "Wh stored at each step end (the LPs price what is above the floor)"),
        Term("terminal_value", True, "Wh above the floor at the horizon's end"),
        Term("ev_shortfall_penalty", False, "Wh short of a departure need (tier 1 up to a share of the need, tier 2)"),
        Term("site_limit_penalty", False, "W over the import or export limit per step"),
        Term("updr_revenue", True, "W paid above the baseline per window step (≤ the request)"),
        Term("updr_shortfall_penalty", False, "W of the request not delivered per window step"),
        Term("updr_below_baseline_penalty", False, "W under the baseline per planned window step"),
        Term("reserve_revenue", True, "W reserved up and down per product and step"),
        Term("reserve_activation", False, "W reserved up per product and step"),
        Term("reserve_shortfall_penalty", False, "W of an award not reserved per product and step"),
    )
}


def energy_per_w(inputs: PlanInputs) -> np.ndarray:
    """Currency per W drawn at the meter for one step, per step (negative prices pay for consumption)."""
    return np.asarray(inputs.site.price_per_kwh[: inputs.steps], dtype=float) * inputs.step_h / KWH


def wear_per_w(asset: AssetPlan, step_h: float) -> np.ndarray:
    """Currency per W discharged (grid side) for one step from each wear segment, shallowest first."""
    return np.asarray(asset.wear_prices, dtype=float) * step_h / KWH


def calendar_per_wh(asset: AssetPlan, step_h: float) -> float:
    """Currency per Wh stored at a step's end: the SoC-dependent calendar ageing over that step."""
    return float(asset.calendar_price_per_wh_h) * step_h


def calendar_bends_per_wh(asset: AssetPlan, step_h: float) -> tuple[np.ndarray, np.ndarray]:
    """(Wh, currency per Wh stored above it at a step's end) of each calendar bend: the convex part of calendar
    ageing (AssetPlan.calendar_bends), max(0, E − bend) per step end times its price. Empty for a linear price."""
    if not asset.calendar_bends:
        return np.zeros(0), np.zeros(0)
    bends = np.asarray(asset.calendar_bends, dtype=float)
    return bends[:, 0], bends[:, 1] * step_h


def terminal_per_wh(asset: AssetPlan, inputs: PlanInputs) -> float:
    """Currency per Wh left above the floor at the horizon's end (a revenue; inputs.terminal_price)."""
    return terminal_price(asset, np.asarray(inputs.site.price_per_kwh[: inputs.steps], dtype=float)) / KWH


def ev_shortfall_per_wh(penalties: Penalties) -> tuple[float, float]:
    """Currency per Wh short of a departure need in tier 1 and tier 2."""
    return penalties.ev_short_tier1_per_kwh / KWH, penalties.ev_short_tier2_per_kwh / KWH


def tier1_wh(need_wh: float | np.ndarray, penalties: Penalties) -> float | np.ndarray:
    """Wh of a shortfall priced at tier 1: the first `ev_tier1_fraction` of the need."""
    return need_wh * penalties.ev_tier1_fraction


def site_excess_per_w(penalties: Penalties, step_h: float) -> float:
    """Currency per W over a site limit for one step."""
    return penalties.site_limit_per_kwh * step_h / KWH


@dataclass(frozen=True)
class UpDrPrices:
    """Currency per W for one step: earned above the baseline, paid per W short, charged per W under it."""

    revenue: float
    shortfall: float
    below: float


def updr_per_w(dr: UpDr, penalties: Penalties, step_h: float) -> UpDrPrices:
    return UpDrPrices(
        dr.price_per_kwh * step_h / KWH,
        penalties.dr_short_per_kwh * step_h / KWH,
        below_baseline_price(dr, penalties) * step_h / KWH,
    )


def reserve_per_w(reserve: Reserve, steps: int, step_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Currency per W reserved up and down for one step, per step (capacity prices per kW·h)."""
    up = np.asarray(reserve.up_price_per_kw_h[:steps], dtype=float) * step_h / KWH
    down = np.asarray(reserve.down_price_per_kw_h[:steps], dtype=float) * step_h / KWH
    return up, down


def activation_per_w(asset: AssetPlan, reserve: Reserve, step_h: float) -> float:
    """Currency per W reserved up for one step: the wear of following its activations (inputs.activation_price)."""
    return activation_price(asset, reserve) * step_h / KWH


def reserve_short_per_w(penalties: Penalties, step_h: float) -> float:
    """Currency per W of an award not reserved for one step."""
    return penalties.reserve_short_per_kwh * step_h / KWH
