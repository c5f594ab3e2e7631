"""Per-device fault injection for tests, scenarios and the CLI.

Faults are what the agent's availability, back-off and safety logic exist for (DESIGN.md §7 rules 3 and 5), so each
one mimics what a real installation shows:
- offline: the device does not answer at all (requests are swallowed; a device alone on its port also closes its
  listener, so connects are refused), and it comes back when cleared;
- slow: answers after a delay in wall seconds;
- exception: answers every request with a Modbus exception code (default 4, DEVICE_FAILURE);
- frozen: registers stop refreshing while the physics goes on (a stuck gateway cache);
- device fault: the device itself trips (status 3, fault_code, power to 0) while communication stays fine;
- offset: the device reports `offset_w` more power than flows (a lying meter: wrong calibration, a spoofed or
  mis-scaled register) while the physics and the energy counters stay true.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

DEVICE_FAILURE = 4


class Faultable(Protocol):
    """Physics that can trip."""

    def set_fault(self, code: int) -> None: ...

    def clear_fault(self) -> None: ...


@dataclass(slots=True)
class FaultState:
    """Communication faults currently active on one device."""

    offline: bool = False
    slow_s: float = 0.0
    exception_code: int | None = None
    frozen: bool = False
    offset_w: float = 0.0


class DeviceFaults:
    """The fault switches of one device. Methods are synchronous so a test or CLI can flip them from anywhere in
    the event loop; effects that need I/O (closing a listener) are applied by the runner through `on_offline`."""

    def __init__(
        self, device_id: str, physics: Faultable, on_offline: Callable[[bool], None] | None = None
    ) -> None:
        self.device_id = device_id
        self.physics = physics
        self.state = FaultState()
        self.on_offline = on_offline
        self._online = asyncio.Event()
        self._online.set()
        self._parked: set[asyncio.Task[object]] = set()
        self.swallowed = 0

    # ---- switches --------------------------------------------------------------------------------------
    def set_offline(self, offline: bool = True) -> None:
        if offline == self.state.offline:
            return
        self.state.offline = offline
        if offline:
            self._online.clear()
        else:
            self._online.set()
        log.info("sim.fault", device=self.device_id, fault="offline", active=offline)
        if self.on_offline is not None:
            self.on_offline(offline)

    def set_slow(self, delay_s: float) -> None:
        """Answer every request after `delay_s` wall seconds (0 clears)."""
        if delay_s < 0:
            raise ValueError(f"delay {delay_s!r} s must be >= 0")
        self.state.slow_s = float(delay_s)
        log.info("sim.fault", device=self.device_id, fault="slow", delay_s=delay_s)

    def set_exception(self, code: int | None = DEVICE_FAILURE) -> None:
        """Answer every request with Modbus exception `code` (None clears)."""
        if code is not None and not 1 <= code <= 255:
            raise ValueError(f"exception code {code!r} must be 1..255")
        self.state.exception_code = code
        log.info("sim.fault", device=self.device_id, fault="exception", code=code)

    def set_frozen(self, frozen: bool = True) -> None:
        self.state.frozen = frozen
        log.info("sim.fault", device=self.device_id, fault="frozen", active=frozen)

    def set_offset(self, watts: float) -> None:
        """Report `watts` more power than flows (0 clears); what flows, and the energy counters, stay true."""
        if not math.isfinite(watts):
            raise ValueError(f"offset {watts!r} W must be a finite number")
        self.state.offset_w = float(watts)
        log.info("sim.fault", device=self.device_id, fault="offset", offset_w=watts)

    def set_device_fault(self, code: int | None) -> None:
        """Trip the device with `code` (status 3, power 0), or clear its fault with None/0."""
        if code:
            self.physics.set_fault(code)
        else:
            self.physics.clear_fault()
        log.info("sim.fault", device=self.device_id, fault="device", code=code or 0)

    def clear(self) -> None:
        """Clear every fault, communication and device."""
        self.set_offline(False)
        self.set_slow(0.0)
        self.set_exception(None)
        self.set_frozen(False)
        self.set_offset(0.0)
        self.set_device_fault(None)

    # ---- used by the server ----------------------------------------------------------------------------
    def reported(self, fields: Mapping[str, float]) -> Mapping[str, float]:
        """What the device says, from what its physics is: power (and the current that goes with it) plus the
        offset; everything else, the energy counters included, as it is."""
        offset = self.state.offset_w
        if not offset or "power_w" not in fields:
            return fields
        said = dict(fields)
        said["power_w"] = fields["power_w"] + offset
        voltage = fields.get("voltage_v")
        if "current_a" in fields and voltage:
            said["current_a"] = said["power_w"] / voltage
        return said

    async def gate(self) -> int | None:
        """Apply communication faults to one request: swallow, delay, or return an exception code."""
        if self.state.offline or self.state.slow_s > 0:
            task = asyncio.current_task()
            if task is not None:
                self._parked.add(task)
            try:
                if self.state.offline:
                    self.swallowed += 1
                    await self._online.wait()
                    # The request was sent while the device was away: it is lost, never answered.
                    raise asyncio.CancelledError
                await asyncio.sleep(self.state.slow_s)
            finally:
                if task is not None:
                    self._parked.discard(task)
        return self.state.exception_code

    def cancel_parked(self) -> None:
        """Drop requests still waiting on this device (shutdown must not leave tasks behind)."""
        for task in list(self._parked):
            with contextlib.suppress(RuntimeError):
                task.cancel()


FAULT_KINDS = ("offline", "slow", "exception", "frozen", "device", "offset")
# the kinds that need a value, and what it is
FAULT_VALUES = {"slow": "delay in seconds", "device": "fault code", "offset": "watts added to the reported power"}


def parse_fault_spec(spec: str) -> tuple[str, str, float | None]:
    """Parse the CLI form `ID:KIND[=VALUE]`, e.g. `ev1:offline`, `bess2:slow=1.5`, `ev3:exception=6`,
    `meter:frozen`, `ev4:device=2`, `meter-site:offset=300000`. Returns (device id, kind, value or None)."""
    device_id, sep, rest = spec.rpartition(":")
    kind, _, value = rest.partition("=")
    if not sep or not device_id or kind not in FAULT_KINDS:
        raise ValueError(f"fault {spec!r} is not ID:KIND[=VALUE] with KIND one of {', '.join(FAULT_KINDS)}")
    if kind in FAULT_VALUES and not value:
        raise ValueError(f"fault {spec!r} needs a value ({FAULT_VALUES[kind]})")
    try:
        number = float(value) if value else None
    except ValueError as exc:
        raise ValueError(f"fault {spec!r}: value {value!r} is not a number") from exc
    if number is not None and not math.isfinite(number):
        raise ValueError(f"fault {spec!r}: value {value!r} is not a finite number")
    return device_id, kind, number


def apply_fault(faults: DeviceFaults, kind: str, value: float | None) -> None:
    """Switch on one fault parsed by `parse_fault_spec`."""
    if kind == "offline":
        faults.set_offline(True)
    elif kind == "slow":
        faults.set_slow(value or 0.0)
    elif kind == "exception":
        faults.set_exception(int(value) if value is not None else DEVICE_FAILURE)
    elif kind == "frozen":
        faults.set_frozen(True)
    elif kind == "device":
        faults.set_device_fault(int(value or 0))
    elif kind == "offset":
        faults.set_offset(value or 0.0)
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
