"""kill -9 of the agent (and of the broker) while it works: nothing it acknowledged is lost, an activation resumes
unless its product says it is too old, and the devices fall back to 0 W by their leases in the meantime.

The agent is the shipped CLI (`vpp-agent run` on the shipped config.toml, dispatch mode) in its own process; the
devices are the simulator in this process, so every check is made on the devices' side.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
from brokerkit import Broker
from faultkit import PREFIX, controllable, simulated_site, site_config, state_file, stored_signal_ids
from sitekit import agent_process, eventually


def up_dr(signal_id: str, now: datetime) -> bytes:
    return json.dumps({"id": signal_id, "start": (now + timedelta(minutes=5)).isoformat(),
                       "end": (now + timedelta(minutes=15)).isoformat(), "requested_increase_w": 1.0,
                       "price_per_kwh": 1.0, "baseline_method": "pre_event_average"}).encode()  # fmt: skip


async def collect_acks(client: aiomqtt.Client, into: dict[str, list[str]]) -> None:
    async for message in client.messages:
        ack = json.loads(message.payload)
        into.setdefault(str(ack["signal_id"]), []).append(str(ack["status"]))


async def test_kill9_mid_stream_loses_no_acknowledged_signal(tmp_path: Path, broker: Broker) -> None:
    config = site_config(tmp_path, broker)
    count = 300
    acks: dict[str, list[str]] = {}
    async with (
        simulated_site(config),
        aiomqtt.Client("127.0.0.1", broker.port, identifier="operator", clean_session=False) as operator,
    ):
        await operator.subscribe(f"{PREFIX}/ack", qos=1)
        reader = asyncio.create_task(collect_acks(operator, acks))
        async with agent_process(config) as agent:
            await agent.wait_logged("mqtt.connected")
            now = datetime.now(UTC)
            await asyncio.gather(*(
                operator.publish(f"{PREFIX}/signals/up_dr", up_dr(f"s{n}", now), qos=1) for n in range(count)
            ))  # fmt: skip
            await eventually(lambda: len(acks) >= 40, 120, "some signals acknowledged")
            await agent.kill9()
        acked_before_kill = {i for i, statuses in acks.items() if "accepted" in statuses}
        assert 40 <= len(acked_before_kill) < count  # killed mid-stream
        async with agent_process(config) as agent:  # the broker redelivers what the dead agent had not finished
            await eventually(lambda: len(acks) == count, 180, "every signal answered after the restart")
            await agent.stop()
        reader.cancel()
    stored = stored_signal_ids(state_file(config), "up_dr")
    assert acked_before_kill <= stored  # 0 acknowledged signals lost
    assert all(statuses[-1] in ("accepted", "duplicate") for statuses in acks.values())
    assert stored == set(acks)


async def ack_of(client: aiomqtt.Client, signal_id: str) -> str:
    async with asyncio.timeout(60):
        async for message in client.messages:
            ack = json.loads(message.payload)
            if ack.get("signal_id") == signal_id:
                return str(ack["status"])
    raise AssertionError("no ack")


async def test_activation_resumes_after_kill9_unless_older_than_its_product_allows(
    tmp_path: Path, broker: Broker
) -> None:
    config = site_config(tmp_path, broker)
    async with (
        simulated_site(config) as site,
        aiomqtt.Client("127.0.0.1", broker.port, identifier="operator") as operator,
    ):
        await operator.subscribe(f"{PREFIX}/ack", qos=1)
        async with agent_process(config) as agent:
            await agent.wait_logged("mqtt.connected")
            start = datetime.now(UTC)
            award = {"id": "fcr", "product": "FCR", "block_start": start.isoformat(),
                     "block_end": (start + timedelta(hours=1)).isoformat(), "up_w": 5000, "down_w": 5000}  # fmt: skip
            await operator.publish(f"{PREFIX}/signals/as_award", json.dumps(award), qos=1)
            assert await ack_of(operator, "fcr") == "accepted"
            await agent.wait_logged("event.active", event_id="fcr")
            at = datetime.now(UTC)
            activation = {"id": "x1", "award_id": "fcr", "at": at.isoformat(), "value": 0.8}
            await operator.publish(f"{PREFIX}/signals/as_activation", json.dumps(activation), qos=1)
            assert await ack_of(operator, "x1") == "accepted"  # on disk before this ack
            await agent.kill9()
        written = {k: d.writes_total for k, d in controllable(site).items()}
        async with agent_process(config) as agent:  # FCR allows 10 s: a prompt restart resumes the activation
            resumed = await agent.wait_logged("activation.resumed", award_id="fcr")
            assert resumed["value"] == 0.8
            await eventually(lambda: any(d.writes_total > written[k] for k, d in controllable(site).items()),
                             30, "the restarted agent writes again")  # fmt: skip
            await agent.kill9()
        await eventually(lambda: datetime.now(UTC) > at + timedelta(seconds=11), 30, "the activation is stale")
        async with agent_process(config) as agent:
            expired = await agent.wait_logged("activation.expired", award_id="fcr")
            assert expired["allowed_s"] == 10
            assert not agent.logged("activation.resumed")


async def test_devices_fall_back_to_zero_by_their_leases_after_kill9(tmp_path: Path) -> None:
    config = site_config(tmp_path, None, mode="site_target")
    async with simulated_site(config) as site, agent_process(config) as agent:
        devices = controllable(site)
        await eventually(lambda: any(d.lease.setpoint_w != 0 for d in devices.values()), 60, "agent steering")
        expiries = {k: d.lease.expiries for k, d in devices.items()}
        holding = [k for k, d in devices.items() if d.lease.setpoint_w != 0]
        await agent.kill9()
        # lease_timeout_s = 10 s of device time; nobody refreshes them now
        await eventually(lambda: all(devices[k].lease.setpoint_w == 0 for k in holding), 30, "leases lapsed")
        assert all(devices[k].lease.expiries > expiries[k] for k in holding)
