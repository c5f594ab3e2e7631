"""MqttLink against a real Mosquitto: buffering while away, re-subscribe and flush after a broker restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
from brokerkit import Broker, running_broker
from sitekit import eventually

from drivers.mqtt_link import LinkSettings, MqttLink, Retained


async def test_publish_subscribe_and_birth(broker: Broker) -> None:
    got: list[tuple[str, bytes]] = []
    link = MqttLink(LinkSettings("127.0.0.1", broker.port, client_id="t1", birth=Retained("t/status", b"online")))
    link.subscribe("t/in/#", lambda topic, payload: got.append((topic, payload)))
    stop = asyncio.Event()
    runner = asyncio.create_task(link.run(stop))
    await asyncio.wait_for(link.wait_connected(), 10)
    async with aiomqtt.Client("127.0.0.1", broker.port) as peer:
        await peer.subscribe("t/status")
        status = await asyncio.wait_for(anext(peer.messages), 10)
        assert status.payload == b"online" and status.retain
        await peer.publish("t/in/x", b"hello", qos=1)
        await eventually(lambda: got == [("t/in/x", b"hello")], what="message delivered to handler")
    stop.set()
    await asyncio.wait_for(runner, 10)


async def test_buffer_is_bounded_and_flushed_in_order_after_broker_restart(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker:
        # a watcher with a persistent session: the broker queues QoS 1 messages for it while it is away
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="watcher", clean_session=False) as watcher:
            await watcher.subscribe("t/buf", qos=1)
        link = MqttLink(LinkSettings("127.0.0.1", broker.port, client_id="t2", buffer_limit=5, reconnect_max_s=0.2))
        stop = asyncio.Event()
        runner = asyncio.create_task(link.run(stop))
        await asyncio.wait_for(link.wait_connected(), 10)
        await broker.astop()
        await eventually(lambda: not link.connected, what="link notices the broker is gone")
        for n in range(8):
            assert await link.publish("t/buf", str(n), qos=1) is False
        assert link.buffered == 5 and link.stats.dropped == 3
        await broker.astart()
        await eventually(lambda: link.connected and link.buffered == 0, what="buffer flushed after reconnect")
        received: list[bytes] = []
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="watcher", clean_session=False) as watcher:
            async for message in watcher.messages:
                received.append(message.payload)
                if len(received) == 5:
                    break
        assert received == [b"3", b"4", b"5", b"6", b"7"]  # the 5 newest, in order; the 3 oldest dropped
        stop.set()
        await asyncio.wait_for(runner, 10)
