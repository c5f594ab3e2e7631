"""Synthetic EV sessions: no overlap per charger, sane times and SoC, and valid simulator params."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim_devices.config import EVChargerParams
from sim_devices.scenarios import JST, SessionSpec, generate_sessions, sessions_by_charger, to_sim_params

START = date(2025, 4, 7)  # a Monday


def _check(sessions: list[SessionSpec], start: date, days: int, chargers: int) -> None:
    for s in sessions:
        assert 0 <= s.charger_index < chargers
        assert s.arrival.utcoffset() is not None and s.departure.utcoffset() is not None
        assert s.arrival < s.departure
        assert start <= s.arrival.date() < start + timedelta(days=days)
        assert 40_000 <= s.capacity_wh <= 100_000
        assert 0.0 <= s.arrival_soc <= 1.0
        assert 0.8 <= s.target_soc <= 1.0 and 0.2 <= s.min_soc <= 0.3 and s.target_soc > s.min_soc
    for charger_sessions in sessions_by_charger(sessions).values():
        for a, b in pairwise(charger_sessions):
            assert a.departure <= b.arrival, (a, b)


@settings(max_examples=40, deadline=None)
@given(
    start=st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31)),
    days=st.integers(1, 14),
    chargers=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    mix=st.sampled_from(["workplace", "residential", "mixed"]),
)
def test_sessions_never_overlap_and_stay_in_bounds(start: date, days: int, chargers: int, seed: int,
                                                   mix: str) -> None:
    _check(generate_sessions(start, days, chargers, seed, mix), start, days, chargers)  # type: ignore[arg-type]


def test_workplace_pattern() -> None:
    sessions = generate_sessions(START, 28, 20, seed=1, mix="workplace")
    for s in sessions:
        assert time(7) <= s.arrival.time() <= time(10)
        assert timedelta(hours=6) <= s.departure - s.arrival <= timedelta(hours=10)
    weekday = sum(s.arrival.weekday() < 5 for s in sessions) / (20 * 20)
    weekend = sum(s.arrival.weekday() >= 5 for s in sessions) / (20 * 8)
    assert weekday > 0.7 and weekend < 0.3  # many more sessions on working days; empty days exist
    energy = np.median([s.energy_needed_wh for s in sessions])
    assert 5_000 < energy < 13_000


def test_residential_pattern() -> None:
    sessions = generate_sessions(START, 14, 20, seed=2, mix="residential")
    for s in sessions:
        assert time(17) <= s.arrival.time() <= time(21)
        assert s.departure.date() == s.arrival.date() + timedelta(days=1)
        assert time(6) <= s.departure.time() <= time(8)
    assert len(sessions) < 14 * 20  # some nights the bay stays empty


def test_mixed_has_both_kinds() -> None:
    kinds = {s.kind for s in generate_sessions(START, 7, 12, seed=3)}
    assert kinds == {"workplace", "residential"}


def test_reproducible_and_independent_per_charger() -> None:
    a = generate_sessions(START, 10, 3, seed=4)
    assert a == generate_sessions(START, 10, 3, seed=4)
    assert a != generate_sessions(START, 10, 3, seed=5)
    more = generate_sessions(START, 10, 6, seed=4)
    assert [s for s in more if s.charger_index < 3] == a


def test_to_sim_params_validates_in_the_simulator_config() -> None:
    sessions = generate_sessions(START, 7, 4, seed=6, mix="residential")
    sim_start = datetime.combine(START, time(12), JST)
    for charger_sessions in sessions_by_charger(sessions).values():
        params = to_sim_params(charger_sessions, sim_start)
        config = EVChargerParams.model_validate({"sessions": params})
        assert config.sessions is not None and len(config.sessions) == len(params)
        for p, s in zip(params, charger_sessions, strict=True):
            assert p["arrival_s"] == (s.arrival - sim_start).total_seconds()
            assert p["departure_s"] == (s.departure - sim_start).total_seconds()
            assert p["capacity_kwh"] * 1000 == s.capacity_wh and p["soc"] == s.arrival_soc


def test_to_sim_params_trims_to_the_start() -> None:
    def spec(arrival_h: float, departure_h: float) -> SessionSpec:
        midnight = datetime.combine(START, time(), JST)
        return SessionSpec(0, midnight + timedelta(hours=arrival_h), midnight + timedelta(hours=departure_h),
                           60_000.0, 0.4, 0.9, 0.25)

    sim_start = datetime.combine(START, time(10), JST)
    params = to_sim_params([spec(1, 3), spec(8, 12), spec(13, 15)], sim_start)
    assert [(p["arrival_s"], p["departure_s"]) for p in params] == [(0.0, 7200.0), (10800.0, 18000.0)]
    EVChargerParams.model_validate({"sessions": params})


def test_to_sim_params_rejects_mixed_chargers_and_naive_start() -> None:
    sessions = generate_sessions(START, 3, 2, seed=7, mix="residential")
    with pytest.raises(ValueError, match="one charger"):
        to_sim_params(sessions, datetime.combine(START, time(), JST))
    with pytest.raises(ValueError, match="timezone-aware"):
        to_sim_params(sessions[:1], datetime.combine(START, time()))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="chargers"):
        generate_sessions(START, 1, 0, seed=0)
    with pytest.raises(ValueError, match="mix"):
        generate_sessions(START, 1, 1, seed=0, mix="depot")  # type: ignore[arg-type]
