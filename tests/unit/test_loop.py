"""ControlLoop logic with in-memory drivers: robustness, stopping, read-back, meter loss, write decisions.

These drivers are test doubles of the Driver interface (no protocol is imitated); the loop over real Modbus is
covered in tests/integration.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import pytest
from sitekit import eventually
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.control.loop import ControlLoop
from agent.control.safety import Bounds
from agent.model import AssetKind, DeviceStatus, Measurement, Setpoint
from agent.ports import DriverError

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
CONFIG = """
[agent]
poll_period_s = 0.1
poll_timeout_s = 0.02
lease_timeout_s = 10
unavailable_after = 2
[site]
meter = "m"
import_limit_w = 20000
[control]
mode = "site_target"  # the rule controller: these tests pin its writes
site_target_w = 100000
[[assets]]
id = "b"
map = "vppsim_battery"
[[assets]]
id = "m"
map = "vppsim_dc_meter"
port = 503
"""


class MemoryDriver:
    """Returns whatever the test puts in `power_w` etc.; records writes; can fail or hang on demand."""

    def __init__(self, asset_id: str, kind: AssetKind) -> None:
        self.asset_id, self.kind = asset_id, kind
        self.power_w = 0.0
        self.setpoint_w = 0.0
        self.lease_timeout_s = 0.0
        self.fail: Exception | None = None
        self.hang = False
        self.writes: list[float] = []

    async def connect(self) -> None:
        return None

    async def read(self) -> Measurement:
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        battery = self.kind is AssetKind.BATTERY
        return Measurement(
            self.asset_id, NOW, power_w=self.power_w, setpoint_w=self.setpoint_w if battery else None,
            lease_timeout_s=self.lease_timeout_s if battery else None, soc=0.5 if battery else None,
            soh=1.0 if battery else None, capacity_wh=100000 if battery else None,
            rated_charge_w=50000 if battery else None, rated_discharge_w=50000 if battery else None,
        )  # fmt: skip

    async def write_setpoint(self, power_w: float) -> None:
        self.writes.append(power_w)
        self.setpoint_w = power_w

    async def write_lease_timeout(self, seconds: float) -> None:
        self.lease_timeout_s = seconds

    async def close(self) -> None:
        return None


def make_loop(text: str = CONFIG, **kwargs: float) -> tuple[ControlLoop, dict[str, MemoryDriver]]:
    config = parse_config(text)
    drivers = {"b": MemoryDriver("b", AssetKind.BATTERY), "m": MemoryDriver("m", AssetKind.METER)}
    return ControlLoop(config, drivers, clock=lambda: NOW, **kwargs), drivers  # type: ignore[arg-type]


async def test_a_driver_bug_costs_one_poll_not_the_loop() -> None:
    loop, drivers = make_loop()
    drivers["b"].fail = OverflowError("math range error")
    await loop.cycle()
    state = loop.fleet.assets["b"]
    assert state.consecutive_failures == 1 and "OverflowError" in (state.last_error or "")
    assert loop.fleet.assets["m"].available


async def test_stop_cancels_a_cycle_stuck_on_a_device() -> None:
    loop, drivers = make_loop()
    drivers["b"].hang = True  # a device that never answers and a driver with no timeout of its own
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await eventually(lambda: drivers["m"].writes == [] and loop.cycles == 0, what="cycle in flight")
    stop.set()
    await asyncio.wait_for(runner, timeout=30)  # bounds only a failing test: without the fix this never returns
    assert runner.done() and runner.exception() is None


async def test_non_finite_requests_are_refused_or_neutralised() -> None:
    loop, _ = make_loop()
    with pytest.raises(ValueError, match="finite"):
        loop.set_site_target(math.nan)
    with pytest.raises(ValueError, match="finite"):
        loop.set_override("b", math.inf)
    assert Bounds(-5, 5, "lo", "hi").clamp(math.nan) == (0.0, ("non-finite request",))


async def test_readback_mismatch_rewrites_lease_and_setpoint() -> None:
    loop, drivers = make_loop()
    drivers["m"].power_w = 5000
    await loop.cycle()
    await loop.cycle()
    b = drivers["b"]
    assert b.lease_timeout_s == 10 and b.writes
    b.lease_timeout_s = 30  # the device rebooted with its default lease
    b.setpoint_w = 0.0
    writes = len(b.writes)
    await loop.cycle()
    assert b.lease_timeout_s == 10 and len(b.writes) == writes + 1
    b.setpoint_w = 0.0  # the lease lapsed on the device: it reads back 0 W while we hold a non-zero setpoint
    await loop.cycle()
    assert b.setpoint_w != 0.0 and len(b.writes) == writes + 2


async def test_meter_loss_keeps_the_last_uncontrolled_estimate() -> None:
    loop, drivers = make_loop()
    drivers["m"].power_w = 15000  # 15 kW base load, battery idle
    await loop.cycle()
    assert loop.uncontrolled_w == 15000
    drivers["m"].fail = DriverError("m", "timeout")
    for _ in range(3):
        await loop.cycle()
    assert not loop.fleet.assets["m"].available
    # target +100 kW, import limit 20 kW: with the base load remembered, charging stays at 5 kW
    assert loop.last_setpoints["b"].power_w == pytest.approx(5000)
    assert "site import limit" in loop.last_setpoints["b"].reasons


def test_write_decisions() -> None:
    loop, _ = make_loop(CONFIG.replace("lease_timeout_s = 10", "lease_timeout_s = 10\nsetpoint_deadband_w = 50"))
    state = loop.fleet.assets["b"]
    assert loop._needs_write(state, Setpoint("b", 100, 100), 0.0)  # nothing written yet
    state.lease_written, state.written_setpoint_w, state.written_at_monotonic = True, 100.0, 0.0
    assert not loop._needs_write(state, Setpoint("b", 140, 140), 1.0)  # inside the deadband
    assert loop._needs_write(state, Setpoint("b", 200, 200), 1.0)  # past the deadband
    assert loop._needs_write(state, Setpoint("b", 100, 100), 5.0)  # half the lease: refresh
    loop.last_bounds["b"] = Bounds(-60, 60, "", "live charge limit")
    assert loop._needs_write(state, Setpoint("b", 60, 100), 1.0)  # held value now outside the limits
    loop.last_bounds.clear()
    assert loop._needs_write(state, Setpoint("b", 0, 0), 1.0)  # a stop is always written
    state.written_setpoint_w = 0.0
    assert not loop._needs_write(state, Setpoint("b", 0, 0), 60.0)  # a held 0 W needs no refresh


def test_a_held_0_w_is_refreshed_where_a_lapsed_lease_is_not_0_w() -> None:
    loop, drivers = make_loop()
    drivers["b"].lease_lapse_is_zero = False  # type: ignore[attr-defined]  # e.g. SunSpec 124: back to its own mode
    state = loop.fleet.assets["b"]
    state.lease_written, state.written_setpoint_w, state.written_at_monotonic = True, 0.0, 0.0
    assert not loop._needs_write(state, Setpoint("b", 0, 0), 1.0)
    assert loop._needs_write(state, Setpoint("b", 0, 0), 5.0)  # half the 10 s lease: refreshed


def test_lease_refresh_follows_device_time() -> None:
    loop, _ = make_loop(time_scale=10.0)  # device time runs 10x: a 10 s lease is 1 s of loop time
    state = loop.fleet.assets["b"]
    state.lease_written, state.written_setpoint_w, state.written_at_monotonic = True, 100.0, 0.0
    assert not loop._needs_write(state, Setpoint("b", 100, 100), 0.3)
    assert loop._needs_write(state, Setpoint("b", 100, 100), 0.5)


async def test_wake_starts_the_next_cycle_at_once() -> None:
    loop, drivers = make_loop(
        CONFIG.replace("poll_period_s = 0.1", "poll_period_s = 600").replace(
            "lease_timeout_s = 10", "lease_timeout_s = 1300"
        )
    )
    drivers["m"].power_w = 1000
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await eventually(lambda: loop.cycles == 1, what="first cycle")
    loop.set_site_target(0.0)
    loop.wake()  # without it the next cycle is ten minutes away
    await eventually(lambda: loop.cycles == 2, what="woken cycle")
    assert loop.last_setpoints["b"].power_w == pytest.approx(-1000)
    stop.set()
    await runner


async def test_fast_cycles_do_not_rewrite_from_readings_older_than_the_write() -> None:
    loop, drivers = make_loop()
    drivers["m"].power_w = 5000
    await loop.cycle()
    await loop.cycle()
    b = drivers["b"]
    lease_writes = b.lease_timeout_s
    writes = len(b.writes)
    b.lease_timeout_s = 10  # as the device has it
    for target in (0.0, 20000.0, 0.0):  # activations: decide from the last poll, write at once
        loop.set_site_target(target)
        loop.wake(fast=True)
        await loop.cycle()
    assert len(b.writes) == writes + 3  # one setpoint write per fast cycle, no lease rewrites
    assert lease_writes == 10


async def test_dispatch_mode_says_when_the_plan_lapses_not_while_the_first_is_awaited() -> None:
    """Before the first plan the rule steering is expected (info); a plan that ran out is news (a warning)."""
    from structlog.testing import capture_logs

    loop, drivers = make_loop(CONFIG.replace('mode = "site_target"', 'mode = "dispatch"'))
    planned: dict[str, float] | None = None
    loop.schedule = lambda now: planned
    drivers["m"].power_w = 1000
    with capture_logs() as logs:
        await loop.cycle()  # no plan yet: the rule (site_target_w 100 kW: charge to the 20 kW import limit)
        assert loop.last_setpoints["b"].requested_w > 0
        planned = {"b": -3000.0}
        await loop.cycle()
        assert loop.last_setpoints["b"].requested_w == -3000.0
        planned = None
        await loop.cycle()
        await loop.cycle()
        planned = {"b": -3000.0}
        await loop.cycle()
    names = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("dispatch.")]
    assert names == [
        ("dispatch.awaiting_first_plan", "info"),
        ("dispatch.no_plan", "warning"),  # once per lapse, not every cycle
        ("dispatch.plan_resumed", "info"),
    ]


class FrozenClock:
    """A monotonic clock that moves only when the test says: what the loop may do is then decided, not raced."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_fast_wakes_coalesce_are_spaced_and_never_hold_back_the_poll() -> None:
    clock = FrozenClock()
    loop, drivers = make_loop(
        CONFIG.replace("poll_period_s = 0.1", "poll_period_s = 600").replace(
            "lease_timeout_s = 10", "lease_timeout_s = 1300"
        ),
        monotonic=clock,  # type: ignore[arg-type]
    )
    reads = 0
    read = drivers["m"].read

    async def counted() -> Measurement:
        nonlocal reads
        reads += 1
        return await read()

    drivers["m"].read = counted  # type: ignore[method-assign]
    wakes = 0

    async def frequency_feed() -> None:  # a wake per event-loop turn: far more than any real feed
        nonlocal wakes
        while True:
            loop.wake(fast=True)
            wakes += 1
            await asyncio.sleep(0)

    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await eventually(lambda: loop.cycles == 1, what="first cycle")
    feed = asyncio.create_task(frequency_feed())
    try:
        clock.t += 1.0  # past the gap after the first cycle (0.1 s), far from the next poll (600 s)
        await eventually(lambda: loop.cycles >= 2, what="a woken cycle")
        seen = wakes
        await eventually(lambda: wakes >= seen + 2000, what="2000 more wakes")
        # thousands of wakes, but no time passed on the loop's clock: one woken cycle, no poll, nothing more
        assert loop.cycles == 2 and reads == 1
        clock.t += 600.0  # the poll is due: it happens though wakes never stop
        await eventually(lambda: reads == 2, what="the poll while woken")
        assert loop.polls == 2
    finally:
        feed.cancel()
        stop.set()
        await runner


RANGE_CONFIG = CONFIG.replace("site_target_w = 100000", "site_target_w = 0").replace(
    "import_limit_w = 20000",
    "import_limit_w = 20000\nexport_limit_w = 10000\nbase_load_min_w = 2000\nbase_load_max_w = 8000\npv_max_w = 6000",
)  # the rest of the site draws -4..+8 kW (± the default 2 kW tolerance)


async def test_a_lying_meter_cannot_push_the_site_past_its_limits() -> None:
    loop, drivers = make_loop(RANGE_CONFIG)
    drivers["m"].power_w = 300_000  # battery idle: the rest of the site "draws 300 kW"
    await loop.cycle()
    setpoint = loop.last_setpoints["b"]
    for truth in (-4000, 8000):  # whatever the rest of the site draws within its range, the limits hold
        assert -10000 - 1e-6 <= truth + setpoint.power_w <= 20000 + 1e-6
    # target 0 W: the rule asks for -8 kW; the export limit against the bottom of the range allows -6 kW
    assert setpoint.power_w == pytest.approx(-6000) and "site export limit" in setpoint.reasons
    assert loop.uncontrolled_w == 8000  # steered by the top of the range, not by the lie
    assert loop.meter_problem is not None and "300000 W" in loop.meter_problem
    drivers["m"].power_w = 5000  # an honest reading again: believed, used exactly
    await loop.cycle()
    assert loop.meter_problem is None and loop.uncontrolled_w == 5000


async def test_meter_loss_with_a_range_keeps_the_limits_for_all_of_it() -> None:
    loop, drivers = make_loop(RANGE_CONFIG.replace("site_target_w = 0", "site_target_w = 100000"))
    drivers["m"].power_w = 5000
    await loop.cycle()
    assert loop.uncontrolled_w == 5000
    drivers["m"].fail = DriverError("m", "timeout")
    for _ in range(3):
        await loop.cycle()
    assert not loop.fleet.assets["m"].available
    # the last estimate (5 kW) would allow 15 kW of charging; the top of the range (8 kW) allows 12 kW
    assert loop.last_setpoints["b"].power_w == pytest.approx(12000)
    assert loop.uncontrolled_w == 5000
    assert "no reading" in (loop.meter_problem or "")


async def test_a_faulted_meter_gives_no_reading() -> None:
    loop, drivers = make_loop(RANGE_CONFIG)
    drivers["m"].power_w = 5000
    await loop.cycle()
    read = drivers["m"].read

    async def faulted() -> Measurement:
        m = await read()
        return Measurement(m.asset_id, m.at, power_w=0.0, status=DeviceStatus.FAULT, fault_code=7)

    drivers["m"].read = faulted  # type: ignore[method-assign]
    await loop.cycle()
    assert loop.site_meter_w() is None and loop.uncontrolled_w == 5000  # not "0 W": the last estimate stays


class MinimumPowerDriver(MemoryDriver):
    """A device that cannot run below `minimum_w`: its driver writes 0 W instead and says so (drivers/modbus.py
    with a map's [control] min_charge_w, e.g. the EVtec BiDiPro's 1.5 kW)."""

    minimum_w = 60_000.0

    async def write_setpoint(self, power_w: float) -> float | None:
        commanded = 0.0 if abs(power_w) < self.minimum_w else power_w
        await super().write_setpoint(commanded)
        return commanded if commanded != power_w else None


async def test_a_request_below_the_device_minimum_is_not_rewritten_every_cycle() -> None:
    """The device holds 0 W where ~20 kW was asked: the read-back compares with what it was told, so no
    `setpoint.mismatch` and no rewrite each cycle (the lease refresh alone rewrites it)."""
    config = parse_config(CONFIG)
    drivers = {"b": MinimumPowerDriver("b", AssetKind.BATTERY), "m": MemoryDriver("m", AssetKind.METER)}
    loop = ControlLoop(config, drivers, clock=lambda: NOW)  # type: ignore[arg-type]
    with capture_logs() as logs:
        for _ in range(5):
            await loop.cycle()
    assert loop.last_setpoints["b"].power_w > 0 and drivers["b"].setpoint_w == 0.0
    assert loop.fleet.assets["b"].commanded_setpoint_w == 0.0
    assert [e for e in logs if e["event"] == "setpoint.mismatch"] == []
    assert len(drivers["b"].writes) == 1
