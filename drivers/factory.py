"""Build the transports and drivers a config asks for: the one place that picks a transport per asset."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent.config import AppConfig, MqttSettings
from agent.ports import Driver
from agent.status import status_payload
from drivers.modbus import GatewayPool, ModbusDriver
from drivers.mqtt_link import LinkSettings, MqttLink, Retained
from drivers.registermap import RegisterMap, load_map


def build_link(
    settings: MqttSettings, now: Callable[[], datetime], seal: Callable[[str, bytes], bytes] | None = None
) -> MqttLink:
    """The agent's MQTT connection, with its retained birth and Will status messages (sealed with the agent's key by
    `seal` when it has one: the Will is signed now, at start, since the broker sends it later). The shutdown status
    is not built here: the agent publishes it when it stops, with that time (AgentApp.run)."""
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
