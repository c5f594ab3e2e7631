"""A bare Modbus TCP device for golden tests: the words a test gives it, nothing else (no simulator physics).

The driver under test reads those words through its map and writes its commands into them; the test reads the
written words back from the server. A wrong sign, code, scale or word order in a map therefore fails here even when
the simulator, which serves the same map with its own code, shares the mistake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus import GatewayPool, ModbusDriver
from drivers.registermap import load_map
from sim_devices.ports import free_port_block

UNIT = 1


def free_port() -> int:
    """A reserved port outside the ephemeral range (sim_devices/ports.py): a port-0 pick closed before the server
    binds it can go to any client socket or another test in the meantime."""
    return free_port_block(1)


@dataclass
class Device:
    server: ModbusTcpServer
    driver: ModbusDriver
    pauses: list[float] = field(default_factory=list)

    async def words(self, address: int, count: int = 1) -> list[int]:
        """Registers at PDU `address` as the device holds them now."""
        return [int(v) for v in await self.server.async_getValues(UNIT, 3, address, count)]


@asynccontextmanager
async def device(map_id: str, words: Mapping[int, int], span: tuple[int, int]) -> AsyncIterator[Device]:
    """Serve PDU addresses span[0]..span[1] (0 where `words` says nothing) and a driver for `map_id` pointed at it."""
    first, last = span
    values = [words.get(a, 0) for a in range(first, last + 1)]
    sim = SimDevice(id=UNIT, simdata=[SimData(address=first, count=len(values), values=values,
                                               datatype=DataType.REGISTERS)])
    port = free_port()
    server = ModbusTcpServer([sim], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    pool = GatewayPool(timeout_s=2.0)
    pauses: list[float] = []

    async def record_pause(seconds: float) -> None:
        pauses.append(seconds)

    driver = ModbusDriver("dut", load_map(map_id), pool.get("127.0.0.1", port), UNIT, sleep=record_pause)
    try:
        yield Device(server, driver, pauses)
    finally:
        pool.close()
        await server.shutdown()
