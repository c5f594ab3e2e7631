"""The opportunity-cost wear book across restarts (agent/dispatch/wear_book.py, agent/store.py `wear_packs`,
`wear_settlements`): what a pack learnt is on disk and a restarted agent plans with it; a row it cannot read is
logged and the pack starts from its seed; a failing disk leaves the book in memory; old rows go by retention."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.config import AppConfig, AssetConfig, parse_config
from agent.dispatch import runner
from agent.dispatch.build import plan_inputs
from agent.dispatch.runner import Dispatcher
from agent.dispatch.wear_book import WearBook
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement
from agent.store import Store, WearPackRow, WearSettlementRow

R = 3_000_000.0
CAPACITY_WH = 100_000.0
NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
HOUR = 3600.0
DAY = 86_400.0
T0 = NOW.timestamp()


def battery(asset_id: str = "b", chemistry: str | None = None) -> AssetState:
    cfg = AssetConfig(id=asset_id, map="vppsim_battery", rated_charge_w=50_000, rated_discharge_w=50_000,
                      replacement_cost=R, efficiency=0.95, wear_pricing="opportunity", chemistry=chemistry)  # fmt: skip
    state = AssetState(asset_id, AssetKind.BATTERY, cfg, available=True)
    state.measurement = Measurement(asset_id, NOW, 0.0, DeviceStatus.STANDBY, soc=0.8, soh=1.0,
                                    capacity_wh=CAPACITY_WH, energy_import_wh=0.0, energy_export_wh=0.0)  # fmt: skip
    return state


def learn(book: WearBook, state: AssetState, days: int, start_s: float = T0) -> float:
    """A daily cycle (30 kWh bought at 5, 28.5 kWh sold at 8) for `days`, then a discharge of 0.2 of the pack left
    open (the half cycle the next discharge extends); returns when the last period ended."""
    t = start_s
    for _ in range(days):
        book.settle(state, t, t + HOUR, exported_wh=0.0, imported_wh=30_000.0 / 0.95, price_per_kwh=5.0)
        book.settle(state, t + HOUR, t + 2 * HOUR, exported_wh=28_500.0, imported_wh=0.0, price_per_kwh=8.0)
        t += DAY
    book.settle(state, t, t + HOUR, exported_wh=19_000.0, imported_wh=0.0, price_per_kwh=8.0)
    return t + HOUR


def save(book: WearBook, store: Store, now_s: float) -> None:
    """What the dispatcher's background write does, done here in the test's thread."""
    pending = book.unsaved(now_s)
    assert pending is not None
    store.save_wear(pending.packs, pending.settlements, pending.forget_before_ts)
    book.saved(pending)


def learnt_and_saved(path: Path, days: int) -> tuple[AssetState, WearBook, Store, float]:
    """A battery's book that learnt `days` of cycles, saved to a new store at `path` (left open); the end time."""
    state = battery()
    book = WearBook(step_s=HOUR)
    end = learn(book, state, days)
    store = Store(path)
    save(book, store, end)
    return state, book, store, end


def reopened(path: Path, now_s: float) -> WearBook:
    """A new book from the file, as a restarted agent makes it."""
    store = Store(path)
    book = WearBook(step_s=HOUR)
    book.restore(store.load_wear(now_s - book.window_s), store.path)
    store.close()
    return book


def rows(path: Path, table: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    finally:
        db.close()


# -- the book resumes ------------------------------------------------------------------------------------------------


def test_a_book_saved_and_loaded_resumes_its_value_and_its_half_cycle(tmp_path: Path) -> None:
    state, book, store, end = learnt_and_saved(tmp_path / "s.db", 20)
    store.close()
    learnt = book.basis(end)["b"]
    assert learnt != pytest.approx(R, rel=1e-3), "the scenario learns a value other than the seed"

    again = reopened(tmp_path / "s.db", end)
    with capture_logs() as logs:
        assert again.basis(end) == {}  # taken up at the pack's first sight
        assert again.value(state).cost_basis(end) == learnt
        assert again.value(state).history_life(end) == book.value(state).history_life(end)
    assert [(e["event"], e["asset"], e["periods"]) for e in logs] == [("wear.resumed", "b", 41)]
    # the open half cycle resumed too: the next discharge costs the same life in both books
    later = [b.settle(state, end, end + HOUR, exported_wh=9_500.0, imported_wh=0.0, price_per_kwh=8.0)
             for b in (book, again)]  # fmt: skip
    assert later[1] == later[0]
    assert again.basis(end + HOUR) == book.basis(end + HOUR)


def test_only_what_settled_since_the_last_save_is_written(tmp_path: Path) -> None:
    """Periods are appended as they settle, not the whole window rewritten each step."""
    state, book, store, end = learnt_and_saved(tmp_path / "s.db", 3)
    assert book.unsaved(end) is None  # nothing new: no write
    book.settle(state, end, end + HOUR, exported_wh=9_500.0, imported_wh=0.0, price_per_kwh=8.0)
    pending = book.unsaved(end + HOUR)
    assert pending is not None and [s.start_ts for s in pending.settlements] == [end]
    assert [p.rewrite for p in pending.packs] == [False]
    store.save_wear(pending.packs, pending.settlements, pending.forget_before_ts)
    book.saved(pending)
    store.close()
    assert len(rows(tmp_path / "s.db", "wear_settlements")) == 3 * 2 + 1 + 1
    assert reopened(tmp_path / "s.db", end + HOUR).value(state).cost_basis(end + HOUR) == book.basis(end + HOUR)["b"]


def _opportunity_config() -> AppConfig:
    """Energy at 0.5 per kWh: the pack earns less than R per life, so its basis moves below R (cost_basis caps at R)."""
    return parse_config(
        "[control]\nmode = 'dispatch'\n[dispatch]\nstep_s = 3600\nhorizon_steps = 4\ndefault_price_per_kwh = 0.5\n"
        f"[[assets]]\nid = 'b'\nmap = 'vppsim_battery'\nrated_charge_w = 50000\nrated_discharge_w = 50000\n"
        f"replacement_cost = {R}\nwear_pricing = 'opportunity'\n"
    )


def _fleet(config: AppConfig, at: datetime, soc: float, exported_wh: float) -> Fleet:
    state = AssetState("b", AssetKind.BATTERY, config.assets[0], available=True)
    state.measurement = Measurement("b", at, 0.0, DeviceStatus.STANDBY, soc=soc, soh=1.0, capacity_wh=CAPACITY_WH,
                                    energy_import_wh=0.0, energy_export_wh=exported_wh)  # fmt: skip
    return Fleet({"b": state})


async def _learning_dispatcher(config: AppConfig, store: Store, clock: list[datetime]) -> Dispatcher:
    """A dispatcher that re-plans twice, the pack exporting 19 kWh at the plan's price between: its book learns."""
    d = Dispatcher(config, lambda: clock[0], store=store)
    fleet = _fleet(config, clock[0], 0.8, 0.0)
    assert await d.replan(fleet, 0.0) is not None
    clock[0] += timedelta(hours=1)
    state = fleet.assets["b"]
    assert state.measurement is not None
    state.measurement = replace(state.measurement, at=clock[0], soc=0.6, energy_export_wh=19_000.0)
    assert await d.replan(fleet, 0.0) is not None
    return d


async def test_a_restarted_dispatcher_plans_with_the_value_its_book_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _opportunity_config()
    clock = [NOW]
    store = Store(tmp_path / "s.db")
    d = await _learning_dispatcher(config, store, clock)
    try:
        await d.flush_wear()
    finally:
        await d.aclose()
    learnt = d.wear.basis(clock[0].timestamp())["b"]
    assert learnt != pytest.approx(R, rel=1e-3)
    store.close()

    seen: list[dict] = []

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(dict(kwargs))
        return plan_inputs(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "plan_inputs", recording)
    clock[0] += timedelta(minutes=10)  # the restart
    store = Store(tmp_path / "s.db")
    restarted = Dispatcher(config, lambda: clock[0], store=store)
    try:
        assert await restarted.replan(_fleet(config, clock[0], 0.6, 19_000.0), 0.0) is not None
    finally:
        await restarted.aclose()
        store.close()
    assert seen[0]["wear_basis"]["b"] == pytest.approx(learnt, rel=1e-12)


# -- rows it cannot take up ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "change", "error"),
    [
        ("wear_packs", "format = 2", r"format 2 is not the one this agent reads \(1\)"),
        ("wear_packs", "state = '{\"life_measure\": '", r"corrupt row: JSONDecodeError"),
        ("wear_packs", "state = '[1, 2]'", r"corrupt row: TypeError"),
        ("wear_packs", "state = json_set(state, '$.run_depth', 7)", r"run_depth 7\.0 is not a depth in 0\.\.1"),
        ("wear_packs", "state = json_set(state, '$.life_measure.chemistry', 'nmc')", r"measured for another pack"),
        ("wear_settlements", "life_used = -1 WHERE start_ts = (SELECT max(start_ts) FROM wear_settlements)",
         r"life_used must be a life fraction >= 0"),
        ("wear_settlements", "revenue = 'lots'", r"corrupt row: ValueError"),
    ],
)
def test_a_row_it_cannot_take_up_is_logged_and_the_pack_starts_from_its_seed(
    tmp_path: Path, table: str, change: str, error: str
) -> None:
    path = tmp_path / "s.db"
    state = battery()
    book = WearBook(step_s=HOUR)
    end = learn(book, state, 5)
    store = Store(path)
    save(book, store, end)
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"UPDATE {table} SET {change}")
    db.commit()
    db.close()

    again = reopened(path, end)
    with capture_logs() as logs:
        assert again.value(state).cost_basis(end) == R
    (ignored,) = [e for e in logs if e["event"] == "wear.stored_ignored"]
    assert ignored["asset"] == "b" and str(path) in ignored["where"] and "wear_packs" in ignored["where"]
    assert re.search(error, ignored["error"]), ignored["error"]
    # its first save replaces the rows it could not read
    again.settle(state, end, end + HOUR, exported_wh=9_500.0, imported_wh=0.0, price_per_kwh=8.0)
    store = Store(path)
    save(again, store, end + HOUR)
    store.close()
    assert [(r[0], r[1]) for r in rows(path, "wear_packs")] == [("b", 1)]
    assert [r[1] for r in rows(path, "wear_settlements")] == [end]
    assert reopened(path, end + HOUR).value(state).cost_basis(end + HOUR) == again.basis(end + HOUR)["b"]


def test_a_pack_with_another_chemistry_does_not_take_up_the_old_packs_book(tmp_path: Path) -> None:
    """A life fraction of another fit is another unit: the config's chemistry changed, the book starts afresh."""
    book = WearBook(step_s=HOUR)
    end = learn(book, battery(), 5)
    store = Store(tmp_path / "s.db")
    save(book, store, end)
    store.close()
    with capture_logs() as logs:
        assert reopened(tmp_path / "s.db", end).value(battery(chemistry="nmc")).cost_basis(end) == R
    assert [e["event"] for e in logs] == ["wear.stored_ignored"]
    assert "measured for another pack" in logs[0]["error"]


def test_rows_of_the_cycling_only_measure_are_ignored_and_the_new_measure_resumes(tmp_path: Path) -> None:
    """Rows an agent wrote before calendar life was counted hold cycling life only, another unit: a pack must not mix
    them into a denominator of total life. They are logged and ignored; what the pack then saves resumes."""
    path = tmp_path / "s.db"
    store = Store(path)
    old_state = '{"life_measure":{"chemistry":"lfp","source":"blast","temperature_c":25.0},"run_depth":0.2}'
    store.save_wear([WearPackRow("b", 1, T0 + 2 * HOUR, old_state, True)],
                    [WearSettlementRow("b", T0, T0 + HOUR, -157.9, 0.0),
                     WearSettlementRow("b", T0 + HOUR, T0 + 2 * HOUR, 228.0, 5.0e-5)], T0 - 90 * DAY)  # fmt: skip
    store.close()
    state = battery()
    book = reopened(path, T0 + 2 * HOUR)
    with capture_logs() as logs:
        assert book.value(state).cost_basis(T0 + 2 * HOUR) == R
    assert [e["event"] for e in logs] == ["wear.stored_ignored"]
    assert "rule 1 (cycling only)" in logs[0]["error"], logs[0]["error"]
    assert book.packs["b"].run_depth == 0.0  # nor is the old half cycle taken up
    # the pack's own rows, of this measure, replace the old ones and are taken up after a restart
    end = learn(book, state, 3, start_s=T0 + 2 * HOUR)
    store = Store(path)
    save(book, store, end)
    store.close()
    assert min(r[1] for r in rows(path, "wear_settlements")) == T0 + 2 * HOUR  # the old rows are gone
    with capture_logs() as logs:
        again = reopened(path, end)
        assert again.value(state).cost_basis(end) == book.basis(end)["b"] != R
    assert [e["event"] for e in logs] == ["wear.resumed"]


# -- a failing disk --------------------------------------------------------------------------------------------------


async def test_a_full_disk_keeps_the_book_in_memory_and_a_later_write_saves_all_it_missed(tmp_path: Path) -> None:
    config = _opportunity_config()
    clock = [NOW]
    store = Store(tmp_path / "s.db")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # full: no new page for the wear rows
    with capture_logs() as logs:
        d = await _learning_dispatcher(config, store, clock)
        try:
            # 85 days more: more rows than the tables' empty pages hold
            end = learn(d.wear, battery(), 85, start_s=clock[0].timestamp())
            clock[0] = datetime.fromtimestamp(end, UTC)
            await d.flush_wear()
            learnt = d.wear.basis(clock[0].timestamp())["b"]
            assert learnt != pytest.approx(R, rel=1e-3)  # planned with what it learnt, from memory
            assert store.last_error is not None and "save wear book" in store.last_error
            await d.flush_wear()  # failing again: not logged again
            store._db.execute("PRAGMA max_page_count = 1073741823")  # space again
            await d.flush_wear()
        finally:
            await d.aclose()
    failed = [e for e in logs if e["event"] == "wear.store_failed"]
    assert len(failed) == 1 and str(tmp_path / "s.db") in failed[0]["error"] and "full" in failed[0]["error"]
    assert store.last_error is None
    store.close()
    again = reopened(tmp_path / "s.db", clock[0].timestamp())
    assert again.value(battery()).cost_basis(clock[0].timestamp()) == pytest.approx(learnt, rel=1e-12)


async def test_a_read_only_state_file_still_resumes_the_book_and_the_agent_plans_on(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    book = WearBook(step_s=HOUR)
    end = learn(book, battery(), 5)
    store = Store(path)
    save(book, store, end)
    store._db.execute("PRAGMA query_only = ON")  # every write refused, as on a read-only mount
    config = _opportunity_config()
    clock = [datetime.fromtimestamp(end, UTC)]
    with capture_logs() as logs:
        d = Dispatcher(config, lambda: clock[0], store=store)
        try:
            assert await d.replan(_fleet(config, clock[0], 0.8, 0.0), 0.0) is not None
            await d.flush_wear()
        finally:
            await d.aclose()
    assert d.wear.basis(end)["b"] == book.basis(end)["b"]
    (failed,) = [e for e in logs if e["event"] == "wear.store_failed"]  # the retention's write, at start
    assert "prune wear book" in failed["error"] and "readonly" in failed["error"]
    store.close()


# -- retention -------------------------------------------------------------------------------------------------------


def test_periods_leave_the_file_with_the_window_and_a_removed_pack_after_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    book = WearBook(step_s=HOUR)
    kept, gone = battery("b"), battery("gone")
    end = learn(book, kept, 5)
    learn(book, gone, 5)
    store = Store(path)
    save(book, store, end)
    assert {r[0] for r in rows(path, "wear_packs")} == {"b", "gone"}
    # 'gone' leaves the config; 'b' settles every day for 91 days
    t = end
    for _ in range(91):
        book.packs.pop("gone", None)
        book.settle(kept, t, t + HOUR, exported_wh=950.0, imported_wh=0.0, price_per_kwh=8.0)
        t += DAY
        save(book, store, t)
    store.close()
    assert [r[0] for r in rows(path, "wear_packs")] == ["b"]
    periods = rows(path, "wear_settlements")
    assert {r[0] for r in periods} == {"b"}
    assert min(r[2] for r in periods) > t - book.window_s  # those that left the window are gone
    assert reopened(path, t).value(kept).cost_basis(t) == pytest.approx(book.basis(t)["b"], rel=1e-12)


def test_a_starting_dispatcher_applies_the_retention(tmp_path: Path) -> None:
    """A pack removed while the agent was down: its rows go at the first start past the window."""
    path = tmp_path / "s.db"
    book = WearBook(step_s=HOUR)
    end = learn(book, battery("gone"), 3)
    store = Store(path)
    save(book, store, end)
    assert rows(path, "wear_packs")
    later = datetime.fromtimestamp(end + 91 * DAY, UTC)
    Dispatcher(_opportunity_config(), lambda: later, store=store)
    store.close()
    assert rows(path, "wear_packs") == [] and rows(path, "wear_settlements") == []
