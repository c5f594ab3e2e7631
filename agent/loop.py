"""The control cycle: poll → update fleet → decide → envelope → write, once per period (DESIGN.md §10).

Polls run concurrently, one coroutine per due asset; each request is bounded by the driver's own timeout, so a
dead device costs one timeout on its own connection and nothing elsewhere. A phase that overruns the period is
logged with its timing. Setpoints are rewritten only when they change by more than the deadband or when the
device's lease needs refreshing, which halves the Modbus traffic of a steady site.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from agent.config import AppConfig
from agent.controller import site_target_requests
from agent.fleet import AssetState, Fleet
from agent.model import Measurement, Setpoint
from agent.safety import Bounds, SafetyEnvelope
from drivers.base import Driver, DriverError

log = structlog.get_logger("agent.loop")

# Rewrite a held setpoint once half its lease has passed: one lost write still leaves half a lease of margin.
LEASE_REFRESH_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class CycleTiming:
    poll_s: float
    decide_s: float
    write_s: float

    @property
    def total_s(self) -> float:
        return self.poll_s + self.decide_s + self.write_s


class ControlLoop:
    """Runs the fixed cycle over a fleet of drivers."""

    def __init__(
        self,
        config: AppConfig,
        drivers: dict[str, Driver],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
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
        self.uncontrolled_w = 0.0
        self.cycles = 0
        self.writes = 0
        self.write_failures = 0

    # -- public ---------------------------------------------------------------------------------------------
    def set_site_target(self, watts: float) -> None:
        self.site_target_w = watts
        log.info("control.target", site_target_w=watts)

    def set_override(self, asset_id: str, watts: float | None) -> None:
        """Request a fixed power for one asset (commissioning, manual operation); None hands it back.

        An override replaces the controller's request only: it still passes the SafetyEnvelope like any other.
        """
        if asset_id not in self.fleet.assets or not self.fleet.assets[asset_id].controllable:
            raise KeyError(f"{asset_id!r} is not a controllable asset")
        if watts is None:
            self.overrides.pop(asset_id, None)
        else:
            self.overrides[asset_id] = watts
        log.info("control.override", asset_id=asset_id, requested_w=watts)

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle until `stop` is set; returns within one request timeout of it."""
        await asyncio.gather(*(d.connect() for d in self.drivers.values()))
        next_start = self.monotonic()
        while not stop.is_set():
            await self.cycle()
            next_start += self.period_s
            delay = next_start - self.monotonic()
            if delay < 0:  # overran: start again now, do not try to catch up with a burst
                next_start = self.monotonic()
                delay = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def cycle(self) -> CycleTiming:
        t0 = self.monotonic()
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
            log.warning(
                "cycle.overrun",
                period_s=self.period_s,
                poll_s=round(timing.poll_s, 4),
                decide_s=round(timing.decide_s, 4),
                write_s=round(timing.write_s, 4),
            )
        return timing

    # -- phases ---------------------------------------------------------------------------------------------
    async def poll(self) -> None:
        now = self.monotonic()
        due = [s for s in self.fleet.assets.values() if s.next_poll_monotonic <= now]
        results = await asyncio.gather(*(self._read(s.id) for s in due))
        done = self.monotonic()
        for state, result in zip(due, results, strict=True):
            if isinstance(result, Measurement):
                if self.fleet.record_ok(state.id, result, done):
                    log.info("asset.available", asset_id=state.id)
            else:
                first = state.consecutive_failures == 0
                if self.fleet.record_failure(state.id, result, done, self.period_s):
                    log.warning(
                        "asset.unavailable",
                        asset_id=state.id,
                        error=result,
                        failures=state.consecutive_failures,
                    )
                elif first:
                    log.info("poll.failed", asset_id=state.id, error=result)

    async def _read(self, asset_id: str) -> Measurement | str:
        try:
            return await self.drivers[asset_id].read()
        except DriverError as exc:
            return str(exc)

    def decide(self) -> dict[str, Setpoint]:
        now = self.clock()
        states = {s.id: s for s in self.fleet.controllable() if s.available}
        bounds: dict[str, Bounds] = {
            asset_id: self.envelope.bounds(state, now, self.period_s, self.lease_s)
            for asset_id, state in states.items()
        }
        assets_power = sum(s.measurement.power_w for s in states.values() if s.measurement is not None)
        meter_w = self.site_meter_w()
        if self.mode == "site_target":
            requests, self.uncontrolled_w = site_target_requests(self.site_target_w, meter_w, assets_power, bounds)
        else:
            requests = {asset_id: 0.0 for asset_id in states}
            self.uncontrolled_w = 0.0 if meter_w is None else meter_w - assets_power
        requests.update({k: v for k, v in self.overrides.items() if k in requests})
        setpoints = self.envelope.apply(requests, states, bounds, self.uncontrolled_w)
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

    def site_meter_w(self) -> float | None:
        meter_id = self.config.site.meter
        if meter_id is None:
            return None
        state = self.fleet.assets[meter_id]
        if not state.available or state.measurement is None:
            return None
        return state.measurement.power_w

    async def write(self, setpoints: dict[str, Setpoint]) -> None:
        now = self.monotonic()
        due = [sp for sp in setpoints.values() if self._needs_write(self.fleet.assets[sp.asset_id], sp, now)]
        await asyncio.gather(*(self._write(sp) for sp in due))

    def _needs_write(self, state: AssetState, setpoint: Setpoint, now: float) -> bool:
        if not state.lease_written or state.written_setpoint_w is None or state.written_at_monotonic is None:
            return True
        if abs(setpoint.power_w - state.written_setpoint_w) > self.config.agent.setpoint_deadband_w:
            return True
        if setpoint.power_w == 0.0:
            # an exact stop is always worth one write; a held 0 W needs no refresh, the lapsed lease gives 0 W too
            return state.written_setpoint_w != 0.0
        lease = self.lease_s if self.lease_s > 0 else float("inf")
        return now - state.written_at_monotonic >= max(self.period_s, lease * LEASE_REFRESH_FRACTION)

    async def _write(self, setpoint: Setpoint) -> None:
        state = self.fleet.assets[setpoint.asset_id]
        driver = self.drivers[setpoint.asset_id]
        try:
            if not state.lease_written:
                await driver.write_lease_timeout(self.lease_s)
                state.lease_written = True
            await driver.write_setpoint(setpoint.power_w)
        except DriverError as exc:
            self.write_failures += 1
            log.warning("setpoint.write_failed", asset_id=setpoint.asset_id, error=str(exc))
            return
        self.writes += 1
        state.written_setpoint_w = setpoint.power_w
        state.written_at_monotonic = self.monotonic()
