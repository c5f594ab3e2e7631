"""SunSpec drivers for one `[[assets]]` entry with `transport = "sunspec"`: the built-in transport's driver factory,
registered in agent/plugins.py and called by agent/wiring.py like a plugin's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from agent.model import AssetKind
from drivers.modbus import GatewayPool
from drivers.sunspec.driver import SunSpecDriver
from drivers.sunspec.profile import load_product


class SunSpecContext(Protocol):
    """What this factory uses of agent.wiring.DriverContext (drivers do not import the agent's wiring)."""

    @property
    def now(self) -> Callable[[], datetime]: ...

    @property
    def modbus(self) -> GatewayPool: ...


def sunspec_drivers(asset: Any, context: SunSpecContext) -> dict[str, SunSpecDriver]:
    """One driver per placement of `asset` (an agent.config.AssetConfig), sharing the context's Modbus gateways."""
    product = load_product(asset.map) if asset.map is not None else None
    kind = product.product.kind if product is not None else AssetKind(asset.kind)
    control = None if asset.sunspec_control == "auto" else asset.sunspec_control
    return {
        p.id: SunSpecDriver(p.id, context.modbus.get(asset.host, p.port), p.unit_id, kind, context.now, product,
                            control=control)
        for p in asset.placements()
    }
