"""A device that answers after the poll timeout, over real Modbus TCP (the simulator's `slow` fault).

A late reply must never be taken as the answer to a later request. pymodbus 3.16 matches replies by transaction
id alone, and its server (the simulator) stamps a delayed reply with the id of the latest request on the connection,
so on a kept connection the late reply landed on whatever request came next: a neighbour's behind the same gateway
(which then showed the slow device's registers as its own) or the slow device's own next poll (so it seemed to
answer every other poll and never stayed out). Both are checked from what the agent saw, against the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from sitekit import eventually, running_site

from agent.model import Measurement
from agent.ports import DriverError
from sim_devices.clock import ManualClock

GATEWAY = """
[agent]
poll_period_s = {period}
poll_timeout_s = {timeout}
unavailable_after = 2
max_backoff_s = {period}
lease_timeout_s = 5.0
[control]
mode = "idle"
[[assets]]
id = "slow"
map = "vppsim_battery"
port = {port}
[[assets]]
id = "neighbour"
map = "vppsim_battery"
port = {port}
unit_id = 2

[simulation]
[[simulation.devices]]
id = "slow"
model = "vppsim_battery"
port = {port}
[simulation.devices.params]
soc = 0.2
[[simulation.devices]]
id = "neighbour"
model = "vppsim_battery"
port = {port}
unit_id = 2
[simulation.devices.params]
soc = 0.8
"""


def site(period: float, timeout: float) -> str:
    return GATEWAY.replace("{period}", str(period)).replace("{timeout}", str(timeout))


async def test_a_late_reply_never_answers_the_neighbours_request() -> None:
    """Timeout 0.5 s; the slow device answers after 0.7 s, its neighbour on the same gateway after 0.4 s: the late
    reply comes while the neighbour's request is pending. Every reading must be the device's own."""
    clock = ManualClock(datetime(2026, 11, 23, tzinfo=UTC))
    async with running_site(site(1.0, 0.5), 1, clock=clock, start_agent=False) as run:
        run.site.faults("slow").set_slow(0.7)
        run.site.faults("neighbour").set_slow(0.4)
        drivers = run.loop.drivers
        seen: dict[str, list[float]] = {"slow": [], "neighbour": []}
        for _ in range(6):
            for asset_id in ("slow", "neighbour"):
                try:
                    reading: Measurement = await drivers[asset_id].read()
                except DriverError:
                    continue
                assert reading.soc is not None
                seen[asset_id].append(round(reading.soc, 6))
        assert seen["neighbour"], "the neighbour (0.4 s, inside the timeout) never answered"
        assert set(seen["neighbour"]) == {0.8}, f"the neighbour showed another device's registers: {seen}"
        assert set(seen["slow"]) <= {0.2}


async def test_a_device_answering_after_the_timeout_counts_as_failing_and_stays_out() -> None:
    """Timeout 0.3 s, period 0.6 s, the device answers after 0.8 s: on a kept connection its reply came while its
    own next poll was pending. It must fail every poll: out after two, and never back while it stays slow."""
    clock = ManualClock(datetime(2026, 11, 23, tzinfo=UTC))
    async with running_site(site(0.6, 0.3), 1, clock=clock, start_agent=False) as run:
        run.site.faults("slow").set_slow(0.8)
        run.task = asyncio.create_task(run.loop.run(run.stop))  # slow from the agent's first poll on
        state = run.loop.fleet.assets["slow"]
        neighbour = run.loop.fleet.assets["neighbour"]
        await eventually(lambda: state.polls_ok + state.polls_failed >= 8, what="eight polls of the slow device")
        assert state.polls_ok == 0, f"a late reply was taken as an answer ({state.polls_ok} polls 'ok')"
        assert not state.available
        # it never answered: reported once as unavailable since start (issue 16), never as having come back
        assert [e for a, e in run.loop.fleet.events if a == "slow"] == ["unavailable"]
        assert neighbour.available and neighbour.measurement is not None and neighbour.measurement.soc == 0.8
        run.site.faults("slow").set_slow(0.0)
        await eventually(lambda: state.available, what="the device back once it answers in time")
        assert state.measurement is not None and abs(state.measurement.soc - 0.2) < 1e-6  # type: ignore[operator]


async def test_a_cancelled_request_leaves_no_reply_behind() -> None:
    """A caller that gives up on a read (cancels it) must not leave its reply to land on the next request: the slow
    device answers after 0.5 s, the read is cancelled at 0.1 s, and the neighbour's read (0.6 s, inside the 2 s
    timeout) is pending when that reply comes."""
    clock = ManualClock(datetime(2026, 11, 23, tzinfo=UTC))
    text = site(3.0, 2.0).replace("lease_timeout_s = 5.0", "lease_timeout_s = 10.0")
    async with running_site(text, 1, clock=clock, start_agent=False) as run:
        run.site.faults("slow").set_slow(0.5)
        run.site.faults("neighbour").set_slow(0.6)
        drivers = run.loop.drivers
        gateway = drivers["slow"].gateway  # type: ignore[attr-defined]
        for _ in range(3):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drivers["slow"].read(), 0.1)
            reading = await drivers["neighbour"].read()
            assert reading.soc == 0.8, "the neighbour showed the cancelled request's reply"
        assert gateway.dropped >= 3
