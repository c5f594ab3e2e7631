"""Calendar ageing priced convex in SoC (agent.dispatch.degradation.calendar_bends, fits.json's convex curve): the
curve is the model's closest convex one, its bends price the energy held as the curve says, a stationary pack is
planned with them and an EV with the line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agent.config import AppConfig, AssetConfig
from agent.dispatch.build import plan_inputs
from agent.dispatch.degradation import calendar_bends, calendar_price_per_wh_h
from agent.dispatch.inputs import AssetPlan, PlanInputs, SiteForecast
from agent.dispatch.planner import solve
from agent.dispatch.wear_fits import data, fit
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement

REPLACEMENT = 3_000_000.0
NOMINAL = 100_000.0
NOW = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)


def _entries() -> list[tuple[str, str, str, dict]]:
    d = data()
    return [(chem, source, temp, entry) for chem, c in d["chemistries"].items()
            for source, temps in c["fits"].items() for temp, entry in temps.items()]  # fmt: skip


def test_every_convex_curve_in_the_file_is_convex_non_decreasing_and_no_further_than_the_line() -> None:
    socs = np.array(data()["calendar_socs"])
    for chem, source, temp, entry in _entries():
        curve = np.array(entry["calendar_convex_per_h"])
        slopes = np.diff(curve) / np.diff(socs)
        where = f"{chem} {source} {temp} °C"
        # fits.json keeps 6 digits: a slope may fall short of the one before by that rounding
        assert slopes[0] >= 0 and np.all(np.diff(slopes) >= -1e-4 * slopes.max()), where
        # a least-squares fit over curves that include every line can be no further from the points than the line
        points = np.array(entry["calendar_life_per_h"])
        line = entry["calendar_base_per_h"] + entry["calendar_slope_per_h"] * socs
        assert np.sum((curve - points) ** 2) <= np.sum((line - points) ** 2) * (1 + 1e-4), where


def test_the_nmc_refit_is_judged_by_its_fit_error() -> None:
    """BLAST-Lite's NMC cell ages 60x faster at SoC 0.9 than at 0.1 at 25 °C: the line missed it by 65 % of the
    mean, the convex curve by 12 % (docs/wear.md)."""
    residuals = data()["chemistries"]["nmc"]["fits"]["blast"]["25"]["residuals"]
    assert residuals["calendar_linear_max_rel_err"] > 0.6
    assert residuals["calendar_convex_max_rel_err"] < 0.15


@pytest.mark.parametrize(("chemistry", "source"), [("nmc", "blast"), ("lfp", "xu"), ("nca", "blast")])
def test_the_bends_price_an_hour_held_as_the_convex_curve_says(chemistry: str, source: str) -> None:
    model = fit(chemistry, 25.0, source)
    base, bends = calendar_bends(REPLACEMENT, NOMINAL, model)
    assert bends, "a curve that bends has bends"

    def cost_per_h(energy_wh: float) -> float:
        return base * energy_wh + sum(extra * max(0.0, energy_wh - knee) for knee, extra in bends)

    socs, curve = model.calendar_socs, model.calendar_convex_per_h
    for soc, life in zip(socs, curve, strict=True):
        expected = REPLACEMENT * (life - curve[0])  # the part of an hour's ageing that holding more energy adds
        assert cost_per_h(soc * NOMINAL) - cost_per_h(socs[0] * NOMINAL) == pytest.approx(expected, rel=1e-4), soc


def test_a_curve_no_more_convex_than_a_line_has_no_bends() -> None:
    model = fit("lfp", 25.0, "blast")  # BLAST-Lite's LFP bends the other way around SoC 0.5: its convex fit is a line
    base, bends = calendar_bends(REPLACEMENT, NOMINAL, model)
    assert bends == ()
    assert base == pytest.approx(calendar_price_per_wh_h(REPLACEMENT, NOMINAL, model=model), rel=1e-4)


def _fleet(kind: AssetKind, soh: float = 1.0) -> Fleet:
    is_ev = kind is AssetKind.EV_CHARGER
    cfg = AssetConfig(id="pack", map="vppsim_v2g_dc" if is_ev else "vppsim_battery", rated_charge_w=20_000,
                      rated_discharge_w=20_000, replacement_cost=REPLACEMENT, chemistry="nmc")  # fmt: skip
    state = AssetState("pack", kind, cfg, available=True)
    ev = {"ev_connected": True, "ev_target_soc": 0.8, "ev_min_soc": 0.1, "ev_departure": NOW + timedelta(hours=8)}
    state.measurement = Measurement("pack", NOW, 0.0, DeviceStatus.STANDBY, soc=0.5, soh=soh, capacity_wh=NOMINAL,
                                    **(ev if is_ev else {}))  # type: ignore[arg-type]  # fmt: skip
    return Fleet({"pack": state})


def test_a_stationary_pack_is_planned_with_the_bends_and_an_ev_with_the_line() -> None:
    config = AppConfig.model_validate({"dispatch": {"step_s": 900, "horizon_steps": 8}})
    (battery,), _ = plan_inputs(_fleet(AssetKind.BATTERY), config, NOW, {}, 5_000.0)[0].assets, None
    (ev,), _ = plan_inputs(_fleet(AssetKind.EV_CHARGER), config, NOW, {}, 5_000.0)[0].assets, None
    base, bends = calendar_bends(REPLACEMENT, NOMINAL, fit("nmc"))
    assert np.array(battery.calendar_bends) == pytest.approx(np.array(bends))
    assert battery.calendar_price_per_wh_h == pytest.approx(base)
    assert ev.calendar_bends == ()
    assert ev.calendar_price_per_wh_h == pytest.approx(calendar_price_per_wh_h(REPLACEMENT, NOMINAL, model=fit("nmc")))


@pytest.mark.parametrize("kind", [AssetKind.BATTERY, AssetKind.EV_CHARGER])
def test_an_aged_pack_pays_per_wh_of_what_it_holds_now(kind: AssetKind) -> None:
    """The calendar stress is a function of the SoC the device reports, a fraction of the usable energy (nominal ×
    SoH): at SoH 0.8 a Wh moves the SoC 1/0.8 as far, so it costs 1/0.8 as much, and the bends sit at the same SoCs
    of the smaller energy."""
    config = AppConfig.model_validate({"dispatch": {"step_s": 900, "horizon_steps": 8}})
    (new,) = plan_inputs(_fleet(kind), config, NOW, {}, 5_000.0)[0].assets
    (aged,) = plan_inputs(_fleet(kind, soh=0.8), config, NOW, {}, 5_000.0)[0].assets
    assert aged.calendar_price_per_wh_h == pytest.approx(new.calendar_price_per_wh_h / 0.8, rel=1e-9)
    assert len(aged.calendar_bends) == len(new.calendar_bends)
    for (aged_wh, aged_extra), (new_wh, new_extra) in zip(aged.calendar_bends, new.calendar_bends, strict=True):
        assert aged_wh == pytest.approx(new_wh * 0.8) and aged_extra == pytest.approx(new_extra / 0.8)


def test_the_planner_empties_a_pack_to_the_bend_it_pays_to_leave_and_no_further() -> None:
    """Flat prices of 10, energy left worth 9.8 per kWh: with the line the pack keeps what it has (a kWh sold earns
    9.5 after losses, one held 9.8 less 0.08 of ageing), with a bend at 60 % adding 0.5 per kWh·h above it the pack
    sells down to the bend and stops there."""
    steps, step_s = 8, 3600.0
    prices = np.full(steps, 10.0)

    def plan_with(bends: tuple[tuple[float, float], ...]) -> np.ndarray:
        pack = AssetPlan("bess", 0.9 * NOMINAL, 0.0, NOMINAL, 20_000.0, 20_000.0, 0.95,
                         calendar_price_per_wh_h=1e-5, calendar_bends=bends, terminal_price_per_kwh=9.8)  # fmt: skip
        forecast = SiteForecast(prices, np.zeros(steps), np.zeros(steps))
        return solve(PlanInputs(steps, step_s, [pack], forecast)).energy_wh[0]

    line = plan_with(())
    bent = plan_with(((0.6 * NOMINAL, 5e-4),))  # 0.5 currency per kWh·h above 60 %: 4 per kWh over 8 h
    assert line[-1] == pytest.approx(0.9 * NOMINAL, rel=1e-3)
    assert bent[-1] == pytest.approx(0.6 * NOMINAL, rel=1e-3)
