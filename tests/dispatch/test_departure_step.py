"""An EV leaving mid-step (agent.dispatch.build.departure_steps, plan.Plan.setpoints_w): the plan books the departure
step's energy only for the part of it the car is still there, and the setpoint holds the step's average over that
part, so the car leaves with what the plan promised. Checked on the simulator's EVCharger, not against the plan."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agent.config import AppConfig, AssetConfig
from agent.dispatch.build import departure_steps, plan_inputs
from agent.dispatch.inputs import Reserve
from agent.dispatch.planner import solve
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement
from agent.signals.models import PriceSeries
from sim_devices.ev_charger import EVCharger
from sim_devices.ev_sessions import EVSession

STEP_S = 3600.0
START = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
CAPACITY_WH, RATED_W, ETA = 60_000.0, 11_000.0, 0.95
SOC, TARGET = 0.4, 0.7


@pytest.mark.parametrize(
    ("steps_left", "target", "last"),
    [(2.5, 3, 0.5), (2.0, 2, None), (2.0 - 1e-12, 2, None), (0.25, 1, 0.25), (-0.1, 1, None), (9.5, 10, None)],
)
def test_the_departure_step_and_the_part_of_it_the_car_is_there(
    steps_left: float, target: int, last: float | None
) -> None:
    step, presence = departure_steps(steps_left, 6)
    assert step == target
    if last is None:
        assert presence is None  # on a boundary, past the departure, or beyond the horizon: whole steps
    else:
        assert presence is not None and presence.tolist() == [1.0] * (target - 1) + [last] + [0.0] * (6 - target)


def ev_fleet(leaves_after_s: float) -> Fleet:
    cfg = AssetConfig(id="ev", map="vppsim_v2g_dc", rated_charge_w=RATED_W, rated_discharge_w=RATED_W,
                      efficiency=ETA, wear_price_per_kwh=20.0, charge_taper_soc=0.8)  # fmt: skip
    state = AssetState("ev", AssetKind.EV_CHARGER, cfg, available=True)
    state.measurement = Measurement(
        "ev", START, 0.0, DeviceStatus.STANDBY, rated_charge_w=RATED_W, rated_discharge_w=RATED_W,
        max_charge_w=RATED_W, max_discharge_w=RATED_W, soc=SOC, soh=1.0, capacity_wh=CAPACITY_WH, ev_connected=True,
        ev_target_soc=TARGET, ev_min_soc=0.1, ev_departure=START + timedelta(seconds=leaves_after_s),
    )  # fmt: skip
    return Fleet({"ev": state})


@pytest.mark.parametrize("leaves_after_h", [2.5, 2.2])
def test_an_ev_leaving_mid_step_reaches_its_target_on_the_simulator(leaves_after_h: float) -> None:
    """Cheapest in the step the car leaves during: a plan that counted that whole step charged there at up to the
    rating, and the car left with a part of it (2.5 h: 2.5 kWh short)."""
    leaves_after_s = leaves_after_h * STEP_S
    config = AppConfig.model_validate({"dispatch": {"step_s": STEP_S, "horizon_steps": 6}})
    prices = PriceSeries(id="p", area="Kyushu", start=START, interval_s=3600,
                         prices_per_kwh=[30.0, 30.0, 1.0, 30.0, 30.0, 30.0])  # fmt: skip
    inputs, _ = plan_inputs(ev_fleet(leaves_after_s), config, START, {"prices": {"p": prices}}, 0.0)
    plan = solve(inputs)
    assert plan.power_w[0, 2] > 0  # the cheap step is used, within what the car's minutes there can take
    charger = EVCharger([EVSession(0.0, leaves_after_s, CAPACITY_WH, SOC, TARGET, 0.1)], rated_charge_w=RATED_W,
                        rated_discharge_w=RATED_W, efficiency=ETA, lease_timeout_s=4 * STEP_S)  # fmt: skip
    for k in range(3):
        setpoint = plan.setpoints_w(k)["ev"]
        assert setpoint <= RATED_W + 1e-6
        charger.write_setpoint(setpoint)
        charger.step(min(STEP_S, leaves_after_s - 1e-6 - charger.t_s))
    assert charger.soc >= TARGET - 1e-3
    assert np.all(plan.power_w[0, 3:] == pytest.approx(0.0, abs=1e-6))


def test_a_plan_without_a_partial_step_sets_the_average_as_is() -> None:
    config = AppConfig.model_validate({"dispatch": {"step_s": STEP_S, "horizon_steps": 6}})
    inputs, _ = plan_inputs(ev_fleet(3 * STEP_S), config, START, {}, 0.0)
    plan = solve(inputs)
    assert plan.presence is None
    assert plan.setpoints_w(0)["ev"] == pytest.approx(float(plan.power_w[0, 0]))


def test_an_ev_leaving_mid_step_holds_no_reserve_in_that_step() -> None:
    """A reserve is held for the whole step: the car gone after 15 minutes of it can hold none there, though its
    minutes still take power; the steps before hold what pays."""
    config = AppConfig.model_validate({"dispatch": {"step_s": STEP_S, "horizon_steps": 4}})
    inputs, _ = plan_inputs(ev_fleet(2.25 * STEP_S), config, START, {}, 0.0)
    price = np.full(4, 20.0)  # per kW·h each side: pays more than the wear of holding it
    zeros = np.zeros(4)
    inputs = dataclasses.replace(inputs, reserves=[Reserve("FCR", price, price, zeros, zeros)])
    plan = solve(inputs)
    assert plan.presence is not None and plan.presence[0].tolist() == [1.0, 1.0, 0.25, 0.0]
    assert plan.reserve_up_w[0, :2].min() > 1_000.0
    assert plan.reserve_up_w[0, 2] == pytest.approx(0.0, abs=1e-3)
    assert plan.reserve_down_w[0, 2] == pytest.approx(0.0, abs=1e-3)


def test_an_ev_leaving_mid_step_still_charges_there_when_a_reserve_is_offered() -> None:
    """Holding no band in the departure step must not stop the car charging in its minutes there. The headroom rows
    read limits zeroed in that step, so with any reserve offered (down ≤ 0 − charge) the plan could not charge there
    and bought the energy in the dear steps before."""
    config = AppConfig.model_validate({"dispatch": {"step_s": STEP_S, "horizon_steps": 4}})
    inputs, _ = plan_inputs(ev_fleet(2.5 * STEP_S), config, START, {}, 0.0)
    prices = np.array([40.0, 40.0, 5.0, 5.0])  # its departure step is the cheap one
    inputs = dataclasses.replace(inputs, site=dataclasses.replace(inputs.site, price_per_kwh=prices))
    without = solve(inputs)
    band = np.full(4, 0.5)
    zeros = np.zeros(4)
    offered = solve(dataclasses.replace(inputs, reserves=[Reserve("FCR", band, band, zeros, zeros)]))
    assert without.power_w[0, 2] > 1_000.0, "the case needs the departure step to be worth charging in"
    assert offered.power_w[0, 2] == pytest.approx(without.power_w[0, 2], rel=1e-3)
    assert offered.reserve_down_w[0, 2] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("leaves_after_h", [2.25, 3.0])
def test_a_tapering_ev_leaving_mid_step_reaches_its_target_on_the_simulator(leaves_after_h: float) -> None:
    """Above its knee from the start (SoC 0.80 → 0.95, knee 0.8), cheapest in the step it leaves 15 minutes into:
    the taper there is that of a setpoint held 15 minutes, not an hour (a whole step's share left it 1.5 kWh short
    while the plan said none)."""
    leaves_after_s = leaves_after_h * STEP_S
    fleet = ev_fleet(leaves_after_s)
    measurement = fleet.assets["ev"].measurement
    assert measurement is not None
    fleet.assets["ev"].measurement = dataclasses.replace(measurement, soc=0.80, ev_target_soc=0.95)
    config = AppConfig.model_validate({"dispatch": {"step_s": STEP_S, "horizon_steps": 6}})
    prices = PriceSeries(id="p", area="Kyushu", start=START, interval_s=3600,
                         prices_per_kwh=[30.0, 30.0, 1.0, 30.0, 30.0, 30.0])  # fmt: skip
    inputs, _ = plan_inputs(fleet, config, START, {"prices": {"p": prices}}, 0.0)
    plan = solve(inputs)
    assert plan.violations.get("ev_short_kwh", 0.0) == pytest.approx(0.0, abs=1e-3)
    charger = EVCharger([EVSession(0.0, leaves_after_s, CAPACITY_WH, 0.80, 0.95, 0.1)], rated_charge_w=RATED_W,
                        rated_discharge_w=RATED_W, efficiency=ETA, lease_timeout_s=4 * STEP_S)  # fmt: skip
    for k in range(3):
        charger.write_setpoint(plan.setpoints_w(k)["ev"])
        charger.step(min(STEP_S, leaves_after_s - 1e-6 - charger.t_s))
    assert charger.soc >= 0.95 - 1e-3
