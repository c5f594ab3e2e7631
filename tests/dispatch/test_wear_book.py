"""Opportunity-cost wear pricing wired in: the config key, the planner's cost basis, the per-pack book fed from
measured energy, and the running agent's dispatcher planning with what the book learnt."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from agent.config import AppConfig, AssetConfig, ConfigError, parse_config
from agent.dispatch import runner, wear_fits
from agent.dispatch.build import plan_inputs, wear_model
from agent.dispatch.runner import Dispatcher
from agent.dispatch.wear_book import PriceTrack, WearBook
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement
from agent.wiring import asset_problems

R = 3_000_000.0
CAPACITY_WH = 100_000.0
NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
HOUR = 3600.0
DAY = 86_400.0


def battery(soc: float = 0.5, at: datetime = NOW, imported: float | None = None, exported: float | None = None,
            **wear: object) -> AssetState:  # fmt: skip
    cfg = AssetConfig(id="b", map="vppsim_battery", rated_charge_w=50_000, rated_discharge_w=50_000,
                      replacement_cost=R, efficiency=0.95, **wear)  # type: ignore[arg-type]  # fmt: skip
    state = AssetState("b", AssetKind.BATTERY, cfg, available=True)
    state.measurement = Measurement("b", at, 0.0, DeviceStatus.STANDBY, soc=soc, soh=1.0, capacity_wh=CAPACITY_WH,
                                    energy_import_wh=imported, energy_export_wh=exported)  # fmt: skip
    return state


def measure(state: AssetState, at: datetime, soc: float, imported: float | None, exported: float | None) -> None:
    assert state.measurement is not None
    state.measurement = replace(state.measurement, at=at, soc=soc, energy_import_wh=imported, energy_export_wh=exported)


# -- config ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({}, "asset 'b': wear_pricing = 'opportunity' needs a replacement_cost"),
        ({"replacement_cost": R, "wear_price_per_kwh": 5.0}, "asset 'b': .*exclude each other"),
    ],
)
def test_opportunity_pricing_needs_a_replacement_cost_and_no_owner_price(terms: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(
            "[[assets]]\nid = 'b'\nmap = 'vppsim_battery'\nwear_pricing = 'opportunity'\n"
            + "".join(f"{k} = {v}\n" for k, v in terms.items())
        )


def test_opportunity_pricing_with_a_replacement_cost_is_accepted() -> None:
    config = parse_config(f"[[assets]]\nid = 'b'\nmap = 'vppsim_battery'\nwear_pricing = 'opportunity'\n"
                          f"replacement_cost = {R}\n")  # fmt: skip
    assert config.assets[0].wear_pricing == "opportunity"


# -- the planner's cost basis ----------------------------------------------------------------------------------------


def test_a_basis_of_half_the_replacement_cost_halves_every_wear_price() -> None:
    config = AppConfig.model_validate({"dispatch": {"step_s": 900, "horizon_steps": 4, "wear_segments": 4}})
    fleet = Fleet({"b": battery()})
    full, _ = plan_inputs(fleet, config, NOW, {}, 0.0)
    half, _ = plan_inputs(fleet, config, NOW, {}, 0.0, wear_basis={"b": R / 2})
    a, b = full.assets[0], half.assets[0]
    assert a.wear_prices.max() > 0
    assert b.wear_prices == pytest.approx(a.wear_prices / 2)
    assert b.calendar_price_per_wh_h == pytest.approx(a.calendar_price_per_wh_h / 2)
    assert a.activation_wear_per_kwh is not None and b.activation_wear_per_kwh is not None
    assert b.activation_wear_per_kwh == pytest.approx(a.activation_wear_per_kwh / 2)
    other, _ = plan_inputs(fleet, config, NOW, {}, 0.0, wear_basis={"someone-else": R / 2})
    assert other.assets[0].wear_prices == pytest.approx(a.wear_prices)


# -- the book --------------------------------------------------------------------------------------------------------


def test_the_book_settles_the_counters_at_the_plans_price_and_the_life_by_the_packs_fit() -> None:
    state = battery(soc=0.8, imported=1_000.0, exported=2_000.0, wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    prices = PriceTrack(NOW.timestamp(), HOUR, np.array([20.0, 30.0]))
    book.observe(Fleet({"b": state}), NOW.timestamp(), prices)  # the first reading: nothing to settle yet
    assert book.value(state).history_life(NOW.timestamp()) == 0
    later = NOW + timedelta(hours=1)
    # 19 kWh out at the terminals, 0 in; the SoC (0.6) says 20 kWh left the store: the counters win
    measure(state, later, 0.6, 1_000.0, 21_000.0)
    with capture_logs() as logs:
        book.observe(Fleet({"b": state}), later.timestamp(), prices)
    depth = 19_000.0 / 0.95 / CAPACITY_WH
    # the discharge's cycle life, and the hour's calendar life at the mean of the two SoCs read
    life = float(wear_model(state).cycle_life(depth)) + float(wear_model(state).calendar_life_per_h(0.7))
    value = book.value(state)
    assert value.history_life(later.timestamp()) == pytest.approx(life)
    revenue = 19.0 * 20.0
    prior = WearBook.prior_life
    assert value.value_per_life(later.timestamp()) == pytest.approx((revenue + R * prior) / (life + prior))
    assert [e["event"] for e in logs] == ["wear.value_updated"]
    assert logs[0]["asset"] == "b"
    nu = value.value_per_life(later.timestamp())
    assert logs[0]["value_per_life"] == pytest.approx(nu, abs=0.01)
    assert logs[0]["cost_basis"] == pytest.approx(min(nu, R), abs=0.01)  # what the plan prices, capped at R


def test_without_counters_the_stored_energy_change_is_the_measured_energy() -> None:
    state = battery(soc=0.2, wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    prices = PriceTrack(NOW.timestamp(), HOUR, np.array([10.0]))
    book.observe(Fleet({"b": state}), NOW.timestamp(), prices)
    later = NOW + timedelta(minutes=30)
    measure(state, later, 0.3, None, None)  # charged 10 kWh into the store: 10 / 0.95 kWh bought at 10
    book.observe(Fleet({"b": state}), later.timestamp(), prices)
    value = book.value(state)
    # charging uses no cycle life (a cycle is counted on discharge): only the half hour's calendar life at SoC 0.25
    calendar = 0.5 * float(wear_model(state).calendar_life_per_h(0.25))
    assert value.history_life(later.timestamp()) == pytest.approx(calendar)
    prior = WearBook.prior_life
    expected = (-10.0 / 0.95 * 10.0 + R * prior) / (calendar + prior)
    assert value.value_per_life(later.timestamp()) == pytest.approx(expected)


def test_a_discharge_over_several_steps_costs_one_cycle_of_its_whole_depth() -> None:
    state = battery(wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    model = wear_model(state)
    lives = [book.settle(state, k * HOUR, (k + 1) * HOUR, exported_wh=9_500.0, imported_wh=0.0, price_per_kwh=0.0)[1]
             for k in range(3)]  # fmt: skip
    assert sum(lives) == pytest.approx(float(model.cycle_life(0.3)))
    # a charge refills the half cycle by what it stored: refilled whole, the next discharge starts shallow again
    book.settle(state, 3 * HOUR, 4 * HOUR, exported_wh=0.0, imported_wh=30_000.0 / 0.95, price_per_kwh=0.0)
    _, again = book.settle(state, 4 * HOUR, 5 * HOUR, exported_wh=9_500.0, imported_wh=0.0, price_per_kwh=0.0)
    assert again == pytest.approx(lives[0])


def test_the_basis_moves_from_the_replacement_cost_to_what_the_pack_earns_per_life() -> None:
    state = battery(wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    assert book.basis(0.0) == {}  # nothing seen yet
    book.value(state)
    assert book.basis(0.0) == {"b": R}  # seeded from depreciation
    day = 0.0
    for k in range(60):  # a daily cycle: 30 kWh bought at 5, 28.5 kWh sold at 8
        t = k * 86_400.0
        book.settle(state, t, t + HOUR, exported_wh=0.0, imported_wh=30_000.0 / 0.95, price_per_kwh=5.0)
        book.settle(state, t + HOUR, t + 2 * HOUR, exported_wh=28_500.0, imported_wh=0.0, price_per_kwh=8.0)
        day = t + 86_400.0
    per_cycle_revenue = 28.5 * 8.0 - 30.0 / 0.95 * 5.0
    per_cycle_life = float(wear_model(state).cycle_life(0.3))
    own = per_cycle_revenue / per_cycle_life
    basis = book.basis(day)["b"]
    assert own < R / 2, "the scenario is one where the pack's life earns less than it cost"
    prior = WearBook.prior_life
    assert basis == pytest.approx((60 * per_cycle_revenue + R * prior) / (60 * per_cycle_life + prior))
    assert R - basis > (R - own) / 2, "past the prior's weight, the book's own figures have the larger say"


# -- calendar life in the denominator (the marginal value of a unit of life) -----------------------------------------

FITS = json.loads((Path(wear_fits.__file__).parent / "fits.json").read_text(encoding="utf-8"))


def _fitted(chemistry: str) -> dict:
    """The shipped fit a pack of `chemistry` with no temperature or source is priced by (25 °C, BLAST-Lite)."""
    return FITS["chemistries"][chemistry]["fits"]["blast"]["25"]


def _calendar_per_h(chemistry: str, soc: float) -> float:
    """fits.json's convex calendar rate (life per hour) at a grid SoC, read from the file itself."""
    return float(_fitted(chemistry)["calendar_convex_per_h"][FITS["calendar_socs"].index(soc)])


def _idle_day(chemistry: str, soc: float) -> float:
    """Life the book counts for a pack of `chemistry` read at `soc` at both ends of a day it did nothing."""
    state = battery(soc=soc, imported=0.0, exported=0.0, wear_pricing="opportunity", chemistry=chemistry)
    book = WearBook(step_s=HOUR)
    prices = PriceTrack(NOW.timestamp(), HOUR, np.full(24, 20.0))
    book.observe(Fleet({"b": state}), NOW.timestamp(), prices)
    later = NOW + timedelta(days=1)
    measure(state, later, soc, 0.0, 0.0)
    book.observe(Fleet({"b": state}), later.timestamp(), prices)
    return book.value(state).history_life(later.timestamp())


@pytest.mark.parametrize("chemistry", ["lfp", "nmc"])
def test_an_idle_day_uses_the_fits_calendar_life_at_the_packs_soc(chemistry: str) -> None:
    """A pack that moved no energy for a day still used a day of its calendar life: 24 h × the fit's rate at its SoC
    (before, the book counted no life at all for it). Held at 0.2 it ages less; BLAST-Lite's NMC, much less."""
    full = _idle_day(chemistry, 0.9)
    assert full == pytest.approx(24.0 * _calendar_per_h(chemistry, 0.9), rel=1e-9)
    low = _idle_day(chemistry, 0.2)
    assert low == pytest.approx(24.0 * _calendar_per_h(chemistry, 0.2), rel=1e-9)
    assert low < full
    if chemistry == "nmc":
        assert low < full / 20


def test_the_value_of_a_life_counts_calendar_life_in_its_denominator() -> None:
    """ν = (Σ revenue + R·L₀) / (Σ cycling + calendar life + L₀), every number from fits.json: a day of one cycle, an
    hour's charge from SoC 0.5 to 0.8 at 5, 22 h held at 0.8, an hour's discharge of 0.3 of the pack at 8."""
    state = battery(wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    book.settle(state, 0.0, HOUR, exported_wh=0.0, imported_wh=30_000.0 / 0.95, price_per_kwh=5.0,
                soc_start=0.5, soc_end=0.8)  # fmt: skip
    book.settle(state, HOUR, 23 * HOUR, exported_wh=0.0, imported_wh=0.0, price_per_kwh=5.0,
                soc_start=0.8, soc_end=0.8)  # fmt: skip
    book.settle(state, 23 * HOUR, 24 * HOUR, exported_wh=28_500.0, imported_wh=0.0, price_per_kwh=8.0,
                soc_start=0.8, soc_end=0.5)  # fmt: skip
    fitted = _fitted("lfp")
    cycling = fitted["life_per_cycle"][FITS["depths"].index(0.3)]
    at_065 = (_calendar_per_h("lfp", 0.6) + _calendar_per_h("lfp", 0.7)) / 2  # the curve is linear between its SoCs
    calendar = 2 * 1.0 * at_065 + 22.0 * _calendar_per_h("lfp", 0.8)
    revenue = 28.5 * 8.0 - 30.0 / 0.95 * 5.0
    prior = WearBook.prior_life
    value = book.value(state)
    assert value.history_life(DAY) == pytest.approx(cycling + calendar, rel=1e-9)
    assert value.value_per_life(DAY) == pytest.approx((revenue + R * prior) / (cycling + calendar + prior), rel=1e-9)
    assert calendar > cycling / 2, "the day's calendar life is a large share of its life used (LFP, 25 °C)"


# -- the running agent -----------------------------------------------------------------------------------------------


def _opportunity_pack() -> tuple[AppConfig, AssetState, Fleet]:
    """A dispatching agent's config with one opportunity-priced 50 kW pack at 80 % SoC, its state and fleet. Energy
    is cheap (0.5 per kWh), so what the pack earns puts its life below R and the basis moves (cost_basis caps at R)."""
    config = parse_config(
        "[control]\nmode = 'dispatch'\n[dispatch]\nstep_s = 3600\nhorizon_steps = 4\ndefault_price_per_kwh = 0.5\n"
        f"[[assets]]\nid = 'b'\nmap = 'vppsim_battery'\nrated_charge_w = 50000\nrated_discharge_w = 50000\n"
        f"replacement_cost = {R}\nwear_pricing = 'opportunity'\n"
    )
    state = AssetState("b", AssetKind.BATTERY, config.assets[0], available=True)
    state.measurement = Measurement("b", NOW, 0.0, DeviceStatus.STANDBY, soc=0.8, soh=1.0, capacity_wh=CAPACITY_WH,
                                    energy_import_wh=0.0, energy_export_wh=0.0)  # fmt: skip
    fleet = Fleet({"b": state})
    return config, state, fleet


async def test_the_dispatcher_plans_with_the_basis_its_book_learnt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two re-plans: the first prices the pack at its replacement cost; between them the pack exports 19 kWh by its
    counters at the plan's price, and the second plan's wear prices follow the value the book now holds."""
    config, state, fleet = _opportunity_pack()
    clock = [NOW]
    seen: list[dict] = []
    made = []

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(dict(kwargs))
        result = plan_inputs(*args, **kwargs)  # type: ignore[arg-type]
        made.append(result[0])
        return result

    monkeypatch.setattr(runner, "plan_inputs", recording)
    d = Dispatcher(config, lambda: clock[0])
    try:
        first = await d.replan(fleet, 0.0)
        assert first is not None
        assert seen[0]["wear_basis"] == {"b": R}
        clock[0] = NOW + timedelta(hours=1)
        measure(state, clock[0], 0.6, 0.0, 19_000.0)
        second = await d.replan(fleet, 0.0)
        assert second is not None
    finally:
        await d.aclose()
    basis = seen[1]["wear_basis"]["b"]
    assert basis == pytest.approx(d.wear.value(state).cost_basis(clock[0].timestamp()))
    assert basis != pytest.approx(R, rel=1e-3)
    assert made[1].assets[0].wear_prices == pytest.approx(made[0].assets[0].wear_prices * basis / R)


# -- review findings: depth refilled by a charge, implausible readings, EVs, a failing book -------------------------


def test_a_small_top_up_between_two_discharges_refills_the_depth_by_what_it_stored() -> None:
    """Two 28.5 kWh discharges (0.3 of the pack each) with a 50 Wh top-up between are nearly one half cycle of 0.6:
    the second costs Φ(0.6 − δ) − Φ(0.3 − δ), δ = the top-up's stored share, not a fresh Φ(0.3) (3-13 % less)."""
    state = battery(wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    model = wear_model(state)
    _, first = book.settle(state, 0.0, HOUR, exported_wh=28_500.0, imported_wh=0.0, price_per_kwh=0.0)
    assert first == pytest.approx(float(model.cycle_life(0.3)))
    book.settle(state, HOUR, 2 * HOUR, exported_wh=0.0, imported_wh=50.0, price_per_kwh=0.0)
    _, second = book.settle(state, 2 * HOUR, 3 * HOUR, exported_wh=28_500.0, imported_wh=0.0, price_per_kwh=0.0)
    refilled = 50.0 * 0.95 / CAPACITY_WH
    expected = float(model.cycle_life(0.6 - refilled)) - float(model.cycle_life(0.3 - refilled))
    assert second == pytest.approx(expected)
    assert second > 1.03 * first  # the deeper cycle's marginal life, not a fresh shallow one


def _jump(imported: float, exported: float) -> tuple[WearBook, AssetState, list[dict], dict[str, float]]:
    """A 50 kW pack whose counters jump by (imported, exported) Wh in one hour, then move 19 kWh out in the next."""
    state = battery(soc=0.8, imported=0.0, exported=0.0, wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    prices = PriceTrack(NOW.timestamp(), HOUR, np.array([20.0, 20.0, 20.0]))
    fleet = Fleet({"b": state})
    book.observe(fleet, NOW.timestamp(), prices)
    with capture_logs() as logs:
        measure(state, NOW + timedelta(hours=1), 0.8, imported, exported)
        book.observe(fleet, (NOW + timedelta(hours=1)).timestamp(), prices)
        first = book.basis((NOW + timedelta(hours=1)).timestamp())
        measure(state, NOW + timedelta(hours=2), 0.6, imported, exported + 19_000.0)
        book.observe(fleet, (NOW + timedelta(hours=2)).timestamp(), prices)
    return book, state, logs, first


@pytest.mark.parametrize(("imported", "exported"), [(1e9, 0.0), (0.0, 1e9)])
def test_an_implausible_counter_jump_is_refused_and_the_next_period_settles_from_it(
    imported: float, exported: float
) -> None:
    """1 GWh in an hour on a 50 kW pack: before, an import jump set the basis to 0 for 90 days and an export jump
    to ~3000 × R. The period is refused and logged; the next one starts at the jumped reading and counts normally."""
    book, state, logs, first = _jump(imported, exported)
    assert first == {"b": R}  # nothing recorded for the jump's hour
    refused = [e for e in logs if e["event"] == "wear.reading_refused"]
    assert len(refused) == 1 and refused[0]["asset"] == "b"
    assert refused[0]["bound_wh"] == pytest.approx(50_000 * 1.5 + 1_000)
    assert max(refused[0]["imported_wh"], refused[0]["exported_wh"]) == pytest.approx(1e9)
    value = book.value(state)
    later = (NOW + timedelta(hours=2)).timestamp()
    model = wear_model(state)
    life = float(model.cycle_life(19_000.0 / 0.95 / CAPACITY_WH)) + float(model.calendar_life_per_h(0.7))
    assert value.history_life(later) == pytest.approx(life)  # only the second hour's 19 kWh and its calendar life
    prior = WearBook.prior_life
    assert value.value_per_life(later) == pytest.approx((19.0 * 20.0 + R * prior) / (life + prior))


def test_a_flow_within_the_rating_is_recorded() -> None:
    """The bound keeps ordinary hours: 50 kW for an hour (the rating) is settled, not refused."""
    book, state, logs, first = _jump(0.0, 50_000.0)
    assert first["b"] == R  # it earns more than R per life: priced at the cap (cost_basis)
    assert book.value(state).value_per_life((NOW + timedelta(hours=1)).timestamp()) != pytest.approx(R, rel=1e-6)
    assert not [e for e in logs if e["event"] == "wear.reading_refused"]
    assert book.value(state).history_life((NOW + timedelta(hours=2)).timestamp()) > 0


def test_an_ev_is_never_priced_at_its_opportunity_value() -> None:
    """Driving takes an EV's energy away at no price: its basis would go to 0. The config refuses it (an OCPP charger
    is an EV charger) and the book passes over an EV whatever its config says."""
    for where in ({"transport": "ocpp", "station": "CP1"}, {"transport": "sunspec", "kind": "ev_charger"}):
        with pytest.raises(ValidationError, match=r"wear_pricing = 'opportunity' is for stationary batteries"):
            AssetConfig(id="ev", replacement_cost=R, wear_pricing="opportunity", **where)  # type: ignore[arg-type]
    # a map's kind is known once it is loaded: agent.wiring.asset_problems, as check-config and run report it
    config = parse_config(f"[[assets]]\nid = 'ev'\nmap = 'vppsim_v2g_dc'\nwear_pricing = 'opportunity'\n"
                          f"replacement_cost = {R}\n")  # fmt: skip
    errors, _ = asset_problems(config, 1.0)
    assert errors == [
        "assets[0].wear_pricing: 'opportunity' is for stationary batteries, but map 'vppsim_v2g_dc' is an ev_charger "
        "(an EV's driving takes its energy at no price: its value of a life would go to 0)"
    ]
    battery_config = parse_config(f"[[assets]]\nid = 'b'\nmap = 'vppsim_battery'\nwear_pricing = 'opportunity'\n"
                                  f"replacement_cost = {R}\n")  # fmt: skip
    assert asset_problems(battery_config, 1.0)[0] == []
    cfg = AssetConfig(id="ev", map="vppsim_v2g_dc", replacement_cost=R, wear_pricing="opportunity")
    ev = AssetState("ev", AssetKind.EV_CHARGER, cfg, available=True)
    assert not WearBook.applies(ev)
    assert WearBook.applies(battery(wear_pricing="opportunity"))


async def test_a_book_that_fails_does_not_stop_planning(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception from the book (e.g. OpportunityWearValue.record's overlap ValueError) is logged and the plan is
    made with the last basis, instead of ending the dispatcher's loop."""
    config, _, fleet = _opportunity_pack()
    seen: list[dict] = []

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(dict(kwargs))
        return plan_inputs(*args, **kwargs)  # type: ignore[arg-type]

    class Broken(WearBook):
        def observe(self, fleet: Fleet, now_s: float, prices: PriceTrack | None) -> None:
            raise ValueError("a period overlapping one already recorded")

    monkeypatch.setattr(runner, "plan_inputs", recording)
    d = Dispatcher(config, lambda: NOW)
    try:
        assert await d.replan(fleet, 0.0) is not None
        d.wear = Broken(HOUR)
        with capture_logs() as logs:
            assert await d.replan(fleet, 0.0) is not None
    finally:
        await d.aclose()
    assert seen[1]["wear_basis"] == seen[0]["wear_basis"] == {"b": R}  # the last basis
    (failed,) = [e for e in logs if e["event"] == "wear.settle_failed"]
    assert "overlapping" in failed["error"]
