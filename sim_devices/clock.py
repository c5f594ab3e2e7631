"""Simulation clocks.

The simulator runs faster than real time for scenarios and must be steppable by hand in tests, so every part that
needs "now" takes a clock object instead of calling `time`/`datetime` itself (DESIGN.md §4: an injectable clock).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What the simulator needs from a clock: sim time as a UTC datetime and as seconds since the start."""

    @property
    def start(self) -> datetime: ...

    def now(self) -> datetime: ...

    def seconds(self) -> float: ...


def _aware_utc(start: datetime | None) -> datetime:
    """Normalise a start time to aware UTC; naive datetimes are refused because their zone is a guess."""
    if start is None:
        return datetime.now(UTC)
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"clock start {start.isoformat()} must be timezone-aware")
    return start.astimezone(UTC)


class SimClock:
    """Sim time = start + (monotonic wall time elapsed) * speed.

    Monotonic time keeps sim time from jumping when the host's wall clock is adjusted (NTP on an edge gateway).
    """

    def __init__(self, speed: float = 1.0, start: datetime | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"clock speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self._start = _aware_utc(start)
        self._t0 = time.monotonic()

    @property
    def start(self) -> datetime:
        return self._start

    def seconds(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.seconds())


class ManualClock:
    """A clock that only moves when told to, so tests are deterministic and need no sleeps."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = _aware_utc(start)
        self._elapsed = 0.0

    @property
    def start(self) -> datetime:
        return self._start

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance {seconds!r} s)")
        self._elapsed += seconds

    def seconds(self) -> float:
        return self._elapsed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)
