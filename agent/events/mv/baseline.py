"""Baselines for measurement and verification of demand response (what the site would have drawn anyway).

* High 4 of 5 (METI ERAB guideline, REFERENCE.md): of the 5 most recent like-days (same day type, no event on
  them) before the event day, take the 4 with the highest average demand over the event window and average them
  interval by interval; then a same-day adjustment shifts the baseline by the mean difference between the actual
  and the baseline demand over intervals shortly before the event.
* Pre-event average: the mean demand over the intervals just before the event, held flat through the window —
  simpler, for sites without history.

Assumptions made explicit because the guideline leaves them to programme rules: like-days are working days for a
working-day event and weekend days or public holidays for an event on one (the `holidays` package's calendar);
the adjustment window is `adjust_intervals` intervals ending `adjust_gap` intervals before the event start
(defaults 4 and 2: the 2 h ending 1 h before, for 30-min data). Not implemented: programme rules that also drop
like-days of unusually low demand (some utilities drop days below 25 % of the mean).
Demand is in W (+ import) per interval; a day is a 1-D array of intervals (48 for 30-min data).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Mapping, Set
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from agent.events.mv.intervals import Interval, day_profiles, interval_index


class BaselineError(ValueError):
    """Not enough history or bad inputs; the message says what is missing."""


def is_like_day(day: date, event_day: date, holidays: Container[date] = frozenset()) -> bool:
    """Working days are like working days; weekends and public holidays are like each other."""

    def off(d: date) -> bool:
        return d.weekday() >= 5 or d in holidays

    return off(day) == off(event_day)


def high_4_of_5(
    history: Mapping[date, np.ndarray],
    event_day: date,
    window: slice,
    excluded: Set[date] = frozenset(),
    like_day: Callable[[date, date], bool] = is_like_day,
    lookback_days: int = 45,
) -> np.ndarray:
    """The unadjusted High 4 of 5 baseline for the whole event day (every interval)."""
    candidates: list[date] = []
    day = event_day - timedelta(days=1)
    while len(candidates) < 5 and (event_day - day).days <= lookback_days:
        if day in history and day not in excluded and like_day(day, event_day):
            candidates.append(day)
        day -= timedelta(days=1)
    if len(candidates) < 5:
        raise BaselineError(
            f"High 4 of 5 needs 5 like-days without events in the {lookback_days} days before {event_day}; "
            f"found {len(candidates)}"
        )
    ranked = sorted(candidates, key=lambda d: float(np.mean(history[d][window])), reverse=True)
    return np.mean([history[d] for d in ranked[:4]], axis=0)


def same_day_adjustment(
    actual: np.ndarray, baseline: np.ndarray, event_start: int, adjust_intervals: int = 4, adjust_gap: int = 2
) -> float:
    """Mean (actual − baseline) over the adjustment window before the event (W)."""
    end = event_start - adjust_gap
    begin = end - adjust_intervals
    if begin < 0:
        raise BaselineError(f"the adjustment window starts {-begin} intervals before the day: use history of day -1")
    return float(np.mean(actual[begin:end] - baseline[begin:end]))


def pre_event_average(actual: np.ndarray, event_start: int, intervals: int = 4) -> float:
    """Mean demand over the `intervals` intervals right before the event (W)."""
    if event_start - intervals < 0:
        raise BaselineError("not enough intervals before the event for a pre-event average")
    return float(np.mean(actual[event_start - intervals : event_start]))


def delivered_increase(actual: np.ndarray, baseline: np.ndarray, window: slice) -> np.ndarray:
    """Up-DR delivered per interval of the window: demand above the baseline, never negative (W)."""
    return np.maximum(0.0, actual[window] - baseline[window])


def event_baseline(
    history: Iterable[Interval],
    zone: ZoneInfo,
    interval_s: float,
    starts: list[float],
    excluded: Set[date] = frozenset(),
    lookback_days: int = 45,
    holidays: Container[date] = frozenset(),
) -> tuple[dict[float, float], str, str | None]:
    """High 4 of 5 with the same-day adjustment for the intervals starting at `starts` (unix s), from stored history.

    Returns (baseline W per interval start, method used, note). The adjustment needs the event day's own readings
    before the event; without them the unadjusted baseline is used and the note says why. Raises BaselineError
    when there are not 5 complete like-days, so the caller can fall back to the pre-event average.
    """
    complete, every = day_profiles(history, zone, interval_s)
    by_day: dict[date, list[tuple[float, int]]] = {}
    for start in starts:
        day, index = interval_index(start, zone, interval_s)
        by_day.setdefault(day, []).append((start, index))
    baseline: dict[float, float] = {}
    method, note = "high4of5", None
    for number, (day, members) in enumerate(sorted(by_day.items())):
        indexes = [i for _, i in members]
        window = slice(min(indexes), max(indexes) + 1)
        base = high_4_of_5(
            complete, day, window, excluded, lambda d, e: is_like_day(d, e, holidays), lookback_days=lookback_days
        )
        adjustment = 0.0
        if number == 0:  # the adjustment is taken before the event starts, so only on its first day
            actual = every.get(day, np.full(base.shape, np.nan))
            try:
                adjustment = same_day_adjustment(actual, base, min(indexes))
            except BaselineError as exc:
                adjustment, note = math.nan, str(exc)
            if not math.isfinite(adjustment):
                note = note or "no meter readings in the same-day adjustment window"
                method, adjustment = "high4of5_unadjusted", 0.0
        for start, index in members:
            baseline[start] = float(base[index] + adjustment)
    return baseline, method, note


def updr_baseline(
    method: str,
    starts: list[float],
    pre_event_w: float | None,
    history: Iterable[Interval] | None = None,
    zone: ZoneInfo | None = None,
    interval_s: float = 1800.0,
    excluded: Set[date] = frozenset(),
    lookback_days: int = 45,
    holidays: Container[date] = frozenset(),
) -> tuple[dict[float, float], str, str | None]:
    """The one up-DR baseline rule, for the settlement and the planner alike (W per interval start, method, note).

    High 4 of 5 with the same-day adjustment (`event_baseline`) when the event asks for it (`method` "high4of5")
    and `history` allows it; else the pre-event average `pre_event_w` held flat over `starts`, the note saying why.
    The planner calls it with the data it has (no history before it is wired to the store: the site's demand now
    as the pre-event average); the settlement with the meter history. Raises BaselineError when neither is possible.
    """
    note: str | None = None
    if method == "high4of5":
        if history is None or zone is None:
            note = "no interval history: pre-event average used"
        else:
            try:
                return event_baseline(history, zone, interval_s, starts, excluded, lookback_days, holidays)
            except BaselineError as exc:
                note = f"High 4 of 5 not possible ({exc}); pre-event average used"
    if pre_event_w is None:
        raise BaselineError(note or "no site meter reading before the event: no baseline")
    return {start: float(pre_event_w) for start in starts}, "pre_event_average", note
