"""Simulated SunSpec devices on free loopback ports for tests (imported as `sunspeckit`).

Each device is real physics (sim_devices.battery / ev_charger) behind a SunSpec image served by pymodbus through
the simulator's PortServer; `step` advances the physics by hand, so nothing moves between a test's steps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from agent.model import AssetKind
from drivers.modbus import GatewayPool
from drivers.sunspec.driver import SunSpecDriver
from sim_devices.battery import Battery
from sim_devices.ev_charger import EVCharger
from sim_devices.ev_sessions import EVSession
from sim_devices.faults import DeviceFaults
from sim_devices.ports import free_port_block
from sim_devices.server import PortServer
from sim_devices.sunspec.image import PRODUCTS, SunSpecEndpoint, SunSpecImage

HOST = "127.0.0.1"


def free_port() -> int:
    """A reserved port outside the ephemeral range (sim_devices/ports.py): a port-0 pick closed before the server
    binds it can go to any client socket or another test in the meantime."""
    return free_port_block(1)


def physics(product: str) -> Battery | EVCharger:
    if PRODUCTS[product][0] == "battery":
        return Battery(capacity_wh=100_000.0, soc=0.5, rated_charge_w=50_000.0, rated_discharge_w=40_000.0,
                       ramp_w_per_s=1e9, lease_timeout_s=30.0)
    session = EVSession(arrival_s=0.0, departure_s=36_000.0, capacity_wh=60_000.0, soc=0.4, target_soc=0.8,
                        min_soc=0.2)
    return EVCharger(iter([session]), rated_charge_w=11_000.0, rated_discharge_w=10_000.0, ramp_w_per_s=1e9,
                     efficiency=0.95, lease_timeout_s=30.0, start_unix_s=1_790_000_000.0)


@dataclass
class SimDevice:
    port: int
    image: SunSpecImage
    endpoint: SunSpecEndpoint
    server: PortServer

    @property
    def physics(self) -> Battery | EVCharger:
        return self.image.physics  # type: ignore[return-value]

    def step(self, dt_s: float) -> None:
        self.physics.step(dt_s)


@asynccontextmanager
async def served(product: str, order: str | list[int] = "a", unit_id: int = 1, base: int = 40000
                 ) -> AsyncIterator[SimDevice]:
    device = physics(product)
    device.step(0.0)
    image = SunSpecImage(product, device, f"{product}-1", order, base)
    endpoint = SunSpecEndpoint(f"{product}-1", unit_id, image, DeviceFaults(f"{product}-1", device))
    port = free_port()
    server = PortServer(HOST, port, [endpoint])
    await server.start()
    try:
        yield SimDevice(port, image, endpoint, server)
    finally:
        await server.stop()


@asynccontextmanager
async def driver_for(port: int, kind: AssetKind, unit_id: int = 1, **kwargs: object) -> AsyncIterator[SunSpecDriver]:
    pool = GatewayPool(timeout_s=2.0)
    try:
        yield SunSpecDriver("dut", pool.get(HOST, port), unit_id, kind, **kwargs)  # type: ignore[arg-type]
    finally:
        pool.close()
