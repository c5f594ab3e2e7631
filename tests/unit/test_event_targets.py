"""What active events ask of the control loop: targets add up, awards shift plans, stale frequency falls back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.config import EventSettings
from agent.events.lifecycle import Event, EventManager, EventState
from agent.fleet import Fleet
from agent.signals.models import AsActivation, AsAward, GridFrequency, UpDrEvent
from agent.store import Store

NOW = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def manager(tmp_path, **settings: object) -> EventManager:
    return EventManager(Store(tmp_path / "s.db"), Fleet(assets={}), EventSettings(**settings))  # type: ignore[arg-type]


def active(events: EventManager, event: Event, baseline_w: float) -> None:
    event.state, event.baseline_w = EventState.ACTIVE, baseline_w
    events.events[event.id] = event


def award(award_id: str, product: str = "FRR", up_w: float = 10_000, down_w: float = 10_000) -> Event:
    signal = AsAward(id=award_id, product=product, block_start=NOW - timedelta(minutes=1),
                     block_end=NOW + timedelta(hours=1), up_w=up_w, down_w=down_w)  # fmt: skip
    return Event(award_id, "as_award", signal)


async def test_up_dr_and_awards_add_up(tmp_path) -> None:
    events = manager(tmp_path)
    assert events.site_target_w(NOW, 0.0) is None and events.award_shift_w(NOW) is None
    dr = UpDrEvent(id="dr", start=NOW - timedelta(minutes=1), end=NOW + timedelta(hours=1),
                   requested_increase_w=20_000, price_per_kwh=3, baseline_method="pre_event_average")  # fmt: skip
    active(events, Event("dr", "up_dr", dr), 5_000)
    active(events, award("a1"), 5_000)
    active(events, award("a2"), 5_000)
    await events.receive("as_activation", AsActivation(id="x1", award_id="a1", at=NOW, value=1.0), NOW)
    await events.receive("as_activation", AsActivation(id="x2", award_id="a2", at=NOW, value=-0.5), NOW)
    # 5 kW + 20 kW up-DR, then a1 delivers 10 kW (imports less) and a2 absorbs 5 kW
    assert events.site_target_w(NOW, 0.0) == pytest.approx(25_000 - 10_000 + 5_000)
    assert events.award_shift_w(NOW) is None  # with an up-DR active the site target owns the meter
    del events.events["dr"]
    assert events.award_shift_w(NOW) == pytest.approx(10_000 - 5_000)
    assert events.site_target_w(NOW, 0.0) == pytest.approx(5_000 - 5_000)


async def test_frequency_readings_out_of_order_or_stale_are_ignored_and_silence_returns_to_zero(tmp_path) -> None:
    events = manager(tmp_path, rated_w=400_000.0, frequency_timeout_s=10.0)
    active(events, award("fcr", product="FCR", up_w=40_000, down_w=40_000), 5_000)

    async def reading(n: int, hz: float, at: datetime, now: datetime) -> None:
        await events.receive("frequency", GridFrequency(id=f"f{n}", at=at, frequency_hz=hz), now)

    await reading(1, 49.5, NOW, NOW)
    assert events.activation["fcr"] == 1.0
    await reading(2, 50.0, NOW - timedelta(seconds=1), NOW)  # older than the one applied: a replay
    assert events.activation["fcr"] == 1.0
    await reading(3, 50.0, NOW - timedelta(seconds=30), NOW + timedelta(seconds=1))  # stale
    assert events.activation["fcr"] == 1.0
    await events.tick(NOW + timedelta(seconds=5))
    assert events.activation["fcr"] == 1.0  # within the timeout: the response holds
    await events.tick(NOW + timedelta(seconds=11))
    assert events.activation["fcr"] == 0.0  # the relay went silent: no response rather than a stuck one


async def test_an_active_award_resumes_with_its_activation_and_samples(tmp_path) -> None:
    events = manager(tmp_path)
    event = award("a1")
    active(events, event, 5_000)
    await events.receive("as_activation", AsActivation(id="x1", award_id="a1", at=NOW, value=0.7), NOW)
    for k in range(10):
        events.observe_site(NOW + timedelta(seconds=k), 5_000 - 7_000)
    await events.flush()
    events.store.close()
    again = manager(tmp_path)
    assert again.activation["a1"] == 0.7 and len(again.events["a1"].samples) == 10
    assert again.site_target_w(NOW, 0.0) == pytest.approx(5_000 - 7_000)
