"""What active events ask of the control loop: targets add up, awards shift plans, stale frequency falls back; what
the event manager refuses (unknown awards, activations outside the block, stale, out of order); what survives a
restart; one broken event does not stop the others."""

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


def offer(events: EventManager, signal: AsActivation | GridFrequency, now: datetime) -> str | None:
    """What the signal ingest does with an activation or reading: admit, then apply (None: applied)."""
    kind = "as_activation" if isinstance(signal, AsActivation) else "frequency"
    problem = events.admit(kind, signal, now)
    if problem is None:
        events.apply(signal, now)
    return problem


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
    assert offer(events, AsActivation(id="x1", award_id="a1", at=NOW, value=1.0), NOW) is None
    assert offer(events, AsActivation(id="x2", award_id="a2", at=NOW, value=-0.5), NOW) is None
    # 5 kW + 20 kW up-DR, then a1 delivers 10 kW (imports less) and a2 absorbs 5 kW
    assert events.site_target_w(NOW, 0.0) == pytest.approx(25_000 - 10_000 + 5_000)
    assert events.award_shift_w(NOW) is None  # with an up-DR active the site target owns the meter
    del events.events["dr"]
    assert events.award_shift_w(NOW) == pytest.approx(10_000 - 5_000)
    assert events.site_target_w(NOW, 0.0) == pytest.approx(5_000 - 5_000)


async def test_frequency_readings_out_of_order_or_stale_are_refused_and_silence_returns_to_zero(tmp_path) -> None:
    events = manager(tmp_path, rated_w=400_000.0, frequency_timeout_s=10.0)
    active(events, award("fcr", product="FCR", up_w=40_000, down_w=40_000), 5_000)

    def reading(n: int, hz: float, at: datetime, now: datetime) -> str | None:
        return offer(events, GridFrequency(id=f"f{n}", at=at, frequency_hz=hz), now)

    assert reading(1, 49.5, NOW, NOW) is None
    assert events.activation["fcr"] == 1.0
    assert "older than the last" in (reading(2, 50.0, NOW - timedelta(seconds=1), NOW) or "")  # a replay
    assert events.activation["fcr"] == 1.0
    assert "s old" in (reading(3, 50.0, NOW - timedelta(seconds=30), NOW + timedelta(seconds=1)) or "")  # stale
    assert events.activation["fcr"] == 1.0
    await events.tick(NOW + timedelta(seconds=5))
    assert events.activation["fcr"] == 1.0  # within the timeout: the response holds
    await events.tick(NOW + timedelta(seconds=11))
    assert events.activation["fcr"] == 0.0  # the relay went silent: no response rather than a stuck one


async def test_readings_only_refused_still_let_the_response_fall_back_to_zero(tmp_path) -> None:
    """The timeout runs on the agent's clock from the last reading it took, not on the readings' `at`: a feed that
    goes on sending only refused (stale, replayed) readings is a silent feed."""
    events = manager(tmp_path, rated_w=400_000.0, frequency_timeout_s=10.0)
    active(events, award("fcr", product="FCR", up_w=40_000, down_w=40_000), 5_000)
    assert offer(events, GridFrequency(id="f1", at=NOW + timedelta(seconds=3), frequency_hz=49.0), NOW) is None
    assert events.activation["fcr"] == 1.0
    for k in range(1, 12):  # 50.00 Hz every second, each dated before the one applied: all refused
        now = NOW + timedelta(seconds=k)
        assert offer(events, GridFrequency(id=f"g{k}", at=NOW, frequency_hz=50.0), now) is not None
        await events.tick(now)
    assert events.activation["fcr"] == 0.0


async def test_activations_for_unknown_awards_outside_the_block_stale_or_out_of_order_are_refused(tmp_path) -> None:
    events = manager(tmp_path)
    active(events, award("a1", product="S-FRR"), 5_000)  # block NOW-1min .. NOW+1h, response 300 s
    cases = {
        "no award 'nope'": AsActivation(id="x1", award_id="nope", at=NOW, value=1.0),
        "outside award 'a1''s block": AsActivation(id="x2", award_id="a1", at=NOW - timedelta(minutes=2), value=1),
        "S-FRR allows 300 s": AsActivation(id="x3", award_id="a1", at=NOW, value=1.0),
    }
    later = NOW + timedelta(seconds=301)
    for expected, signal in cases.items():
        assert expected in (events.admit("as_activation", signal, later) or ""), expected
    assert events.activation == {} and "nope" not in events.activation
    assert offer(events, AsActivation(id="x4", award_id="a1", at=NOW + timedelta(seconds=10), value=0.5), later) is None
    problem = offer(events, AsActivation(id="x5", award_id="a1", at=NOW + timedelta(seconds=9), value=-1.0), later)
    assert "older than the one applied" in (problem or "")
    assert events.activation["a1"] == 0.5


async def test_an_active_award_resumes_with_its_activation_and_samples(tmp_path) -> None:
    events = manager(tmp_path)
    event = award("a1")
    active(events, event, 5_000)
    await events._save(event)
    signal = AsActivation(id="x1", award_id="a1", at=NOW, value=0.7)
    assert offer(events, signal, NOW) is None
    await events.store.save_activation("a1", "x1", NOW.timestamp(), 0.7)  # what the ingest stores before its ack
    for k in range(10):
        events.observe_site(NOW + timedelta(seconds=k), 5_000 - 7_000)
    await events.flush()
    events.store.close()
    again = manager(tmp_path)
    again.resume(NOW + timedelta(seconds=30))
    assert again.activation["a1"] == 0.7 and len(again.events["a1"].samples) == 10
    assert again.site_target_w(NOW, 0.0) == pytest.approx(5_000 - 7_000)
    again.store.close()
    stale = manager(tmp_path)
    stale.resume(NOW + timedelta(seconds=301))  # FRR: an activation older than its 300 s response is not resumed
    assert "a1" not in stale.activation


async def test_samples_of_an_active_event_are_on_disk_within_seconds_not_at_the_next_full_save(tmp_path) -> None:
    events = manager(tmp_path)
    event = award("a1")
    active(events, event, 5_000)
    await events._save(event, NOW)
    for k in range(20):
        now = NOW + timedelta(seconds=k)
        events.observe_site(now, 1_000.0 + k)
        await events.tick(now)
    on_disk = events.store.load_series("a1", "site")  # what a kill -9 now would leave
    assert len(on_disk) >= 15  # all but the last SAVE_EVERY_S (5 s) of samples
    assert on_disk == event.samples[: len(on_disk)]


async def test_one_event_that_fails_does_not_stop_the_others(tmp_path) -> None:
    events = manager(tmp_path)
    good = award("good")
    good.state = EventState.SCHEDULED
    bad = award("bad")
    bad.state = EventState.SCHEDULED
    events.events.update(bad=bad, good=good)

    async def broken(event: Event) -> None:
        if event.id == "bad":
            raise ValueError("year 0 is out of range")
        event.baseline_w = 0.0

    events._set_baseline = broken  # type: ignore[method-assign]
    await events.tick(NOW)
    assert bad.state is EventState.FAILED and "year 0" in (bad.reason or "")
    assert good.state is EventState.ACTIVE
    await events.tick(NOW + timedelta(seconds=1))  # and the next tick runs as usual
    assert good.state is EventState.ACTIVE
