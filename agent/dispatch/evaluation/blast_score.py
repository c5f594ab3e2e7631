"""A second opinion on capacity fade from NREL BLAST-Lite, when the optional `eval` extra is installed.

The simulator's Xu model (LMO-fitted) is what the optimiser's wear prices are derived from, so scoring fade with
it alone would let the optimiser grade its own homework. BLAST-Lite's empirical cell models (here an LFP/graphite
250 Ah prismatic cell, a typical stationary cell) are fed the same SoC and temperature series. The import is
guarded: the agent's runtime never needs blast-lite (it pins numpy<2 and ~60 dependencies, REFERENCE.md).
"""

from __future__ import annotations

import numpy as np

DEFAULT_CELL = "Lfp_Gr_250AhPrismatic"


def available() -> bool:
    try:
        import blast.models  # noqa: F401
    except ImportError:
        return False
    return True


def blast_fade(time_s: np.ndarray, soc: np.ndarray, temperature_c: float, cell: str = DEFAULT_CELL) -> float | None:
    """Fraction of capacity lost over the series by BLAST-Lite's `cell` model; None without blast-lite."""
    try:
        from blast import models
    except ImportError:
        return None
    if len(time_s) < 2:
        return 0.0
    model = getattr(models, cell)()
    model.simulate_battery_life(
        {
            "Time_s": np.asarray(time_s, dtype=float),
            "SOC": np.clip(np.asarray(soc, dtype=float), 0.0, 1.0),
            "Temperature_C": np.full(len(time_s), float(temperature_c)),
        }
    )
    return float(1.0 - model.outputs["q"][-1])
