"""Up-DR events follow the area's curtailment days and validate as the agent's UpDrEvent signal."""

from __future__ import annotations

import dataclasses
from datetime import date, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.signals.models import UpDrEvent, parse_signal
from sim_devices.scenarios import AREAS, UpDrEventSpec, generate_prices, generate_updr_events

PRICES = generate_prices(date(2025, 3, 1), 120, seed=21, curtailment_frequency=0.4)


def test_field_names_match_the_signal() -> None:
    assert {f.name for f in dataclasses.fields(UpDrEventSpec)} == set(UpDrEvent.model_fields)


@pytest.mark.parametrize("area", AREAS)
def test_events_only_on_curtailment_days(area: str) -> None:
    events = generate_updr_events(PRICES, area, site_peak_w=80_000.0, seed=1)
    assert [e.start.date() for e in events] == sorted(PRICES.curtailment_days[area])
    assert len({e.id for e in events}) == len(events)
    for e in events:
        assert e.start.date() == e.end.date()
        assert time(8) <= e.start.time() < e.end.time() <= time(16)
        assert e.start.time() <= time(12) and e.end.time() >= time(13)  # overlaps the 0.01 JPY/kWh periods
        assert 0.1 * 80_000 - 10 <= e.requested_increase_w <= 0.5 * 80_000 + 10
        assert 3.0 <= e.price_per_kwh <= 12.0


def test_kyushu_has_events_and_tokyo_none() -> None:
    assert generate_updr_events(PRICES, "Kyushu", 50_000.0, seed=2)
    assert generate_updr_events(PRICES, "Tokyo", 50_000.0, seed=2) == []


def test_json_validates_as_agent_signal() -> None:
    events = generate_updr_events(PRICES, "Kyushu", 50_000.0, seed=3)
    for spec in events:
        signal = parse_signal("up_dr", spec.to_signal_json().encode())
        assert isinstance(signal, UpDrEvent)
        assert signal.id == spec.id and signal.start == spec.start and signal.end == spec.end
        assert signal.requested_increase_w == spec.requested_increase_w
        assert signal.price_per_kwh == spec.price_per_kwh
        assert UpDrEvent.model_validate(spec.to_signal_dict()) == signal


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), peak=st.floats(100.0, 5e6), area=st.sampled_from(AREAS))
def test_any_seed_gives_valid_signals(seed: int, peak: float, area: str) -> None:
    for spec in generate_updr_events(PRICES, area, peak, seed):
        UpDrEvent.model_validate_json(spec.to_signal_json())
        assert spec.start.date() in PRICES.curtailment_days[area]


def test_reproducible() -> None:
    a = generate_updr_events(PRICES, "Kyushu", 50_000.0, seed=4)
    assert a == generate_updr_events(PRICES, "Kyushu", 50_000.0, seed=4)
    assert a != generate_updr_events(PRICES, "Kyushu", 50_000.0, seed=5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown area"):
        generate_updr_events(PRICES, "Okinawa", 50_000.0, seed=0)
    with pytest.raises(ValueError, match="site_peak_w"):
        generate_updr_events(PRICES, "Kyushu", 0.0, seed=0)
