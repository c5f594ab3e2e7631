"""Whether a per-asset plan holds the energy its reserves need: what the aggregated path cannot promise by
construction (its split shares a group's reserve by power headroom), measured on the executed schedule instead."""

from __future__ import annotations

import numpy as np

from agent.dispatch.inputs import PlanInputs, Reserve


def longest_product(inputs: PlanInputs) -> Reserve:
    """The reserve product whose duration an asset's summed reserve is held for: plans keep no per-product split."""
    return max(inputs.reserves, key=lambda r: r.duration_h)


def reserve_energy_unheld_kwh(inputs: PlanInputs, stored: np.ndarray, up_w: np.ndarray, down_w: np.ndarray) -> float:
    """kWh by which assets fall short, summed over steps, of sustaining their reserves for the longest product.

    At the start and at the end of each step an asset holding up reserve r needs r·duration/η above its floor, and
    one holding down reserve r needs η·r·duration of room below its ceiling (the planner's own energy-headroom rule,
    agent.dispatch.formulation: an activation may come at any moment of the step). A step's shortfall is the larger
    of the two.
    The plan keeps only the reserve summed over products, so the longest awarded duration is assumed: an overstatement
    where a short product (FCR, 5 min) shares a step with a long one.
    """
    if not inputs.reserves or not len(inputs.assets):
        return 0.0
    hours = longest_product(inputs).duration_h
    eta = np.array([a.efficiency for a in inputs.assets])[:, None]
    floor = np.array([a.min_wh for a in inputs.assets])[:, None]
    ceiling = np.array([a.max_wh for a in inputs.assets])[:, None]
    low = np.minimum(stored[:, :-1], stored[:, 1:])  # the step's ends: energy is linear in between
    high = np.maximum(stored[:, :-1], stored[:, 1:])
    short_up = np.maximum(up_w * hours / eta - (low - floor), 0.0)
    short_down = np.maximum(eta * down_w * hours - (ceiling - high), 0.0)
    return float(short_up.sum() + short_down.sum()) / 1000.0
