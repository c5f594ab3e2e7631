"""A charge-only 2.0.1 station in the fleet: the agent's own control cycle and SafetyEnvelope steer it through the
CSMS, never asking it to discharge (its EVSE offers a 0 W discharge limit) and within its nameplate. The station is
the kit's `ocpp.v201.ChargePoint`; the site meter is the simulator's Modbus meter."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

from ocpp import v201
from ocppkit import fill_site, lib_station, meter
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
lease_timeout_s = 30.0
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
[[assets]]
id = "ev"
transport = "ocpp"
station = "CP201"
rated_charge_w = 7400.0
rated_discharge_w = 7400.0
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}

[simulation]
speed = 1.0
tick_s = 0.05
base_load_w = 1000.0
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
[simulation.devices.params]
measures = "site"
"""


async def test_the_control_cycle_never_asks_a_201_evse_to_discharge(tmp_path: Path) -> None:
    text, pki = fill_site(tmp_path, SITE, ["CP201"])
    config = parse_config(text, "v201.toml")
    drivers, pool = build_drivers(config, lambda: site.clock.now())
    csms = build_csms(config, drivers, lambda: site.clock.now())
    assert csms is not None
    await csms.start()
    site = SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"]))
    await site.start()
    loop = ControlLoop(config, drivers, clock=site.clock.now)
    try:
        async with lib_station(csms, pki, "CP201", "2.0.1") as station:
            await station.call(v201.call.BootNotification(
                charging_station={"model": "LibStation", "vendor_name": "ocpp.v201"}, reason="PowerUp"))
            await station.call(v201.call.TransactionEvent(
                event_type="Started", timestamp="2026-11-23T00:00:00Z", trigger_reason="CablePluggedIn", seq_no=0,
                transaction_info={"transaction_id": "tx"}, evse={"id": 1, "connector_id": 1}, meter_value=meter(0.0)))
            await eventually(lambda: drivers["ev"].fallback_installed, what="fallback installed")

            async def cycles_until(check: Callable[[], bool], what: str) -> None:
                for _ in range(50):  # the loop's own cycles, run here one after another: no waiting on a clock
                    await loop.cycle()
                    if check():
                        return
                raise AssertionError(f"not reached in 50 cycles: {what}")

            # the site wants to export 5 kW: a V2X EVSE would discharge; this one is held at 0 W
            await cycles_until(lambda: station.tx_w is not None, "a limit written")
            bounds = loop.last_bounds["ev"]
            assert (bounds.low_w, bounds.high_w) == (0.0, 7400.0), bounds  # no discharge offered, nameplate kept
            assert station.tx_w == 0.0

            # the site wants to import 4 kW more than its load: the EVSE is given a charge limit
            loop.set_site_target(5000.0)
            await cycles_until(lambda: (station.tx_w or 0.0) > 0.0, "a charge limit")
            limits = [p["charging_profile"]["charging_schedule"][0]["charging_schedule_period"][0]["limit"]
                      for p in station.actions("SetChargingProfile")
                      if p["charging_profile"]["charging_profile_purpose"] == "TxProfile"]
            assert all(0.0 <= limit <= 7400.0 for limit in limits), limits
            assert loop.write_failures == 0
    finally:
        await csms.close()
        await site.stop()
        pool.close()
