"""Wear fits per battery chemistry, read from `fits.json` (written by `python -m evaluation.wearfit`).

The planner prices wear with three numbers per pack: a life-per-cycle curve over cycle depth (the cycle-depth
segments come from it), a life-per-cycle curve for the shallow swings of regulation, and a calendar rate in SoC
(a line, and the closest convex curve). `fits.json` holds them per chemistry (each named by the BLAST-Lite cell
model it was fitted to), per source (`blast`: that cell model; `xu`: Xu et al. 2018's LMO model, the same for every
chemistry, so the evaluation can run the planner fitted to either scorer) and per pack temperature. BLAST-Lite is
needed only to write the file, never to read it: the runtime reads plain JSON.

Everything is a fraction of the pack's life (life used: BLAST-Lite fade / 20 %, Xu damage / damage at 20 % fade), so
a price is replacement cost × life fraction / kWh. Between fitted temperatures the curves are interpolated linearly;
outside the fitted range a temperature is refused (the config says so when it is read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

SOURCES = ("blast", "xu")
# The default when a config names no chemistry or temperature (docs/wear.md says why): most stationary packs sold
# today are LFP, 25 °C is the reference of every model fitted, and BLAST-Lite is the independent model.
DEFAULT_CHEMISTRY = "lfp"
DEFAULT_TEMPERATURE_C = 25.0
DEFAULT_SOURCE = "blast"
DATA_FILE = "fits.json"


@dataclass(frozen=True)
class WearFit:
    """One chemistry's wear at one temperature from one source. Depths are fractions of the pack's usable energy."""

    chemistry: str
    source: str
    temperature_c: float
    depths: np.ndarray  # cycle depths, 0 first
    life_per_cycle: np.ndarray  # life fraction one full cycle of each depth uses (centred in the SoC window)
    shallow_depths: np.ndarray  # swing depths of the regulation protocol
    shallow_life_per_cycle: np.ndarray  # life fraction one full swing of each depth uses
    calendar_base_per_h: float  # life fraction per hour at SoC 0 (the linear fit's intercept)
    calendar_slope_per_h: float  # life fraction per hour per unit of SoC
    # the closest convex, non-decreasing curve to the calendar rate (life fraction per hour) at these SoCs
    calendar_socs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calendar_convex_per_h: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def cycle_life(self, depth: float | np.ndarray) -> np.ndarray:
        """Φ(δ): life fraction of one full cycle of depth δ (linear between the fitted depths)."""
        return np.interp(np.clip(depth, 0.0, 1.0), self.depths, self.life_per_cycle)

    def shallow_life_per_depth(self, depth: float) -> float:
        """Life fraction per unit of depth cycled in swings of `depth` (linear in log depth, clamped at the ends)."""
        per_depth = self.shallow_life_per_cycle / self.shallow_depths
        return float(np.interp(np.log(max(depth, 1e-9)), np.log(self.shallow_depths), per_depth))

    def calendar_life_per_h(self, soc: float | np.ndarray) -> np.ndarray:
        """Life fraction per hour a pack held at SoC `soc` (fraction of its usable energy, as a device reports it)
        uses by calendar ageing: the convex curve, linear between its SoCs and its end slopes continued beyond them,
        or the fitted line where the file has no curve. It is the curve whose slope a stationary pack's calendar
        price is (agent.dispatch.degradation.calendar_bends evaluates this), so the planner's calendar price and
        the life the opportunity book counts (agent.dispatch.wear_book) cannot disagree. Never below 0: BLAST-Lite's
        NMC curve, continued below its first SoC with its first slope, would reach 0 just short of SoC 0."""
        s = np.asarray(soc, dtype=float)
        socs, rate = self.calendar_socs, self.calendar_convex_per_h
        if len(socs) < 2:
            return np.maximum(self.calendar_base_per_h + self.calendar_slope_per_h * s, 0.0)
        below = rate[0] + (s - socs[0]) * (rate[1] - rate[0]) / (socs[1] - socs[0])
        above = rate[-1] + (s - socs[-1]) * (rate[-1] - rate[-2]) / (socs[-1] - socs[-2])
        curve = np.where(s < socs[0], below, np.where(s > socs[-1], above, np.interp(s, socs, rate)))
        return np.maximum(curve, 0.0)


def _load_text() -> str:
    return resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def data() -> dict[str, Any]:
    """The parsed data file (cached: it is read once per process)."""
    return json.loads(_load_text())


def chemistries() -> tuple[str, ...]:
    """The chemistries a config may name."""
    return tuple(data()["chemistries"])


def blast_class(chemistry: str | None = None) -> str:
    """The BLAST-Lite cell model a chemistry was fitted to (the evaluation scores fade with the same class)."""
    chemistry = DEFAULT_CHEMISTRY if chemistry is None else chemistry
    check(chemistry, None)
    return str(data()["chemistries"][chemistry]["blast_class"])


def temperature_range() -> tuple[float, float]:
    """The pack temperatures (°C) the fits cover."""
    temps = data()["temperatures_c"]
    return float(min(temps)), float(max(temps))


def check(chemistry: str | None, temperature_c: float | None) -> None:
    """Raise ValueError (one line, naming the bad value and what is allowed) unless both are fitted."""
    if chemistry is not None and chemistry not in chemistries():
        raise ValueError(f"unknown battery chemistry {chemistry!r}: one of {', '.join(chemistries())}")
    lo, hi = temperature_range()
    if temperature_c is not None and not lo <= temperature_c <= hi:
        raise ValueError(f"pack temperature {temperature_c} °C is outside the fitted range {lo:g}..{hi:g} °C")


def _entry(chem: dict[str, Any], source: str, temperature: float) -> dict[str, Any]:
    return chem["fits"][source][f"{temperature:g}"]


@lru_cache(maxsize=256)
def fit(chemistry: str | None = None, temperature_c: float | None = None, source: str | None = None) -> WearFit:
    """The wear fit of a pack; None picks the default (DEFAULT_CHEMISTRY, DEFAULT_TEMPERATURE_C, DEFAULT_SOURCE).

    Between two fitted temperatures every number is interpolated linearly in temperature.
    """
    chemistry = DEFAULT_CHEMISTRY if chemistry is None else chemistry
    temperature_c = DEFAULT_TEMPERATURE_C if temperature_c is None else float(temperature_c)
    source = DEFAULT_SOURCE if source is None else source
    if source not in SOURCES:
        raise ValueError(f"unknown wear source {source!r}: one of {', '.join(SOURCES)}")
    check(chemistry, temperature_c)
    d = data()
    chem = d["chemistries"][chemistry]
    temps = sorted(float(t) for t in d["temperatures_c"])
    hi_i = min(int(np.searchsorted(temps, temperature_c)), len(temps) - 1)
    lo_i = max(hi_i - 1, 0)
    t_lo, t_hi = temps[lo_i], temps[hi_i]
    w = 0.0 if t_hi == t_lo else (temperature_c - t_lo) / (t_hi - t_lo)
    a, b = _entry(chem, source, t_lo), _entry(chem, source, t_hi)

    def mix(key: str) -> np.ndarray:
        return (1 - w) * np.asarray(a[key], dtype=float) + w * np.asarray(b[key], dtype=float)

    return WearFit(
        chemistry=chemistry,
        source=source,
        temperature_c=temperature_c,
        depths=np.concatenate([[0.0], np.asarray(d["depths"], dtype=float)]),
        life_per_cycle=np.concatenate([[0.0], mix("life_per_cycle")]),
        shallow_depths=np.asarray(d["shallow_depths"], dtype=float),
        shallow_life_per_cycle=mix("shallow_life_per_cycle"),
        calendar_base_per_h=float(mix("calendar_base_per_h")),
        calendar_slope_per_h=float(mix("calendar_slope_per_h")),
        calendar_socs=np.asarray(d["calendar_socs"], dtype=float),
        calendar_convex_per_h=mix("calendar_convex_per_h"),  # a mix of two convex curves is convex
    )
