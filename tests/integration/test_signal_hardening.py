"""One bad signal must not break the agent: absurd values, dates and ids are refused on the ack with a bounded reason,
refused events are never planned, activations must belong to a held award and be fresh and in order, a used id
cannot be rewritten, nothing is judged against an unset clock, and a full disk refuses instead of losing or crashing.

Each runs the whole agent (AgentApp) against a simulated site over Modbus TCP; signals go in through the same entry
the MQTT link and `--signals` use (SignalIngest.receive).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sitekit import eventually
from test_events import payload
from test_events import running as agent

from agent.signals.models import REASON_MAX_CHARS


def window(now: datetime, start_s: float = 60, length_s: float = 600) -> dict[str, str]:
    return {"start": (now + timedelta(seconds=start_s)).isoformat(),
            "end": (now + timedelta(seconds=start_s + length_s)).isoformat()}  # fmt: skip


def bad_payloads(now: datetime) -> list[tuple[str, bytes, str]]:
    """(kind, raw payload, a fragment the reason must hold): what a hostile probe sent, one of each class."""
    ok_dr = {"id": "dr", **window(now), "requested_increase_w": 1000, "price_per_kwh": 1}
    ok_price = {"id": "p", "start": now.isoformat(), "prices_per_kwh": [10.0]}

    def raw(**fields: object) -> bytes:
        return json.dumps(fields).encode()

    return [
        ("prices", raw(**{**ok_price, "prices_per_kwh": [1e308, 5]}), "prices_per_kwh.0"),
        ("up_dr", raw(**{**ok_dr, "start": "0001-01-01T00:00:00+14:00"}), "between 2000 and 2100"),
        ("up_dr", raw(**{**ok_dr, "requested_increase_w": 1e15}), "requested_increase_w"),
        ("up_dr", raw(**{**ok_dr, "requested_increase_w": "123"}), "valid number"),
        ("up_dr", raw(**{**ok_dr, "requested_increase_w": True}), "valid number"),
        ("up_dr", raw(**{**ok_dr, "start": 1_700_000_000}), "valid datetime"),
        ("up_dr", raw(**{**ok_dr, **window(now, start_s=-7200)}), "ended at"),
        ("up_dr", raw(**{**ok_dr, **window(now, start_s=500 * 86400)}), "days ahead"),
        ("as_award", raw(id="a", product="FCR", block_start="2099-01-01T00:00:00Z", block_end="2099-01-01T01:00:00Z",
                         up_w=1000, down_w=1000), "days ahead"),
        ("frequency", raw(id="f", at="2099-01-01T00:00:00Z", frequency_hz=49.0), "ahead of the agent's clock"),
        ("up_dr", b'{"id": "d", "requested_increase_w": ' + b"9" * 5000 + b"}", "not valid JSON"),
        ("up_dr", b'{"id": ' + b"[" * 2000 + b"]" * 2000 + b"}", "not valid JSON"),
        ("up_dr", b'{"id": "\\ud800", "requested_increase_w": 1}', "not valid JSON"),
        ("up_dr", b'{"id": "\xff\xfe"}', "not valid JSON"),
        ("up_dr", raw(**{**ok_dr, "id": "x" * 5000}), "id"),
        ("nonsense", raw(**ok_dr), "unknown signal kind"),
        ("as_activation", raw(id="act", award_id="nobody", at=now.isoformat(), value=1.0), "no award 'nobody'"),
    ]


async def test_absurd_values_dates_and_payloads_are_refused_with_a_bounded_reason(tmp_path: Path) -> None:
    async with agent(tmp_path) as (site, app):
        for kind, raw, fragment in bad_payloads(site.clock.now()):
            ack = await app.ingest.receive(kind, raw)
            assert ack.status == "rejected" and fragment in (ack.reason or ""), (kind, raw[:80], ack.reason)
            assert len(ack.reason or "") <= REASON_MAX_CHARS and len(ack.model_dump_json()) < 1000
            assert ack.signal_id is None or ack.signal_id.isascii()
        assert all(not book for book in app.ingest.book.values())
        assert app.events.activation == {} and app.events.events == {}
        polls = app.loop.fleet.assets["meter"].polls_ok
        await eventually(lambda: app.loop.fleet.assets["meter"].polls_ok > polls + 3, what="still polling")


async def test_a_price_signal_an_older_release_stored_cannot_break_the_optimiser(tmp_path: Path) -> None:
    """Before the bounds, `prices_per_kwh: [1e308, ...]` passed and every plan failed, across restarts."""
    now = datetime.now(UTC)
    state = tmp_path / "s.db"
    async with agent(tmp_path, mode="dispatch") as (_, app):
        await eventually(lambda: app.dispatcher is not None and app.dispatcher.solves > 0, what="first plan")
    with sqlite3.connect(state) as db:  # what the older release kept
        poison = {"id": "old", "start": now.isoformat(), "interval_s": 1800, "prices_per_kwh": [1e308] * 48,
                  "area": "system", "currency": "JPY"}  # fmt: skip
        db.execute("INSERT INTO signals (kind, id, received_at, payload) VALUES ('prices', 'old', ?, ?)",
                   (now.isoformat(), json.dumps(poison)))  # fmt: skip
    async with agent(tmp_path, mode="dispatch") as (_, app):
        assert app.dispatcher is not None and "old" not in app.ingest.book["prices"]
        await eventually(lambda: app.dispatcher.solves > 0, what="plans again")
        assert app.dispatcher.failures == 0
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT COUNT(*) FROM signals WHERE id = 'old'").fetchone()[0] == 0


async def test_an_event_the_fleet_cannot_sustain_is_refused_on_the_ack_and_never_planned(tmp_path: Path) -> None:
    async with agent(tmp_path, mode="dispatch") as (site, app):
        ack = await app.ingest.receive("up_dr", payload(id="huge", **window(site.clock.now()),
                                                        requested_increase_w=900_000, price_per_kwh=5))  # fmt: skip
        assert ack.status == "rejected" and "kW short" in (ack.reason or "")
        assert "huge" not in app.ingest.book["up_dr"] and "huge" not in app.events.events


async def test_a_reused_id_with_other_content_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async with agent(tmp_path) as (site, app):
        first = payload(id="dr", **window(site.clock.now()), requested_increase_w=2000, price_per_kwh=1)
        assert (await app.ingest.receive("up_dr", first)).status == "accepted"
        assert (await app.ingest.receive("up_dr", first)).status == "duplicate"
        other = payload(id="dr", **window(site.clock.now()), requested_increase_w=9000, price_per_kwh=1)
        ack = await app.ingest.receive("up_dr", other)
        assert ack.status == "rejected" and "already names a different up_dr signal" in (ack.reason or "")
        assert app.ingest.book["up_dr"]["dr"].requested_increase_w == 2000
        assert app.events.events["dr"].signal.requested_increase_w == 2000  # type: ignore[union-attr]


async def test_activations_need_a_held_award_a_started_block_freshness_and_order(tmp_path: Path) -> None:
    async with agent(tmp_path) as (site, app):
        now = site.clock.now()
        award = payload(id="a1", product="S-FRR", block_start=now - timedelta(seconds=600),
                        block_end=now + timedelta(hours=1), up_w=10_000, down_w=10_000)  # fmt: skip
        assert (await app.ingest.receive("as_award", award)).status == "accepted"

        async def activation(n: str, award_id: str, at: datetime, value: float) -> str | None:
            ack = await app.ingest.receive("as_activation", payload(id=n, award_id=award_id, at=at, value=value))
            return ack.reason if ack.status == "rejected" else None

        before = now - timedelta(seconds=700)
        assert "outside award 'a1''s block" in (await activation("x0", "a1", before, 1.0) or "")
        for k in range(200):  # junk ids: all refused, none kept
            assert "no award" in (await activation(f"j{k}", f"junk{k}", now, 1.0) or "")
        assert await activation("x1", "a1", now, 0.5) is None
        assert "older than the one applied" in (await activation("x2", "a1", now - timedelta(seconds=1), -1) or "")
        assert "allows 300 s" in (await activation("x3", "a1", now - timedelta(seconds=400), -1) or "")
        assert set(app.events.activation) <= {"a1"} and app.events.activation.get("a1") == 0.5


async def test_signals_wait_for_a_sane_clock_and_the_agent_says_why(tmp_path: Path) -> None:
    """A gateway that boots at 1970 would refuse every signal as over, or accept anything as fresh: it waits."""
    broken = {"on": True}

    def wrong_at_boot(real: Callable[[], datetime]) -> Callable[[], datetime]:
        return lambda: datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC) if broken["on"] else real()

    async with agent(tmp_path, clock=wrong_at_boot) as (site, app):
        await eventually(lambda: "clock" in app.health.reasons, what="degraded: clock")
        assert app.health.state == "degraded" and "1970" in app.health.reasons["clock"]
        signal = payload(id="dr", **window(site.clock.now()), requested_increase_w=2000, price_per_kwh=1)
        pending = asyncio.create_task(app.ingest.receive("up_dr", signal))
        polls = app.loop.fleet.assets["meter"].polls_ok
        await eventually(lambda: app.loop.fleet.assets["meter"].polls_ok > polls + 5, what="control runs on")
        assert not pending.done()  # held, neither refused nor taken
        broken["on"] = False  # NTP arrived
        ack = await asyncio.wait_for(pending, 15)
        assert ack.status == "accepted"
        await eventually(lambda: "clock" not in app.health.reasons, what="clock reason cleared")


async def test_a_full_disk_refuses_signals_with_the_reason_and_the_agent_runs_on(tmp_path: Path) -> None:
    async with agent(tmp_path) as (site, app):
        db = app.store._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full" from here on
        big = payload(id="dr1", **window(site.clock.now()), requested_increase_w=2000, price_per_kwh=1,
                      baseline_method="pre_event_average")  # fmt: skip
        rejected = 0
        for n in range(50):  # pages still have room for a few rows; fill them
            ack = await app.ingest.receive("up_dr", big.replace(b'"dr1"', f'"dr{n}"'.encode()))
            if ack.status == "rejected":
                assert "not stored" in (ack.reason or "") and "full" in (ack.reason or "")
                rejected += 1
                break
        assert rejected == 1
        await eventually(lambda: "store" in app.health.reasons, what="degraded: store")
        polls = app.loop.fleet.assets["meter"].polls_ok
        await eventually(lambda: app.loop.fleet.assets["meter"].polls_ok > polls + 3, what="control runs on")
        db.execute("PRAGMA max_page_count = 1073741823")  # room again
        ack = await app.ingest.receive("up_dr", big.replace(b'"dr1"', b'"after"'))
        assert ack.status == "accepted"
        await eventually(lambda: "store" not in app.health.reasons, what="store reason cleared")


@pytest.mark.parametrize("hz", [49.0])
async def test_a_future_dated_frequency_reading_cannot_lock_fcr(tmp_path: Path, hz: float) -> None:
    async with agent(tmp_path) as (site, app):
        now = site.clock.now()
        award = payload(id="fcr", product="FCR", block_start=now, block_end=now + timedelta(hours=1),
                        up_w=10_000, down_w=10_000)  # fmt: skip
        assert (await app.ingest.receive("as_award", award)).status == "accepted"
        await eventually(lambda: app.events.events["fcr"].state.value == "active", what="award active")
        future = await app.ingest.receive("frequency", payload(id="f0", at="2099-01-01T00:00:00Z", frequency_hz=hz))
        assert future.status == "rejected"
        ack = await app.ingest.receive("frequency", payload(id="f1", at=site.clock.now(), frequency_hz=hz))
        assert ack.status == "accepted" and app.events.activation["fcr"] > 0
        ack = await app.ingest.receive("frequency", payload(id="f2", at=site.clock.now(), frequency_hz=50.0))
        assert ack.status == "accepted" and app.events.activation["fcr"] == 0.0


async def test_a_check_that_fails_unexpectedly_refuses_the_signal_and_the_next_one_is_taken(tmp_path: Path) -> None:
    """A bug in one check (here an admission hook that raises) must cost that signal only: it is answered
    `rejected`, and the ingest takes the next one. Before, the exception escaped with no ack at all."""
    async with agent(tmp_path) as (site, app):
        def broken(kind: str, signal: object, now: datetime) -> str | None:
            if getattr(signal, "id", "") == "boom":
                raise ZeroDivisionError("a bug in a check")
            return None

        app.ingest.admission.insert(0, broken)
        now = site.clock.now()
        event = {**window(now), "requested_increase_w": 1000, "price_per_kwh": 1}
        first = await app.ingest.receive("up_dr", payload(id="boom", **event))
        assert first.status == "rejected" and "could not be checked (ZeroDivisionError)" in (first.reason or "")
        second = await app.ingest.receive("up_dr", payload(id="fine", **event))
        assert second.status == "accepted" and "boom" not in app.ingest.book["up_dr"]
