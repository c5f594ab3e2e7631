"""The optimiser driving the simulated site: plans follow prices, the loop executes them through the envelope."""

from __future__ import annotations

import asyncio
import tomllib
from datetime import timedelta
from pathlib import Path

import numpy as np
from sitekit import eventually, free_port_block, shipped_config_on_free_ports

from agent.app import AgentApp
from agent.config import load_config, parse_config
from agent.dispatch.build import step_start
from agent.dispatch.planner import Plan
from agent.events.lifecycle import EventState
from agent.signals.models import AsActivation, AsAward, PriceSeries
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
lease_timeout_s = 1.0
state_file = ":memory:"  # never the working directory's file: a stored event would leak into the next run
[site]
meter = "meter"
[control]
mode = "dispatch"
[dispatch]
step_s = 60
horizon_steps = 6
default_price_per_kwh = 20.0
base_load_w = 0.0
[[assets]]
id = "bess"
map = "vppsim_battery"
port = {port}
replacement_cost = 3000000
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}
unit_id = 2
[simulation]
base_load_w = 0.0
[[simulation.devices]]
id = "bess"
model = "vppsim_battery"
port = {port}
[simulation.devices.params]
soc = 0.02
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
unit_id = 2
"""


async def test_plan_follows_prices_and_is_executed() -> None:
    text = SITE.replace("{port}", str(free_port_block(1)))
    config = parse_config(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(config, site.clock.now)
        dispatcher = app.dispatcher
        assert dispatcher is not None
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            await eventually(lambda: dispatcher.plan is not None, what="first plan (the solver is up)", timeout_s=60)
            for _ in range(3):  # a plan made after the minute turned starts a step later: price that one again
                start = step_start(site.clock.now(), 60)
                # this step is very cheap, all later ones very dear: charge now, sell later (2 kWh stored is less
                # than the 50 kW x 5 min the dear steps can take, so charging now pays)
                dispatcher.book = {"prices": {"p": PriceSeries(id="p", start=start, interval_s=60,
                                                               prices_per_kwh=[1, 80, 80, 80, 80, 80, 80])}}
                solves = dispatcher.solves
                dispatcher.request_replan()
                await eventually(lambda: dispatcher.solves > solves, what="plan with the prices", timeout_s=60)  # noqa: B023
                if dispatcher.plan_start == start:
                    break
            plan = dispatcher.plan
            assert plan is not None and dispatcher.plan_start == start
            assert plan.power_w[0, 0] > 10_000  # charging in the cheap step
            assert plan.breakdown["wear_cycle"] >= 0 and "energy" in plan.breakdown
            if site.clock.now() < start + timedelta(seconds=55):  # still in the cheap step: the loop executes it
                await eventually(lambda: site.devices["bess"].power_w > 10_000, what="battery charging per plan")
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def test_without_a_plan_the_rule_keeps_control() -> None:
    text = SITE.replace("{port}", str(free_port_block(1))).replace("soc = 0.02", "soc = 0.5")
    text = text.replace("[simulation]\nbase_load_w = 0.0", "[simulation]\nbase_load_w = 9000.0")
    config = parse_config(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(config, site.clock.now)
        app.loop.schedule = lambda now: None  # the optimiser has nothing (failed, overran, or not yet run)
        stop = asyncio.Event()
        task = asyncio.create_task(app.loop.run(stop))
        try:
            # site_target_w defaults to 0: the rule discharges the battery to cover the 9 kW base load
            await eventually(lambda: abs(site.devices["meter"].power_w) < 500, what="rule steering the meter")
        finally:
            stop.set()
            await task


async def test_activation_in_dispatch_mode_lands_on_the_plans_reserved_battery() -> None:
    text = SITE.replace("{port}", str(free_port_block(1))).replace("soc = 0.02", "soc = 0.5")
    text = text.replace('id = "bess"', 'id = "bess{i}"\ncount = 2\nunits_per_port = 2')
    text = text.replace("unit_id = 2", "unit_id = 3")
    config = parse_config(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(config, site.clock.now)
        assert app.dispatcher is not None and app.loop.reserve_source is not None
        # a plan made elsewhere: hold both batteries at 0 W and reserve 20 kW of up on bess2 only
        steps = 10
        app.dispatcher.plan = Plan(
            asset_ids=["bess1", "bess2"],
            step_s=60,
            power_w=np.zeros((2, steps)),
            energy_wh=np.zeros((2, steps + 1)),
            reserve_up_w=np.array([[0.0] * steps, [20_000.0] * steps]),
            reserve_down_w=np.zeros((2, steps)),
            breakdown={},
        )
        app.dispatcher.plan_start = step_start(site.clock.now(), 60)
        stop = asyncio.Event()
        task = asyncio.create_task(app.loop.run(stop))  # the loop alone: no re-plan replaces the plan above
        try:
            await eventually(lambda: len(app.loop.fleet.available()) == 3, what="site polled")
            now = site.clock.now()
            award = AsAward(id="a1", product="FRR", block_start=now, block_end=now + timedelta(hours=1), up_w=20_000,
                            down_w=0)  # fmt: skip
            await app.events.receive("as_award", award, now)
            await eventually(lambda: app.events.events["a1"].state is EventState.ACTIVE, what="award active")
            await app.events.receive("as_activation", AsActivation(id="x", award_id="a1", at=now, value=1.0), now)
            app.loop.wake(fast=True)
            await eventually(lambda: site.devices["bess2"].power_w < -15_000, what="bess2 delivers the activation")
            assert abs(site.devices["bess1"].power_w) < 2_000  # bess1 had no reserve: it stays on its plan
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def test_the_demo_site_is_planned_by_default_and_runs_its_plan(tmp_path: Path) -> None:
    """The shipped config as the demo starts it: no mode set by the user is needed for the optimiser to steer."""
    path = shipped_config_on_free_ports(tmp_path)
    config = load_config(path)
    assert config.control.mode == "dispatch"
    async with SimSite.from_config(parse_simulation(config.simulation or {})) as site:
        app = AgentApp(config, site.clock.now)
        assert app.dispatcher is not None
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            await eventually(lambda: app.dispatcher.plan is not None, what="first plan of the demo site", timeout_s=60)
            plan = app.dispatcher.plan
            assert plan is not None and {"bess1", "bess2"} <= set(plan.asset_ids)
            assert plan.breakdown["wear_cycle"] > 0 or plan.breakdown["wear_calendar"] > 0  # pack costs are priced

            def loop_asks_for_the_plan() -> bool:
                planned = app.dispatcher.requests(site.clock.now())
                written = app.loop.last_setpoints
                return planned is not None and all(
                    asset in written and abs(written[asset].requested_w - watts) < 1.0
                    for asset, watts in planned.items()
                )

            # each planned asset is asked for this step's planned power (the envelope may still cut what is written)
            await eventually(loop_asks_for_the_plan, what="the loop requesting the plan's powers")
            deadband = config.agent.setpoint_deadband_w

            def device_holds(asset: str) -> bool:
                return abs(site.devices[asset].lease.setpoint_w - app.loop.last_setpoints[asset].power_w) <= deadband

            for asset in ("bess1", "bess2"):
                await eventually(lambda a=asset: device_holds(a), what=f"{asset} holding the enveloped plan value")
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
