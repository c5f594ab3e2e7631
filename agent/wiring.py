"""The composition root: the one place that picks a driver per asset, the CSMS and the MQTT link (DESIGN.md §2).

Every `[[assets]]` entry goes through the transport registry (agent/plugins.py) to its factory, built-in or a
plugin's, with the same DriverContext; `drivers` only implements agent.ports and never sees the config classes.
Protocol libraries (pymodbus, aiomqtt, ocpp, pysunspec2) are imported here only for the transports a config uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from agent.config import AppConfig, AssetConfig, ConfigError, MqttSettings
from agent.plugins import BUILT_IN_TRANSPORTS, PluginError, factory
from agent.ports import Driver, DriverMemory
from agent.status import status_payload

if TYPE_CHECKING:
    from drivers.modbus import GatewayPool
    from drivers.mqtt_link import MqttLink
    from drivers.ocpp.csms import Csms
    from drivers.registermap import RegisterMap


@dataclass
class DriverContext:
    """What a driver factory gets besides its asset: the agent's clock, the links it shares, and the whole config.

    The same for built-in and plugin transports. Read-only for a factory except through its methods."""

    config: AppConfig  # read-only: a factory reads its own section (the OCPP one reads [ocpp])
    now: Callable[[], datetime]  # the agent's clock: simulations and tests run faster than real time
    modbus: GatewayPool  # Modbus TCP / RTU connections, shared by every asset behind one gateway or serial line
    link: MqttLink | None = None  # the agent's MQTT connection (an agent.ports.Bus) when [mqtt] enabled, else None
    memory: DriverMemory | None = None  # what drivers keep across restarts (the agent's Store), None without one
    _maps: dict[str, RegisterMap] = field(default_factory=dict, repr=False)

    def register_map(self, name_or_path: str, connector: int | None = None) -> RegisterMap:
        """A register map (drivers/maps, a plugin's maps, or a path), parsed once however many assets use it."""
        from drivers.registermap import load_map

        key = f"{name_or_path}#{connector}"
        if key not in self._maps:
            self._maps[key] = load_map(name_or_path, connector)
        return self._maps[key]


def build_link(
    settings: MqttSettings, now: Callable[[], datetime], seal: Callable[[str, bytes], bytes] | None = None
) -> MqttLink:
    """The agent's MQTT connection, with its retained birth and Will status messages (sealed with the agent's key by
    `seal` when it has one: the Will is signed now, at start, since the broker sends it later). The shutdown status
    is not built here: the agent publishes it when it stops, with that time (AgentApp.run)."""
    # deferred: aiomqtt and paho (~1 MB of RSS); an agent with MQTT off never builds a link
    from drivers.mqtt_link import LinkSettings, MqttLink, Retained

    status_topic = f"{settings.topic_prefix}/agent/status"

    def status(payload: bytes) -> bytes:
        return seal(status_topic, payload) if seal is not None else payload

    return MqttLink(
        LinkSettings(
            host=settings.host,
            port=settings.port,
            client_id=settings.client_id,
            username=settings.username,
            password=settings.password(),
            tls=settings.tls_context(),
            keepalive_s=settings.keepalive_s,
            birth=Retained(status_topic, status(status_payload("online", now()))),
            will=Retained(status_topic, status(status_payload("offline", now(), reason="connection lost"))),
            buffer_limit=settings.buffer_limit,
        )
    )


def build_drivers(
    config: AppConfig, now: Callable[[], datetime], link: MqttLink | None = None, memory: DriverMemory | None = None
) -> tuple[dict[str, Driver], GatewayPool]:
    """Drivers by asset id, and the Modbus pool whose close() releases their connections."""
    from drivers.modbus import GatewayPool

    context = DriverContext(config, now, GatewayPool(timeout_s=config.agent.poll_timeout_s), link, memory=memory)
    drivers: dict[str, Driver] = {}
    for index, asset in enumerate(config.assets):
        where = f"assets[{index}] (transport {asset.transport!r})"
        try:
            build = factory(asset.transport)
        except PluginError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if asset.transport in BUILT_IN_TRANSPORTS:
            made = build(asset, context)  # their own errors (MapError, ConfigError) already name what is wrong
        else:
            try:
                made = build(asset, context)
            except Exception as exc:  # a plugin's code: whatever it raises, name the plugin and the asset
                raise ConfigError(f"{where}: the plugin's driver factory failed: {type(exc).__name__}: {exc}") from exc
        drivers.update(_checked(index, asset, made))
    return drivers, context.modbus


def _checked(index: int, asset: AssetConfig, made: Mapping[str, Driver]) -> Mapping[str, Driver]:
    """A factory's result as the fleet needs it: one Driver per asset id of the entry, no more, no fewer. A plugin
    that gets this wrong is named here, at start, instead of as a missing asset at the first cycle."""
    where = f"assets[{index}] (transport {asset.transport!r})"
    wanted = {p.id for p in asset.placements()}
    if not isinstance(made, Mapping) or set(made) != wanted:
        got = sorted(made) if isinstance(made, Mapping) else type(made).__name__
        raise ConfigError(f"{where}: the driver factory returned {got}, not one driver for each of {sorted(wanted)}")
    for asset_id, driver in made.items():
        if not isinstance(driver, Driver) or driver.asset_id != asset_id:
            raise ConfigError(
                f"{where}: {asset_id!r} is a {type(driver).__name__}, not an agent.ports.Driver with that asset_id"
            )
    return made


def modbus_drivers(asset: AssetConfig, context: DriverContext) -> dict[str, Driver]:
    """Modbus TCP, RTU over TCP or serial RTU devices read through a register map."""
    from drivers.modbus import ModbusDriver, SerialLine

    assert asset.map is not None  # the config requires one for Modbus
    register_map = context.register_map(asset.map, asset.connector)
    line = (
        None
        if asset.serial is None
        else SerialLine(asset.serial, asset.baudrate, asset.parity, asset.stopbits, asset.bytesize)
    )
    drivers: dict[str, Driver] = {}
    for placement in asset.placements():
        gateway = context.modbus.get(asset.host, placement.port, asset.framing, line)
        drivers[placement.id] = ModbusDriver(placement.id, register_map, gateway, placement.unit_id, context.now)
    return drivers


def mqtt_drivers(asset: AssetConfig, context: DriverContext) -> dict[str, Driver]:
    """Devices that publish JSON telemetry on the agent's broker, read through an MQTT map."""
    from drivers.mqtt_driver import MqttDriver
    from drivers.mqtt_map import load_mqtt_map

    if context.link is None:
        raise ConfigError(f"asset {asset.id!r} is an MQTT device but no MQTT link was given")
    assert asset.map is not None  # the config requires one for MQTT
    mqtt_map = load_mqtt_map(asset.map)
    return {
        p.id: MqttDriver(p.id, mqtt_map, context.link, asset.topic.format(id=p.id), context.now)
        for p in asset.placements()
    }


def ocpp_drivers(asset: AssetConfig, context: DriverContext) -> dict[str, Driver]:
    """OCPP EVSEs: drivers that a station's session (the CSMS, build_csms) feeds; no ocpp import here."""
    from drivers.ocpp.evse import OcppEvseDriver

    stale_s = context.config.ocpp.meter_stale_after_s
    tail_s = context.config.events.interval_s  # a restored transaction log rebooks at most one interval back
    return {
        asset_id: OcppEvseDriver(
            asset_id, station, evse, context.now, stale_s, memory=context.memory, memory_tail_s=tail_s
        )
        for asset_id, station, evse in asset.ocpp_targets()
    }


def build_csms(config: AppConfig, drivers: dict[str, Driver], now: Callable[[], datetime]) -> Csms | None:
    """The CSMS serving the OCPP EVSE drivers among `drivers` when `[ocpp] enabled` (None otherwise); ocpp and
    websockets are imported only then. Reads the station passwords and TLS files now (ConfigError naming them)."""
    if not config.ocpp.enabled:
        return None
    try:
        from drivers.ocpp.csms import Csms
    except ModuleNotFoundError as exc:
        raise ConfigError(f"[ocpp] enabled needs the ocpp extra (pip install 'vpp-agent[ocpp]'): {exc}") from exc
    from drivers.ocpp.evse import OcppEvseDriver

    return Csms(config.ocpp, [d for d in drivers.values() if isinstance(d, OcppEvseDriver)], now)


def asset_problems(config: AppConfig, least_lease_s: float) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the assets past the config's own validation, as check-config and run report them: each
    map (register, MQTT or SunSpec product map) loaded the way its transport loads it, and each plugin transport's
    factory imported (a broken plugin is named here, not at start). `least_lease_s` is what the agent needs between
    lease refreshes (lease_check)."""
    from drivers.mqtt_map import load_mqtt_map
    from drivers.registermap import MapError, check_asset_map, load_map

    errors: list[str] = []
    warnings: list[str] = []
    for index, asset in enumerate(config.assets):
        where = f"assets[{index}]"
        try:
            factory(asset.transport)  # a plugin's imported now; a plugin claiming a built-in's name is refused
        except PluginError as exc:
            errors.append(f"{where}.transport: {exc}")
            continue
        if asset.map is None:
            continue
        kind: str | None = None  # what the map says the device is, where it was loaded
        if asset.transport == "modbus":  # the map, the asset's connector and the lease against the device's maximum
            map_errors, map_warnings = check_asset_map(
                asset.map, asset.connector, config.agent.lease_timeout_s, least_lease_s
            )
            errors += [f"{where}.map: {e}" for e in map_errors]
            warnings += [f"{where}.map: {w}" for w in map_warnings]
            if not map_errors and asset.wear_pricing == "opportunity":
                kind = load_map(asset.map, asset.connector).kind.value
        elif asset.transport == "mqtt":
            try:
                kind = load_mqtt_map(asset.map).kind.value
            except MapError as exc:
                errors.append(f"{where}.map: {exc}")
        elif asset.transport == "sunspec":  # the product map, and the kind it gives against the one the asset names
            from drivers.sunspec.profile import ProfileError, load_product  # only with a SunSpec asset; no pysunspec2

            try:
                kind = load_product(asset.map).product.kind.value
            except ProfileError as exc:
                errors.append(f"{where}.map: {exc}")
                continue
            if asset.kind is not None and asset.kind != kind:
                errors.append(f"{where}.kind: {asset.kind!r} but map {asset.map!r} is a {kind}")
        # ocpp has no map; a plugin checks its own when it builds
        if asset.wear_pricing == "opportunity" and kind not in (None, "battery"):  # AssetConfig checks what it knows
            errors.append(f"{where}.wear_pricing: 'opportunity' is for stationary batteries, but map {asset.map!r} is "
                          f"an {kind} (an EV's driving takes its energy at no price: its value of a life would go to "
                          "0)")  # fmt: skip
    return errors, warnings
