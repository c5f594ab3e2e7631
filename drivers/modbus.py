"""Generic Modbus driver driven by a register map: Modbus TCP, RTU frames over TCP, or serial RTU.

The link is chosen per asset (issue 12 §4): Modbus TCP (the default), RTU framing over a TCP socket (`framing =
"rtu"`: a serial gateway that passes RS-485 frames through without converting them), or serial RTU on a local port
(`serial = "/dev/ttyUSB0"` with baudrate, parity ...). All three are pymodbus clients; the rest of the driver does
not know which one it talks through.

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
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from agent.model import AssetKind, Measurement
from agent.ports import DriverError
from drivers.measure import to_measurement
from drivers.registermap import Reading, RegisterMap, Write

log = structlog.get_logger("drivers.modbus")
# read function code -> the client's request for it
READERS: dict[int, Callable[[Client], Callable[..., Awaitable[ModbusPDU]]]] = {
    1: lambda c: c.read_coils,
    2: lambda c: c.read_discrete_inputs,
    3: lambda c: c.read_holding_registers,
    4: lambda c: c.read_input_registers,
}


Client = AsyncModbusTcpClient | AsyncModbusSerialClient


@dataclasses.dataclass(frozen=True, slots=True)
class SerialLine:
    """A local serial port and its line settings (RS-485 adapters: the device's documented settings)."""

    device: str
    baudrate: int = 19200
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8


class ExceptionReply(DriverError):
    """The device answered with a Modbus exception (e.g. 2, illegal address): an answer, so the link stays up."""

    def __init__(self, asset_id: str, message: str, code: int) -> None:
        super().__init__(asset_id, message)
        self.code = code


class ModbusGateway:
    """One link (a TCP endpoint with its framing, or a serial line) and the client that talks over it."""

    def __init__(self, host: str, port: int, timeout_s: float, framing: str = "tcp",
                 serial: SerialLine | None = None) -> None:
        self.host = serial.device if serial is not None else host
        self.port = 0 if serial is not None else port
        self.timeout_s = timeout_s
        self.framing = "rtu" if serial is not None else framing
        self.serial = serial
        self._client: Client | None = None
        self.dropped = 0  # connections closed after a failed request

    @property
    def client(self) -> Client:
        if self._client is None:
            # retries=0: the control loop owns retry policy (failure counting, back-off); a retry inside the
            # client would hide a slow device and stall every other device behind the same gateway.
            if self.serial is not None:
                line = self.serial
                self._client = AsyncModbusSerialClient(
                    line.device, framer=FramerType.RTU, baudrate=line.baudrate, parity=line.parity,
                    stopbits=line.stopbits, bytesize=line.bytesize, timeout=self.timeout_s, retries=0,
                    reconnect_delay=0.5, reconnect_delay_max=30.0,
                )
            else:
                self._client = AsyncModbusTcpClient(
                    self.host,
                    port=self.port,
                    framer=FramerType.RTU if self.framing == "rtu" else FramerType.SOCKET,
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

    async def request(
        self, asset_id: str, what: str, call: Callable[[Client], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """Run one request for `asset_id` (the one rule for every driver on a Modbus link): a transport failure
        becomes a DriverError naming the asset and the request, and drops the connection, since the request ended
        without its answer (module docstring); a Modbus exception reply is an answer, keeps the connection and
        raises ExceptionReply with its code."""
        try:
            await self.ensure_connected()
            response = await call(self.client)
        except (ModbusException, OSError, TimeoutError) as exc:
            self.drop()
            raise DriverError(asset_id, f"{what} failed: {type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError:
            self.drop()
            raise
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            raise ExceptionReply(asset_id, f"{what}: device answered Modbus exception {code}", code)
        return response

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class GatewayPool:
    """Hands out one ModbusGateway per link ((host, port) or serial device) so devices behind a gateway, or on one
    RS-485 line, share its connection."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._gateways: dict[tuple[str, int], ModbusGateway] = {}

    def get(self, host: str, port: int, framing: str = "tcp", serial: SerialLine | None = None) -> ModbusGateway:
        key = (serial.device, 0) if serial is not None else (host, port)
        gateway = self._gateways.get(key)
        if gateway is None:
            gateway = self._gateways[key] = ModbusGateway(host, port, self.timeout_s, framing, serial)
        elif gateway.framing != ("rtu" if serial is not None else framing) or gateway.serial != serial:
            raise ValueError(f"{key[0]}:{key[1]} is given two framings or line settings; one link has one")
        return gateway

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
            unit = span.unit_id or self.unit_id
            response = await self._call(
                f"read {span.count} {'bits' if span.function in (1, 2) else 'registers'} at {span.address} "
                f"(function {span.function}{'' if span.unit_id is None else f', unit {unit}'})",
                lambda client, span=span, unit=unit: READERS[span.function](client)(
                    span.address, count=span.count, device_id=unit
                ),
            )
            # a bit read answers whole bytes: the bits asked are the first `count`, each carried as a 0/1 word
            registers = [int(b) for b in response.bits[: span.count]] if span.function in (1, 2) \
                else response.registers
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
        cap = self.map.control.lease_max_s
        if cap is not None and seconds > cap:  # the device refuses more; shorter is the safe side (lease_check)
            log.warning("asset.lease_clamped", asset_id=self.asset_id, map=self.map.model.id, lease_s=seconds,
                        written_s=cap)
            seconds = cap
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

    def _send(self, client: Client, write: Write) -> Awaitable[ModbusPDU]:
        unit = write.unit_id or self.unit_id
        if write.function == 5:
            return client.write_coil(write.address, bool(write.registers[0]), device_id=unit)
        if write.function == 15:
            return client.write_coils(write.address, [bool(r) for r in write.registers], device_id=unit)
        if write.function == 6:
            return client.write_register(write.address, write.registers[0], device_id=unit)
        return client.write_registers(write.address, write.registers, device_id=unit)

    async def _call(self, what: str, request: Callable[[Client], Awaitable[ModbusPDU]]) -> ModbusPDU:
        return await self.gateway.request(self.asset_id, what, request)

    def to_measurement(self, values: dict[str, float]) -> Measurement:
        """Check plausibility and build the Measurement; a bad value names its field, register and raw value."""
        return to_measurement(self.asset_id, values, self._now, self._bad)

    def _bad(self, field: str, value: float, problem: str) -> NoReturn:
        address = self.map.codec(field).row.address
        raise DriverError(self.asset_id, f"register {address} ({field}) value {value!r} {problem} (map {self.map.id})")
