"""An EV's charging needs, sent over OCPP 2.1, reach the plan: NotifyEVChargingNeeds (departure in 3 h, energy
requests in Wh) → the agent polls the EVSE → agent.dispatch.build.plan_inputs gives that asset the departure step
and the target energy the needs imply (converted once, by drivers/ocpp/codec.py) → the planner's plan reaches the
target by the departure. The whole agent (AgentApp and its CSMS over TLS) and the `ocpp` library's station."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from ocpp import v21
from ocppkit import LibStation21, Pki, fill_site
from sitekit import eventually
from test_restart_transaction import (
    CAPACITY_WH,
    CONFIG,
    STATION,
    T0,
    Clock,
    charging_needs,
    running_agent,
    stamp,
    station,
    tx_event,
)

from agent.app import AgentApp
from agent.dispatch.build import plan_inputs
from agent.dispatch.planner import solve
from agent.signals.models import PriceSeries
from sim_devices.ports import free_port_block

DISPATCH = """
[dispatch]
step_s = 900
horizon_steps = 24
"""
# what the message says, read by hand from the OCPP 2.1 field descriptions: stateOfCharge 30 %, evEnergyCapacity
# 60 kWh, evTargetEnergyRequest +30 kWh ("energy to requested state of charge"), evMinEnergyRequest +6 kWh
TARGET_WH = 0.30 * CAPACITY_WH + 30_000.0
NOW_WH = 0.30 * CAPACITY_WH


def agent_config(tmp_path: Path) -> tuple[str, int, Pki]:
    port = free_port_block(1)
    text, pki = fill_site(tmp_path, CONFIG + DISPATCH, [STATION], port=port)
    return text, port, pki


async def plugged_in(cp: LibStation21, now: datetime) -> None:
    """Boot, an occupied connector, a transaction started at `now` (SoC 30 %)."""
    await cp.call(v21.call.BootNotification(charging_station={"model": "Lib", "vendor_name": "ocpp.v21"},
                                            reason="PowerUp"))
    await cp.call(v21.call.StatusNotification(timestamp=stamp(now), connector_status="Occupied", evse_id=1,
                                              connector_id=1))
    await cp.call(tx_event(0, round((now - T0).total_seconds() / 60), 1000.0, kind="Started"))


async def needs_known(app: AgentApp, cp: LibStation21, departure: datetime) -> None:
    """Send the EV's needs leaving at `departure`; return once the agent's poll has them."""
    assert (await cp.call(charging_needs(departure))).status == "Accepted"
    await eventually(lambda: (m := app.loop.fleet.assets["ev1"].measurement) is not None
                     and m.ev_departure == departure, what="the agent polled the EV's needs")  # fmt: skip


async def test_charging_needs_set_the_plans_departure_and_target(tmp_path: Path) -> None:
    text, port, pki = agent_config(tmp_path)
    now = T0 + timedelta(minutes=5)  # inside the 10:00 planning step
    clock = Clock(now)
    departure = now + timedelta(hours=3)

    async with running_agent(text, clock) as app, station(port, pki) as cp:
        await plugged_in(cp, now)
        await needs_known(app, cp, departure)
        inputs, start = plan_inputs(app.loop.fleet, app.config, clock.now(), {}, 0.0)

    [ev] = [a for a in inputs.assets if a.id == "ev1"]
    step_s = app.config.dispatch.step_s
    assert start == T0  # the step containing 10:05
    assert ev.is_ev and ev.target_step == math.ceil((departure - start).total_seconds() / step_s) == 13
    assert ev.target_wh == pytest.approx(TARGET_WH) and ev.energy_wh == pytest.approx(NOW_WH)
    assert ev.max_wh == pytest.approx(CAPACITY_WH)
    assert ev.available is not None and ev.available.tolist() == [k < 13 for k in range(inputs.steps)]

    plan = await asyncio.to_thread(solve, inputs)
    row = plan.asset_ids.index("ev1")
    assert plan.energy_wh[row, ev.target_step] >= TARGET_WH - 1.0  # reached by the departure
    assert plan.energy_wh[row, 0] == pytest.approx(NOW_WH)
    assert all(p == pytest.approx(0.0, abs=1e-3) for p in plan.power_w[row, ev.target_step:])  # gone: no power


async def test_a_departure_moved_earlier_raises_the_charging_now(tmp_path: Path) -> None:
    """Dear until noon, cheap after: leaving at 15:05 the plan waits for the cheap hours; leaving at 12:55 (what a
    second NotifyEVChargingNeeds says) the cheap hours cannot hold 30 kWh, so it charges now."""
    text, port, pki = agent_config(tmp_path)
    now = T0 + timedelta(minutes=5)
    clock = Clock(now)
    prices = PriceSeries(id="p", start=T0, interval_s=1800, prices_per_kwh=[30.0] * 4 + [10.0] * 8)
    book = {"prices": {"p": prices}}

    async def charging_now_w(app: AgentApp) -> tuple[float, int | None]:
        inputs, _ = plan_inputs(app.loop.fleet, app.config, clock.now(), book, 0.0)
        [ev] = [a for a in inputs.assets if a.id == "ev1"]
        plan = await asyncio.to_thread(solve, inputs)
        row = plan.asset_ids.index("ev1")
        assert plan.energy_wh[row, ev.target_step] >= TARGET_WH - 1.0
        return float(plan.power_w[row, 0]), ev.target_step

    async with running_agent(text, clock) as app, station(port, pki) as cp:
        await plugged_in(cp, now)
        await needs_known(app, cp, now + timedelta(hours=5))
        late_w, late_step = await charging_now_w(app)
        await needs_known(app, cp, now + timedelta(hours=2, minutes=50))
        early_w, early_step = await charging_now_w(app)
    assert (late_step, early_step) == (21, 12)
    assert late_w == pytest.approx(0.0, abs=1.0)  # 13 cheap steps hold the 31.6 kWh the grid must give
    # 4 cheap steps give 11 kWh at 11 kW; the 8 dear ones must give 20.6 of their 22 kWh: step 0 at least 5.3 kW
    assert early_w >= 5_300.0
