"""Home Assistant MQTT discovery: the site appears in Home Assistant without a line of YAML (docs/mqtt.md).

Why plain state topics of their own (`{prefix}/ha/...`) rather than pointing Home Assistant at the telemetry:
with `[trust] agent_key_file` the agent's telemetry is sealed (a JWS token, agent/trust/seal.py), which Home
Assistant cannot open; and measurements come every control period (1 s), more than a home dashboard's recorder wants.
So every `every_s` the agent publishes one small retained JSON per asset and one for the VPP, unsigned (a dashboard
cannot check a signature anyway; the broker's ACL lets only this site's agent write them, deploy/mosquitto.acl).

Discovery topics are `<discovery_prefix>/sensor/<site>/<object>/config` with node_id = site id, the form the shipped
ACL grants a site's agent and no one else. They are retained, sent again on every (re)connect to the broker and
whenever Home Assistant announces itself on `<discovery_prefix>/status` (its birth message after a restart).
Each sensor has `expire_after`, so a crashed agent's values turn "unavailable" in Home Assistant by themselves; a
clean stop says `offline` on the availability topic at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.fleet import AssetState, Envelope, Fleet
from agent.model import AssetKind, DeviceStatus
from agent.ports import Bus

log = structlog.get_logger("agent.homeassistant")

ONLINE, OFFLINE = "online", "offline"
# what the status sensor can say: the device's own states, plus the agent's view when it has no reading
STATUSES = [s.name.lower() for s in DeviceStatus] + ["unavailable", "waiting"]
OBJECT_ID = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Sensor:
    """One Home Assistant sensor: the key it reads from its state JSON and how Home Assistant should show it."""

    key: str
    name: str
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = "measurement"
    options: tuple[str, ...] = ()


POWER = Sensor("power_w", "Power", "W", "power")
SETPOINT = Sensor("setpoint_w", "Setpoint", "W", "power")
SOC = Sensor("soc_pct", "State of charge", "%", "battery")
STATUS = Sensor("status", "Status", None, "enum", None, tuple(STATUSES))
ENVELOPE_SENSORS = (
    Sensor("site_meter_w", "Site meter", "W", "power"),
    Sensor("power_w", "Assets power", "W", "power"),
    Sensor("absorb_w", "Can absorb", "W", "power"),
    Sensor("deliver_w", "Can deliver", "W", "power"),
    Sensor("absorb_for_s", "Can absorb for", "s", "duration"),
    Sensor("deliver_for_s", "Can deliver for", "s", "duration"),
    Sensor("stored_wh", "Stored energy", "Wh", "energy_storage"),
    Sensor("ev_energy_needed_wh", "EV energy needed", "Wh", "energy_storage"),
    Sensor("assets_available", "Assets available", None, None),
)


def sensors_of(kind: AssetKind) -> tuple[Sensor, ...]:
    """Meters have power and a status; what stores energy also has SoC and takes setpoints."""
    if kind is AssetKind.METER:
        return (POWER, STATUS)
    return (POWER, SETPOINT, SOC, STATUS)


def _model(state: AssetState) -> str:
    """What Home Assistant shows as the device's model: the kind, and the map or protocol it is read through."""
    through = state.config.map or state.config.transport
    return f"{state.kind.value} ({through})"


def object_id(text: str) -> str:
    """An id Home Assistant accepts in a discovery topic and an entity id: letters, digits, `_`, `-`."""
    return OBJECT_ID.sub("_", text).strip("_") or "x"


def asset_state(state: AssetState, setpoint_w: float | None) -> dict[str, Any]:
    """The plain state JSON of one asset: W, % (Home Assistant's battery unit), and a status word."""
    m = state.measurement
    if not state.available:
        status = "unavailable"
    elif m is None:
        status = "waiting"
    else:
        status = m.status.name.lower()
    soc = None if m is None or m.soc is None else round(m.soc * 100, 1)
    return {
        "power_w": None if m is None else round(m.power_w, 1),
        "setpoint_w": None if setpoint_w is None else round(setpoint_w, 1),
        "soc_pct": soc,
        "status": status,
    }


def envelope_state(envelope: Envelope, site_meter_w: float | None) -> dict[str, Any]:
    """The VPP's figures; a duration that is unbounded (no power) is sent as null: Home Assistant shows unknown."""

    def finite(value: float) -> float | None:
        return round(value, 1) if math.isfinite(value) else None

    return {
        "site_meter_w": None if site_meter_w is None else round(site_meter_w, 1),
        "power_w": finite(envelope.power_w),
        "absorb_w": finite(envelope.absorb_w),
        "deliver_w": finite(envelope.deliver_w),
        "absorb_for_s": finite(envelope.absorb_for_s),
        "deliver_for_s": finite(envelope.deliver_for_s),
        "stored_wh": finite(envelope.stored_wh),
        "ev_energy_needed_wh": finite(envelope.ev_energy_needed_wh),
        "assets_available": envelope.assets_available,
    }


class HomeAssistant:
    """Announces the fleet to Home Assistant and keeps the plain state topics fresh."""

    def __init__(
        self,
        bus: Bus,
        prefix: str,
        site_id: str,
        discovery_prefix: str,
        every_s: float,
        connections: Callable[[], int],
        version: str,
    ) -> None:
        self.bus = bus
        self.prefix = prefix
        self.site = object_id(site_id)
        self.discovery_prefix = discovery_prefix
        self.every_s = every_s
        self.connections = connections  # the link's connect count: a new connection means announce again
        self.version = version
        self.availability_topic = f"{prefix}/ha/availability"
        self.envelope_topic = f"{prefix}/ha/envelope"
        self._announced_on: int | None = None
        self._wanted = asyncio.Event()  # set by Home Assistant's birth message: announce at the next turn
        self.announcements = 0

    def asset_topic(self, asset_id: str) -> str:
        return f"{self.prefix}/ha/assets/{asset_id}"

    def config_topic(self, obj: str) -> str:
        return f"{self.discovery_prefix}/sensor/{self.site}/{obj}/config"

    def discovery(self, fleet: Fleet) -> list[tuple[str, dict[str, Any]]]:
        """Every (config topic, config payload): a device per asset, one for the VPP that they sit behind."""
        vpp_device = {
            "identifiers": [f"vpp_agent_{self.site}"],
            "name": f"VPP {self.site}",
            "manufacturer": "vpp-agent",
            "model": "virtual power plant",
            "sw_version": self.version,
        }
        messages = [
            self._config(f"vpp_{sensor.key}", sensor, self.envelope_topic, vpp_device) for sensor in ENVELOPE_SENSORS
        ]
        for state in fleet.assets.values():
            device = {
                "identifiers": [f"vpp_agent_{self.site}_{object_id(state.id)}"],
                "name": state.id,
                "manufacturer": "vpp-agent",
                "model": _model(state),
                "via_device": f"vpp_agent_{self.site}",
            }
            topic = self.asset_topic(state.id)
            for sensor in sensors_of(state.kind):
                messages.append(self._config(f"{object_id(state.id)}_{sensor.key}", sensor, topic, device))
        return messages

    def _config(self, obj: str, sensor: Sensor, state_topic: str, device: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {
            "name": sensor.name,
            "unique_id": f"vpp_agent_{self.site}_{obj}",
            "object_id": f"vpp_{self.site}_{obj}",
            "state_topic": state_topic,
            "value_template": f"{{{{ value_json.{sensor.key} }}}}",
            "availability_topic": self.availability_topic,
            "expire_after": math.ceil(3 * self.every_s + 10),
            "device": device,
        }
        if sensor.unit is not None:
            payload["unit_of_measurement"] = sensor.unit
        if sensor.device_class is not None:
            payload["device_class"] = sensor.device_class
        if sensor.state_class is not None:
            payload["state_class"] = sensor.state_class
        if sensor.options:
            payload["options"] = list(sensor.options)
        return self.config_topic(obj), payload

    def on_home_assistant_status(self, _topic: str, payload: bytes) -> None:
        """Home Assistant's birth (`online`) after its restart: it forgot non-retained state, announce again."""
        if payload.strip() == ONLINE.encode():
            self._wanted.set()

    async def announce(self, fleet: Fleet) -> None:
        messages = self.discovery(fleet)
        for topic, payload in messages:
            await self.bus.publish(topic, json.dumps(payload), qos=1, retain=True)
        await self.bus.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        self.announcements += 1
        log.info("homeassistant.announced", entities=len(messages), site=self.site)

    async def publish_states(self, fleet: Fleet, setpoints: dict[str, float], site_meter_w: float | None) -> None:
        for state in fleet.assets.values():
            body = json.dumps(asset_state(state, setpoints.get(state.id)))
            await self.bus.publish(self.asset_topic(state.id), body, qos=0, retain=True, buffer=False)
        body = json.dumps(envelope_state(fleet.envelope(), site_meter_w))
        await self.bus.publish(self.envelope_topic, body, qos=0, retain=True, buffer=False)

    async def run(
        self,
        fleet: Fleet,
        setpoints: Callable[[], dict[str, float]],
        site_meter_w: Callable[[], float | None],
        stop: asyncio.Event,
    ) -> None:
        """Until `stop`: announce on every new connection and Home Assistant birth, states every `every_s`."""
        subscribed = f"{self.discovery_prefix}/status"
        self.bus.subscribe(subscribed, self.on_home_assistant_status, qos=1)
        while not stop.is_set():
            if self.bus.connected:
                count = self.connections()
                if self._announced_on != count or self._wanted.is_set():
                    self._wanted.clear()
                    await self.announce(fleet)
                    self._announced_on = count
                await self.publish_states(fleet, setpoints(), site_meter_w())
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wanted.wait())]
            try:
                await asyncio.wait(waits, timeout=self.every_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def offline(self) -> None:
        """A clean stop: Home Assistant greys the entities out at once instead of after `expire_after`."""
        if self.bus.connected:
            await asyncio.wait_for(self.bus.publish(self.availability_topic, OFFLINE, qos=1, retain=True), 1.0)
