"""Serving simulated devices as Modbus TCP servers (pymodbus 3.16 SimDevice/SimData, the non-deprecated API).

Registers are refreshed lazily: the SimDevice action callback re-encodes a device's state only when a client reads
it, so 1000 idle devices cost nothing between polls. Writes are decoded in the same callback and applied to the
physics before pymodbus stores them. Read-only rows are `readonly=True`, so writing them gets an exception reply.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Mapping
from functools import partial
from typing import Protocol

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from sim_devices.faults import DeviceFaults
from sim_devices.registers import DeviceCodec

log = structlog.get_logger(__name__)

READ_CODES = frozenset({1, 2, 3, 4, 23})
WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})


class ServedPhysics(Protocol):
    """What the server needs from a device's physics."""

    def fields(self) -> Mapping[str, float]: ...


# function code -> the table it addresses (1 coils, 2 discrete inputs, 3 holding, 4 input registers)
TABLE_OF = {1: 1, 5: 1, 15: 1, 2: 2, 3: 3, 6: 3, 16: 3, 22: 3, 23: 3, 4: 4}
TABLES = (1, 2, 3, 4)


class DeviceEndpoint:
    """One device as seen on the wire: its unit id(s), codec, physics and fault switches.

    Each function table is served apart (pymodbus' four-table SimDevice), so function 04 on a holding register, or
    03 on an input register, is answered with exception 02 (illegal address) as a real device answers it. A map
    whose rows name other unit ids (SMA, Victron: one device over several units) is served as one SimDevice per
    unit, all backed by this endpoint's physics.
    """

    def __init__(self, device_id: str, unit_id: int, physics: ServedPhysics, codec: DeviceCodec,
                 faults: DeviceFaults) -> None:
        self.device_id = device_id
        self.unit_id = unit_id
        self.physics = physics
        self.codec = codec
        self.faults = faults
        self.reads = 0
        self.writes = 0
        self.rejected_writes = 0
        self.last_setpoint_words: list[int] | None = None

    @property
    def unit_ids(self) -> list[int]:
        """Every unit id this device answers on: its own, then those its map's rows name."""
        return [self.unit_id, *(u for u in self.codec.map.extra_units if u != self.unit_id)]

    def sim_device(self) -> SimDevice:
        """A fresh pymodbus SimDevice for the device's own unit id, pre-filled with the current state."""
        return self._sim_device(None, self.unit_id)

    def sim_devices(self) -> list[SimDevice]:
        """One SimDevice per unit id the device answers on (see `unit_ids`)."""
        return [self.sim_device(), *(self._sim_device(u, u) for u in self.unit_ids[1:])]

    def _sim_device(self, map_unit: int | None, unit_id: int) -> SimDevice:
        images = self.codec.images(self.reported())
        rows = [r for r in self.codec.map.rows if r.unit_id == map_unit]
        tables: list[list[SimData]] = []
        for space in TABLES:
            image = images.get((map_unit, space), {})
            writable = {a for r in rows if r.space == space and r.writable
                        for a in range(r.address, r.address + r.width)}
            if space in (1, 2):  # bits: the action refuses unmapped addresses (pymodbus serves whole 16-bit groups)
                entries = [SimData(address=a, values=[bool(w[0])], datatype=DataType.BITS)
                           for a, w in sorted(image.items())]
                tables.append(entries or [SimData(address=65535, values=[False], datatype=DataType.BITS)])
                continue
            entries = [
                SimData(address=a, values=list(w), datatype=DataType.REGISTERS, readonly=a not in writable)
                for a, w in sorted(image.items())
            ]
            entries += self._block_gaps(image)
            tables.append(sorted(entries, key=lambda e: e.address)
                          or [SimData(address=0, datatype=DataType.INVALID)])
        return SimDevice(id=unit_id, simdata=(tables[0], tables[1], tables[2], tables[3]),
                         action=partial(self.action_for, map_unit))

    def _block_gaps(self, image: Mapping[int, list[int]]) -> list[SimData]:
        """Read-only zero registers over the unmapped addresses of each declared block that holds rows of this
        table: the device lets a request read through them (a device without blocks refuses them)."""
        taken = {a + i for a, words in image.items() for i in range(len(words))}
        gaps: list[SimData] = []
        for first, last in self.codec.map.blocks:
            if not any(first <= a <= last for a in taken):
                continue
            run: list[int] = []
            for a in [*range(first, last + 1), -1]:
                if a >= 0 and a not in taken:
                    run.append(a)
                    continue
                if run:
                    gaps.append(SimData(address=run[0], count=len(run), values=[0], datatype=DataType.REGISTERS,
                                        readonly=True))
                    run = []
        return gaps

    def reported(self) -> Mapping[str, float]:
        """The device's state as it puts it in its registers: the physics, through any lying-device fault."""
        return self.faults.reported(self.physics.fields())

    async def action(self, function_code: int, start_address: int, address: int, count: int,
                     registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus callback for every access to the device's own unit (see SimDevice.action)."""
        return await self.action_for(None, function_code, start_address, address, count, registers, set_values)

    async def action_for(self, map_unit: int | None, function_code: int, start_address: int, address: int,
                         count: int, registers: list[int],
                         set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """The callback of one unit id: `map_unit` None for the device's own rows, else the rows naming it."""
        space = TABLE_OF.get(function_code, 3)
        if set_values is None and function_code not in READ_CODES:
            # pymodbus reads back after a single-register write to build its echo: not a client request.
            self.codec.fill(registers, start_address, self.reported(), space, map_unit)
            return None
        if space in (1, 2) and not self._bits_mapped(map_unit, space, address, set_values):
            return ExcCodes.ILLEGAL_ADDRESS
        code = await self.faults.gate()
        if code is not None:
            try:
                return ExcCodes(code)
            except ValueError:  # pymodbus can only send the codes it knows
                return ExcCodes.DEVICE_FAILURE
        if set_values is not None and function_code in WRITE_CODES:
            result = self._apply_write(start_address, address, registers, [int(v) for v in set_values], space,
                                       map_unit)
            if result is not None:
                return result
        if set_values is None and not self.faults.state.frozen:
            self.reads += 1
            self.codec.fill(registers, start_address, self.reported(), space, map_unit)
        return None

    def _bits_mapped(self, map_unit: int | None, space: int, address: int,
                     set_values: list[int] | list[bool] | None) -> bool:
        """Whether a bit request addresses rows of the map (pymodbus serves bits in whole groups of 16 and hands
        the action a read's register count, not its bit count: a read is checked by its first bit)."""
        rows = {r.address: r for r in self.codec.map.rows if r.space == space and r.unit_id == map_unit}
        if set_values is None:
            return address in rows
        return all(a in rows and rows[a].writable for a in range(address, address + len(set_values)))

    def _apply_write(self, start_address: int, address: int, registers: list[int], values: list[int],
                     space: int = 3, map_unit: int | None = None) -> ExcCodes | None:
        if space == 3 and self.codec.map.refuses_partial_writes:
            partial_rows = self.codec.partial_rows(address, len(values), space, map_unit)
            if partial_rows:
                self.rejected_writes += 1
                log.warning("sim.partial_write_refused", device=self.device_id, rows=partial_rows)
                return ExcCodes.ILLEGAL_ADDRESS
        changes = self.codec.decode_write(registers, start_address, address, values, space, map_unit,
                                          self.reported())
        if any(not math.isfinite(v) for v in changes.values()) or changes.get("lease_timeout_s", 0) < 0:
            self.rejected_writes += 1
            log.warning("sim.write_rejected", device=self.device_id, values=changes)
            return ExcCodes.ILLEGAL_VALUE
        self.writes += 1
        if "setpoint_w" in changes:
            row = self.codec.map.row_for("setpoint_w")
            if row is not None and row.space == space and row.address < address + len(values) \
                    and address < row.address + row.width:
                self.last_setpoint_words = [
                    values[a - address] if address <= a < address + len(values) else registers[a - start_address]
                    for a in range(row.address, row.address + row.width)
                ]
            self.physics.write_setpoint(changes["setpoint_w"])  # type: ignore[attr-defined]
        if "lease_timeout_s" in changes:
            self.physics.write_lease_timeout(changes["lease_timeout_s"])  # type: ignore[attr-defined]
        return None


class GatewayCore(SimCore):
    """pymodbus' device table, answering a unit id nobody serves as a gateway does: exception 0x0B (gateway target
    failed to respond). pymodbus 3.16's SimCore raises KeyError there, which its server sends as 0x04 (device
    failure); its request handler sends 0x0B for NoSuchIdException, so this raises that."""

    def __init__(self, core: SimCore) -> None:  # takes over the built table: nothing is rebuilt
        self.devices = core.devices

    def _check(self, device_id: int) -> None:
        if device_id not in self.devices and 0 not in self.devices:
            raise NoSuchIdException(f"no device answers unit id {device_id}")

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        self._check(device_id)
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: list[int] | list[bool]) -> ExcCodes | None:
        self._check(device_id)
        return await super().async_setValues(device_id, func_code, address, values)


def bind_error(host: str, port: int) -> OSError | None:
    """Why `host:port` cannot be bound now, or None if it can: pymodbus logs the bind's OSError and raises a bare
    RuntimeError, so the errno (in use, not permitted, no such address) is found again by trying the bind on every
    address the host resolves to, as asyncio's server binds them all (localhost: ::1 and 127.0.0.1)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server binds
            try:
                probe.bind(address)
            except OSError as exc:
                return exc
    return None


class PortServer:
    """One listening TCP port: a single device, or a gateway with several unit ids."""

    def __init__(self, host: str, port: int, endpoints: list[DeviceEndpoint], framing: str = "socket") -> None:
        self.host = host
        self.port = port
        self.endpoints = endpoints
        self.framing = framing  # "socket" (Modbus TCP) or "rtu" (RTU frames over TCP, a serial gateway that does
        # not convert); pymodbus' FramerType values
        self._server: ModbusTcpServer | None = None
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        async with self._lock:
            if self._server is not None:
                return
            # an endpoint answering on one unit id may offer only sim_device() (the older API)
            devices = [d for e in self.endpoints
                       for d in (e.sim_devices() if hasattr(e, "sim_devices") else [e.sim_device()])]
            ids = [d.id for d in devices]
            clash = sorted({i for i in ids if ids.count(i) > 1})
            if clash:
                raise ValueError(f"port {self.port}: unit ids {clash} are served by more than one device")
            server = ModbusTcpServer(devices, address=(self.host, self.port), framer=FramerType(self.framing),
                                     ignore_missing_devices=False)
            server.context = GatewayCore(server.context)
            try:
                await server.serve_forever(background=True)
            except RuntimeError as exc:
                reason = bind_error(self.host, self.port)
                if reason is None:
                    raise OSError(f"cannot listen on {self.host}:{self.port} (in use or not permitted)") from exc
                raise OSError(reason.errno, f"cannot listen on {self.host}:{self.port}: {reason.strerror}") from reason
            self._server = server

    async def stop(self) -> None:
        async with self._lock:
            server, self._server = self._server, None
            if server is not None:
                await server.shutdown()

    async def set_listening(self, listening: bool) -> None:
        if listening:
            await self.start()
        else:
            await self.stop()
