"""Old MQTT telemetry is never a fresh reading, against a real Mosquitto.

A bridge that publishes device state with the retain flag leaves the last state on the broker; the broker hands it
to every new subscription, however long ago the device died. The driver judges freshness by arrival time, so that
replay must not count: at the agent's start, nor after a reconnect (a broker restart here).
"""

from __future__ import annotations

import asyncio
import json

import aiomqtt
from brokerkit import HOST, Broker
from sitekit import eventually
from test_mqtt_devices import read_error

from drivers.mqtt_driver import MqttDriver
from drivers.mqtt_link import LinkSettings, MqttLink
from drivers.mqtt_map import load_mqtt_map

TOPIC = "devices/bess/state"


class Monotonic:
    """The driver's clock for telemetry age, moved by the test."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def publish(broker: Broker, p_kw: float, retain: bool) -> None:
    """Publish one telemetry message as the device's bridge would, and disconnect."""
    async with aiomqtt.Client(HOST, broker.port, identifier=f"bridge-{p_kw}") as client:
        payload = json.dumps({"status": 2, "fault": 0, "p_kw": p_kw, "bms": {"soc_pct": 50.0}})
        await client.publish(TOPIC, payload, qos=1, retain=retain)


async def test_retained_telemetry_is_never_taken_as_a_fresh_reading(broker: Broker) -> None:
    await publish(broker, 5.0, retain=True)  # the device's last words before it died
    clock = Monotonic()
    link = MqttLink(LinkSettings(HOST, broker.port, client_id="agent-stale", reconnect_max_s=0.5))
    driver = MqttDriver("bess", load_mqtt_map("vppsim_battery_mqtt"), link, "devices/bess", monotonic=clock)
    stop = asyncio.Event()
    runner = asyncio.create_task(link.run(stop))
    try:
        await eventually(lambda: link.stats.received >= 1, what="the broker replayed the retained state")
        assert "no telemetry yet" in await read_error(driver)  # not the dead device's state, as if just sent

        # a live device whose bridge retains every message: the broker forwards those to us as live
        await publish(broker, -3.0, retain=True)

        async def live() -> bool:
            return await read_error(driver) == "" and (await driver.read()).power_w == 3000.0

        await eventually(live, what="live telemetry read")

        clock.t += driver.map.stale_after_s + 1  # then the device dies
        assert "telemetry stale" in await read_error(driver)
        connects = link.stats.connects
        received = link.stats.received
        await broker.astop()
        await broker.astart()
        await eventually(
            lambda: link.stats.connects > connects and link.stats.received > received,
            what="reconnected, and the broker replayed the retained state",
        )
        assert "telemetry stale" in await read_error(driver)  # still stale: the replay is not a new message
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
