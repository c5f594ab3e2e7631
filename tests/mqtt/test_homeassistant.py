"""Home Assistant MQTT discovery (agent/homeassistant.py) on a real Mosquitto, read the way Home Assistant reads it.

What Home Assistant requires of a discovery message is taken from its documentation, not from our code: the topic
`<discovery_prefix>/<component>/[<node_id>/]<object_id>/config` with ids of `[a-zA-Z0-9_-]`, a `state_topic`, and
for a sensor the units its device class allows (Home Assistant's sensor docs: power W/kW, battery %, energy_storage
Wh/kWh, duration s/min/h; an enum sensor lists `options` and has neither a unit nor a state class). Each
`value_template` is resolved against the state JSON the agent publishes, and the values are compared with the
simulated devices' own physics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from brokerkit import Broker
from sitekit import eventually
from test_agent_mqtt import PREFIX, peer, running_agent

from agent.config import ConfigError, parse_config

HA = "\n[homeassistant]\nenabled = true\nevery_s = 1.0\n"
TOPIC = re.compile(r"^homeassistant/sensor/(?P<node>[A-Za-z0-9_-]+)/(?P<object>[A-Za-z0-9_-]+)/config$")
UNITS = {"power": {"W", "kW"}, "battery": {"%"}, "energy_storage": {"Wh", "kWh"}, "duration": {"s", "min", "h"}}
TEMPLATE = re.compile(r"^\{\{ value_json\.(?P<key>[a-z_]+) \}\}$")


@contextlib.asynccontextmanager
async def watching(client: aiomqtt.Client) -> AsyncIterator[dict[str, bytes]]:
    """The last payload per topic the client has received, kept up to date while the block runs."""
    seen: dict[str, bytes] = {}

    async def read() -> None:
        async for message in client.messages:
            seen[message.topic.value] = bytes(message.payload)

    reader = asyncio.create_task(read())
    try:
        yield seen
    finally:
        reader.cancel()


def configs(seen: dict[str, bytes]) -> dict[str, dict]:
    return {topic: json.loads(payload) for topic, payload in seen.items() if topic.startswith("homeassistant/")}


def value(config: dict, seen: dict[str, bytes]) -> object:
    key = TEMPLATE.match(config["value_template"])["key"]
    return json.loads(seen[config["state_topic"]])[key]


async def test_discovery_is_what_home_assistant_accepts_and_values_follow_the_devices(
    broker: Broker, tmp_path: Path
) -> None:
    async with (
        peer(broker, "homeassistant/#", f"{PREFIX}/ha/#") as ha,
        watching(ha) as seen,
        running_agent(broker, tmp_path, mqtt_extra=HA) as app,
    ):
        # the battery has 4 sensors, the meter 2, the VPP 9; each points at a state topic that has been published
        def complete() -> bool:
            found = configs(seen)
            return len(found) == 15 and all(c["state_topic"] in seen for c in found.values())

        await eventually(complete, timeout_s=30, what="15 discovery configs and their states")
        found = configs(seen)
        assert len({c["unique_id"] for c in found.values()}) == 15
        for topic, config in found.items():
            match = TOPIC.match(topic)
            assert match, topic
            assert match["node"] == "test"  # the last level of topic_prefix "vpp/test": the ACL's site id
            assert config["state_topic"].startswith(f"{PREFIX}/ha/")
            assert config["availability_topic"] == f"{PREFIX}/ha/availability"
            assert config["expire_after"] >= 3  # values of a crashed agent go stale by themselves
            device_class = config.get("device_class")
            if device_class == "enum":
                assert "unit_of_measurement" not in config and "state_class" not in config
                assert "unavailable" in config["options"]
            elif device_class is not None:
                assert config["unit_of_measurement"] in UNITS[device_class], config
            assert TEMPLATE.match(config["value_template"]), config["value_template"]
        by_name = {(c["device"]["name"], c["name"]): c for c in found.values()}
        assert by_name[("bess", "State of charge")]["device_class"] == "battery"
        vpp = by_name[("VPP test", "Can absorb")]["device"]["identifiers"][0]
        assert by_name[("bess", "Power")]["device"]["via_device"] == vpp
        assert seen[f"{PREFIX}/ha/availability"] == b"online"

        # the values are the devices': SoC in percent of what the pack reports, a status word HA was told of
        battery = app.loop.fleet.assets["bess"]

        def soc_matches() -> bool:
            soc = value(by_name[("bess", "State of charge")], seen)
            m = battery.measurement
            return m is not None and m.soc is not None and soc is not None and abs(soc - m.soc * 100) < 1.0

        await eventually(soc_matches, timeout_s=30, what="SoC in Home Assistant's state = the battery's")
        status = by_name[("bess", "Status")]
        assert value(status, seen) in status["options"]
        assert isinstance(value(by_name[("meter", "Power")], seen), float)
        assert isinstance(value(by_name[("VPP test", "Stored energy")], seen), float)
    # a clean stop greys the entities out at once
    async with peer(broker, f"{PREFIX}/ha/availability") as late, watching(late) as after:
        await eventually(lambda: f"{PREFIX}/ha/availability" in after, what="retained availability")
        assert after[f"{PREFIX}/ha/availability"] == b"offline"


async def test_home_assistant_restart_gets_the_entities_again(broker: Broker, tmp_path: Path) -> None:
    async with running_agent(broker, tmp_path, mqtt_extra=HA) as app:
        await eventually(lambda: app.homeassistant is not None and app.homeassistant.announcements == 1, timeout_s=30)
        async with peer(broker, "homeassistant/sensor/test/+/config") as ha, watching(ha) as seen:
            await eventually(lambda: len(seen) == 15, what="retained configs")
            seen.clear()
            # Home Assistant's birth message, as it sends it after a restart (not retained)
            await ha.publish("homeassistant/status", b"online", qos=1)
            await eventually(lambda: len(seen) == 15, timeout_s=30, what="configs announced again")
        assert app.homeassistant.announcements == 2


def test_home_assistant_needs_mqtt() -> None:
    with pytest.raises(ConfigError, match=r"homeassistant\.enabled needs mqtt\.enabled"):
        parse_config("[homeassistant]\nenabled = true\n")
