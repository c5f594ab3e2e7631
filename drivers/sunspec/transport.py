"""Raw register reads and writes for the SunSpec driver over a shared ModbusGateway.

Every request goes through ModbusGateway.request, the one rule for a Modbus link (a transport failure becomes a
DriverError naming the asset and the request and drops the connection; an exception reply raises ExceptionReply).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU

from agent.ports import DriverError
from drivers.modbus import ExceptionReply, ModbusGateway

__all__ = ["ExceptionReply", "Registers"]

MAX_READ = 125  # registers in one read request (Modbus limit)


class Registers:
    """Reads and writes of one unit behind a gateway; one request at a time, as the gateway's client allows."""

    def __init__(self, asset_id: str, gateway: ModbusGateway, unit_id: int) -> None:
        self.asset_id = asset_id
        self.gateway = gateway
        self.unit_id = unit_id

    async def read(self, address: int, count: int) -> list[int]:
        """Holding registers address..address+count-1, in requests of at most 125 registers."""
        words: list[int] = []
        while count > 0:
            n = min(count, MAX_READ)
            response = await self._call(
                f"read {n} registers at {address}",
                lambda c, a=address, n=n: c.read_holding_registers(a, count=n, device_id=self.unit_id),
            )
            if len(response.registers) != n:
                raise DriverError(self.asset_id, f"read at {address} returned {len(response.registers)}, asked {n}")
            words.extend(response.registers)
            address += n
            count -= n
        return words

    async def write(self, address: int, words: list[int], label: str) -> None:
        """One write-multiple-registers request (function 16), as SunSpec devices expect for every point."""
        await self._call(f"write {label} at {address}",
                         lambda c: c.write_registers(address, words, device_id=self.unit_id))

    async def _call(self, what: str, request: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]) -> ModbusPDU:
        return await self.gateway.request(self.asset_id, what, request)
