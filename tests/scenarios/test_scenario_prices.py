"""JEPX-format synthetic prices: layout, curtailment marks, shape, reproducibility and the CSV round trip."""

from __future__ import annotations

import csv
from datetime import date, datetime, timedelta
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.signals.models import PriceSeries, parse_signal
from sim_devices.scenarios import AREAS, JEPX_COLUMNS, JST, generate_prices, read_jepx_csv
from sim_devices.scenarios.prices import CURTAILMENT_PERIODS, PERIODS_PER_DAY

WINDOW = list(CURTAILMENT_PERIODS)


def test_window_is_10_to_15_jst() -> None:
    prices = generate_prices(date(2025, 4, 1), 1, seed=0)
    starts = [prices.times[i].time().isoformat("minutes") for i in WINDOW]
    assert starts[0] == "10:00" and starts[-1] == "14:30" and len(starts) == 10


def test_shapes_and_times() -> None:
    prices = generate_prices(date(2025, 4, 1), 3, seed=1)
    n = 3 * PERIODS_PER_DAY
    assert len(prices.times) == n and prices.system.shape == (n,)
    assert list(prices.areas) == list(AREAS) and len(AREAS) == 9
    assert all(a.shape == (n,) for a in prices.areas.values())
    assert prices.times[0] == datetime(2025, 4, 1, tzinfo=JST)
    assert all(t.utcoffset() == timedelta(hours=9) for t in prices.times)
    assert all(b - a == timedelta(minutes=30) for a, b in pairwise(prices.times))
    assert prices.days == [date(2025, 4, 1), date(2025, 4, 2), date(2025, 4, 3)]
    assert set(prices.curtailment_days) == set(AREAS)


def _check_marks(prices) -> None:  # type: ignore[no-untyped-def]
    """0.01 exactly in 10:00–15:00 of a curtailed area's day; prices above 0.01 everywhere else."""
    assert np.all(prices.system > 0.01)
    for area, series in prices.areas.items():
        by_day = series.reshape(-1, PERIODS_PER_DAY)
        curtailed = set(prices.curtailment_days[area])
        for day, row in zip(prices.days, by_day, strict=True):
            outside = np.delete(row, WINDOW)
            assert np.all(outside > 0.01), (area, day)
            if day in curtailed:
                assert np.all(row[WINDOW] == 0.01), (area, day)
            else:
                assert np.all(row[WINDOW] > 0.01), (area, day)
        assert curtailed <= set(prices.curtailment_days["Kyushu"]), f"{area} curtailed without Kyushu"


def test_curtailment_days_marked_and_only_there() -> None:
    prices = generate_prices(date(2025, 3, 1), 90, seed=7, curtailment_frequency=0.5)
    assert len(prices.curtailment_days["Kyushu"]) > 10
    assert prices.curtailment_days["Tokyo"] == []
    assert any(prices.curtailment_days[a] for a in ("Shikoku", "Chugoku", "Tohoku"))
    _check_marks(prices)


@settings(max_examples=25, deadline=None)
@given(
    start=st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31)),
    days=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    frequency=st.floats(0.0, 1.0),
)
def test_curtailment_marks_hold_for_any_input(start: date, days: int, seed: int, frequency: float) -> None:
    _check_marks(generate_prices(start, days, seed, curtailment_frequency=frequency))


def test_default_frequency_is_about_15_percent_of_spring_and_autumn_days() -> None:
    prices = generate_prices(date(2024, 1, 1), 3 * 365, seed=3)
    season = [d for d in prices.days if d.month in (3, 4, 5, 9, 10, 11)]
    off = [d for d in prices.days if d.month not in (3, 4, 5, 9, 10, 11)]
    kyushu = set(prices.curtailment_days["Kyushu"])
    assert 0.11 < sum(d in kyushu for d in season) / len(season) < 0.19
    assert sum(d in kyushu for d in off) / len(off) < 0.07


def test_no_curtailment_when_frequency_zero() -> None:
    prices = generate_prices(date(2025, 4, 1), 60, seed=2, curtailment_frequency=0.0)
    assert all(days == [] for days in prices.curtailment_days.values())
    assert all(np.all(a > 0.01) for a in prices.areas.values())


def test_daily_shape_and_seasonal_level() -> None:
    prices = generate_prices(date(2025, 1, 1), 365, seed=4, curtailment_frequency=0.0)
    by_day = prices.system.reshape(-1, PERIODS_PER_DAY)
    months = np.array([d.month for d in prices.days])
    spring = by_day[months == 4].mean(axis=0)
    night, morning, midday, evening = spring[4:10].mean(), spring[15:18].mean(), spring[23:26].mean(), \
        spring[36:39].mean()
    assert morning > night and evening > morning and midday < night
    assert by_day[months == 1].mean() > by_day[months == 4].mean()
    assert 5.0 < by_day.mean() < 20.0
    # Area prices follow the system price most of the time and split from it part of the time.
    for series in prices.areas.values():
        assert 0.3 < np.mean(series == prices.system) < 0.95


def test_prices_are_quantised_to_a_sen() -> None:
    prices = generate_prices(date(2025, 5, 1), 5, seed=5)
    for series in [prices.system, *prices.areas.values()]:
        assert np.array_equal(series, np.round(series * 100) / 100)


def test_reproducible_and_seed_dependent() -> None:
    a = generate_prices(date(2025, 4, 1), 30, seed=11)
    b = generate_prices(date(2025, 4, 1), 30, seed=11)
    c = generate_prices(date(2025, 4, 1), 30, seed=12)
    assert a.times == b.times and np.array_equal(a.system, b.system)
    assert all(np.array_equal(a.areas[k], b.areas[k]) for k in AREAS)
    assert a.curtailment_days == b.curtailment_days
    assert not np.array_equal(a.system, c.system)


def test_csv_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    prices = generate_prices(date(2025, 4, 1), 20, seed=8, curtailment_frequency=0.6)
    path = tmp_path / "spot_summary.csv"
    prices.to_jepx_csv(path)
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == JEPX_COLUMNS and len(JEPX_COLUMNS) == 12
    body = rows[1:]
    assert len(body) == 20 * PERIODS_PER_DAY
    for i, row in enumerate(body):
        assert row[0] == prices.times[i].strftime("%Y/%m/%d")
        assert int(row[1]) == i % PERIODS_PER_DAY + 1
        assert float(row[2]) == prices.system[i]
        assert [float(v) for v in row[3:]] == [prices.areas[a][i] for a in AREAS]
    back = read_jepx_csv(path)
    assert back.times == prices.times and np.array_equal(back.system, prices.system)
    assert all(np.array_equal(back.areas[a], prices.areas[a]) for a in AREAS)
    assert back.curtailment_days == prices.curtailment_days


def test_csv_in_shift_jis(tmp_path) -> None:  # type: ignore[no-untyped-def]
    prices = generate_prices(date(2025, 10, 1), 2, seed=9)
    path = tmp_path / "sjis.csv"
    prices.to_jepx_csv(path, encoding="cp932")
    assert np.array_equal(read_jepx_csv(path, encoding="cp932").areas["Kyushu"], prices.areas["Kyushu"])


def test_day_as_price_signal() -> None:
    prices = generate_prices(date(2025, 4, 1), 2, seed=10)
    payload = prices.to_signal_json("Kyushu", date(2025, 4, 2))
    signal = parse_signal("prices", payload.encode())
    assert isinstance(signal, PriceSeries)
    assert signal.start == datetime(2025, 4, 2, tzinfo=JST) and len(signal.prices_per_kwh) == 48
    assert signal.prices_per_kwh == list(prices.areas["Kyushu"][48:])
    with pytest.raises(KeyError, match="unknown area"):
        prices.series("Okinawa")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"days": 0}, "days"), ({"curtailment_frequency": 1.5}, "curtailment_frequency"),
     ({"cascade": {"Okinawa": 0.5}}, "unknown areas")],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"start": date(2025, 4, 1), "days": 1, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        generate_prices(**args)
