"""The transports the agent can build drivers for: its own and those of installed `vpp_agent.drivers` plugins.

One registry for both: a transport name maps to a driver factory, `module:attribute`, loaded only when an asset
uses it. The built-in transports are entries like a plugin's (agent/wiring.py and drivers/sunspec/factory.py hold
their factories), so a plugin's driver is built, checked and closed exactly as a built-in one is.

A factory is called once per `[[assets]]` entry of its transport:

    factory(asset: AssetConfig, context: agent.wiring.DriverContext) -> Mapping[str, agent.ports.Driver]

and returns one driver per asset id of the entry (`asset.placements()`: one, or `count` of them). Reading the
config validates a transport by name only: for a built-in name nothing is read; any other name reads the
installed entry points (metadata, nothing imported). Loading a plugin's factory imports it, in check-config and at
start (docs/integrators.md, "Plugins").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from drivers.entrypoints import BUILT_IN, Plugin, PluginError, installed

if TYPE_CHECKING:
    from agent.config import AssetConfig
    from agent.ports import Driver
    from agent.wiring import DriverContext

    DriverFactory = Callable[[AssetConfig, DriverContext], Mapping[str, Driver]]

DRIVERS_GROUP = "vpp_agent.drivers"

BUILT_IN_TRANSPORTS: dict[str, str] = {
    "modbus": "agent.wiring:modbus_drivers",
    "mqtt": "agent.wiring:mqtt_drivers",
    "ocpp": "agent.wiring:ocpp_drivers",
    "sunspec": "drivers.sunspec.factory:sunspec_drivers",
}

__all__ = ["BUILT_IN_TRANSPORTS", "DRIVERS_GROUP", "PluginError", "check_transport", "factory", "transports"]


def transports() -> dict[str, Plugin]:
    """Every transport by name, built-in ones first; a name two sources provide is a PluginError naming both."""
    found = {name: Plugin(DRIVERS_GROUP, name, value, BUILT_IN) for name, value in BUILT_IN_TRANSPORTS.items()}
    for plugin in installed(DRIVERS_GROUP):
        other = found.get(plugin.name)
        if other is not None:
            raise PluginError(f"transport {plugin.name!r} is provided by {other.describe()} and by {plugin.describe()}")
        found[plugin.name] = plugin
    return found


def check_transport(name: str) -> None:
    """ValueError unless `name` is a registered transport; the message lists them. A built-in name reads nothing."""
    if name in BUILT_IN_TRANSPORTS:
        return
    known = transports()
    if name not in known:
        raise ValueError(f"unknown transport {name!r}: one of {', '.join(known)}")


def factory(name: str) -> DriverFactory:
    """The driver factory of transport `name`, imported now; a plugin that fails to import is a PluginError."""
    plugin = transports().get(name)
    if plugin is None:
        check_transport(name)  # raises the message listing the known ones
    assert plugin is not None
    made: Any = plugin.load()
    if not callable(made):
        raise PluginError(f"{plugin.describe()}: is a {type(made).__name__}, not a driver factory "
                          "(asset, context) -> {asset id: driver}")
    return made  # type: ignore[no-any-return]
