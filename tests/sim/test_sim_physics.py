"""Physics of the simulated devices: conservation, leases, limits, ramps, efficiency, EV sessions."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from itertools import pairwise

import pytest

from sim_devices.battery import Battery
from sim_devices.controllable import STATUS_CHARGING, STATUS_FAULT, STATUS_NO_EV, STATUS_STANDBY
from sim_devices.ev_charger import EVCharger
from sim_devices.ev_sessions import EVSession, generate_sessions
from sim_devices.meter import DCMeter
from sim_devices.site import Site

JST = timezone(timedelta(hours=9))


def one_session(**kw: float) -> list[EVSession]:
    args = {
        "arrival_s": 0.0,
        "departure_s": 1e9,
        "capacity_wh": 60_000.0,
        "soc": 0.5,
        "target_soc": 0.8,
        "min_soc": 0.2,
    }
    args.update(kw)
    return [EVSession(**args)]


def test_energy_is_conserved_over_a_long_random_run() -> None:
    rng = random.Random(42)
    site = Site(datetime(2026, 11, 23, 4, 0, tzinfo=JST), base_load_w=3000, pv_peak_w=20_000, utc_offset_h=9)
    evs = [EVCharger(generate_sessions(random.Random(i)), start_unix_s=site.start_unix_s) for i in range(3)]
    bats = [Battery(soc=0.5), Battery(soc=0.15, capacity_wh=20_000)]
    for i, d in enumerate([*evs, *bats]):
        site.add_device(f"d{i}", d)
    meter, pv_meter = DCMeter(), DCMeter(measures="pv")
    site.add_meter("site", meter)
    site.add_meter("pv", pv_meter)
    pv_numeric = 0.0
    while site.t_s < 36 * 3600:
        dev = rng.choice([*evs, *bats])
        if rng.random() < 0.3:
            dev.write_setpoint(rng.uniform(-80_000, 80_000))
        if rng.random() < 0.01:
            dev.set_fault(1)
        elif rng.random() < 0.05:
            dev.clear_fault()
        dt = rng.choice([0.05, 0.2, 1.0, 7.5, 60.0, 600.0])
        t0 = site.t_s
        site.step(dt)
        pv_numeric += sum(site.pv.power_w(t0 + dt * (k + 0.5) / 20) for k in range(20)) * dt / 20 / 3600
    devices_wh = math.fsum(d.import_wh - d.export_wh for d in [*evs, *bats])
    expected = devices_wh + 3000 * site.t_s / 3600 - site.pv_energy_wh
    assert meter.net_wh == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert -pv_meter.net_wh == pytest.approx(site.pv_energy_wh, rel=1e-12)
    # The PV integral itself agrees with a numerical integration of the power curve.
    assert site.pv_energy_wh == pytest.approx(pv_numeric, rel=1e-3)
    assert site.pv_energy_wh > 100_000  # two daylight windows of a 20 kW half-sine
    assert sum(e.sessions_completed for e in evs) >= 3  # arrivals and departures happened during the run
    assert meter.import_wh > 0 and meter.export_wh > 0


def test_lease_expiry_returns_to_zero() -> None:
    bat = Battery(lease_timeout_s=30)
    bat.write_setpoint(20_000)
    for _ in range(29):
        bat.step(1.0)
    assert bat.power_w == 20_000
    bat.step(2.0)  # lease lapses at exactly t = 30 s, then the ramp (25 kW/s) brings power to 0 within 0.8 s
    assert bat.lease.setpoint_w == 0
    assert bat.power_w == 0
    assert bat.status == STATUS_STANDBY
    assert bat.lease.expiries == 1 and bat.lease.last_written_w == 20_000 and bat.lease.writes == 1


def test_lease_is_renewed_by_writes_and_disabled_by_zero() -> None:
    bat = Battery(lease_timeout_s=30)
    for _ in range(10):
        bat.write_setpoint(10_000)
        bat.step(20.0)
    assert bat.power_w == 10_000 and bat.lease.expiries == 0
    bat.write_lease_timeout(0)
    bat.step(3600.0)
    assert bat.power_w == 10_000


def test_battery_derates_near_full_and_empty() -> None:
    bat = Battery(soc=0.95)
    assert bat.live_limits() == pytest.approx((25_000, 50_000))
    bat.soc = 0.05
    assert bat.live_limits() == pytest.approx((50_000, 25_000))
    bat.soc = 0.95
    bat.write_lease_timeout(0)
    bat.write_setpoint(50_000)
    bat.step(1.0)
    assert bat.power_w <= 25_000 + 1e-9
    bat.step(4 * 3600.0)
    assert 0.99 < bat.soc <= 1.0 and bat.power_w < 1_000
    bat.write_setpoint(-50_000)
    bat.step(6 * 3600.0)
    assert 0.0 <= bat.soc < 0.01 and bat.power_w > -1_000


def test_ev_limits_respect_taper_and_owner_minimum() -> None:
    ev = EVCharger(one_session(soc=0.9, min_soc=0.3))
    assert ev.live_limits() == pytest.approx((5_500, 11_000))
    ev.soc = 0.32
    assert ev.live_limits()[1] == pytest.approx(11_000 * 0.02 / 0.05)
    ev.write_lease_timeout(0)
    ev.write_setpoint(-11_000)
    ev.step(3 * 3600.0)
    assert ev.soc >= 0.3 - 1e-6
    assert ev.live_limits()[1] == pytest.approx(0.0, abs=50)


def test_ramp_limits_rate_and_energy_is_integrated_exactly() -> None:
    bat = Battery(ramp_w_per_s=25_000)
    bat.write_setpoint(50_000)
    wh = bat.step(1.0)
    assert bat.power_w == 25_000
    assert wh == pytest.approx(25_000 / 2 / 3600)
    wh = bat.step(2.0)
    assert bat.power_w == 50_000
    assert wh == pytest.approx(((25_000 + 50_000) / 2 + 50_000) / 3600)
    bat.write_setpoint(-50_000)  # crossing zero after 2 s: the first half of the ramp imports, the rest exports
    bat.step(4.0)
    assert bat.import_wh == pytest.approx((12_500 + 37_500 + 50_000 + 50_000) / 3600)
    assert bat.export_wh == pytest.approx(50_000 / 3600)


def test_efficiency_applies_on_both_directions() -> None:
    ev = EVCharger(one_session(soc=0.5, capacity_wh=60_000), ramp_w_per_s=0, lease_timeout_s=0)
    ev.write_setpoint(6_000)
    wh = ev.step(3600.0)
    assert wh == pytest.approx(6_000)
    assert ev.soc == pytest.approx(0.5 + 6_000 * 0.95 / 60_000)
    soc = ev.soc
    ev.write_setpoint(-6_000)
    wh = ev.step(3600.0)
    assert wh == pytest.approx(-6_000)
    assert ev.soc == pytest.approx(soc - 6_000 / 0.95 / 60_000)


def test_ev_sessions_depart_and_arrive() -> None:
    sessions = [
        EVSession(0, 3600, 50_000, 0.4, 0.8, 0.2),
        EVSession(7200, 10_800, 70_000, 0.6, 0.9, 0.25),
    ]
    ev = EVCharger(sessions, ramp_w_per_s=0, lease_timeout_s=0, start_unix_s=1_000_000)
    ev.write_setpoint(5_000)
    assert ev.fields()["ev_departure"] == 1_003_600
    wh = ev.step(5000.0)
    assert wh == pytest.approx(5_000)  # charged only while the first EV was there
    assert ev.status == STATUS_NO_EV and ev.power_w == 0 and ev.fields()["ev_connected"] == 0
    ev.step(2300.0)
    assert ev.status == STATUS_CHARGING and ev.session is sessions[1]
    assert ev.soc == pytest.approx(0.6 + 5_000 * 100 / 3600 * 0.95 / 70_000)
    ev.step(5000.0)
    assert ev.status == STATUS_NO_EV and ev.sessions_completed == 2


def test_generated_sessions_are_reproducible_and_start_with_an_ev() -> None:
    a = [s for _, s in zip(range(20), generate_sessions(random.Random("1:ev1")), strict=False)]
    b = [s for _, s in zip(range(20), generate_sessions(random.Random("1:ev1")), strict=False)]
    assert a == b and a[0].arrival_s == 0
    for s, nxt in pairwise(a):
        assert 2 * 3600 <= s.departure_s - s.arrival_s <= 10 * 3600
        assert 0.5 * 3600 <= nxt.arrival_s - s.departure_s <= 4 * 3600
        assert 40_000 <= s.capacity_wh <= 80_000 and 0.2 <= s.soc <= 0.6 and 0.2 <= s.min_soc <= 0.3
    empty = next(generate_sessions(random.Random(3), start_empty=True))
    assert empty.arrival_s > 0


def test_fault_trips_power_and_recovers_with_ramp() -> None:
    bat = Battery(lease_timeout_s=0)
    bat.write_setpoint(40_000)
    bat.step(5.0)
    bat.set_fault(2)
    assert bat.power_w == 0 and bat.status == STATUS_FAULT and bat.live_limits() == (0.0, 0.0)
    bat.step(5.0)
    assert bat.power_w == 0
    bat.clear_fault()
    bat.step(1.0)
    assert bat.power_w == 25_000


def test_out_of_range_setpoint_is_clamped_but_echoed() -> None:
    ev = EVCharger(one_session(soc=0.5), ramp_w_per_s=0)
    ev.write_setpoint(1e9)
    ev.step(1.0)
    assert ev.power_w == 11_000 and ev.fields()["setpoint_w"] == 1e9


def test_meter_voltage_sags_with_import() -> None:
    m = DCMeter(nominal_voltage_v=750, bus_resistance_ohm=0.05)
    m.record(0, 100_000)
    f = m.fields()
    assert f["voltage_v"] < 750
    assert f["voltage_v"] * f["current_a"] == pytest.approx(100_000)
    assert f["voltage_v"] + 0.05 * f["current_a"] == pytest.approx(750)
    m.record(0, -100_000)
    assert m.fields()["voltage_v"] > 750
