"""Fleet → plan inputs (agent.dispatch.build): the up-DR baseline is the settlement's rule, and wear segments are
priced for the SoC window the plan gives them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from agent.config import AppConfig, AssetConfig
from agent.dispatch.build import plan_inputs
from agent.dispatch.degradation import life_per_cycle, shallow_cycle_price
from agent.dispatch.inputs import Reserve, activation_price
from agent.dispatch.wear_fits import fit
from agent.events.mv.baseline import updr_baseline
from agent.events.mv.intervals import Interval
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement
from agent.products import PRODUCTS
from agent.signals.models import UpDrEvent

JST = ZoneInfo("Asia/Tokyo")
DAY = date(2026, 12, 2)  # a Wednesday
NOW = datetime(2026, 12, 2, 10, 5, tzinfo=JST).astimezone(UTC)
HALF_HOUR = 1800.0
REPLACEMENT = 3_000_000.0


def config() -> AppConfig:
    return AppConfig.model_validate({"dispatch": {"step_s": 900, "horizon_steps": 16, "wear_segments": 4}})


def ev_fleet(power_w: float = 4_000.0, min_soc: float = 0.1, **wear: object) -> Fleet:
    cfg = AssetConfig(id="ev", map="vppsim_v2g_dc", rated_charge_w=11_000, rated_discharge_w=11_000,
                      replacement_cost=REPLACEMENT, efficiency=0.95, **wear)  # type: ignore[arg-type]  # fmt: skip
    state = AssetState("ev", AssetKind.EV_CHARGER, cfg, available=True)
    state.measurement = Measurement(
        "ev", NOW, power_w, DeviceStatus.CHARGING, soc=0.5, soh=1.0, capacity_wh=60_000, ev_connected=True,
        ev_target_soc=0.8, ev_min_soc=min_soc, ev_departure=NOW + timedelta(hours=8),
    )  # fmt: skip
    return Fleet({"ev": state})


def event(method: str = "high4of5") -> UpDrEvent:
    start = datetime(2026, 12, 2, 11, 0, tzinfo=JST)
    return UpDrEvent(id="dr", start=start, end=start + timedelta(hours=1), requested_increase_w=5_000,
                     price_per_kwh=3, baseline_method=method)  # type: ignore[arg-type]  # fmt: skip


def history(levels: dict[int, float]) -> list[Interval]:
    """Whole days of flat demand, `levels` by days before DAY, plus DAY's own readings up to 10:00."""
    items = []
    for back, level in levels.items():
        day = datetime.combine(DAY - timedelta(days=back), datetime.min.time(), JST).timestamp()
        items += [Interval(day + k * HALF_HOUR, level, HALF_HOUR) for k in range(48)]
    today = datetime.combine(DAY, datetime.min.time(), JST).timestamp()
    items += [Interval(today + k * HALF_HOUR, 9_000.0, HALF_HOUR) for k in range(20)]
    return items


def test_without_history_the_baseline_is_the_pre_event_average_of_the_site_meter() -> None:
    # the site meter now: 6 kW uncontrolled + the EV's 4 kW; it was the uncontrolled 6 kW alone before
    inputs, _ = plan_inputs(ev_fleet(), config(), NOW, {"up_dr": {"dr": event()}}, 6_000.0)
    assert inputs.updr is not None
    window = inputs.updr.window
    assert window.sum() == 4
    settled, method, _ = updr_baseline("high4of5", [0.0], 10_000.0)
    assert method == "pre_event_average"
    assert inputs.updr.baseline_w[window] == pytest.approx(settled[0.0])


def test_with_history_the_planner_reads_high_4_of_5_like_the_settlement() -> None:
    # weekdays only among the 7 days before (Wednesday): 1..2 and 5..7 days back; the lowest (8 kW) is dropped
    levels = {1: 12_000.0, 2: 11_000.0, 5: 10_000.0, 6: 9_000.0, 7: 8_000.0}
    intervals = history(levels)
    inputs, _ = plan_inputs(ev_fleet(), config(), NOW, {"up_dr": {"dr": event()}}, 6_000.0, history=intervals)
    assert inputs.updr is not None
    starts = [event().start.timestamp() + k * HALF_HOUR for k in range(2)]
    settled, method, _ = updr_baseline("high4of5", starts, 10_000.0, intervals, JST, HALF_HOUR)
    assert method == "high4of5"
    # 10.5 kW unadjusted, then shifted by today's 9 kW against that 10.5 kW: 9 kW
    assert settled[starts[0]] == pytest.approx(9_000.0)
    window = inputs.updr.window
    assert inputs.updr.baseline_w[window] == pytest.approx([settled[starts[0]]] * 2 + [settled[starts[1]]] * 2)


def test_a_baseline_the_lifecycle_fixed_wins() -> None:
    start = event().start.timestamp()
    fixed = {"dr": {start: 7_000.0, start + HALF_HOUR: 7_500.0}}
    inputs, _ = plan_inputs(ev_fleet(), config(), NOW, {"up_dr": {"dr": event()}}, 6_000.0, baselines=fixed)
    assert inputs.updr is not None
    assert inputs.updr.baseline_w[inputs.updr.window].tolist() == [7_000.0, 7_000.0, 7_500.0, 7_500.0]


@pytest.mark.parametrize(
    ("wear", "life"),
    [
        ({}, lambda depth: float(fit().cycle_life(depth))),  # the default: LFP at 25 °C fitted to BLAST-Lite
        ({"chemistry": "nmc", "temperature_c": 35.0}, lambda d: float(fit("nmc", 35.0).cycle_life(d))),
        ({"wear_source": "xu"}, lambda depth: float(fit(source="xu").cycle_life(depth))),
    ],
)
def test_a_full_window_cycle_costs_what_a_cycle_of_the_windows_depth_costs(wear: dict, life: object) -> None:
    # the plan's window is 10-100 % of the pack; discharging all of it goes through every segment once, priced by the
    # wear model the pack's config names
    inputs, _ = plan_inputs(ev_fleet(min_soc=0.1, **wear), config(), NOW, {}, 6_000.0)
    (ev,) = inputs.assets
    room_kwh = (ev.max_wh - ev.min_wh) / 1000.0
    segment_kwh = room_kwh / len(ev.wear_prices)
    cycle = float(np.sum(ev.wear_prices * segment_kwh * ev.efficiency))  # per kWh discharged at the grid
    assert cycle == pytest.approx(REPLACEMENT * life(0.9), rel=1e-6)  # type: ignore[operator]


def test_the_xu_fit_prices_a_cycle_as_the_analytic_xu_model() -> None:
    inputs, _ = plan_inputs(ev_fleet(min_soc=0.1, wear_source="xu"), config(), NOW, {}, 6_000.0)
    (ev,) = inputs.assets
    cycle = float(np.sum(ev.wear_prices * (ev.max_wh - ev.min_wh) / 1000.0 / len(ev.wear_prices) * ev.efficiency))
    assert cycle == pytest.approx(REPLACEMENT * life_per_cycle(0.9), rel=0.02)


def regd(activation_per_h: float = 0.17) -> Reserve:
    zeros = np.zeros(16)
    return Reserve("RegD", zeros, zeros, zeros, zeros, activation_per_h=activation_per_h)


@pytest.mark.parametrize(
    ("wear", "model"),
    [
        ({"wear_source": "xu"}, lambda: fit(source="xu")),  # Xu: ~26 JPY/kWh at the evaluation pack's swing depth
        ({}, lambda: fit()),  # the default: LFP at 25 °C fitted to BLAST-Lite
        ({"chemistry": "nmc"}, lambda: fit("nmc")),
    ],
)
def test_following_regulation_is_priced_at_the_packs_shallow_cycle_price(wear: dict, model: object) -> None:
    # the EV's 11 kW band swings RegD's 0.0061 kWh per kW reserved: 0.11 % of its 60 kWh pack
    inputs, _ = plan_inputs(ev_fleet(**wear), config(), NOW, {}, 6_000.0)
    (ev,) = inputs.assets
    depth = PRODUCTS["RegD"].swing_h * 11_000 / 60_000  # type: ignore[operator]
    shallow = shallow_cycle_price(REPLACEMENT, 60_000, 1.0, 0.95, depth, model=model())  # type: ignore[operator]
    assert shallow != pytest.approx(ev.wear_prices[0], rel=0.01)  # not the cheapest segment it fell back to
    assert activation_price(ev, regd()) == pytest.approx(0.17 * shallow, rel=1e-9)


def test_the_xu_shallow_price_scales_with_the_swing_depth() -> None:
    # Xu's concave depth stress: the same swing on a pack twice as strong per kWh is a deeper cycle and cheaper per kWh
    slow, _ = plan_inputs(ev_fleet(wear_source="xu"), config(), NOW, {}, 6_000.0)
    strong = ev_fleet(wear_source="xu")
    ev = strong.assets["ev"]
    ev.config = ev.config.model_copy(update={"rated_charge_w": 22_000, "rated_discharge_w": 22_000})
    fast, _ = plan_inputs(strong, config(), NOW, {}, 6_000.0)
    assert activation_price(fast.assets[0], regd()) < activation_price(slow.assets[0], regd())


def test_an_owners_wear_price_still_prices_activations() -> None:
    inputs, _ = plan_inputs(ev_fleet(wear_price_per_kwh=8.0), config(), NOW, {}, 6_000.0)
    (ev,) = inputs.assets
    assert ev.activation_wear_per_kwh is None
    assert activation_price(ev, regd()) == pytest.approx(0.17 * 8.0)
