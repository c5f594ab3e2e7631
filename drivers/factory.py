"""Build drivers for the assets of a config: the one place that picks a transport per asset."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent.config import AppConfig
from drivers.base import Driver
from drivers.modbus import GatewayPool, ModbusDriver
from drivers.registermap import RegisterMap, load_map


def build_drivers(config: AppConfig, now: Callable[[], datetime]) -> tuple[dict[str, Driver], GatewayPool]:
    """Drivers by asset id, and the pool whose close() releases their connections."""
    pool = GatewayPool(timeout_s=config.agent.poll_timeout_s)
    maps: dict[str, RegisterMap] = {}
    drivers: dict[str, Driver] = {}
    for asset in config.assets:
        if asset.map not in maps:
            maps[asset.map] = load_map(asset.map)
        for placement in asset.placements():
            gateway = pool.get(asset.host, placement.port)
            drivers[placement.id] = ModbusDriver(placement.id, maps[asset.map], gateway, placement.unit_id, now)
    return drivers, pool
