"""Q04 end to end: the agent's control loop, SafetyEnvelope and CSMS steer a simulated OCPP 2.1 station over TLS;
the station falls back by itself once the agent is gone for its maxOfflineDuration."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
from ocppkit import fill_site
from sitekit import eventually

from agent.config import parse_config
from agent.control.loop import ControlLoop
from agent.wiring import build_csms, build_drivers
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
unavailable_after = 3
max_backoff_s = 0.4
lease_timeout_s = 2.0
setpoint_deadband_w = 20.0
[site]
meter = "meter"
import_limit_w = 100000.0
export_limit_w = 100000.0
[control]
mode = "site_target"
site_target_w = -5000.0
[ocpp]
enabled = true
host = "127.0.0.1"
port = {ocpp_port}
cert_file = "{cert}"
key_file = "{key}"
password_file = "{passwords}"
meter_interval_s = 1               # TxUpdatedInterval the CSMS sets at boot: the station meters every second
[[assets]]
id = "ev"
transport = "ocpp"
station = "CP001"
evse = 1
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}

[simulation]
speed = 1.0
tick_s = 0.05
base_load_w = 0.0
[simulation.ocpp]
url = "wss://127.0.0.1:{ocpp_port}/ocpp"
ca_file = "{ca}"
password_file = "{passwords}"
meter_period_s = 0.2
[[simulation.devices]]
id = "CP001"
transport = "ocpp"
model = "ocpp21_dc_bpt"
[simulation.devices.params]
sessions = [{ arrival_s = 0, departure_s = 86400, capacity_kwh = 60, soc = 0.6, target_soc = 0.8, min_soc = 0.2 }]
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
[simulation.devices.params]
measures = "site"
"""


def _site(tmp_path: Path) -> str:
    return fill_site(tmp_path, SITE, ["CP001"])[0]


async def test_a_discharge_setpoint_is_followed_and_the_station_falls_back_when_the_agent_stops(
    tmp_path: Path,
) -> None:
    text = _site(tmp_path)
    config = parse_config(text, "q04.toml")
    sim = parse_simulation(tomllib.loads(text)["simulation"])
    drivers, pool = build_drivers(config, lambda: site.clock.now())
    csms = build_csms(config, drivers, lambda: site.clock.now())
    assert csms is not None
    await csms.start()
    site = SimSite.from_config(sim)
    await site.start()
    loop = ControlLoop(config, drivers, clock=site.clock.now)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        assert site.ocpp is not None
        station = site.ocpp.stations["CP001"]
        ev = site.devices["CP001"]
        meter = site.devices["meter"]

        def follows() -> bool:  # seen in the station's own meter values and at the site meter
            m = station.last_meter
            return bool(m) and m["export_w"] == pytest.approx(5000.0, rel=0.02) and m["import_w"] == 0.0

        await eventually(follows, timeout_s=20, what="station discharges 5000 W in its meter values")
        await eventually(lambda: meter.fields()["power_w"] == pytest.approx(-5000.0, rel=0.02), what="site meter")
        assert station.profile is not None and station.profile.setpoint_w < 0  # a negative setpoint: discharge
        assert station.profile.max_offline_s == 2 and station.profile.invalid_after_offline
        state = loop.fleet.assets["ev"]
        await eventually(  # the CSMS's reading of the station, in the agent's sign
            lambda: state.measurement is not None and state.measurement.power_w == pytest.approx(-5000.0, rel=0.02),
            what="agent reads -5000 W")
        assert state.available and state.measurement is not None
        assert state.measurement.ev_min_soc == pytest.approx(0.2, abs=0.01)  # from NotifyEVChargingNeeds (Wh)
        assert ev.writes_outside_nameplate == 0

        # the agent stops: its CSMS goes, the station is offline and falls back after maxOfflineDuration
        stop.set()
        await task
        await csms.close()
        await eventually(lambda: not station.online, what="station sees the CSMS gone")
        offline_at = station.offline_since_s
        assert station.profile is not None  # still within maxOfflineDuration right after the loss
        await eventually(lambda: station.fallbacks == 1, timeout_s=10, what="fallback after maxOfflineDuration")
        assert offline_at is not None and site.clock.seconds() - offline_at >= 2.0
        await eventually(lambda: abs(ev.power_w) < 1.0, what="EV back at the fallback power (0 W)")
    finally:
        stop.set()
        if not task.done():
            await task
        await csms.close()
        await site.stop()
        pool.close()
