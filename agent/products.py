"""Ancillary-service product profiles: what signal drives each product, how fast it must respond, how long it lasts.

Figures from REFERENCE.md (Japan's 需給調整市場, FY2026 rules). `response_s` is the time allowed from a change of
the activation to full response at the site meter; `sustain_s` is how long full response must be held, which is the
energy an award needs in store (the capability check and the optimiser's reservations use it). Where the rules
give a range (三次②: 45-60 min) the stricter end is used, so a fleet that passes here passes there.

The one product table: the planner's reservations (agent.dispatch.inputs), the capability check and the event
lifecycle all read it; the signal schema's product names (agent.signals.models.AsProduct) are its Japanese
products, which tests/dispatch/test_products.py checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SignalSource = Literal["frequency", "lfc", "edc", "online", "regulation"]


@dataclass(frozen=True)
class ProductProfile:
    name: str
    name_ja: str
    signal: SignalSource  # frequency: local measurement through the droop; others: activations from the TSO
    response_s: float
    sustain_s: float
    # offered as one band, as much down as up (PJM's regulation): an up-only share would drift the store's energy
    # under an energy-neutral signal
    symmetric: bool = False
    market: str = "JP"  # JP: awarded through signals (agent.signals.models.AsProduct); others: evaluation only
    # regulation only: the energy-weighted mean half cycle of following the product's signal, kWh per kW reserved
    # (hours); it sets the depth of the shallow cycles the planner prices activations at (agent.dispatch.build).
    # None for products whose activations are rare, sustained moves rather than a continuous swing
    swing_h: float | None = None
    # regulation only: the mean of the signal's positive part, kWh an up activation moves per kW·h reserved; what an
    # offer (agent.signals.models.AsOffer) that gives no activation of its own prices the activations' wear and loss
    # at. None: no figure (an offer without one is priced as rarely activated, 0)
    activation_per_h: float | None = None


PRODUCTS: dict[str, ProductProfile] = {
    "FCR": ProductProfile("FCR", "一次調整力", "frequency", response_s=10, sustain_s=5 * 60),
    "S-FRR": ProductProfile("S-FRR", "二次調整力①", "lfc", response_s=5 * 60, sustain_s=30 * 60),
    "FRR": ProductProfile("FRR", "二次調整力②", "edc", response_s=5 * 60, sustain_s=30 * 60),
    "S-RR": ProductProfile("S-RR", "三次調整力①", "edc", response_s=15 * 60, sustain_s=30 * 60),
    "RR": ProductProfile("RR", "三次調整力②", "online", response_s=45 * 60, sustain_s=30 * 60),
    # PJM-style regulation following a RegD-like signal (sim_devices.scenarios.regulation): energy neutral over each
    # 15 min, so holding 15 min of full output each way never runs out (conservative). swing_h: measured on that
    # signal (sim_devices.scenarios.regulation.swing_h, 0.0060-0.0062 h for seeds 1-3 at 10 s; a test keeps it in step)
    # activation_per_h: the mean of that signal's positive part, as evaluation.scenario computes it (0.1710-0.1714
    # kWh per kW·h for seeds 1-3, a week at 10 s; a test keeps it in step)
    "RegD": ProductProfile(
        "RegD",
        "RegD",
        "regulation",
        response_s=2,
        sustain_s=15 * 60,
        symmetric=True,
        market="PJM",
        swing_h=0.0061,
        activation_per_h=0.171,
    ),
}


def product(name: str) -> ProductProfile:
    """The profile of `name`; a clear error naming the product and the known ones otherwise."""
    try:
        return PRODUCTS[name]
    except KeyError:
        raise ValueError(f"unknown reserve product {name!r}; known: {', '.join(PRODUCTS)}") from None
