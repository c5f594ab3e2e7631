"""Battery wear priced for the optimiser: cycle-depth segments (Xu et al. 2018) and calendar ageing.

Sources (REFERENCE.md):
  * B. Xu et al., "Modeling of Lithium-Ion Battery Degradation for Cell Life Assessment", IEEE Trans. Smart Grid
    2018 — cycle-depth stress S_δ(δ) = 1/(1.40e5·δ^−0.501 − 1.23e5) per full cycle, SoC stress exp(1.04(σ−0.5)),
    calendar ageing 4.14e−10 /s, capacity L(f) = 1 − 0.0575·e^(−121 f) − 0.9425·e^(−f).
  * B. Xu et al., "Factoring the Cycle Aging Cost of Batteries Participating in Electricity Markets", IEEE Trans.
    Power Systems 2018 — the usable energy is split into J segments; discharging from segment j costs
    m_j = (R·J/η)·[Φ(j/J) − Φ((j−1)/J)] per kWh, Φ(δ) the fraction of life one cycle of depth δ uses.
    Convex (non-decreasing m_j) costs make the problem an LP with no binaries.

Two honest adjustments, both stated where they are made:
  * Φ(δ) = S_δ(δ) / f_EOL, with f_EOL the damage at which L reaches the 20 % end-of-life fade.
  * S_δ is slightly concave below δ ≈ 0.25 (per unit of depth, a 0.1-deep cycle costs a little more than a 0.25-deep
    one), which would make m_j decrease and the LP non-convex; segment prices are therefore made non-decreasing by a
    running maximum (the least convex majorant of the increments), overstating shallow-cycle cost by at most that
    small bump.
Units: every price here is currency per kWh DISCHARGED at the device's grid terminals (throughput in the other
direction is free: in Xu's model a cycle is charged once, on discharge).

Per-chemistry wear (docs/wear.md): every price function takes `model`, a `WearFit` from `agent.dispatch.wear_fits.fit`
(the pack's chemistry and temperature, fitted to BLAST-Lite or to Xu by `evaluation/wearfit.py`). Without one they
price Xu's LMO cell at 25 °C analytically, as before the fits existed. `segment_prices` also takes `window`, the
fraction of the usable energy the segments span (the plan's SoC window): a segment is priced for the depth it
really is, so a full-window cycle costs what a cycle of the window's depth costs, not a full-pack cycle's share.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from agent.dispatch.wear_fits import WearFit

ALPHA_SEI = 0.0575
K_SEI = 121.0
K_CAL_PER_S = 4.14e-10
END_OF_LIFE_FADE = 0.2
K_SIGMA = 1.04


def depth_stress(depth: float) -> float:
    """S_δ: damage of one full cycle of depth δ (0..1)."""
    if depth <= 0:
        return 0.0
    return 1.0 / (1.40e5 * min(depth, 1.0) ** -0.501 - 1.23e5)


@lru_cache(maxsize=1)
def damage_at_end_of_life() -> float:
    """f_EOL: the summed damage at which capacity has faded by END_OF_LIFE_FADE (bisection on L(f))."""
    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        fade = 1 - ALPHA_SEI * math.exp(-K_SEI * mid) - (1 - ALPHA_SEI) * math.exp(-mid)
        lo, hi = (mid, hi) if fade < END_OF_LIFE_FADE else (lo, mid)
    return (lo + hi) / 2


def life_per_cycle(depth: float) -> float:
    """Φ(δ): fraction of the pack's life one full cycle of depth δ uses."""
    return depth_stress(depth) / damage_at_end_of_life()


def segment_prices(
    replacement_cost: float,
    nominal_wh: float,
    soh: float,
    efficiency: float,
    segments: int,
    *,
    window: float = 1.0,
    model: WearFit | None = None,
) -> np.ndarray:
    """m_j, currency per kWh discharged from segment j (1 = shallowest), non-decreasing.

    `replacement_cost` is the whole pack's (currency). An aged pack (lower SoH) has less usable energy per segment,
    so the same life fraction is spread over fewer kWh: it costs more per kWh, as the issue asks. The J segments
    split `window` × the usable energy (the plan's SoC window, max_wh − min_wh over usable), so segment j spans
    cycle depths (j−1)·w/J .. j·w/J and is priced for them. `model`: the pack's fitted wear (None: Xu's LMO cell).
    """
    usable_kwh = nominal_wh * soh / 1000.0
    if usable_kwh <= 0 or replacement_cost <= 0 or window <= 0:
        return np.zeros(segments)
    window = min(window, 1.0)
    life = model.cycle_life if model is not None else np.vectorize(life_per_cycle)
    bounds = np.asarray(life(window * np.arange(segments + 1) / segments), dtype=float)
    segment_kwh = window * usable_kwh / segments
    prices = replacement_cost * np.diff(bounds) / (segment_kwh * efficiency)
    return np.maximum.accumulate(prices)  # convexify: see module docstring


def shallow_cycle_price(
    replacement_cost: float,
    nominal_wh: float,
    soh: float,
    efficiency: float,
    depth: float,
    *,
    model: WearFit | None = None,
) -> float:
    """Currency per kWh discharged in half cycles of `depth` (fraction of usable energy), as when following a
    regulation signal.

    Xu's depth stress is concave at small depths: per kWh, a 1 %-deep cycle ages the cell 3.1x as much as a
    25 %-deep one (S_δ(δ)/δ), so the cheapest segment price of `segment_prices` would understate regulation wear
    several times over. Same units and SoH scaling as `segment_prices`. With `model`, the fitted regulation
    protocol's life per unit of depth at this swing depth (docs/wear.md).
    """
    usable_kwh = nominal_wh * soh / 1000.0
    depth = min(max(depth, 1e-4), 1.0)  # below 0.01 %, S_δ(δ)/δ grows without bound: such wiggles are not cycles
    if usable_kwh <= 0 or replacement_cost <= 0:
        return 0.0
    per_depth = model.shallow_life_per_depth(depth) if model is not None else life_per_cycle(depth) / depth
    return replacement_cost * per_depth / (usable_kwh * efficiency)


def calendar_price_per_wh_h(replacement_cost: float, capacity_wh: float, *, model: WearFit | None = None) -> float:
    """Marginal calendar-ageing cost of holding one more Wh for one hour (currency), from the SoC-stress slope.

    `capacity_wh` is the energy a SoC of 1 stands for: the usable energy (nominal × SoH), as a device's SoC is a
    fraction of what the pack holds now, and the calendar stress is a function of that SoC; so an aged pack's Wh moves
    its SoC further and costs more. Calendar damage per second is k_t·exp(1.04(σ−0.5)); linearised around σ = 0.5
    its SoC-dependent part is k_t·1.04·σ, i.e. per Wh held: k_t·1.04/capacity. Priced by the pack's replacement
    cost over f_EOL. With `model`, the slope of its calendar rate fitted linear in SoC over the 10–90 % window
    (docs/wear.md).
    """
    if capacity_wh <= 0:
        return 0.0
    if model is not None:
        # the LP takes a non-negative calendar price; every fitted slope is positive (fits.json), the clamp is a guard
        return replacement_cost * max(model.calendar_slope_per_h, 0.0) / capacity_wh
    per_hour = K_CAL_PER_S * 3600.0 * K_SIGMA / capacity_wh
    return replacement_cost * per_hour / damage_at_end_of_life()


BEND_TOLERANCE = 1e-4


def calendar_bends(
    replacement_cost: float, capacity_wh: float, model: WearFit | None
) -> tuple[float, tuple[tuple[float, float], ...]]:
    """The calendar price as a convex piecewise-linear cost of the energy held: (price per Wh·h below the first
    bend, ((bend Wh, extra price per Wh·h above it), ...)), every extra ≥ 0.

    From the fit's convex curve (wear_fits: the closest convex, non-decreasing curve to the model's calendar rate
    over the SoC grid): the first slope is the price from SoC 0, each grid SoC where the slope rises is a bend at
    that SoC of `capacity_wh`, the usable energy (the SoC a device reports), and each slope is priced per Wh of it
    (`calendar_price_per_wh_h`'s rule). Beyond the grid the end slopes go on. Without a model or a convex curve: the
    line, no bends. Why convex: BLAST-Lite's NMC ages 0.4 % of a life a year at SoC 0.2 and 24 % at 0.9, which a line
    misses by 65 % of its mean (docs/wear.md); a convex cost is what an LP prices exactly."""
    if model is None or len(model.calendar_socs) < 2 or capacity_wh <= 0:
        return calendar_price_per_wh_h(replacement_cost, capacity_wh, model=model), ()
    socs = model.calendar_socs
    rate = model.calendar_life_per_h(socs)  # the curve the opportunity book counts calendar life by (one rule)
    per_wh = replacement_cost * np.maximum(np.diff(rate) / np.diff(socs), 0.0) / capacity_wh  # per band of the grid
    rises = np.diff(per_wh)
    # a rise below 0.01 % of the steepest slope is the rounding of fits.json's 6 digits (~0.001 % here), not a bend
    real = rises > BEND_TOLERANCE * float(per_wh.max(initial=0.0))
    kept = zip(socs[1:-1], rises, real, strict=True)
    bends = tuple((float(s * capacity_wh), float(r)) for s, r, keep in kept if keep)
    return float(per_wh[0]), bends


def calendar_base_cost_per_h(replacement_cost: float, *, model: WearFit | None = None) -> float:
    """The SoC-independent part of calendar ageing per hour (reported in the breakdown; no decision changes it)."""
    if model is not None:
        return replacement_cost * model.calendar_base_per_h
    return replacement_cost * K_CAL_PER_S * 3600.0 * (1 - K_SIGMA * 0.5) / damage_at_end_of_life()
