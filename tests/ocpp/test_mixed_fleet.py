"""A mixed fleet: one Modbus V2G charger and one OCPP 2.1 station, driven by the whole agent (AgentApp, its CSMS
included) through an up-DR event and an ancillary-service activation. Both chargers must take part (the fleet, the
envelope and the events treat an OCPP EVSE like a Modbus charger), and the M&V reports must count what the site meter
saw of both."""

from __future__ import annotations

import asyncio
import json
import tomllib
from datetime import timedelta
from pathlib import Path

from ocppkit import fill_site
from sitekit import eventually

from agent.app import AgentApp
from agent.config import parse_config
from agent.events.lifecycle import EventState
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
state_file = "{state}"
[site]
meter = "meter"
import_limit_w = 100000.0
export_limit_w = 100000.0
[control]
mode = "site_target"
site_target_w = 5000.0
[ocpp]
enabled = true
host = "127.0.0.1"
port = {ocpp_port}
cert_file = "{cert}"
key_file = "{key}"
password_file = "{passwords}"
meter_interval_s = 1
[[assets]]
id = "ev_ocpp"
transport = "ocpp"
station = "CP001"
evse = 1
[[assets]]
id = "ev_modbus"
map = "vppsim_v2g_dc"
port = {port}
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}
unit_id = 3

[simulation]
speed = 1.0
tick_s = 0.05
base_load_w = 5000.0
pv_peak_w = 0.0
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
sessions = [{ arrival_s = 0, departure_s = 86400, capacity_kwh = 60, soc = 0.9, target_soc = 0.8, min_soc = 0.2 }]
[[simulation.devices]]
id = "ev_modbus"
model = "vppsim_v2g_dc"
port = {port}
[simulation.devices.params]
sessions = [{ arrival_s = 0, departure_s = 86400, capacity_kwh = 60, soc = 0.9, target_soc = 0.8, min_soc = 0.2 }]
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
unit_id = 3
[simulation.devices.params]
measures = "site"
"""

# Both EVs at 90 % SoC with an 80 % target: 6 kWh each above the target to give (the capability check counts no
# energy below an EV's target), and charging tapered to 5.5 kW each. Each charger must carry at least SHARE_W.
SHARE_W = 2000.0


def _site(tmp_path: Path) -> str:
    return fill_site(tmp_path, SITE, ["CP001"])[0]


def _payload(**fields: object) -> bytes:
    return json.dumps(fields, default=str).encode()


async def test_updr_and_activation_are_delivered_by_modbus_and_ocpp_chargers_together(tmp_path: Path) -> None:
    text = _site(tmp_path)
    config = parse_config(text, "mixed.toml")
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(config, site.clock.now)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            meter = site.devices["meter"]
            ocpp_ev, modbus_ev = site.devices["CP001"], site.devices["ev_modbus"]
            await eventually(lambda: len(app.loop.fleet.available()) == 3, timeout_s=20, what="all three polled")
            await eventually(lambda: abs(meter.power_w - 5000) < 500, what="site at its 5 kW target")
            await eventually(lambda: (m := app.loop.fleet.assets["ev_ocpp"].measurement) is not None
                             and m.max_charge_w is not None, what="the OCPP EV's needs known")  # fmt: skip

            # up-DR: +8 kW for 8 s
            now = site.clock.now()
            event = _payload(id="dr1", start=now + timedelta(seconds=1), end=now + timedelta(seconds=9),
                             requested_increase_w=8000, price_per_kwh=5)  # fmt: skip
            assert (await app.ingest.receive("up_dr", event)).status == "accepted"
            await eventually(lambda: abs(meter.power_w - 13000) < 800, what="baseline + 8 kW at the site meter")
            assert ocpp_ev.power_w > SHARE_W and modbus_ev.power_w > SHARE_W, (ocpp_ev.power_w, modbus_ev.power_w)
            await eventually(lambda: app.events.events["dr1"].state is EventState.COMPLETED, what="event completed")
            report = app.events.events["dr1"].report
            assert report is not None and 0.6 < report["delivered_fraction"] <= 1.05, report
            await eventually(lambda: abs(meter.power_w - 5000) < 500, what="back at the 5 kW target")

            # an FRR award (12 kW for 30 min: 6 of the 12 kWh the EVs may give) and a full up activation: both discharge
            now = site.clock.now()
            award = _payload(id="a1", product="FRR", block_start=now, block_end=now + timedelta(seconds=12),
                             up_w=12000, down_w=0)  # fmt: skip
            assert (await app.ingest.receive("as_award", award)).status == "accepted"
            await eventually(lambda: app.events.events.get("a1") is not None
                             and app.events.events["a1"].state is EventState.ACTIVE, what="award active")  # fmt: skip
            act = _payload(id="act1", award_id="a1", at=site.clock.now(), value=1.0)
            assert (await app.ingest.receive("as_activation", act)).status == "accepted"
            baseline = app.events.events["a1"].baseline_w  # the pre-event average, as the settlement takes it
            assert baseline is not None
            await eventually(lambda: abs(meter.power_w - (baseline - 12000)) < 800, what="12 kW up at the site meter")
            assert ocpp_ev.power_w < -SHARE_W and modbus_ev.power_w < -SHARE_W, (ocpp_ev.power_w, modbus_ev.power_w)
            await eventually(lambda: app.events.events["a1"].state is EventState.COMPLETED, timeout_s=30,
                             what="award completed")  # fmt: skip
            award_report = app.events.events["a1"].report
            assert award_report is not None and award_report["up_kwh"] > 0, award_report
            assert ocpp_ev.writes_outside_nameplate == 0 and modbus_ev.writes_outside_nameplate == 0
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
