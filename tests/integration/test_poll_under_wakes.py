"""A fast signal feed never stops polling: the agent keeps reading a real simulated site while woken at any rate.

Frequency readings and activations wake fast cycles (decide from the last poll, write at once). Each used to reset
the cycle's rhythm and skip the poll, so a 1-10 Hz feed left the safety envelope on frozen data and dead devices
unnoticed. The counts here are the simulator's own: requests its Modbus servers answered.
"""

from __future__ import annotations

import asyncio

import pytest
from sitekit import eventually, running_site

from agent.control.loop import ControlLoop

SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
lease_timeout_s = 2.0
[site]
meter = "meter"
[control]
mode = "site_target"
site_target_w = 0.0
[[assets]]
id = "bess"
map = "vppsim_battery"
port = {port}
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}
unit_id = 2

[simulation]
tick_s = 0.05
base_load_w = 5000.0
[[simulation.devices]]
id = "bess"
model = "vppsim_battery"
port = {port}
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
unit_id = 2
[simulation.devices.params]
measures = "site"
"""


async def feed(loop: ControlLoop, interval_s: float) -> None:
    """Wake a fast cycle every `interval_s` (0: every turn of the event loop), as a frequency feed does."""
    while True:
        loop.wake(fast=True)
        await asyncio.sleep(interval_s)


@pytest.mark.parametrize("interval_s", [0.1, 0.02, 0.0], ids=["10Hz", "50Hz", "flood"])
async def test_polls_go_on_while_fast_wakes_keep_coming(interval_s: float) -> None:
    async with running_site(SITE, 1) as run:
        await eventually(lambda: run.loop.cycles >= 1, what="first cycle")
        waker = asyncio.create_task(feed(run.loop, interval_s))
        try:
            endpoints = [run.site.endpoints[k] for k in ("bess", "meter")]
            before = [e.reads for e in endpoints]
            await eventually(
                lambda: all(e.reads >= n + 10 for e, n in zip(endpoints, before, strict=True)),
                timeout_s=60,
                what="every device read 10 more times while fast wakes kept coming",
            )
            cycles, polls = run.loop.cycles, run.loop.polls
            # the fast path still runs in between: cycles that decide and write without a poll
            await eventually(
                lambda: run.loop.cycles - cycles > run.loop.polls - polls + 3, timeout_s=60, what="fast cycles"
            )
        finally:
            waker.cancel()
