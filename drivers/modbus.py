"""Generic Modbus TCP driver driven by a register map.

Devices behind one TCP endpoint (a Modbus gateway, or one device on its own port) share one client: Modbus TCP
allows one outstanding request per connection in practice, and pymodbus serialises requests on a client anyway.
A device that times out costs its gateway one timeout, never the other gateways (each has its own client).

A request that ends without its answer (a timeout above all, or a caller cancelling it) closes its connection; the
next request opens a new one. A late reply must have nowhere to land: pymodbus 3.16 matches a reply to the pending
request by transaction id alone (and takes a reply with id 0 for any request), and its own server, which the
simulator uses, stamps a delayed reply with the id of whichever request came in last on the connection. On a kept
connection, a device answering 0.7 s after a 0.5 s timeout had its reply taken as the answer to the next request:
to its own next poll (so it seemed to answer instead of counting as failing), or to a neighbour's poll behind the
same gateway (which then showed the slow device's registers as its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NoReturn

import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from agent.model import AssetKind, Measurement
from agent.ports import DriverError
from drivers.measure import to_measurement
from drivers.registermap import Reading, RegisterMap, Write

log = structlog.get_logger("drivers.modbus")


class ModbusGateway:
    """One TCP endpoint (host, port) and the client that talks to it."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None
        self.dropped = 0  # connections closed after a failed request

    @property
    def client(self) -> AsyncModbusTcpClient:
        if self._client is None:
            # retries=0: the control loop owns retry policy (failure counting, back-off); a retry inside the
            # client would hide a slow device and stall every other device behind the same gateway.
            self._client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                timeout=self.timeout_s,
                retries=0,
                reconnect_delay=0.5,
                reconnect_delay_max=30.0,
            )
        return self._client

    async def ensure_connected(self) -> None:
        client = self.client
        if not client.connected:
            await client.connect()

    def drop(self) -> None:
        """Close the connection after a request ended without its answer, so that answer (if it still comes)
        arrives on a closed socket instead of being matched to a later request; the next request reconnects."""
        if self._client is not None:
            self.dropped += 1
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class GatewayPool:
    """Hands out one ModbusGateway per (host, port) so devices behind a gateway share its connection."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._gateways: dict[tuple[str, int], ModbusGateway] = {}

    def get(self, host: str, port: int) -> ModbusGateway:
        key = (host, port)
        if key not in self._gateways:
            self._gateways[key] = ModbusGateway(host, port, self.timeout_s)
        return self._gateways[key]

    def close(self) -> None:
        for gateway in self._gateways.values():
            gateway.close()
        self._gateways.clear()


class ModbusDriver:
    """Reads and writes one device through its register map."""

    def __init__(
        self,
        asset_id: str,
        register_map: RegisterMap,
        gateway: ModbusGateway,
        unit_id: int,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.asset_id = asset_id
        self.map = register_map
        self.kind: AssetKind = register_map.kind
        self.gateway = gateway
        self.channel = (gateway.host, gateway.port)  # devices on one connection are polled in turn (agent.control.loop)
        self.unit_id = unit_id
        self._now = now
        self._sleep = sleep  # the pause a device needs after some writes ([control] delay_s)
        self.last_reading: Reading | None = None  # scale factors and percent-of references for writes
        self.lease_s: float | None = None
        self._prepared = False  # [control] on_connect written since the device last came (back)

    def __repr__(self) -> str:
        return f"ModbusDriver({self.asset_id} {self.map.id} @ {self.gateway.host}:{self.gateway.port}/{self.unit_id})"

    async def connect(self) -> None:
        with contextlib.suppress(ModbusException, OSError):  # reads report the failure; the client reconnects
            await self.gateway.ensure_connected()

    async def read(self) -> Measurement:
        try:
            return await self._read()
        except DriverError:
            raise
        except Exception as exc:  # whatever a device sends, the caller gets one kind of error naming the asset
            raise DriverError(self.asset_id, f"unusable answer: {type(exc).__name__}: {exc}") from exc

    async def _read(self) -> Measurement:
        span_registers: list[list[int]] = []
        for span in self.map.spans:
            response = await self._call(
                f"read {span.count} registers at {span.address} (function {span.function})",
                lambda client, span=span: (
                    client.read_input_registers if span.function == 4 else client.read_holding_registers
                )(span.address, count=span.count, device_id=self.unit_id),
            )
            registers = response.registers
            if len(registers) != span.count:
                raise DriverError(
                    self.asset_id,
                    f"read at {span.address} returned {len(registers)} registers, asked {span.count}",
                )
            span_registers.append(registers)
        reading = self.map.read(span_registers)
        if "power_w" not in reading.values:
            self._bad("power_w", float("nan"), "reads as 'not implemented'")
        measurement = self.to_measurement(reading.values)
        self.last_reading = reading
        if reading.unmapped_status is not None:
            measurement = dataclasses.replace(measurement, unmapped_status=reading.unmapped_status)
        return measurement

    async def write_setpoint(self, power_w: float) -> float | None:
        """Write the setpoint as the map's command sequence (by default its setpoint_w row), in order, pausing where
        the device needs it; the device's remote-control writes go first when they have not been made yet."""
        if not self._prepared:
            await self._prepare()
        try:
            commanded, writes = self.map.setpoint_writes(power_w, self.lease_s, self.last_reading)
        except ValueError as exc:
            raise DriverError(self.asset_id, f"cannot encode setpoint {power_w} W: {exc}") from exc
        await self._run(writes)
        return commanded if commanded != power_w else None  # below the device's minimum: 0 W

    async def write_lease_timeout(self, seconds: float) -> None:
        """Called when the lease must be (re)established: at start and after the device comes back, so the
        remote-control writes of [control] on_connect are made again too (a restarted device forgot them)."""
        self.lease_s = seconds
        if not self.map.leased:  # said at every (re)connect: an operator must not forget it
            log.warning(
                "asset.no_lease", asset_id=self.asset_id, map=self.map.model.id, reason=self.map.control.no_lease,
                message="the device keeps its last setpoint if the agent stops",
            )
        await self._prepare()
        if self.map.has("lease_timeout_s") and self.map.codec("lease_timeout_s").row.access != "r":
            await self._write("lease_timeout_s", seconds)

    async def _prepare(self) -> None:
        try:
            writes = self.map.connect_writes(self.lease_s)
        except ValueError as exc:
            raise DriverError(self.asset_id, f"cannot encode the connect writes: {exc}") from exc
        await self._run(writes)
        self._prepared = True

    async def close(self) -> None:
        """Gateways are shared; the pool that made them closes them."""

    async def _write(self, field: str, value: float) -> None:
        if not self.map.has(field):
            raise DriverError(self.asset_id, f"map {self.map.id} has no {field}")
        try:
            registers = self.map.encode(field, value, toward_zero=field == "setpoint_w", context=self.last_reading)
        except ValueError as exc:
            raise DriverError(self.asset_id, f"cannot encode {field}: {exc}") from exc
        await self._run([self.map.write(field, registers)])

    async def _run(self, writes: list[Write]) -> None:
        """Send writes one after another, each answered before the next (a command sequence is ordered)."""
        for write in writes:
            await self._call(f"write {write.label} at {write.address} (function {write.function})",
                             lambda client, w=write: self._send(client, w))
            if write.delay_s > 0:
                await self._sleep(write.delay_s)

    def _send(self, client: AsyncModbusTcpClient, write: Write) -> Awaitable[ModbusPDU]:
        if write.function == 6:
            return client.write_register(write.address, write.registers[0], device_id=self.unit_id)
        return client.write_registers(write.address, write.registers, device_id=self.unit_id)

    async def _call(self, what: str, request: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """Run one request; every transport failure becomes a DriverError naming the asset and the request.

        A request that ends without its answer drops the gateway's connection (see the module docstring); a Modbus
        exception reply is an answer and keeps it.
        """
        try:
            await self.gateway.ensure_connected()
            response = await request(self.gateway.client)
        except (ModbusException, OSError, TimeoutError) as exc:
            self.gateway.drop()
            raise DriverError(self.asset_id, f"{what} failed: {type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError:
            self.gateway.drop()
            raise
        if response.isError():
            code = getattr(response, "exception_code", "?")
            raise DriverError(self.asset_id, f"{what}: device answered Modbus exception {code}")
        return response

    def to_measurement(self, values: dict[str, float]) -> Measurement:
        """Check plausibility and build the Measurement; a bad value names its field, register and raw value."""
        return to_measurement(self.asset_id, values, self._now, self._bad)

    def _bad(self, field: str, value: float, problem: str) -> NoReturn:
        address = self.map.codec(field).row.address
        raise DriverError(self.asset_id, f"register {address} ({field}) value {value!r} {problem} (map {self.map.id})")
