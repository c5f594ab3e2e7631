"""Opportunity-cost wear pricing wired in: the config key, the planner's cost basis, the per-pack book fed from
measured energy, and the running agent's dispatcher planning with what the book learnt."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.config import AppConfig, AssetConfig, ConfigError, parse_config
from agent.dispatch import runner
from agent.dispatch.build import plan_inputs, wear_model
from agent.dispatch.runner import Dispatcher
from agent.dispatch.wear_book import PriceTrack, WearBook
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement

R = 3_000_000.0
CAPACITY_WH = 100_000.0
NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
HOUR = 3600.0


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
    life = float(wear_model(state).cycle_life(depth))
    value = book.value(state)
    assert value.history_life(later.timestamp()) == pytest.approx(life)
    revenue = 19.0 * 20.0
    prior = WearBook.prior_life
    assert value.value_per_life(later.timestamp()) == pytest.approx((revenue + R * prior) / (life + prior))
    assert [e["event"] for e in logs] == ["wear.value_updated"]
    assert logs[0]["asset"] == "b"


def test_without_counters_the_stored_energy_change_is_the_measured_energy() -> None:
    state = battery(soc=0.2, wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    prices = PriceTrack(NOW.timestamp(), HOUR, np.array([10.0]))
    book.observe(Fleet({"b": state}), NOW.timestamp(), prices)
    later = NOW + timedelta(minutes=30)
    measure(state, later, 0.3, None, None)  # charged 10 kWh into the store: 10 / 0.95 kWh bought at 10
    book.observe(Fleet({"b": state}), later.timestamp(), prices)
    value = book.value(state)
    assert value.history_life(later.timestamp()) == 0  # charging uses no life (a cycle is counted on discharge)
    prior = WearBook.prior_life
    expected = (-10.0 / 0.95 * 10.0 + R * prior) / prior
    assert value.value_per_life(later.timestamp()) == pytest.approx(expected)


def test_a_discharge_over_several_steps_costs_one_cycle_of_its_whole_depth() -> None:
    state = battery(wear_pricing="opportunity")
    book = WearBook(step_s=HOUR)
    model = wear_model(state)
    lives = [book.settle(state, k * HOUR, (k + 1) * HOUR, exported_wh=9_500.0, imported_wh=0.0, price_per_kwh=0.0)[1]
             for k in range(3)]  # fmt: skip
    assert sum(lives) == pytest.approx(float(model.cycle_life(0.3)))
    # a charge ends the half cycle: the next discharge starts shallow again
    book.settle(state, 3 * HOUR, 4 * HOUR, exported_wh=0.0, imported_wh=5_000.0, price_per_kwh=0.0)
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


# -- the running agent -----------------------------------------------------------------------------------------------


async def test_the_dispatcher_plans_with_the_basis_its_book_learnt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two re-plans: the first prices the pack at its replacement cost; between them the pack exports 19 kWh by its
    counters at the plan's price, and the second plan's wear prices follow the value the book now holds."""
    config = parse_config(
        "[control]\nmode = 'dispatch'\n[dispatch]\nstep_s = 3600\nhorizon_steps = 4\ndefault_price_per_kwh = 20\n"
        f"[[assets]]\nid = 'b'\nmap = 'vppsim_battery'\nrated_charge_w = 50000\nrated_discharge_w = 50000\n"
        f"replacement_cost = {R}\nwear_pricing = 'opportunity'\n"
    )
    state = AssetState("b", AssetKind.BATTERY, config.assets[0], available=True)
    state.measurement = Measurement("b", NOW, 0.0, DeviceStatus.STANDBY, soc=0.8, soh=1.0, capacity_wh=CAPACITY_WH,
                                    energy_import_wh=0.0, energy_export_wh=0.0)  # fmt: skip
    fleet = Fleet({"b": state})
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
