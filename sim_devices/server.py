"""Serving simulated devices as Modbus TCP servers (pymodbus 3.16 SimDevice/SimData, the non-deprecated API).

Registers are refreshed lazily: the SimDevice action callback re-encodes a device's state only when a client reads
it, so 1000 idle devices cost nothing between polls. Writes are decoded in the same callback and applied to the
physics before pymodbus stores them. Read-only rows are `readonly=True`, so writing them gets an exception reply.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Protocol

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from sim_devices.faults import DeviceFaults
from sim_devices.registers import DeviceCodec

log = structlog.get_logger(__name__)

READ_CODES = frozenset({3, 4, 23})
WRITE_CODES = frozenset({6, 16, 22, 23})


class ServedPhysics(Protocol):
    """What the server needs from a device's physics."""

    def fields(self) -> Mapping[str, float]: ...


class DeviceEndpoint:
    """One device as seen on the wire: its unit id, codec, physics and fault switches."""

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

    def sim_device(self) -> SimDevice:
        """A fresh pymodbus SimDevice with one SimData per map row, pre-filled with the current state."""
        image = self.codec.image(self.reported())
        blocks = [
            SimData(address=row.address, values=list(image[row.address]), datatype=DataType.REGISTERS,
                    readonly=row.access != "rw")
            for row in self.codec.map.rows
        ]
        return SimDevice(id=self.unit_id, simdata=blocks, action=self.action)

    def reported(self) -> Mapping[str, float]:
        """The device's state as it puts it in its registers: the physics, through any lying-device fault."""
        return self.faults.reported(self.physics.fields())

    async def action(self, function_code: int, start_address: int, address: int, count: int,
                     registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus callback for every access to this device (see SimDevice.action)."""
        if set_values is None and function_code not in READ_CODES:
            # pymodbus reads back after a single-register write to build its echo: not a client request.
            self.codec.fill(registers, start_address, self.reported())
            return None
        code = await self.faults.gate()
        if code is not None:
            try:
                return ExcCodes(code)
            except ValueError:  # pymodbus can only send the codes it knows
                return ExcCodes.DEVICE_FAILURE
        if set_values is not None and function_code in WRITE_CODES:
            result = self._apply_write(start_address, address, registers, [int(v) for v in set_values])
            if result is not None:
                return result
        if set_values is None and not self.faults.state.frozen:
            self.reads += 1
            self.codec.fill(registers, start_address, self.reported())
        return None

    def _apply_write(self, start_address: int, address: int, registers: list[int],
                     values: list[int]) -> ExcCodes | None:
        changes = self.codec.decode_write(registers, start_address, address, values)
        if any(not math.isfinite(v) for v in changes.values()) or changes.get("lease_timeout_s", 0) < 0:
            self.rejected_writes += 1
            log.warning("sim.write_rejected", device=self.device_id, values=changes)
            return ExcCodes.ILLEGAL_VALUE
        self.writes += 1
        if "setpoint_w" in changes:
            row = self.codec.map.row_for("setpoint_w")
            assert row is not None
            self.last_setpoint_words = [
                values[a - address] if address <= a < address + len(values) else registers[a - start_address]
                for a in range(row.address, row.address + row.width)
            ]
            self.physics.write_setpoint(changes["setpoint_w"])  # type: ignore[attr-defined]
        if "lease_timeout_s" in changes:
            self.physics.write_lease_timeout(changes["lease_timeout_s"])  # type: ignore[attr-defined]
        return None


class PortServer:
    """One listening TCP port: a single device, or a gateway with several unit ids."""

    def __init__(self, host: str, port: int, endpoints: list[DeviceEndpoint]) -> None:
        self.host = host
        self.port = port
        self.endpoints = endpoints
        self._server: ModbusTcpServer | None = None
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        async with self._lock:
            if self._server is not None:
                return
            server = ModbusTcpServer([e.sim_device() for e in self.endpoints], address=(self.host, self.port))
            try:
                await server.serve_forever(background=True)
            except RuntimeError as exc:
                raise OSError(f"cannot listen on {self.host}:{self.port} (in use or not permitted)") from exc
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
