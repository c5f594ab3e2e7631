"""SunSpecDriver: one SunSpec device as the agent's Driver port (agent/ports.py).

Discovery runs at connect and again after the device comes back (a firmware update may have moved its models).
A poll reads the planned ranges, decodes the chosen sources into SI values in the agent's sign, derives the status
(fault from 701 InvSt / 10x St / 713 Sta / 802 State; an EV charger without an EV on its 714 EV port is no_ev;
otherwise from the power's sign) and checks plausibility like every other driver (drivers/measure.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn

import structlog

from agent.model import AssetKind, DeviceStatus, Measurement
from agent.ports import DriverError
from drivers.measure import to_measurement
from drivers.modbus import ModbusGateway
from drivers.sunspec.control import ControlError, PointWrite, SunSpecControl, choose
from drivers.sunspec.device import EV_PORT, DeviceMap
from drivers.sunspec.discovery import BASES, DiscoveryError, discover
from drivers.sunspec.points import PointError
from drivers.sunspec.profile import DEFAULT_SOURCES, ProductMap, parse_term
from drivers.sunspec.transport import ExceptionReply, Registers

log = structlog.get_logger("drivers.sunspec")

STATUS_DEADBAND_W = 1.0
FAULT_STATES: dict[int, tuple[str, int]] = {  # model -> (state point, its fault value)
    701: ("InvSt", 6), 101: ("St", 7), 102: ("St", 7), 103: ("St", 7), 111: ("St", 7), 112: ("St", 7),
    113: ("St", 7), 713: ("Sta", 2), 802: ("State", 99),
}
EV_CONNECTED_STA = (1, 2)  # 714 DCSta ON, WARNING


class SunSpecDriver:
    """Reads and controls one SunSpec device found behind a Modbus TCP gateway."""

    @property
    def lease_lapse_is_zero(self) -> bool:
        """704's lease reverts to WSetRvrt = 0 W; when 124's InOutWRte_RvrtTms runs out the inverter returns to its
        own mode (often self-consumption), not 0 W, so a held 0 W must be refreshed like any other setpoint
        (agent.ports.Driver). Unknown until discovery: refresh."""
        return self.control is not None and self.control.model_id == 704

    def __init__(
        self,
        asset_id: str,
        gateway: ModbusGateway,
        unit_id: int,
        kind: AssetKind,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        product: ProductMap | None = None,
        bases: tuple[int, ...] = BASES,
        control: str | None = None,
    ) -> None:
        self.asset_id = asset_id
        self.kind = product.product.kind if product is not None else kind
        self.gateway = gateway
        self.channel = (gateway.host, gateway.port)
        self.unit_id = unit_id
        self.product = product
        self.bases = bases
        # which control model: the asset's config, else the product map's, else 704 when present, else 124
        self.wanted = control or (product.product.control if product is not None else "auto")
        self.registers = Registers(asset_id, gateway, unit_id)
        self._now = now
        self.device: DeviceMap | None = None
        self.control: SunSpecControl | None = None
        self.words: dict[int, list[int]] = {}
        self.lease_s: float | None = None
        self._prepared = False

    def __repr__(self) -> str:
        return f"SunSpecDriver({self.asset_id} @ {self.gateway.host}:{self.gateway.port}/{self.unit_id})"

    async def connect(self) -> None:
        with contextlib.suppress(DriverError):  # reads report the failure and retry discovery
            await self.discover()

    async def discover(self) -> DeviceMap:
        """Find the marker, walk the chain and plan the reads; DriverError when the device is no SunSpec device."""
        try:
            base, chain = await discover(self.registers.read, self.bases)
        except DiscoveryError as exc:
            raise DriverError(self.asset_id, str(exc)) from exc
        alternatives = self.product.sources() if self.product is not None else DEFAULT_SOURCES
        device = DeviceMap.build(base, chain, alternatives)
        if "power_w" not in device.sources:
            raise DriverError(self.asset_id, f"no model gives power (chain {[e.model_id for e in chain]})")
        try:
            control = choose(device, self.wanted) if self.kind.controllable else None
        except ControlError as exc:
            raise DriverError(self.asset_id, str(exc)) from exc
        if self.product is not None and self.product.product.models:
            found = tuple(e.model_id for e in chain)
            if found != self.product.product.models:
                log.info("sunspec.model_order", asset_id=self.asset_id, documented=self.product.product.models,
                         found=found)
        self.device, self.control, self._prepared = device, control, False
        log.info("sunspec.discovered", asset_id=self.asset_id, base=base, models=[e.model_id for e in chain],
                 control=None if control is None else control.model_id, requests=len(device.reads))
        return device

    async def read(self) -> Measurement:
        try:
            return await self._read()
        except ExceptionReply:
            raise  # the device answered: its map is still where discovery found it
        except DriverError:
            self.device = None  # it did not answer: rediscover when it is back (a firmware update may move models)
            raise
        except (PointError, ControlError, ValueError, ArithmeticError) as exc:
            raise DriverError(self.asset_id, f"unusable answer: {type(exc).__name__}: {exc}") from exc

    async def _read(self) -> Measurement:
        device = self.device or await self.discover()
        chunks = [(address, await self.registers.read(address, count)) for address, count in device.reads]
        words = {model_id: device.model_words(chunks, model_id) for model_id in device.layouts}
        values = device.field_values(words)
        values.update(await self._extra())
        if "power_w" not in values:
            self._bad("power_w", math.nan, "reads as 'not implemented'")
        ev_connected = self._ev_connected(device, words) if self.kind is AssetKind.EV_CHARGER else None
        if ev_connected is not None:
            values["ev_connected"] = 1 if ev_connected else 0
        values["status"] = self._status(device, words, values, ev_connected).value
        if self.control is not None:
            setpoint = self.control.readback(words)
            if setpoint is not None:
                values["setpoint_w"] = setpoint
            lease = device.point(words, self.control.model_id,
                                 "WSetRvrtTms" if self.control.model_id == 704 else "InOutWRte_RvrtTms")
            if lease is not None:
                values["lease_timeout_s"] = lease
        self.words = words
        return to_measurement(self.asset_id, values, self._now, self._bad)

    async def _extra(self) -> dict[str, float]:
        """Vendor registers outside the chain (a product map's [[extra]])."""
        values: dict[str, float] = {}
        for row in self.product.extra if self.product is not None else ():
            width = 1 if row.type.endswith("16") else 2
            raw = int.from_bytes(b"".join(w.to_bytes(2, "big") for w in await self.registers.read(row.address, width)),
                                 "big", signed=row.type.startswith("int"))
            values[row.field] = raw * row.scale
        return values

    def _ev_connected(self, device: DeviceMap, words: dict[int, list[int]]) -> bool | None:
        if 714 not in device.layouts:
            return None
        for name in device.watched.get(714, []):
            if name.endswith(".PrtTyp") and device.point(words, 714, name) == EV_PORT:
                state = device.point(words, 714, name.replace(".PrtTyp", ".DCSta"))
                return state in EV_CONNECTED_STA
        return None

    def _status(self, device: DeviceMap, words: dict[int, list[int]], values: dict[str, float],
                ev_connected: bool | None) -> DeviceStatus:
        for model_id, (point, fault) in FAULT_STATES.items():
            if device.point(words, model_id, point) == fault:
                alarm = device.point(words, 701, "Alrm")
                values["fault_code"] = int(alarm) if alarm else fault
                return DeviceStatus.FAULT
        if ev_connected is False:
            return DeviceStatus.NO_EV
        power = values["power_w"]
        if power > STATUS_DEADBAND_W:
            return DeviceStatus.CHARGING
        if power < -STATUS_DEADBAND_W:
            return DeviceStatus.DISCHARGING
        return DeviceStatus.STANDBY

    async def write_setpoint(self, power_w: float) -> float | None:
        """Write a setpoint the envelope passed, clamped to what the device declares (never beyond its limits);
        returns the power written when it differs from the request."""
        control = self._control()
        commanded = control.clamp(power_w, self.words)
        if not self._prepared:
            await self._prepare()
        try:
            writes = control.setpoint(commanded, self.words)
        except (ControlError, PointError) as exc:
            raise DriverError(self.asset_id, f"cannot encode setpoint {power_w} W: {exc}") from exc
        await self._send(writes)
        return commanded if commanded != power_w else None

    async def write_lease_timeout(self, seconds: float) -> None:
        """(Re)establish the lease: the product's connect writes, then the control model's revert timer."""
        self.lease_s = seconds
        control = self._control()
        await self._prepare()
        try:
            writes = control.lease(seconds, self.words)
        except (ControlError, PointError) as exc:
            raise DriverError(self.asset_id, f"cannot encode the lease {seconds} s: {exc}") from exc
        await self._send(writes)

    def _control(self) -> SunSpecControl:
        if self.control is None or self.device is None:
            raise DriverError(self.asset_id, "no SunSpec control model (704 or 124) discovered yet")
        if not self.words:
            raise DriverError(self.asset_id, "no poll yet: scale factors and limits are unknown")
        return self.control

    async def _prepare(self) -> None:
        assert self.device is not None
        writes = []
        for item in self.product.on_connect if self.product is not None else ():
            term = parse_term(item.point)
            entry = self.device.entries.get(term.model_id)
            if entry is None:
                raise DriverError(self.asset_id, f"on_connect {item.point}: the device has no model {term.model_id}")
            point = self.device.layouts[term.model_id].point(term.point)
            writes.append(PointWrite(item.point, entry.address + point.offset, [item.value & 0xFFFF]))
        await self._send(writes)
        self._prepared = True

    async def _send(self, writes: list[PointWrite]) -> None:
        for write in writes:
            await self.registers.write(write.address, write.words, write.label)

    async def close(self) -> None:
        """Gateways are shared; the pool that made them closes them."""

    def _bad(self, field: str, value: float, problem: str) -> NoReturn:
        where = ""
        if self.device is not None and field in self.device.sources:
            where = " from " + " + ".join(str(t) for t in self.device.sources[field])
        raise DriverError(self.asset_id, f"{field}{where} value {value!r} {problem}")
