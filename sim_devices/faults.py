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
OCPP stations (sim_devices/ocpp_station.py) dial out instead of listening, and have faults of their own:
- offline: the WebSocket is dropped and kept down (reconnect when cleared); slow: every answer to the CSMS comes
  `slow_s` late; reject: every SetChargingProfile / UpdateDynamicSchedule is Rejected with that reasonCode;
  silent: no more meter values; reboot: a power cycle (new BootNotification), a one-off action, not a state.

Faults come from the command line (`--fault ID:KIND[=VALUE]`) or from a timeline file (`FaultTimeline`, one home
for fault scheduling for every transport): "at t = 30 s take ev1 offline for 20 s".
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = structlog.get_logger(__name__)

DEVICE_FAILURE = 4
TIMELINE_POLL_S = 0.02  # wall seconds between looks at the sim clock: a fault is due within one tick of its time


class Faultable(Protocol):
    """Physics that can trip."""

    def set_fault(self, code: int) -> None: ...

    def clear_fault(self) -> None: ...


class FaultGroup:
    """Several physics that trip together: the EVSEs of one OCPP station (a station fault trips them all)."""

    def __init__(self, members: list[Faultable]) -> None:
        self.members = members

    def set_fault(self, code: int) -> None:
        for member in self.members:
            member.set_fault(code)

    def clear_fault(self) -> None:
        for member in self.members:
            member.clear_fault()


@dataclass(slots=True)
class FaultState:
    """Communication faults currently active on one device."""

    offline: bool = False
    slow_s: float = 0.0
    exception_code: int | None = None
    frozen: bool = False
    offset_w: float = 0.0
    reject_reason: str | None = None  # OCPP: profiles are Rejected with this reasonCode
    meter_silent: bool = False  # OCPP: no meter values


class DeviceFaults:
    """The fault switches of one device. Methods are synchronous so a test or CLI can flip them from anywhere in
    the event loop; effects that need I/O (closing a listener) are applied by the runner through `on_offline`."""

    def __init__(
        self, device_id: str, physics: Faultable, on_offline: Callable[[bool], None] | None = None,
        transport: str = "modbus", on_reboot: Callable[[], None] | None = None,
    ) -> None:
        self.device_id = device_id
        self.physics = physics
        self.state = FaultState()
        self.on_offline = on_offline
        self.on_reboot = on_reboot
        self.kinds = fault_kinds(transport)
        self.reboots = 0
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

    def set_reject(self, reason: str | None) -> None:
        """OCPP: reject every charging profile with OCPP reasonCode `reason` (None clears)."""
        if reason is not None and not 0 < len(reason) <= REASON_CODE_MAX:
            raise ValueError(f"reason code {reason!r} must be 1..{REASON_CODE_MAX} characters (OCPP reasonCode)")
        self.state.reject_reason = reason
        log.info("sim.fault", device=self.device_id, fault="reject", reason=reason)

    def set_meter_silent(self, silent: bool = True) -> None:
        """OCPP: stop (or resume) sending meter values."""
        self.state.meter_silent = silent
        log.info("sim.fault", device=self.device_id, fault="silent", active=silent)

    def reboot(self) -> None:
        """Power-cycle the device once (OCPP stations only: a new BootNotification)."""
        if self.on_reboot is None:
            raise ValueError(f"device {self.device_id!r} cannot reboot (only OCPP stations can)")
        self.reboots += 1
        log.info("sim.fault", device=self.device_id, fault="reboot", reboots=self.reboots)
        self.on_reboot()

    def clear(self) -> None:
        """Clear every fault, communication and device."""
        self.set_offline(False)
        self.set_slow(0.0)
        self.set_exception(None)
        self.set_frozen(False)
        self.set_offset(0.0)
        self.set_device_fault(None)
        self.set_reject(None)
        self.set_meter_silent(False)

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


FAULT_KINDS = ("offline", "slow", "exception", "frozen", "device", "offset", "reject", "silent", "reboot")
# the kinds each transport can show: a Modbus exception means nothing to an OCPP station, and only a station reboots
KINDS_BY_TRANSPORT: dict[str, tuple[str, ...]] = {
    "modbus": ("offline", "slow", "exception", "frozen", "device", "offset"),
    "mqtt": ("offline", "slow", "exception", "frozen", "device", "offset"),
    "ocpp": ("offline", "slow", "device", "reject", "silent", "reboot"),
}
# the kinds that need a value, and what it is
FAULT_VALUES = {"slow": "delay in seconds", "device": "fault code", "offset": "watts added to the reported power"}
TEXT_VALUES = ("reject",)  # a value that is a word (an OCPP reasonCode), not a number
DEFAULT_REJECT_REASON = "SimulatedFault"
REASON_CODE_MAX = 20  # OCPP 2.x StatusInfoType.reasonCode maxLength
ONE_OFF_KINDS = ("reboot",)  # an action: nothing to clear afterwards
FaultValue = float | str | None


def fault_kinds(transport: str) -> tuple[str, ...]:
    """The fault kinds a device on `transport` can show."""
    return KINDS_BY_TRANSPORT.get(transport, KINDS_BY_TRANSPORT["modbus"])


def check_value(kind: str, value: FaultValue, where: str) -> FaultValue:
    """The one rule for a fault's value: `where` names the offending entry in the message (ValueError)."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"{where}: unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    if kind in TEXT_VALUES:
        if value is None:
            return DEFAULT_REJECT_REASON
        if not isinstance(value, str) or not 0 < len(value) <= REASON_CODE_MAX:
            raise ValueError(f"{where}: value {value!r} must be an OCPP reasonCode of 1..{REASON_CODE_MAX} characters")
        return value
    if value is None:
        if kind in FAULT_VALUES:
            raise ValueError(f"{where}: fault {kind!r} needs a value ({FAULT_VALUES[kind]})")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: value {value!r} is not a finite number")
    if kind == "slow" and value < 0:
        raise ValueError(f"{where}: value {value!r} must be >= 0 (a delay in seconds)")
    return float(value)


def parse_fault_spec(spec: str) -> tuple[str, str, FaultValue]:
    """Parse the CLI form `ID:KIND[=VALUE]`, e.g. `ev1:offline`, `bess2:slow=1.5`, `ev3:exception=6`,
    `meter:frozen`, `ev4:device=2`, `meter-site:offset=300000`, `CP001:reject=TxNotFound`, `CP001:silent`.
    Returns (device id, kind, value or None)."""
    device_id, sep, rest = spec.rpartition(":")
    kind, _, text = rest.partition("=")
    if not sep or not device_id or kind not in FAULT_KINDS:
        raise ValueError(f"fault {spec!r} is not ID:KIND[=VALUE] with KIND one of {', '.join(FAULT_KINDS)}")
    value: FaultValue = None
    if text and kind in TEXT_VALUES:
        value = text
    elif text:
        try:
            value = float(text)
        except ValueError as exc:
            raise ValueError(f"fault {spec!r}: value {text!r} is not a number") from exc
    return device_id, kind, check_value(kind, value, f"fault {spec!r}")


def apply_fault(faults: DeviceFaults, kind: str, value: FaultValue) -> None:
    """Switch on one fault parsed by `parse_fault_spec` (or due on a timeline)."""
    if kind not in faults.kinds:
        raise ValueError(f"fault {kind!r} does not apply to device {faults.device_id!r} "
                         f"(its kinds: {', '.join(faults.kinds)})")
    number = float(value) if isinstance(value, int | float) else None
    if kind == "offline":
        faults.set_offline(True)
    elif kind == "slow":
        faults.set_slow(number or 0.0)
    elif kind == "exception":
        faults.set_exception(int(number) if number is not None else DEVICE_FAILURE)
    elif kind == "frozen":
        faults.set_frozen(True)
    elif kind == "device":
        faults.set_device_fault(int(number or 0))
    elif kind == "offset":
        faults.set_offset(number or 0.0)
    elif kind == "reject":
        faults.set_reject(str(value) if value is not None else DEFAULT_REJECT_REASON)
    elif kind == "silent":
        faults.set_meter_silent(True)
    elif kind == "reboot":
        faults.reboot()
    else:
        raise ValueError(f"unknown fault kind {kind!r}")


def clear_fault(faults: DeviceFaults, kind: str) -> None:
    """Switch off one kind of fault (the end of a timeline entry's `for_s`)."""
    clearers: dict[str, Callable[[], None]] = {
        "offline": lambda: faults.set_offline(False),
        "slow": lambda: faults.set_slow(0.0),
        "exception": lambda: faults.set_exception(None),
        "frozen": lambda: faults.set_frozen(False),
        "device": lambda: faults.set_device_fault(None),
        "offset": lambda: faults.set_offset(0.0),
        "reject": lambda: faults.set_reject(None),
        "silent": lambda: faults.set_meter_silent(False),
    }
    if kind in clearers:
        clearers[kind]()


# ---- the timeline -------------------------------------------------------------------------------------------
class TimelineError(ValueError):
    """A timeline file is unusable; the message names the file, the entry and the key."""


class FaultEntry(BaseModel):
    """One `[[faults]]` entry: at sim time `at_s`, switch on `kind` on `device` (an id or a list of ids), and
    switch it off again `for_s` later (absent: it stays on)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    at_s: float = Field(ge=0)
    device: str | list[str] = Field(min_length=1)
    kind: str
    for_s: float | None = Field(default=None, gt=0)
    value: float | str | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str) -> str:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind; known: {', '.join(FAULT_KINDS)}")
        return kind

    @model_validator(mode="after")
    def _value(self) -> FaultEntry:
        # messages start with the key they are about: parse_timeline puts them after the entry
        check_value(self.kind, self.value, f"value = {self.value!r}")
        if self.kind in ONE_OFF_KINDS and self.for_s is not None:
            raise ValueError(f"for_s = {self.for_s!r}: {self.kind!r} is a one-off action with nothing to clear")
        return self

    @property
    def devices(self) -> list[str]:
        return [self.device] if isinstance(self.device, str) else list(self.device)


@dataclass(order=True, slots=True)
class TimelineAction:
    """One switch due at `t_s`: on (`clear` False) or off; `index` keeps file order among equal times."""

    t_s: float
    index: int
    clear: bool
    device: str = field(compare=False)
    kind: str = field(compare=False)
    value: FaultValue = field(compare=False, default=None)


class FaultTimeline:
    """The switches of a timeline file in time order; `due(now_s)` hands out those whose time has come."""

    def __init__(self, entries: list[FaultEntry], source: str = "timeline") -> None:
        self.source = source
        self.entries = entries
        self._pending: list[TimelineAction] = []
        order = 0
        for entry in entries:
            value = check_value(entry.kind, entry.value, source)
            for device in entry.devices:
                heapq.heappush(self._pending, TimelineAction(entry.at_s, order, False, device, entry.kind, value))
                order += 1
                if entry.for_s is not None:
                    heapq.heappush(self._pending,
                                   TimelineAction(entry.at_s + entry.for_s, order, True, device, entry.kind))
                    order += 1
        self.applied: list[TimelineAction] = []

    def __len__(self) -> int:
        return len(self._pending)

    def due(self, now_s: float) -> list[TimelineAction]:
        """Remove and return every action due at or before `now_s`, in time (then file) order."""
        out = []
        while self._pending and self._pending[0].t_s <= now_s:
            out.append(heapq.heappop(self._pending))
        return out

    def check(self, kinds_by_device: Mapping[str, tuple[str, ...]]) -> None:
        """Every device named exists and can show its fault (TimelineError naming the entry and key)."""
        for index, entry in enumerate(self.entries):
            for device in entry.devices:
                if device not in kinds_by_device:
                    raise TimelineError(f"{self.source}: faults[{index}].device = {device!r}: no such device")
                if entry.kind not in kinds_by_device[device]:
                    raise TimelineError(f"{self.source}: faults[{index}].kind = {entry.kind!r}: does not apply to "
                                        f"{device!r} (its kinds: {', '.join(kinds_by_device[device])})")

    def apply_due(self, now_s: float, lookup: Callable[[str], DeviceFaults]) -> list[TimelineAction]:
        """Apply every due action to the device `lookup` returns; the actions applied."""
        actions = self.due(now_s)
        for action in actions:
            faults = lookup(action.device)
            if action.clear:
                clear_fault(faults, action.kind)
            else:
                apply_fault(faults, action.kind, action.value)
            log.info("sim.timeline", t_s=round(action.t_s, 3), device=action.device, kind=action.kind,
                     clear=action.clear)
            self.applied.append(action)
        return actions

    async def run(self, seconds: Callable[[], float], lookup: Callable[[str], DeviceFaults],
                  poll_s: float = TIMELINE_POLL_S) -> None:
        """Apply actions as sim time (`seconds()`) reaches them, until none is left."""
        while self._pending:
            self.apply_due(seconds(), lookup)
            await asyncio.sleep(poll_s)



def parse_timeline(data: Mapping[str, Any], source: str) -> FaultTimeline:
    """A timeline from a parsed TOML document `{"faults": [...]}` (TimelineError naming source, entry and key)."""
    unknown = [k for k in data if k != "faults"]
    if unknown:
        raise TimelineError(f"{source}: {unknown[0]}: unknown key (a timeline has only [[faults]] entries)")
    raw = data.get("faults")
    if not isinstance(raw, list):
        raise TimelineError(f"{source}: no [[faults]] entries")
    entries = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise TimelineError(f"{source}: faults[{index}]: not a table")
        try:
            entries.append(FaultEntry.model_validate(dict(item)))
        except ValidationError as exc:
            err = exc.errors()[0]
            msg = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a rule across keys: its message starts with the key
                raise TimelineError(f"{source}: faults[{index}].{msg}") from None
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "missing":
                raise TimelineError(f"{source}: faults[{index}].{key}: required key is missing") from None
            if err["type"] == "extra_forbidden":
                msg = "unknown key (keys: at_s, device, kind, for_s, value)"
            raise TimelineError(f"{source}: faults[{index}].{key} = {err['input']!r}: {msg}") from None
    return FaultTimeline(entries, source)


def load_timeline(path: str | Path, kinds_by_device: Mapping[str, tuple[str, ...]] | None = None) -> FaultTimeline:
    """Read and check a timeline file (docs/simulator.md): TimelineError naming the file, the entry and the key."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TimelineError(f"{p}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TimelineError(f"{p}: not valid TOML: {exc}") from exc
    timeline = parse_timeline(data, str(p))
    if kinds_by_device is not None:
        timeline.check(kinds_by_device)
    return timeline
