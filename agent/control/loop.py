"""The control cycle: poll → update fleet → decide → envelope → write, once per period (DESIGN.md §10).

Polls run concurrently, one coroutine per due asset; each request is bounded by the driver's own timeout, so a
dead device costs one timeout on its own connection and nothing elsewhere. A phase that overruns the period is
logged with its timing. Setpoints are rewritten only when they change by more than the deadband or when the
device's lease needs refreshing, which halves the Modbus traffic of a steady site.

Between polls, `wake()` runs extra cycles for signals that should not wait (an activation, a frequency reading, a
new target). They never starve polling: the poll keeps its period whatever the wake rate (a woken cycle polls when
the poll is due, and waking never moves the poll later), wakes coalesce (at most one pending), and a woken cycle
starts at least MIN_WAKE_GAP_S after the previous woken one started, so a burst of 10,000 wakes a second costs at
most ~10 extra cycles a second while a lone wake acts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog

from agent.config import AppConfig
from agent.control.assets_now import assets_power
from agent.control.meter import MeterCheck
from agent.control.rule import plan_within_bounds, share_within_reserves, site_target_requests
from agent.control.safety import Bounds, SafetyEnvelope
from agent.fleet import AssetState, Fleet
from agent.model import DeviceStatus, Measurement, Setpoint
from agent.ports import Driver, DriverError

log = structlog.get_logger("agent.control")

# Rewrite a held setpoint once half its lease has passed: one lost write still leaves half a lease of margin.
LEASE_REFRESH_FRACTION = 0.5
# Least time (wall s) between the starts of two woken cycles: 10 woken cycles a second at most, which follows the
# fastest feed the docs expect (frequency readings every 0.1-1 s) reading by reading and bounds the CPU a flood of
# signals can take to what a 0.1 s control period would. A lone wake starts its cycle at once (scheduled cycles do not
# count against it: with a 0.1 s period they would delay every activation); one that comes sooner is kept and
# coalesced, not lost, and waits at most this long. Never above the poll period.
MIN_WAKE_GAP_S = 0.1

Woken = Literal["fast", "poll"]


@dataclass(frozen=True, slots=True)
class CycleTiming:
    poll_s: float
    decide_s: float
    write_s: float

    @property
    def total_s(self) -> float:
        return self.poll_s + self.decide_s + self.write_s


def _require_finite(what: str, watts: float) -> None:
    if not math.isfinite(watts):
        raise ValueError(f"{what} must be a finite number of watts, got {watts!r}")


class ControlLoop:
    """Runs the fixed cycle over a fleet of drivers."""

    def __init__(
        self,
        config: AppConfig,
        drivers: dict[str, Driver],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        time_scale: float = 1.0,
    ) -> None:
        """`time_scale` is device seconds per loop second: 1 for real devices, the simulator's speed in a fast demo.

        Leases, ramps and EV horizons are device time; the loop's period and refresh timing are its own.
        """
        self.config = config
        self.time_scale = time_scale
        self.drivers = drivers
        self.clock = clock
        self.monotonic = monotonic
        settings = config.agent
        self.period_s = settings.poll_period_s
        self.lease_s = settings.lease_timeout_s
        states: dict[str, AssetState] = {}
        for asset in config.assets:
            for placement in asset.placements():
                states[placement.id] = AssetState(placement.id, drivers[placement.id].kind, asset)
        self.fleet = Fleet(states, settings.unavailable_after, settings.max_backoff_s)
        self.envelope = SafetyEnvelope(config.site.import_limit_w, config.site.export_limit_w)
        self.site_target_w = config.control.site_target_w
        self.overrides: dict[str, float] = {}
        self.mode = config.control.mode
        self.timings: deque[CycleTiming] = deque(maxlen=600)
        self.last_setpoints: dict[str, Setpoint] = {}
        self.meter_check = MeterCheck(config.site)
        self.uncontrolled_w = self.meter_check.uncontrolled.value_w  # the estimate the controller steers by
        self.last_bounds: dict[str, Bounds] = {}
        self.cycles = 0
        self.overruns = 0  # cycles longer than the period (each also logged as cycle.overrun)
        self.cycle_failures = 0
        self.after_cycle: list[Callable[[], None]] = []  # hooks run after every cycle (telemetry), never block it
        self._wake = asyncio.Event()  # set by wake(); _woken says what kind of cycle is pending (at most one)
        self._woken: Woken | None = None
        self.wake_gap_s = min(MIN_WAKE_GAP_S, self.period_s)
        self._next_poll_at = -math.inf  # monotonic time the next poll is due: the first cycle polls
        self._last_woken_start = -math.inf
        self.polls = 0  # poll phases run so far (a woken cycle skips it unless the poll is due)
        self.polled_at: datetime | None = None  # when the last poll began: readings since are the meter's moment
        # the optimiser's value for this step per asset (None: no plan covers now); set by the app in dispatch mode
        self.schedule: Callable[[datetime], dict[str, float] | None] | None = None
        # events shape the site target: (now, configured target) -> target in force; set by the app
        self.target_source: Callable[[datetime, float], float | None] | None = None  # None: no event active
        # active awards' activation x capacity (W toward up) to apply on top of a plan; None: none active
        self.award_shift_source: Callable[[datetime], float | None] | None = None
        # the plan's reserved (up, down) W per asset now: where an activation lands first (dispatch mode)
        self.reserve_source: Callable[[datetime], tuple[dict[str, float], dict[str, float]] | None] | None = None
        # "waiting" until the first plan (expected at start: logged at info), "running" while one covers the clock,
        # "lapsed" once it ran out (the optimiser failed or overran: a warning, once per lapse)
        self._plan_state: Literal["waiting", "running", "lapsed"] = "waiting"
        self._logged_waiting = False
        self.writes = 0
        self.write_failures = 0

    # -- public ---------------------------------------------------------------------------------------------
    def set_site_target(self, watts: float) -> None:
        _require_finite("site target", watts)
        self.site_target_w = watts
        log.info("control.target", site_target_w=watts)

    @property
    def meter_problem(self) -> str | None:
        """Why the site meter is not believed (implausible or no reading), for the agent's status; None when it is."""
        return self.meter_check.problem

    def wake(self, fast: bool = False) -> None:
        """Run a cycle soon instead of at the next period (a new target or signal should not wait).

        `fast`: decide from the last poll and write at once (activation signals, frequency readings); the cycle
        still polls when the poll is due. Otherwise the woken cycle polls first. Any rate of calls is safe: wakes
        coalesce into one pending cycle, which starts no sooner than `wake_gap_s` after the previous woken one.
        """
        self._woken = "poll" if not fast or self._woken == "poll" else "fast"
        self._wake.set()

    def set_override(self, asset_id: str, watts: float | None) -> None:
        """Request a fixed power for one asset (commissioning, manual operation); None hands it back.

        An override replaces the controller's request only: it still passes the SafetyEnvelope like any other.
        """
        if asset_id not in self.fleet.assets or not self.fleet.assets[asset_id].controllable:
            raise KeyError(f"{asset_id!r} is not a controllable asset")
        if watts is None:
            self.overrides.pop(asset_id, None)
        else:
            _require_finite(f"override for {asset_id}", watts)
            self.overrides[asset_id] = watts
        log.info("control.override", asset_id=asset_id, requested_w=watts)

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle until `stop` is set. A cycle in flight is cancelled at once, so stopping never waits on a
        device timeout; devices keep their last setpoint until its lease lapses (DESIGN.md §7 rule 2)."""
        stopping = asyncio.create_task(stop.wait())
        try:
            if not await self._unless_stopped(asyncio.gather(*(d.connect() for d in self.drivers.values())), stopping):
                return
            while not stop.is_set():
                if not await self._unless_stopped(self._guarded_cycle(), stopping):
                    return
                if not await self._until_next_cycle(stopping):
                    return
        finally:
            stopping.cancel()

    async def _until_next_cycle(self, stopping: asyncio.Task[bool]) -> bool:
        """Wait until the poll is due, or a pending wake may start a cycle; False when stop comes first.

        A wake() during the cycle is kept (it is in `_woken`), not lost; one that comes too soon after a woken cycle
        waits out the gap, and the poll's time never moves for it.
        """
        while True:
            now = self.monotonic()
            until_poll = self._next_poll_at - now
            if until_poll <= 0:
                return True
            if self._woken is not None:
                until_woken = self._last_woken_start + self.wake_gap_s - now
                if until_woken <= 0:
                    return True
                await asyncio.wait({stopping}, timeout=min(until_poll, until_woken))
            else:
                self._wake.clear()
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait({stopping, waker}, timeout=until_poll, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
            if stopping.done():
                return False

    @staticmethod
    async def _unless_stopped(work: Awaitable[object], stopping: asyncio.Task[bool]) -> bool:
        """Run `work` unless stop comes first; False (work cancelled) when it does."""
        task = asyncio.ensure_future(work)
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _guarded_cycle(self) -> None:
        """One cycle; an unexpected error is logged and counted, and the next cycle runs as usual."""
        try:
            await self.cycle()
            for hook in self.after_cycle:
                hook()
        except Exception as exc:
            self.cycle_failures += 1
            log.exception("cycle.failed", error=f"{type(exc).__name__}: {exc}")

    async def cycle(self) -> CycleTiming:
        """One cycle: poll (unless it is a fast wake's and the last poll is younger than the period), decide, write."""
        t0 = self.monotonic()
        woken, self._woken = self._woken, None
        if woken is not None:
            self._last_woken_start = t0
        if woken != "fast" or t0 >= self._next_poll_at:
            self._poll_started(t0)
            await self.poll()
        t1 = self.monotonic()
        setpoints = self.decide()
        t2 = self.monotonic()
        await self.write(setpoints)
        t3 = self.monotonic()
        timing = CycleTiming(t1 - t0, t2 - t1, t3 - t2)
        self.timings.append(timing)
        self.cycles += 1
        if timing.total_s > self.period_s:
            self.overruns += 1
            log.warning(
                "cycle.overrun",
                period_s=self.period_s,
                poll_s=round(timing.poll_s, 4),
                decide_s=round(timing.decide_s, 4),
                write_s=round(timing.write_s, 4),
            )
        return timing

    def _poll_started(self, t0: float) -> None:
        """Set when the next poll is due: one period after this one's due time while it kept to it (lateness of the
        event loop does not drift the rhythm), else one period after it started (a poll a wake brought forward, or
        one after an overrun: start again from now, do not catch up with a burst)."""
        due = self._next_poll_at
        self._next_poll_at = (due if 0 <= t0 - due < self.period_s else t0) + self.period_s
        self.polls += 1

    # -- phases ---------------------------------------------------------------------------------------------
    async def poll(self) -> None:
        self.polled_at = self.clock()
        now = self.monotonic()
        due = [s for s in self.fleet.assets.values() if s.next_poll_monotonic <= now]
        results = await self._read_by_channel([s.id for s in due])
        # (_read turns every failure into a message: one device can never abort the poll of the others)
        done = self.monotonic()
        for state in due:
            result = results[state.id]
            if isinstance(result, Measurement):
                before = state.measurement
                if self.fleet.record_ok(state.id, result, done):
                    log.info("asset.available", asset_id=state.id)
                _log_trip(state.id, before, result)
            else:
                first = state.consecutive_failures == 0
                if self.fleet.record_failure(state.id, result, done, self.period_s):
                    log.warning(
                        "asset.unavailable",
                        asset_id=state.id,
                        error=result,
                        failures=state.consecutive_failures,
                        since_start=state.polls_ok == 0,  # never answered since the agent started
                    )
                elif first:
                    log.info("poll.failed", asset_id=state.id, error=result)

    async def _read_by_channel(self, asset_ids: list[str]) -> dict[str, Measurement | str]:
        """Read every asset; those sharing a channel (a Modbus gateway connection) one after another in one task.

        A connection serves one request at a time anyway; a task per device would only queue on its lock, and at
        1000 devices that queueing cost more CPU than the reads. Channels run concurrently with each other.
        """
        by_channel: dict[object, list[str]] = {}
        for asset_id in asset_ids:
            channel = getattr(self.drivers[asset_id], "channel", None)
            by_channel.setdefault(channel if channel is not None else ("own", asset_id), []).append(asset_id)
        results: dict[str, Measurement | str] = {}

        async def read_all(ids: list[str]) -> None:
            for asset_id in ids:
                results[asset_id] = await self._read(asset_id)

        await asyncio.gather(*(read_all(ids) for ids in by_channel.values()))
        return results

    async def _read(self, asset_id: str) -> Measurement | str:
        try:
            return await self.drivers[asset_id].read()
        except DriverError as exc:
            return str(exc)
        except Exception as exc:  # a driver bug must cost one asset one poll, not the loop
            log.exception("poll.driver_bug", asset_id=asset_id)
            return f"{asset_id}: unexpected {type(exc).__name__}: {exc}"

    def decide(self) -> dict[str, Setpoint]:
        now = self.clock()
        states = {s.id: s for s in self.fleet.controllable() if s.available}
        for state in states.values():
            self._check_readback(state)
        device_period_s = self.period_s * self.time_scale
        bounds: dict[str, Bounds] = {
            asset_id: self.envelope.bounds(state, now, device_period_s, self.lease_s)
            for asset_id, state in states.items()
        }
        self.last_bounds = bounds
        # the meter cross-checked against the assets and the site's range (control/meter.py); with no reading the
        # last estimate is kept: treating an unseen base load as 0 would let charging blow the import limit
        assets_w = assets_power(states.values(), self.polled_at or now, self.config.agent.response_s,
                                self.config.agent.setpoint_deadband_w)
        uncontrolled = self.meter_check.update(self.site_meter_w(), assets_w)
        self.uncontrolled_w = uncontrolled.value_w
        requests = self._requests(now, bounds)
        requests.update({k: v for k, v in self.overrides.items() if k in requests})
        setpoints = self.envelope.apply(requests, states, bounds, (uncontrolled.low_w, uncontrolled.high_w))
        for asset_id, setpoint in setpoints.items():
            state = states[asset_id]
            if setpoint.reasons != state.clamp_reasons:
                if setpoint.reasons:
                    log.info(
                        "setpoint.clamped",
                        asset_id=asset_id,
                        requested_w=round(setpoint.requested_w, 1),
                        setpoint_w=round(setpoint.power_w, 1),
                        reasons=list(setpoint.reasons),
                    )
                state.clamp_reasons = setpoint.reasons
        self.last_setpoints = setpoints
        return setpoints

    def _requests(self, now: datetime, bounds: dict[str, Bounds]) -> dict[str, float]:
        """What each asset is asked for before the envelope: the plan's value, else the rule, else 0 W."""
        if self.mode == "idle":
            return {asset_id: 0.0 for asset_id in bounds}
        event_target = None if self.target_source is None else self.target_source(now, self.site_target_w)
        target = self.site_target_w if event_target is None else event_target
        rule = site_target_requests(target, self.uncontrolled_w, bounds)
        if event_target is not None:  # an active event owns the site; it acts now, not at the next plan
            if self.mode == "dispatch" and self.schedule is not None and self.reserve_source is not None:
                planned, reserved = self.schedule(now), self.reserve_source(now)
                if planned is not None and reserved is not None:
                    shift = None if self.award_shift_source is None else self.award_shift_source(now)
                    if shift is not None:  # an award on top of the plan: the activation moves the plan's power
                        total = sum(plan_within_bounds(planned, bounds).values())
                        return share_within_reserves(total - shift, planned, bounds, *reserved)
                    return share_within_reserves(target - self.uncontrolled_w, planned, bounds, *reserved)
            return rule
        if self.mode == "dispatch" and self.schedule is not None:
            planned = self.schedule(now)
            if planned is not None:
                if self._plan_state == "lapsed":
                    log.info("dispatch.plan_resumed")
                self._plan_state = "running"
                # assets the plan does not cover (arrived since it was made) follow the rule until the next plan
                return {asset_id: planned.get(asset_id, rule[asset_id]) for asset_id in bounds}
            if self._plan_state == "running":
                log.warning("dispatch.no_plan", fallback="site_target rule")
                self._plan_state = "lapsed"
            elif self._plan_state == "waiting" and not self._logged_waiting:
                log.info("dispatch.awaiting_first_plan", fallback="site_target rule")
                self._logged_waiting = True
        return rule

    def _check_readback(self, state: AssetState) -> None:
        """Compare what the device reports with what we wrote: a rebooted device or a lapsed lease gets rewritten."""
        m = state.measurement
        if m is None or not state.lease_written:
            return
        if (
            state.written_at_monotonic is not None
            and state.last_ok_monotonic is not None
            and state.last_ok_monotonic <= state.written_at_monotonic
        ):
            return  # this reading predates our last write (a fast cycle decides from the previous poll)
        if m.lease_timeout_s is not None and abs(m.lease_timeout_s - round(self.lease_s)) > 0.5:
            log.warning("lease.mismatch", asset_id=state.id, device_s=m.lease_timeout_s, wanted_s=self.lease_s)
            state.lease_written = False  # rewrite lease and setpoint this cycle
        elif (
            m.setpoint_w is not None
            and (told := state.told_w) is not None
            and abs(m.setpoint_w - told) > max(self.config.agent.setpoint_deadband_w, 1.0)
        ):
            log.warning("setpoint.mismatch", asset_id=state.id, device_w=m.setpoint_w, written_w=told)
            state.written_at_monotonic = None  # force a write this cycle

    def site_meter_w(self) -> float | None:
        """The site meter's last reading; None when there is none (no meter, unavailable, or reporting a fault:
        a faulted meter reads 0 W, which is no measurement of the site)."""
        meter_id = self.config.site.meter
        if meter_id is None:
            return None
        state = self.fleet.assets[meter_id]
        if not state.available or state.measurement is None or state.measurement.status is DeviceStatus.FAULT:
            return None
        return state.measurement.power_w

    async def write(self, setpoints: dict[str, Setpoint]) -> None:
        now = self.monotonic()
        due = [sp for sp in setpoints.values() if self._needs_write(self.fleet.assets[sp.asset_id], sp, now)]
        by_channel: dict[object, list[Setpoint]] = {}
        for sp in due:  # as in polling: one task per connection, writes on it in turn
            channel = getattr(self.drivers[sp.asset_id], "channel", None)
            by_channel.setdefault(channel if channel is not None else ("own", sp.asset_id), []).append(sp)

        async def write_all(batch: list[Setpoint]) -> None:
            for sp in batch:
                await self._write(sp)  # never raises

        await asyncio.gather(*(write_all(batch) for batch in by_channel.values()))

    def _needs_write(self, state: AssetState, setpoint: Setpoint, now: float) -> bool:
        if not state.lease_written or state.written_setpoint_w is None or state.written_at_monotonic is None:
            return True
        if abs(setpoint.power_w - state.written_setpoint_w) > self.config.agent.setpoint_deadband_w:
            return True
        held_bounds = self.last_bounds.get(state.id)
        if held_bounds is not None and not held_bounds.low_w <= state.written_setpoint_w <= held_bounds.high_w:
            return True  # limits moved past the held value: never hold it for half a lease
        if setpoint.power_w == 0.0 and getattr(self.drivers[state.id], "lease_lapse_is_zero", True):
            # an exact stop is always worth one write; a held 0 W needs no refresh, the lapsed lease gives 0 W too
            return state.written_setpoint_w != 0.0
        lease_loop_s = self.lease_s / self.time_scale  # the lease runs in device time
        return now - state.written_at_monotonic >= max(self.period_s, lease_loop_s * LEASE_REFRESH_FRACTION)

    async def _write(self, setpoint: Setpoint) -> None:
        state = self.fleet.assets[setpoint.asset_id]
        driver = self.drivers[setpoint.asset_id]
        # a write forced by a read-back mismatch or a new lease tells the device again: it may move anew
        retold = not state.lease_written or state.written_at_monotonic is None
        try:
            if not state.lease_written:
                await driver.write_lease_timeout(self.lease_s)
                state.lease_written = True
            commanded = await driver.write_setpoint(setpoint.power_w)
        except Exception as exc:  # DriverError, or a driver bug: either way this asset only
            self.write_failures += 1
            log.warning("setpoint.write_failed", asset_id=setpoint.asset_id, error=f"{type(exc).__name__}: {exc}")
            return
        self.writes += 1
        told_before = state.told_w
        state.written_setpoint_w = setpoint.power_w
        state.commanded_setpoint_w = commanded
        state.written_at_monotonic = self.monotonic()
        if retold or state.told_w != told_before:
            state.told_at = self.clock()


def _log_trip(asset_id: str, before: Measurement | None, now: Measurement) -> None:
    """A device that reports a fault (status 3) tripped: say so once, with its code, and again if the code changes
    while it stays tripped; say when it clears."""
    tripped = now.status is DeviceStatus.FAULT
    was = before is not None and before.status is DeviceStatus.FAULT
    if tripped and (not was or before is None or before.fault_code != now.fault_code):
        # unmapped_status: a state code the device's map does not know (not operable until the map says what it is)
        log.warning("asset.fault", asset_id=asset_id, fault_code=now.fault_code, power_w=now.power_w,
                    unmapped_status=now.unmapped_status)
    elif was and not tripped:
        log.info("asset.fault_cleared", asset_id=asset_id, status=now.status.name.lower())
