"""kill -9 of the broker while it holds signals queued for the agent: with the persistence of deploy/mosquitto.conf
the queue survives, except a message confirmed in the last instant before the kill (docs/mqtt.md). Mosquitto's
defaults lose the whole queue, which is why the file ships.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
from brokerkit import Broker
from faultkit import PREFIX, shipped_persistence

CONFIRMED = 600


async def queued_then_killed(broker: Broker) -> int:
    """Signals confirmed to the sender while the agent's session was away, then kill -9; returns how many the
    agent's session receives after the broker restarts."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="agent", clean_session=False) as agent:
        await agent.subscribe(f"{PREFIX}/signals/+", qos=1)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="operator") as operator:
        for n in range(CONFIRMED):  # each publish returns once the broker confirmed it (PUBACK)
            await operator.publish(f"{PREFIX}/signals/up_dr", json.dumps({"id": f"s{n}"}), qos=1)
    await asyncio.to_thread(broker.kill)
    await asyncio.to_thread(broker.start)
    received: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="agent", clean_session=False) as agent:
        await agent.subscribe(f"{PREFIX}/signals/+", qos=1)
        messages = aiter(agent.messages)
        while len(received) < CONFIRMED:
            try:  # the queue comes at once on reconnect: 5 s of silence after the last message means the rest is gone
                message = await asyncio.wait_for(anext(messages), 5)
            except TimeoutError:
                break
            received.add(json.loads(message.payload)["id"])
    return len(received)


async def test_shipped_broker_persistence_keeps_the_queue_through_kill9(broker: Broker) -> None:
    assert any("autosave_on_changes true" in line for line in shipped_persistence())
    assert await queued_then_killed(broker) >= CONFIRMED - 1


async def test_mosquitto_defaults_lose_the_queue_on_kill9(tmp_path: Path) -> None:
    """Why the file ships: the same run with only `persistence true` (autosave every 30 min)."""
    broker = Broker(tmp_path, persistence=["persistence true"])
    broker.start()
    try:
        assert await queued_then_killed(broker) < CONFIRMED - 1
    finally:
        broker.stop()
