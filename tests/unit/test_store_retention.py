"""Nothing the agent keeps grows with history: ended signals leave the book at once and the state file after
`[signals] keep_days`; finished events leave it after `[events] report_keep_days`, with their samples; a stored id
keeps its content; a full disk is an error naming the file, not a crash."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.signals.ingest import SignalIngest
from agent.signals.models import UpDrEvent
from agent.store import Store, StoreError

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def updr(signal_id: str, end: datetime) -> dict[str, object]:
    return UpDrEvent(id=signal_id, start=end - timedelta(hours=1), end=end, requested_increase_w=1000,
                     price_per_kwh=1).model_dump(mode="json")  # fmt: skip


async def test_ended_signals_and_finished_events_are_pruned_after_their_keep_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    old_end, recent_end = NOW - timedelta(days=40), NOW - timedelta(days=1)
    assert await store.add("up_dr", "old", NOW, updr("old", old_end), old_end.timestamp()) == "new"
    assert await store.add("up_dr", "recent", NOW, updr("recent", recent_end), recent_end.timestamp()) == "new"
    await store.save_event("e-old", "up_dr", "completed", {"signal": updr("e-old", old_end)}, old_end.timestamp())
    await store.add_series("e-old", "site", [(1.0, 2.0)])
    await store.save_event("e-open", "up_dr", "active", {"signal": updr("e-open", old_end)}, old_end.timestamp())
    removed = store.prune((NOW - timedelta(days=30)).timestamp(), (NOW - timedelta(days=30)).timestamp())
    assert removed == {"signals": 1, "events": 1}
    assert [i for _, i, _ in store.load()] == ["recent"]
    assert [i for i, *_ in store.load_events()] == ["e-open"]  # an event still open is never pruned
    assert store.load_series("e-old", "site") == []
    store.close()


async def test_the_book_forgets_ended_signals_and_loads_only_live_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    for name, end in (("over", NOW - timedelta(minutes=1)), ("live", NOW + timedelta(hours=2))):
        await store.add("up_dr", name, NOW, updr(name, end), end.timestamp())
    clock = {"now": NOW - timedelta(hours=2)}
    ingest = SignalIngest(None, "p", store, 65536, lambda: clock["now"])
    assert set(ingest.book["up_dr"]) == {"over", "live"}
    clock["now"] = NOW
    assert ingest.forget_ended(NOW) == 1 and set(ingest.book["up_dr"]) == {"live"}
    assert set(SignalIngest(None, "p", store, 65536, lambda: NOW).book["up_dr"]) == {"live"}
    store.close()


async def test_a_stored_id_keeps_its_content(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    end = NOW + timedelta(hours=1)
    first = updr("x", end)
    assert await store.add("up_dr", "x", NOW, first, end.timestamp()) == "new"
    assert await store.add("up_dr", "x", NOW, dict(reversed(first.items())), end.timestamp()) == "duplicate"
    assert await store.add("up_dr", "x", NOW, {**first, "requested_increase_w": 5.0}, end.timestamp()) == "conflict"
    assert store.load()[0][2].count("1000") == 1
    store.close()


async def test_a_full_disk_is_an_error_naming_the_file_and_the_store_recovers(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    end = NOW + timedelta(hours=1)
    with pytest.raises(StoreError, match=r"s\.db.*full"):
        for n in range(200):
            await store.add("up_dr", f"s{n}", NOW, updr(f"s{n}", end), end.timestamp())
    assert store.last_error is not None and "full" in store.last_error
    store._db.execute("PRAGMA max_page_count = 1073741823")
    await asyncio.sleep(0)
    assert await store.add("up_dr", "after", NOW, updr("after", end), end.timestamp()) == "new"
    assert store.last_error is None
    store.close()
