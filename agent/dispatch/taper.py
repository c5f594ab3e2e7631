"""The charge taper (CC-CV) of a pack: where it starts, learnt from the live limits, and what it lets a step store.

A BMS holds the charge power at its rating up to a knee SoC, then lowers it as the pack fills (constant voltage).
The planner used to assume the rating up to full, left charging to the last cheap hours, and the taper made those
hours store too little: EVs left short. The agent cannot read the knee from a device, and must not copy the
simulator's (evaluation/agent_view.py): it takes the asset's config (`AssetConfig.charge_taper_soc`) when given,
else learns it here from what every poll already carries, the live charge limit next to the SoC.

The model is the generic linear taper: the limit falls from the rating P at the knee k to 0 at full, so at SoC s
above the knee limit = P·(1 − s)/(1 − k), and one observation gives k = 1 − (1 − s)·P/limit. A limit lowered for
another reason (heat, a grid code, a car that takes less than the charger gives) is steady where a taper falls with
SoC: read at two SoCs it gives two knees (k moves by ΔSoC·P/limit), where a taper gives one. So a reading counts only
once another reading at least `SOC_SPREAD` of SoC away gives the same knee within `KNEE_AGREEMENT`; the estimate is
the median of the readings that counted, so a few odd ones do not move it.

Memory only: a restart learns again from the next sessions that reach the taper (a few per charger).
"""

from __future__ import annotations

import math
import statistics
import weakref
from collections import deque
from datetime import datetime

import numpy as np

from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus

BELOW_RATED = 0.98  # a live charge limit under this fraction of the rating counts as a taper observation
MIN_OBSERVATIONS = 3  # observations an asset needs before its learnt knee is used
OBSERVATIONS_KEPT = 25  # the newest observations per asset the median is taken over
# a reading counts when another one this far away in SoC gives the same knee within KNEE_AGREEMENT: a steady derate
# gives knees that differ by at least the SoC spread (P/limit > 1), a taper one knee up to the limit's noise
SOC_SPREAD = 0.05
KNEE_AGREEMENT = 0.02
CANDIDATES_KEPT = 50  # recent readings per asset a new one is checked against


def knee_from_limit(soc: float, limit_w: float, rated_w: float) -> float | None:
    """The knee SoC a linear taper to 0 at full would need to give `limit_w` at `soc`; None when the reading is no
    taper observation: the limit at (or near) the rating, 0 (full, or cut for another reason), or a knee below 0
    (a derate the taper cannot explain)."""
    values = (soc, limit_w, rated_w)
    if not all(math.isfinite(v) for v in values) or rated_w <= 0 or not 0.0 <= soc < 1.0:
        return None
    if not 0.0 < limit_w < BELOW_RATED * rated_w:
        return None
    knee = 1.0 - (1.0 - soc) * rated_w / limit_w
    return knee if knee >= 0.0 else None


class TaperBook:
    """Knee observations per asset (charger) and the estimate taken from them."""

    def __init__(self) -> None:
        self._knees: dict[str, deque[float]] = {}
        self._candidates: dict[str, deque[tuple[float, float]]] = {}  # (SoC, knee) of recent readings
        self._seen: dict[str, datetime] = {}

    def observe(self, state: AssetState) -> None:
        """Take the state's newest poll of an EV charger as an observation, once per poll (the planner reads the
        fleet several times per poll: on every step and every signal), and only while the asset is available (a
        frozen device's repeated reading would otherwise outvote the real ones)."""
        m = state.measurement
        if state.kind is not AssetKind.EV_CHARGER or not state.available or m is None:
            return
        if self._seen.get(state.id) == m.at:
            return
        self._seen[state.id] = m.at
        if m.status in (DeviceStatus.FAULT, DeviceStatus.NO_EV) or m.soc is None or m.max_charge_w is None:
            return
        knee = knee_from_limit(m.soc, m.max_charge_w, state.rated_charge_w())
        if knee is None:
            return
        candidates = self._candidates.setdefault(state.id, deque(maxlen=CANDIDATES_KEPT))
        if any(abs(m.soc - s) >= SOC_SPREAD - 1e-9 and abs(knee - k) <= KNEE_AGREEMENT for s, k in candidates):
            self._knees.setdefault(state.id, deque(maxlen=OBSERVATIONS_KEPT)).append(knee)
        candidates.append((m.soc, knee))

    def knee(self, asset_id: str) -> float | None:
        """The learnt knee SoC of the asset: the median of its observations once it has MIN_OBSERVATIONS, else None."""
        seen = self._knees.get(asset_id)
        if seen is None or len(seen) < MIN_OBSERVATIONS:
            return None
        return statistics.median(seen)

    def observations(self, asset_id: str) -> int:
        return len(self._knees.get(asset_id, ()))


_BOOKS: dict[int, tuple[weakref.ref[Fleet], TaperBook]] = {}


def taper_book(fleet: Fleet) -> TaperBook:
    """The taper book of this fleet (the agent's one picture of its site), made on first use and dropped with the
    fleet: two fleets (two strategies of one evaluation, two tests) never share what they learnt."""
    key = id(fleet)
    held = _BOOKS.get(key)
    if held is not None and held[0]() is fleet:
        return held[1]
    book = TaperBook()

    def forget(ref: weakref.ref[Fleet]) -> None:
        if _BOOKS.get(key, (None,))[0] is ref:
            del _BOOKS[key]

    _BOOKS[key] = (weakref.ref(fleet, forget), book)
    return book


def held_step_fraction(knee_soc: float, capacity_wh: float, charge_w: float, efficiency: float, step_h: float) -> float:
    """β: the largest share of the room to full, (capacity − energy at the step's start), that one step can store
    while the charge setpoint is held for the step, as the agent holds its plan's power (planner → controller).

    A held setpoint c is delivered in full while the live limit stays at or above it; the limit falls as the pack
    fills, so it must still allow c at the step's end: c ≤ P·(cap − e_end)/(cap·(1 − k)) with e_end = e + η·c·h.
    Solved for the energy stored, η·c·h ≤ x/(1 + x)·(cap − e), x = η·P·h/(cap·(1 − k)): linear in (c, e), so the
    plan stays an LP. Below the knee the bound is above the rating and binds nothing. Charging flat out instead
    (setpoint at the rating, the device cutting it) would store 1 − exp(−x) of the room, more than x/(1 + x), but
    then the step's power is not what the plan says, and the device ends the step short of the plan's energy.
    A knee at 1 (no taper) gives 1: a step stores at most the room."""
    return float(held_step_fractions(knee_soc, capacity_wh, charge_w, efficiency, step_h))


def held_step_fractions(
    knee_soc: np.ndarray | float,
    capacity_wh: np.ndarray | float,
    charge_w: np.ndarray | float,
    efficiency: np.ndarray | float,
    step_h: np.ndarray | float,
) -> np.ndarray:
    """`held_step_fraction` elementwise over arrays (broadcast), the one home of its rule: the aggregated path asks
    for every member and step at once (agent.dispatch.aggregate; a Python call per pair took ~1 s at 100 000 EVs).
    `step_h` may be a fraction of a step (an EV leaving mid-step holds its setpoint for its minutes there only).
    Where there is nothing to hold (no taper, no capacity, no power, no time) it gives 1: the room is the only bound."""
    knee, cap, power, eta, hours = np.broadcast_arrays(
        *(np.asarray(v, dtype=float) for v in (knee_soc, capacity_wh, charge_w, efficiency, step_h))
    )
    held = (knee < 1.0) & (cap > 0) & (power > 0) & (hours > 0)
    x = np.divide(eta * power * hours, cap * (1.0 - knee), out=np.zeros(knee.shape), where=held)
    return np.where(held, x / (1.0 + x), 1.0)
