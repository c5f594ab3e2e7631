"""Generic Modbus TCP driver driven by a register map.

Devices behind one TCP endpoint (a Modbus gateway, or one device on its own port) share one client: Modbus TCP
allows one outstanding request per connection in practice, and pymodbus serialises requests on a client anyway.
A device that times out costs its gateway one timeout, never the other gateways (each has its own client).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NoReturn

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from agent.model import AssetKind, DeviceStatus, Measurement
from drivers.base import DriverError
from drivers.registermap import RegisterMap

# Plausibility bounds per domain field: values outside are a broken device or a wrong map, never data.
FRACTION_FIELDS = ("soc", "soh", "ev_target_soc", "ev_min_soc")
NON_NEGATIVE_FIELDS = (
    "rated_charge_w",
    "rated_discharge_w",
    "max_charge_w",
    "max_discharge_w",
    "capacity_wh",
    "energy_import_wh",
    "energy_export_wh",
    "lease_timeout_s",
)
FRACTION_SLACK = 1e-3  # rounding of percent registers
DEPARTURE_MIN_UNIX_S = 946_684_800  # 2000-01-01: earlier is an unset clock, not a departure
DEPARTURE_MAX_UNIX_S = 4_102_444_800  # 2100-01-01


class ModbusGateway:
    """One TCP endpoint (host, port) and the client that talks to it."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None

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
    ) -> None:
        self.asset_id = asset_id
        self.map = register_map
        self.kind: AssetKind = register_map.kind
        self.gateway = gateway
        self.unit_id = unit_id
        self._now = now

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
                f"read {span.count} registers at {span.address}",
                lambda client, span=span: client.read_holding_registers(
                    span.address, count=span.count, device_id=self.unit_id
                ),
            )
            registers = response.registers
            if len(registers) != span.count:
                raise DriverError(
                    self.asset_id,
                    f"read at {span.address} returned {len(registers)} registers, asked {span.count}",
                )
            span_registers.append(registers)
        return self.to_measurement(self.map.decode(span_registers))

    async def write_setpoint(self, power_w: float) -> None:
        await self._write("setpoint_w", power_w)

    async def write_lease_timeout(self, seconds: float) -> None:
        if self.map.has("lease_timeout_s"):
            await self._write("lease_timeout_s", seconds)

    async def close(self) -> None:
        """Gateways are shared; the pool that made them closes them."""

    async def _write(self, field: str, value: float) -> None:
        if not self.map.has(field):
            raise DriverError(self.asset_id, f"map {self.map.id} has no {field}")
        codec = self.map.codec(field)
        try:
            registers = self.map.encode(field, value, toward_zero=field == "setpoint_w")
        except ValueError as exc:
            raise DriverError(self.asset_id, f"cannot encode {field}: {exc}") from exc
        await self._call(
            f"write {field} at {codec.row.address}",
            lambda client: client.write_registers(codec.row.address, registers, device_id=self.unit_id),
        )

    async def _call(self, what: str, request: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """Run one request; every transport failure becomes a DriverError naming the asset and the request."""
        try:
            await self.gateway.ensure_connected()
            response = await request(self.gateway.client)
        except (ModbusException, OSError, TimeoutError) as exc:
            raise DriverError(self.asset_id, f"{what} failed: {type(exc).__name__}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", "?")
            raise DriverError(self.asset_id, f"{what}: device answered Modbus exception {code}")
        return response

    def to_measurement(self, values: dict[str, float]) -> Measurement:
        """Check plausibility and build the Measurement; a bad value names its field, register and raw value."""
        for name, value in values.items():
            if not math.isfinite(value):
                self._bad(name, value, "is not a finite number")
        for name in FRACTION_FIELDS:
            if name in values and not -FRACTION_SLACK <= values[name] <= 1 + FRACTION_SLACK:
                self._bad(name, values[name], "is outside 0..1")
        for name in NON_NEGATIVE_FIELDS:
            if name in values and values[name] < 0:
                self._bad(name, values[name], "is negative")
        status_code = int(values.get("status", 0))
        try:
            status = DeviceStatus(status_code)
        except ValueError:
            self._bad("status", status_code, f"is not a known status code {[s.value for s in DeviceStatus]}")
        connected = bool(values["ev_connected"]) if "ev_connected" in values else None
        ev = connected is not False  # EV fields mean nothing while no EV is plugged in
        departure_s = values.get("ev_departure")
        return Measurement(
            asset_id=self.asset_id,
            at=self._now(),
            power_w=values["power_w"],
            status=status,
            fault_code=int(values.get("fault_code", 0)),
            setpoint_w=values.get("setpoint_w"),
            lease_timeout_s=values.get("lease_timeout_s"),
            rated_charge_w=values.get("rated_charge_w"),
            rated_discharge_w=values.get("rated_discharge_w"),
            max_charge_w=values.get("max_charge_w"),
            max_discharge_w=values.get("max_discharge_w"),
            soc=_clip01(values.get("soc")) if ev else None,
            soh=_clip01(values.get("soh")),
            capacity_wh=values.get("capacity_wh") if ev else None,
            ev_connected=connected,
            ev_target_soc=_clip01(values.get("ev_target_soc")) if ev else None,
            ev_min_soc=_clip01(values.get("ev_min_soc")) if ev else None,
            ev_departure=self._departure(departure_s) if ev and departure_s else None,
            voltage_v=values.get("voltage_v"),
            current_a=values.get("current_a"),
            energy_import_wh=values.get("energy_import_wh"),
            energy_export_wh=values.get("energy_export_wh"),
        )

    def _departure(self, unix_s: float) -> datetime:
        if not DEPARTURE_MIN_UNIX_S <= unix_s <= DEPARTURE_MAX_UNIX_S:
            self._bad("ev_departure", unix_s, "is not a plausible UNIX time")
        return datetime.fromtimestamp(unix_s, UTC)

    def _bad(self, field: str, value: float, problem: str) -> NoReturn:
        address = self.map.codec(field).row.address
        raise DriverError(self.asset_id, f"register {address} ({field}) value {value!r} {problem} (map {self.map.id})")


def _clip01(value: float | None) -> float | None:
    return None if value is None else min(1.0, max(0.0, value))
