"""EV sessions at a charger: who is plugged in, from when to when, with what pack and wishes.

Sessions come from an explicit list (scenarios, tests) or from a seeded generator. The generator's mixture is
synthetic (no session data set may be vendored, REFERENCE.md "Data") but shaped like workplace/home charging in
the Caltech ACN paper: a vehicle stays for hours, leaves, and the next one comes after a gap.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EVSession:
    """One plug-in: times in sim seconds from the simulation start; SoC values are fractions."""

    arrival_s: float
    departure_s: float
    capacity_wh: float
    soc: float
    target_soc: float
    min_soc: float

    def __post_init__(self) -> None:
        if self.departure_s <= self.arrival_s:
            raise ValueError(f"session departs at {self.departure_s} s, not after its arrival {self.arrival_s} s")
        if self.capacity_wh <= 0:
            raise ValueError(f"session capacity {self.capacity_wh} Wh must be > 0")
        for name in ("soc", "target_soc", "min_soc"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"session {name} {value} must be within 0..1")


@dataclass(frozen=True, slots=True)
class SessionMixture:
    """The generator's distributions (all uniform). Documented defaults:

    capacity 40–80 kWh, arrival SoC 0.2–0.6, target SoC 0.8, minimum SoC 0.2–0.3, dwell 2–10 h,
    gap between a departure and the next arrival 0.5–4 h.
    """

    capacity_kwh: tuple[float, float] = (40.0, 80.0)
    arrival_soc: tuple[float, float] = (0.2, 0.6)
    target_soc: float = 0.8
    min_soc: tuple[float, float] = (0.2, 0.3)
    dwell_h: tuple[float, float] = (2.0, 10.0)
    gap_h: tuple[float, float] = (0.5, 4.0)


def generate_sessions(
    rng: random.Random, *, start_empty: bool = False, mixture: SessionMixture | None = None
) -> Iterator[EVSession]:
    """An endless, reproducible stream of sessions in time order.

    Unless `start_empty`, the first EV is already plugged in at t = 0 (it arrived earlier: its remaining dwell is
    drawn from the dwell range), so a fresh simulation has flexibility to dispatch at once.
    """
    mix = mixture or SessionMixture()
    t = 0.0 if not start_empty else rng.uniform(*mix.gap_h) * 3600.0
    while True:
        dwell_s = rng.uniform(*mix.dwell_h) * 3600.0
        yield EVSession(
            arrival_s=t,
            departure_s=t + dwell_s,
            capacity_wh=rng.uniform(*mix.capacity_kwh) * 1000.0,
            soc=rng.uniform(*mix.arrival_soc),
            target_soc=mix.target_soc,
            min_soc=rng.uniform(*mix.min_soc),
        )
        t += dwell_s + rng.uniform(*mix.gap_h) * 3600.0
