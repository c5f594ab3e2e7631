"""Site-meter readings turned into fixed intervals (30 min by default): the history baselines are computed from.

The meter is polled every cycle; M&V works in settlement intervals. Each reading is held until the next one (the
meter's value is the best estimate of the power in between), but never for more than `max_hold_s`: when the meter
goes silent the gap is left uncovered instead of being filled with a stale value, and each interval carries how
many seconds it actually covers so a baseline can refuse thin data.

Intervals are aligned to multiples of `interval_s` since the Unix epoch, which are local interval boundaries in
any zone whose UTC offset is a whole number of intervals (JST, +9 h, with 30-min intervals).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    import numpy as np


def interval_start(ts: float, interval_s: float) -> float:
    """Start (unix s) of the interval holding `ts`: the one alignment rule for meter history, baselines and reports."""
    return math.floor(ts / interval_s) * interval_s


def register_energy_by_interval(readings: Iterable[tuple[float, float]], interval_s: float) -> dict[float, float]:
    """Energy (Wh) per interval start from a cumulative register read at the given times, in the order the device
    produced them (an OCPP transaction's seqNo): each increase between two readings is spread evenly over the time
    between them and booked to the intervals that time spans, so readings a device queued while offline count for
    the interval they describe, not the one they arrive in. A register that goes back (a reset) or readings out of
    time order book nothing for that step."""
    booked: dict[float, float] = {}
    previous: tuple[float, float] | None = None
    for ts, wh in readings:
        if previous is not None:
            t0, wh0 = previous
            if ts > t0 and wh >= wh0:
                rate = (wh - wh0) / (ts - t0)
                while t0 < ts:
                    start = interval_start(t0, interval_s)
                    stop = min(ts, start + interval_s)
                    booked[start] = booked.get(start, 0.0) + rate * (stop - t0)
                    t0 = stop
        previous = (ts, wh)
    return booked


@dataclass(frozen=True)
class Interval:
    start_ts: float  # unix s, a multiple of the interval length
    mean_w: float  # time-weighted mean over the covered seconds
    covered_s: float


class IntervalMeter:
    """Accumulates (time, W) readings; `add` returns the intervals a reading closed, `flush` the open one."""

    def __init__(self, interval_s: float = 1800.0, max_hold_s: float = 60.0) -> None:
        if interval_s <= 0 or max_hold_s <= 0:
            raise ValueError("interval_s and max_hold_s must be positive")
        self.interval_s = interval_s
        self.max_hold_s = max_hold_s
        self._last: tuple[float, float] | None = None
        self._energy: dict[float, float] = {}  # interval start -> W·s
        self._covered: dict[float, float] = {}

    def add(self, ts: float, watts: float) -> list[Interval]:
        """Take a reading; readings out of order or not finite are ignored (they cannot be placed honestly)."""
        if not math.isfinite(ts) or not math.isfinite(watts):
            return []
        if self._last is not None:
            t0, w0 = self._last
            if ts <= t0:
                return []
            self._hold(t0, min(ts, t0 + self.max_hold_s), w0)
        self._last = (ts, watts)
        current = interval_start(ts, self.interval_s)
        return self._close(lambda start: start < current)

    def flush(self, until_ts: float | None = None) -> list[Interval]:
        """Close every open interval, holding the last reading up to `until_ts` (bounded by `max_hold_s`)."""
        if self._last is not None and until_ts is not None and until_ts > self._last[0]:
            t0, w0 = self._last
            self._hold(t0, min(until_ts, t0 + self.max_hold_s), w0)
            self._last = (until_ts, w0)
        return self._close(lambda start: True)

    def _hold(self, t0: float, t1: float, watts: float) -> None:
        while t0 < t1:
            start = interval_start(t0, self.interval_s)
            stop = min(t1, start + self.interval_s)
            self._energy[start] = self._energy.get(start, 0.0) + watts * (stop - t0)
            self._covered[start] = self._covered.get(start, 0.0) + (stop - t0)
            t0 = stop

    def _close(self, done: Callable[[float], bool]) -> list[Interval]:
        closed = []
        for start in sorted(self._covered):
            if done(start):
                covered = self._covered.pop(start)
                energy = self._energy.pop(start)
                if covered > 0:
                    closed.append(Interval(start, energy / covered, covered))
        return closed


def day_profiles(
    intervals: Iterable[Interval], zone: ZoneInfo, interval_s: float = 1800.0, min_coverage: float = 0.5
) -> tuple[dict[date, np.ndarray], dict[date, np.ndarray]]:
    """Per local day, demand per interval (W): (complete days, every day with NaN where data is missing).

    A day is complete when each of its intervals covers at least `min_coverage` of its length; only complete days
    may serve as baseline like-days (a day with holes would bias the average). Days whose length is not a whole
    number of intervals (DST changes) are left out of the complete set.
    """
    import numpy as np  # deferred: the control process imports this module for Interval, numpy only for baselines

    per_day = round(86400 / interval_s)
    every: dict[date, np.ndarray] = {}
    covered: dict[date, np.ndarray] = {}
    for item in intervals:
        day, index = interval_index(item.start_ts, zone, interval_s)
        if not 0 <= index < per_day:
            continue
        if day not in every:
            every[day] = np.full(per_day, np.nan)
            covered[day] = np.zeros(per_day)
        every[day][index] = item.mean_w
        covered[day][index] = item.covered_s
    complete = {}
    for day, values in every.items():
        # timestamps, not datetimes: same-zone datetime subtraction is wall-clock time and hides a DST day
        length = (datetime.combine(day + timedelta(days=1), datetime.min.time(), zone).timestamp()
                  - datetime.combine(day, datetime.min.time(), zone).timestamp())  # fmt: skip
        if length == 86400 and bool(np.all(covered[day] >= min_coverage * interval_s)):
            complete[day] = values
    return complete, every


def interval_index(ts: float, zone: ZoneInfo, interval_s: float = 1800.0) -> tuple[date, int]:
    """The local day and the interval number within it of a unix time."""
    local = datetime.fromtimestamp(ts, zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    return local.date(), int((ts - midnight.timestamp()) // interval_s)
