"""How a strategy's battery wear is scored: two independent degradation models, one fade -> money rule.

* `xu`: the simulator's own Xu et al. (2018) model (sim_devices.degradation, LMO-fitted, chemistry-agnostic): the fade
  the simulated packs actually accumulated, step by step, while the strategy drove them.
* `blast`: NREL BLAST-Lite's empirical cell model of the pack's chemistry (LFP: `Lfp_Gr_250AhPrismatic`, a
  stationary prismatic cell; NMC: `Nmc111_Gr_Kokam75Ah_Battery`, a large-format pouch), fed the same SoC series
  (step boundaries plus the turning points inside regulating steps) at the pack's temperature. Optional (the `eval`
  extra): it pins numpy<2 and ~60 dependencies, so the agent's runtime never imports it.

Neither is the planner's model: the planner prices wear from agent.dispatch.degradation; scoring with what it was
fitted to would let it grade its own homework. Every table has a column per scorer.

Valuation (one rule for both scorers, fixed before any strategy was compared): a pack is replaced at 20 % fade, so
each unit of fade costs replacement cost / 0.20. Both models front-load fade (Xu's SEI term, BLAST-Lite's
square-root calendar law), so a first year is valued dearly for every strategy alike, calendar ageing included;
strategies are compared by their gain over `uncontrolled`, which bears the same calendar ageing.
"""

from __future__ import annotations

import numpy as np

SCORERS = ("xu", "blast")
END_OF_LIFE_FADE = 0.20
BLAST_CELLS = {"lfp": "Lfp_Gr_250AhPrismatic", "nmc": "Nmc111_Gr_Kokam75Ah_Battery"}


def fade_cost(replacement_cost: float, fade: float) -> float:
    """Currency: the share of a pack's life a fade uses, at its replacement cost (the one valuation rule)."""
    return replacement_cost * fade / END_OF_LIFE_FADE


def blast_available() -> bool:
    try:
        import blast.models  # noqa: F401
    except ImportError:
        return False
    return True


def blast_fade_series(
    time_s: np.ndarray, soc: np.ndarray, temperature_c: float, chemistry: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(time s, fade fraction) at BLAST-Lite's own evaluation points over the series, starting at (0, 0); None
    without blast-lite. Unknown chemistry: ValueError naming the known ones."""
    if chemistry not in BLAST_CELLS:
        raise ValueError(f"no BLAST-Lite cell for chemistry {chemistry!r}; known: {', '.join(BLAST_CELLS)}")
    try:
        from blast import models
    except ImportError:
        return None
    if len(time_s) < 2:
        return np.zeros(1), np.zeros(1)
    model = getattr(models, BLAST_CELLS[chemistry])()
    model.simulate_battery_life(
        {
            "Time_s": np.asarray(time_s, dtype=float),
            "SOC": np.clip(np.asarray(soc, dtype=float), 0.0, 1.0),
            "Temperature_C": np.full(len(time_s), float(temperature_c)),
        }
    )
    t = np.asarray(model.stressors["t_days"], dtype=float)
    fade = 1.0 - np.asarray(model.outputs["q"], dtype=float)
    # BLAST-Lite's evaluation points (one per detected cycle window) carry a time axis that need not end where the
    # input does (2.40 "days" for a 2-day series, measured with 1.1.1): stretched onto the input's span, so the last
    # point is the fade at the series' end and the points in between keep their order
    end = float(np.asarray(time_s, dtype=float)[-1])
    return (t / t[-1] * end if t[-1] > 0 else t), fade
