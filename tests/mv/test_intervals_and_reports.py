"""Meter interval history, the event baseline built from it, and the M&V reports, on hand-made readings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from agent.events.mv.baseline import BaselineError, event_baseline, is_like_day
from agent.events.mv.intervals import Interval, IntervalMeter, day_profiles, interval_index
from agent.events.mv.report import award_report, updr_report
from agent.store import Store

JST = ZoneInfo("Asia/Tokyo")
HALF_HOUR = 1800.0


def ts(day: date, hour: float) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=JST).timestamp() + hour * 3600


def test_interval_meter_holds_readings_splits_at_boundaries_and_leaves_gaps_uncovered() -> None:
    meter = IntervalMeter(HALF_HOUR, max_hold_s=60)
    t0 = 1_800_000_000.0 - 30  # 30 s before an interval boundary (1.8e9 is a multiple of 1800)
    assert meter.add(t0, 1000) == []
    closed = meter.add(t0 + 60, 3000)  # 1000 W held 30 s in each interval
    assert closed == [Interval(t0 - HALF_HOUR + 30, 1000.0, 30.0)]
    closed = meter.add(t0 + 60 + 600, 0)  # 3000 W held only 60 s (max hold): the rest of the 600 s is a gap
    assert closed == []
    last = meter.flush(until_ts=t0 + 60 + 620)
    assert len(last) == 1 and last[0].covered_s == pytest.approx(30 + 60 + 20)
    assert last[0].mean_w == pytest.approx((1000 * 30 + 3000 * 60) / 110)
    assert meter.add(float("nan"), 5) == [] and meter.add(t0, 5) == []  # NaN and out-of-order readings ignored


def test_day_profiles_keep_only_complete_days() -> None:
    day = date(2026, 11, 16)
    items = [Interval(ts(day, k / 2), 1000.0 + k, HALF_HOUR) for k in range(48)]
    items += [Interval(ts(day + timedelta(days=1), k / 2), 5.0, HALF_HOUR) for k in range(47)]  # one missing
    complete, every = day_profiles(items, JST)
    assert list(complete) == [day] and complete[day][47] == 1047.0
    assert np.isnan(every[day + timedelta(days=1)][47])
    assert interval_index(ts(day, 8.25), JST) == (day, 16)


def history(days: dict[date, float], today: date, today_level: float, upto_hour: float) -> list[Interval]:
    items = [Interval(ts(d, k / 2), level, HALF_HOUR) for d, level in days.items() for k in range(48)]
    items += [Interval(ts(today, k / 2), today_level, HALF_HOUR) for k in range(int(upto_hour * 2))]
    return items


def test_public_holidays_are_like_days_of_weekends() -> None:
    holiday = date(2026, 11, 23)  # Monday, 勤労感謝の日
    calendar = {holiday}
    assert is_like_day(holiday, date(2026, 11, 22), calendar)  # a Sunday is like it
    assert not is_like_day(holiday, date(2026, 11, 20), calendar)  # a Friday is not
    assert is_like_day(holiday, date(2026, 11, 20))  # without the calendar it is a plain Monday
    today = date(2026, 11, 24)  # Tuesday: the holiday before it is not one of its like-days
    back = {1: 99_000, 2: 777, 3: 777, 4: 5, 5: 5, 6: 5, 7: 5, 8: 5}  # the holiday, the weekend, 5 working days
    levels = {today - timedelta(days=k): v for k, v in back.items()}
    items = history(levels, today, today_level=5, upto_hour=0)
    baseline, _, _ = event_baseline(items, JST, HALF_HOUR, [ts(today, 13)], holidays=calendar)
    assert baseline[ts(today, 13)] == pytest.approx(5)


def test_like_days_are_ranked_by_their_demand_in_the_event_window() -> None:
    today = date(2026, 11, 20)
    items = []
    for back, (window_level, rest_level) in zip((1, 2, 3, 4, 7), [(6000, 1000)] * 4 + [(2000, 20_000)], strict=True):
        day = today - timedelta(days=back)  # Thu 19 .. Mon 16, then Fri 13 (the weekend is skipped)
        items += [Interval(ts(day, h / 2), window_level if 26 <= h < 30 else rest_level, HALF_HOUR) for h in range(48)]
    starts = [ts(today, 13), ts(today, 14.5)]  # 13:00-15:00: intervals 26-29
    baseline, _, _ = event_baseline(items, JST, HALF_HOUR, starts)
    # the 5th day has the highest whole-day mean but the lowest in the window: it is the one dropped
    assert baseline[starts[0]] == pytest.approx(6000) and baseline[starts[1]] == pytest.approx(6000)


def test_event_baseline_is_high_4_of_5_plus_the_same_day_adjustment() -> None:
    today = date(2026, 11, 20)  # Friday; like-days Mon-Thu and the Friday before, weekend skipped
    levels = {today - timedelta(days=k): v for k, v in {1: 6000, 2: 6000, 3: 6000, 4: 6000, 7: 2000, 8: 9000}.items()}
    starts = [ts(today, 13), ts(today, 13.5)]
    items = history(levels, today, today_level=5500, upto_hour=12)
    baseline, method, note = event_baseline(items, JST, HALF_HOUR, starts, excluded={today - timedelta(days=8)})
    # like-days 19,18,17,16,13 → highest 4 of (6000 x4, 2000) = 6000; adjustment 5500 − 6000
    assert method == "high4of5" and note is None
    assert baseline == {starts[0]: pytest.approx(5500), starts[1]: pytest.approx(5500)}
    # without today's readings before the event: unadjusted, and the note says so
    baseline, method, note = event_baseline(items[: -24], JST, HALF_HOUR, starts)
    assert method == "high4of5_unadjusted" and note and baseline[starts[0]] == pytest.approx(6000)
    with pytest.raises(BaselineError, match="found 4"):
        event_baseline(items, JST, HALF_HOUR, starts, excluded={today - timedelta(days=7), today - timedelta(days=8)})


def test_updr_report_settles_each_interval_against_its_own_baseline() -> None:
    start = 1_800_000_000.0
    samples = [(start + s, 20_000.0 if s < HALF_HOUR else 8_000.0) for s in range(0, 3600, 10)]
    baselines = {start: 10_000.0, start + HALF_HOUR: 10_000.0}
    report = updr_report(samples, lambda t: baselines[t], 10_000, HALF_HOUR, 60, start, start + 3600)
    rows = report["intervals"]
    assert [r["delivered_kwh"] for r in rows] == [pytest.approx(5.0), 0.0]  # a shortfall is not offset
    assert report["requested_kwh"] == pytest.approx(10.0) and report["delivered_fraction"] == pytest.approx(0.5)


def test_award_report_scores_a_follower_and_times_its_steps() -> None:
    start, capacity, baseline = 1_800_000_000.0, 40_000.0, 5000.0
    activations = [(start + 20, 1.0), (start + 80, -0.5), (start + 140, 0.0)]
    samples = []
    for k in range(0, 1450):
        t = start + k * 0.1
        value = 0.0
        for at, v in activations:
            if t >= at + 3:  # follows every step 3 s late
                value = v
        samples.append((t, baseline - value * capacity))
    report = award_report(samples, activations, baseline, capacity, capacity, 10, max_hold_s=5)
    assert report["steps_judged"] == 2 and report["steps_late"] == 0  # the last step is held < 10 s: not judged
    assert report["worst_response_s"] == pytest.approx(3.0, abs=0.11)
    assert report["score"] >= 0.75 and report["up_kwh"] == pytest.approx(40 * 60 / 3600, rel=0.01)  # PJM pass
    idle = award_report([(t, baseline) for t, _ in samples], activations, baseline, capacity, capacity, 10, 5)
    assert idle["score"] < 0.75 and idle["worst_response_s"] == "not reached" and idle["up_kwh"] == 0
    late = award_report(samples, activations, baseline, capacity, capacity, 2, max_hold_s=5)
    assert late["steps_judged"] == late["steps_late"] == 3  # 3 s is too slow for a 2-s product


def follower(activations: list[tuple[float, float]], start: float, seconds: float, lag_s: float) -> list:
    """Meter samples (every 0.5 s) of a site that follows the activations `lag_s` late, 40 kW capacity."""
    samples = []
    for k in range(int(seconds * 2)):
        t = start + k * 0.5
        value = 0.0
        for at, v in activations:
            if t >= at + lag_s:
                value = v
        samples.append((t, 5000.0 - value * 40_000))
    return samples


def test_a_stream_of_frequency_activations_is_judged_by_its_holds() -> None:
    start = 1_800_000_000.0
    rng = np.random.default_rng(3)
    levels = [0.0, 0.8, 0.8, 0.2, -0.6, -0.6, 0.0]  # 30 s each, read every second with a little noise
    stream = [(start + s, levels[s // 30] + float(rng.normal(0, 0.005))) for s in range(len(levels) * 30)]
    on_time = award_report(follower(stream, start, 230, 2), stream, 5000, 40_000, 40_000, 10, 5)
    late = award_report(follower(stream, start, 230, 60), stream, 5000, 40_000, 40_000, 10, 5)
    assert on_time["response_assessed"] and on_time["steps_late"] == 0 and on_time["steps_judged"] == 4
    assert late["steps_judged"] == late["steps_late"] == 4 and late["worst_response_s"] == "not reached"
    ramp = [(start + s, min(1.0, s / 200)) for s in range(230)]  # never holds still: cannot be judged
    assert award_report(follower(ramp, start, 230, 2), ramp, 5000, 40_000, 40_000, 10, 5)["response_assessed"] is False


def test_a_silent_meter_does_not_show_full_delivery() -> None:
    start = 1_800_000_000.0
    samples = [(start + s, 15_000.0) for s in range(0, 1800, 10)]  # readings only in the first of 4 half-hours
    report = updr_report(samples, lambda t: 5_000.0, 10_000, HALF_HOUR, 60, start, start + 7200)
    assert report["delivered_fraction"] == pytest.approx(0.25, abs=0.01)
    assert report["covered_fraction"] == pytest.approx(0.25, abs=0.01)


def test_a_dst_day_is_never_a_complete_like_day() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    day = date(2026, 10, 25)  # 25 hours: clocks go back
    midnight = datetime(2026, 10, 25, tzinfo=berlin).timestamp()
    items = [Interval(midnight + k * HALF_HOUR, 1000.0, HALF_HOUR) for k in range(50)]
    complete, _ = day_profiles(items, berlin)
    assert day not in complete


def test_store_merges_re_closed_intervals_and_prunes_old_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        now = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
        store._add_intervals([Interval(now, 1000, 600), Interval(now - 100 * 86400, 5, 1800)], keep_days=60)
        store._add_intervals([Interval(now, 4000, 200)], keep_days=60)  # the rest of the interval after a restart
        assert store.load_intervals() == [Interval(now, pytest.approx(1750), 800)]
    finally:
        store.close()
