"""SafetyEnvelope: whatever is requested, the value written stays inside every limit, and the cut is named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.config import AssetConfig
from agent.control.rule import share_by_headroom, site_target_requests
from agent.control.safety import Bounds, SafetyEnvelope, asset_bounds, enforce_site_limits
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


def battery(soc: float = 0.5, max_charge: float = 50000, max_discharge: float = 50000, **cfg: float) -> AssetState:
    config = AssetConfig(id="b", map="vppsim_battery", **cfg)
    m = Measurement(
        "b",
        NOW,
        power_w=0.0,
        soc=soc,
        soh=1.0,
        capacity_wh=100000,
        rated_charge_w=50000,
        rated_discharge_w=50000,
        max_charge_w=max_charge,
        max_discharge_w=max_discharge,
    )
    return AssetState("b", AssetKind.BATTERY, config, measurement=m, available=True)


def ev(soc: float, target: float, minimum: float, departs_in_h: float, capacity: float = 60000) -> AssetState:
    config = AssetConfig(id="e", map="vppsim_v2g_dc", efficiency=0.95)
    m = Measurement(
        "e",
        NOW,
        power_w=0.0,
        status=DeviceStatus.STANDBY,
        soc=soc,
        capacity_wh=capacity,
        rated_charge_w=11000,
        rated_discharge_w=11000,
        max_charge_w=11000,
        max_discharge_w=11000,
        ev_connected=True,
        ev_target_soc=target,
        ev_min_soc=minimum,
        ev_departure=NOW + timedelta(hours=departs_in_h),
    )
    return AssetState("e", AssetKind.EV_CHARGER, config, measurement=m, available=True)


def test_nameplate_override_is_the_lower_limit() -> None:
    bounds = asset_bounds(battery(rated_charge_w=20000), NOW, 10)
    assert bounds.high_w == 20000 and bounds.high_reason == "nameplate charge limit"
    assert bounds.low_w == -50000


def test_live_limit_beats_nameplate() -> None:
    bounds = asset_bounds(battery(max_charge=3000), NOW, 10)
    assert (bounds.high_w, bounds.high_reason) == (3000, "live charge limit")


def test_envelope_clamps_out_of_range_request_and_says_why() -> None:
    state = battery(max_charge=3000)
    env = SafetyEnvelope(import_limit_w=1e9, export_limit_w=1e9)
    bounds = {"b": env.bounds(state, NOW, 1.0, 10.0)}
    result = env.apply({"b": 1e9}, {"b": state}, bounds, uncontrolled_w=0.0)["b"]
    assert result.power_w == 3000 and result.requested_w == 1e9
    assert result.reasons == ("live charge limit",)


def test_unavailable_faulted_or_empty_charger_gets_zero() -> None:
    state = battery()
    state.available = False
    assert asset_bounds(state, NOW, 10) == Bounds(0, 0, "not operable", "not operable")
    faulted = battery()
    faulted.measurement = Measurement("b", NOW, 0.0, status=DeviceStatus.FAULT)
    assert asset_bounds(faulted, NOW, 10).high_w == 0


def test_ev_never_discharges_below_owner_minimum() -> None:
    at_min = asset_bounds(ev(soc=0.3, target=0.3, minimum=0.3, departs_in_h=8), NOW, 10)
    assert at_min.low_w == 0 and at_min.low_reason == "EV minimum SoC"
    # 0.01 % of 60 kWh above the minimum = 6 Wh; over a 10 s lease that is at most 6*0.95*360 W of discharge
    near_min = asset_bounds(ev(soc=0.3001, target=0.3, minimum=0.3, departs_in_h=8), NOW, 10)
    assert near_min.low_w == pytest.approx(-6 * 0.95 * 360, rel=1e-6)


def test_ev_that_needs_all_remaining_time_must_charge_at_full_power() -> None:
    # 0.5 -> 0.8 of 60 kWh = 18 kWh; at 11 kW * 0.95 that takes 1.72 h; only 1.5 h left
    bounds = asset_bounds(ev(soc=0.5, target=0.8, minimum=0.2, departs_in_h=1.5), NOW, 10)
    assert bounds.low_w == bounds.high_w == 11000
    assert bounds.low_reason == "EV departure need"


def test_ev_with_slack_may_discharge_but_not_past_its_need() -> None:
    bounds = asset_bounds(ev(soc=0.5, target=0.8, minimum=0.2, departs_in_h=10), NOW, 10)
    assert bounds.low_w == -11000  # plenty of time: full discharge allowed for one lease
    tight = asset_bounds(ev(soc=0.5, target=0.8, minimum=0.2, departs_in_h=1.7245), NOW, 10)
    assert -11000 < tight.low_w < 11000 and tight.low_reason == "EV departure need"


def test_ramp_limits_change_from_last_written_setpoint() -> None:
    state = battery(ramp_w_per_s=1000)
    state.written_setpoint_w = 0.0
    bounds = SafetyEnvelope(1e9, 1e9).bounds(state, NOW, period_s=2.0, lease_s=10.0)
    assert (bounds.low_w, bounds.high_w) == (-2000, 2000)
    assert bounds.high_reason == "ramp limit"


def test_ramp_never_widens_hard_limits() -> None:
    state = battery(max_charge=1000, ramp_w_per_s=1000)
    state.written_setpoint_w = 40000.0  # device derated since the last write
    bounds = SafetyEnvelope(1e9, 1e9).bounds(state, NOW, period_s=1.0, lease_s=10.0)
    assert bounds.high_w <= 1000


def test_site_import_limit_scales_charging_only() -> None:
    limited, reason = enforce_site_limits({"a": 10000, "b": 10000, "c": -5000}, 5000, 15000, 1e9)
    assert reason == "site import limit"
    assert sum(limited.values()) + 5000 == pytest.approx(15000)
    assert limited["c"] == -5000


def test_site_export_limit() -> None:
    limited, reason = enforce_site_limits({"a": -30000}, -5000, 1e9, 20000)
    assert reason == "site export limit" and limited["a"] == pytest.approx(-15000)


def test_site_limits_against_a_range_check_import_at_its_top_and_export_at_its_bottom() -> None:
    # the rest of the site draws somewhere in -21..+15 kW: charging may add at most 60 - 15 = 45 kW ...
    limited, reason = enforce_site_limits({"a": 50000, "b": 10000}, (-21000, 15000), 60000, 40000)
    assert reason == "site import limit" and sum(limited.values()) == pytest.approx(45000)
    # ... and discharging at most 40 - 21 = 19 kW, though the middle of the range would allow more of either
    limited, reason = enforce_site_limits({"a": -30000}, (-21000, 15000), 60000, 40000)
    assert reason == "site export limit" and limited["a"] == pytest.approx(-19000)
    assert enforce_site_limits({"a": 20000}, (-21000, 15000), 60000, 40000) == ({"a": 20000}, None)


def test_a_range_wider_than_both_limits_lets_the_assets_push_toward_neither() -> None:
    # -50..+50 kW against 30 kW each way: no total keeps both, so the assets add nothing either way
    assert enforce_site_limits({"a": 10000}, (-50000, 50000), 30000, 30000)[0] == {"a": 0.0}
    assert enforce_site_limits({"a": -10000}, (-50000, 50000), 30000, 30000)[0] == {"a": 0.0}
    # -50..+10 kW, 30 kW import, 20 kW export: export is broken at the bottom, import has 20 kW left at the top
    assert enforce_site_limits({"a": 25000}, (-50000, 10000), 30000, 20000)[0] == pytest.approx({"a": 20000})
    assert enforce_site_limits({"a": -5000}, (-50000, 10000), 30000, 20000)[0] == {"a": 0.0}


def test_share_by_headroom_is_proportional_and_exact() -> None:
    bounds = {"a": Bounds(-10, 30, "", ""), "b": Bounds(-10, 10, "", "")}
    shares = share_by_headroom(20, bounds)
    assert shares == pytest.approx({"a": 15, "b": 5})
    assert share_by_headroom(1000, bounds) == {"a": 30, "b": 10}
    assert share_by_headroom(-10, bounds) == pytest.approx({"a": -5, "b": -5})


def test_share_keeps_must_charge_floor() -> None:
    bounds = {"ev": Bounds(5, 10, "", ""), "b": Bounds(-10, 10, "", "")}
    shares = share_by_headroom(0, bounds)
    assert shares["ev"] == 5 and shares["b"] == pytest.approx(-5)


def test_site_target_subtracts_uncontrolled_load() -> None:
    bounds = {"b": Bounds(-50000, 50000, "", "")}
    requests = site_target_requests(target_w=0, uncontrolled_w=10000, bounds=bounds)
    assert requests["b"] == -10000


def test_fleet_marks_unavailable_after_n_failures_and_backs_off() -> None:
    state = battery()
    state.available = True
    fleet = Fleet({"b": state}, unavailable_after=3, max_backoff_s=8)
    assert not fleet.record_failure("b", "timeout", 0.0, 1.0)
    assert not fleet.record_failure("b", "timeout", 1.0, 1.0)
    assert fleet.record_failure("b", "timeout", 2.0, 1.0)
    assert not state.available and state.next_poll_monotonic == 3.0
    for t in range(3, 12):
        fleet.record_failure("b", "timeout", float(t), 1.0)
    assert state.next_poll_monotonic - 11.0 == 8.0  # capped back-off
    assert fleet.record_ok("b", state.measurement, 12.0)
    assert state.available and state.consecutive_failures == 0 and not state.lease_written


def test_envelope_totals() -> None:
    a, b = battery(soc=0.5), battery(soc=0.25)
    b.id = "b2"
    fleet = Fleet({"b": a, "b2": b})
    env = fleet.envelope()
    assert env.stored_wh == pytest.approx(75000)
    assert env.absorb_w == 100000 and env.deliver_w == 100000
    assert env.deliver_for_s == pytest.approx(75000 * 3600 / 100000)


def test_ramp_starts_from_measured_power_when_nothing_is_held() -> None:
    state = battery(ramp_w_per_s=1000)
    state.measurement = Measurement("b", NOW, power_w=-3000.0, soc=0.5, soh=1.0, capacity_wh=100000,
                                    rated_charge_w=50000, rated_discharge_w=50000)  # fmt: skip
    bounds = SafetyEnvelope(1e9, 1e9).bounds(state, NOW, period_s=1.0, lease_s=10.0)
    assert (bounds.low_w, bounds.high_w) == (-4000, -2000)  # first write: around where the device is
    state.written_setpoint_w, state.lease_written = 20000.0, False  # stale: the lease lapsed during an outage
    assert SafetyEnvelope(1e9, 1e9).bounds(state, NOW, 1.0, 10.0).high_w == -2000


def test_non_finite_request_never_reaches_a_device() -> None:
    state = battery()
    env = SafetyEnvelope(1e9, 1e9)
    result = env.apply({"b": float("nan")}, {"b": state}, {"b": env.bounds(state, NOW, 1, 10)}, 0.0)["b"]
    assert result.power_w == 0.0 and "non-finite request" in result.reasons
