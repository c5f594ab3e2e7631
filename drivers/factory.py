"""Build the transports and drivers a config asks for: the one place that picks a transport per asset."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from agent.config import AppConfig, MqttSettings
from agent.ports import Driver
from agent.status import status_payload
from drivers.modbus import GatewayPool, ModbusDriver
from drivers.registermap import RegisterMap, load_map

if TYPE_CHECKING:
    from drivers.mqtt_link import MqttLink
    from drivers.ocpp.csms import Csms


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
    config: AppConfig, now: Callable[[], datetime], link: MqttLink | None = None
) -> tuple[dict[str, Driver], GatewayPool]:
    """Drivers by asset id, and the Modbus pool whose close() releases their connections."""
    pool = GatewayPool(timeout_s=config.agent.poll_timeout_s)
    maps: dict[str, RegisterMap] = {}
    drivers: dict[str, Driver] = {}
    for asset in config.assets:
        if asset.transport == "ocpp":  # no ocpp/websockets import here: the CSMS (build_csms) needs them
            from drivers.ocpp.evse import OcppEvseDriver

            for asset_id, station, evse in asset.ocpp_targets():
                drivers[asset_id] = OcppEvseDriver(asset_id, station, evse, now, config.ocpp.meter_stale_after_s)
            continue
        if asset.transport == "mqtt":
            from drivers.mqtt_driver import MqttDriver
            from drivers.mqtt_map import load_mqtt_map

            if link is None:
                raise ValueError(f"asset {asset.id!r} is an MQTT device but no MQTT link was given")
            mqtt_map = load_mqtt_map(asset.map)
            for placement in asset.placements():
                base = asset.topic.format(id=placement.id)
                drivers[placement.id] = MqttDriver(placement.id, mqtt_map, link, base, now)
            continue
        if asset.map not in maps:
            maps[asset.map] = load_map(asset.map)
        for placement in asset.placements():
            gateway = pool.get(asset.host, placement.port)
            drivers[placement.id] = ModbusDriver(placement.id, maps[asset.map], gateway, placement.unit_id, now)
    return drivers, pool


def build_csms(config: AppConfig, drivers: dict[str, Driver], now: Callable[[], datetime]) -> Csms | None:
    """The CSMS serving the OCPP EVSE drivers among `drivers` when `[ocpp] enabled` (None otherwise); ocpp and
    websockets are imported only then. Reads the station passwords and TLS files now (ConfigError naming them)."""
    if not config.ocpp.enabled:
        return None
    from agent.config import ConfigError

    try:
        from drivers.ocpp.csms import Csms
    except ModuleNotFoundError as exc:
        raise ConfigError(f"[ocpp] enabled needs the ocpp extra (pip install 'vpp-agent[ocpp]'): {exc}") from exc
    from drivers.ocpp.evse import OcppEvseDriver

    return Csms(config.ocpp, [d for d in drivers.values() if isinstance(d, OcppEvseDriver)], now)
