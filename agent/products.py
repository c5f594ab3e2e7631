"""Ancillary-service product profiles: what signal drives each product, how fast it must respond, how long it lasts.

Figures from REFERENCE.md (Japan's 需給調整市場, FY2026 rules). `response_s` is the time allowed from a change of
the activation to full response at the site meter; `sustain_s` is how long full response must be held, which is the
energy an award needs in store (the capability check and the optimiser's reservations use it). Where the rules
give a range (三次②: 45-60 min) the stricter end is used, so a fleet that passes here passes there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SignalSource = Literal["frequency", "lfc", "edc", "online"]


@dataclass(frozen=True)
class ProductProfile:
    name: str
    name_ja: str
    signal: SignalSource  # frequency: local measurement through the droop; others: activations from the TSO
    response_s: float
    sustain_s: float


PRODUCTS: dict[str, ProductProfile] = {
    "FCR": ProductProfile("FCR", "一次調整力", "frequency", response_s=10, sustain_s=5 * 60),
    "S-FRR": ProductProfile("S-FRR", "二次調整力①", "lfc", response_s=5 * 60, sustain_s=30 * 60),
    "FRR": ProductProfile("FRR", "二次調整力②", "edc", response_s=5 * 60, sustain_s=30 * 60),
    "S-RR": ProductProfile("S-RR", "三次調整力①", "edc", response_s=15 * 60, sustain_s=30 * 60),
    "RR": ProductProfile("RR", "三次調整力②", "online", response_s=45 * 60, sustain_s=30 * 60),
}
