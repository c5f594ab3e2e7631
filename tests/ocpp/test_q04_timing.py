"""Q04's timing requirement: a discharge setpoint is followed within ±2 % within 2 s of simulated time, counted from
the station taking the setpoint to its own meter values showing it, and seen at the site meter too.

The site runs at a quarter of real time, so the 2 s of device time are 8 s of wall time: the agent's and the
WebSocket's scheduling delays on a loaded machine are not what is measured, the station's and the EV's are.

The setpoint must not move while the EV ramps: the station's meter values arrive a second of wall time apart, the
site meter is read every 0.2 s, and a controller that took the last meter value for the EV's present power saw the
ramp as the rest of the site exporting, took the setpoint back towards 0 and chased it (2.25 s to follow in half the
CI runs; at the shipped 5 s meter interval it hunted between -2.2 and -4.7 kW for 20 s)."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
from sitekit import eventually
from test_q04_end_to_end import _site

from agent.config import parse_config
from agent.control.loop import ControlLoop
from agent.wiring import build_csms, build_drivers
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

SPEED = 0.25  # device seconds per wall second
TARGET_W = -5000.0


async def test_a_discharge_setpoint_is_followed_within_2_percent_within_2_s_of_device_time(tmp_path: Path) -> None:
    text = _site(tmp_path).replace("speed = 1.0", f"speed = {SPEED}").replace("lease_timeout_s = 2.0",
                                                                              "lease_timeout_s = 4.0")
    config = parse_config(text, "q04-timing.toml")
    sim = parse_simulation(tomllib.loads(text)["simulation"])
    site = SimSite.from_config(sim)
    drivers, pool = build_drivers(config, site.clock.now)
    csms = build_csms(config, drivers, site.clock.now)
    assert csms is not None
    await csms.start()
    await site.start()
    loop = ControlLoop(config, drivers, clock=site.clock.now, time_scale=SPEED)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        assert site.ocpp is not None
        station = site.ocpp.stations["CP001"]
        meter = site.devices["meter"]

        await eventually(lambda: station.profile is not None and station.profile.setpoint_w < 0, timeout_s=60,
                         what="the station holds a discharge setpoint")  # fmt: skip
        taken_s = site.clock.seconds()
        writes = station.physics.lease.writes  # setpoints the EV was given so far
        assert station.profile is not None
        # the site meter read the base load only: the first setpoint is the whole discharge, not a step towards it
        assert station.profile.setpoint_w == pytest.approx(TARGET_W, rel=0.02)

        def follows() -> bool:
            m = station.last_meter
            return bool(m) and m["export_w"] == pytest.approx(-TARGET_W, rel=0.02) and m["import_w"] == 0.0

        await eventually(follows, timeout_s=60, what="the station's meter values show -5000 W")
        followed_s = site.clock.seconds()
        assert followed_s - taken_s <= 2.0, f"followed {followed_s - taken_s:.2f} s of device time after the setpoint"
        assert station.physics.lease.writes == writes, "the setpoint moved while the EV ramped to it"
        await eventually(lambda: meter.fields()["power_w"] == pytest.approx(TARGET_W, rel=0.02), timeout_s=60,
                         what="the site meter shows the discharge")  # fmt: skip
    finally:
        stop.set()
        await task
        await csms.close()
        await site.stop()
        pool.close()
