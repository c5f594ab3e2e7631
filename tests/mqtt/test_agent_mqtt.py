"""The agent on a real Mosquitto: telemetry out, signals in with acks, outages, TLS and passwords."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tomllib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiomqtt
import pytest
from brokerkit import Broker, running_broker
from sitekit import eventually, free_port_block

from agent.app import AgentApp
from agent.config import parse_config
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

PREFIX = "vpp/test"
SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
lease_timeout_s = 1.0
state_file = "{store}"
[site]
meter = "meter"
[control]
mode = "site_target"  # site_target signals steer the rule controller
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker}
client_id = "agent-under-test"
topic_prefix = "vpp/test"
max_payload_bytes = 4096
{mqtt_extra}
[[assets]]
id = "bess"
map = "vppsim_battery"
port = {port}
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {port}
unit_id = 2
[simulation]
base_load_w = 3000.0
[[simulation.devices]]
id = "bess"
model = "vppsim_battery"
port = {port}
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
unit_id = 2
"""


LAB = "\n[trust]\nrequire_signatures = false  # a lab: these tests send unsigned signals\n"


@contextlib.asynccontextmanager
async def running_agent(
    broker: Broker, tmp_path: Path, mqtt_extra: str = "", clock: Callable[[], datetime] | None = None
) -> AsyncIterator[AgentApp]:
    """The agent on its own simulated site; `clock` replaces the site's (a gateway whose clock is wrong)."""
    text = (
        SITE.replace("{port}", str(free_port_block(1)))
        .replace("{broker}", str(broker.port))
        .replace("{store}", str(tmp_path / "signals.sqlite3"))
        .replace("{mqtt_extra}", mqtt_extra)
    ) + ("" if "[trust]" in mqtt_extra else LAB)
    config = parse_config(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(config, clock or site.clock.now)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            yield app
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def peer(broker: Broker, *topics: str, **kwargs: object) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port, **kwargs) as client:  # type: ignore[arg-type]
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def next_json(client: aiomqtt.Client, topic_filter: str, within_s: float = 15) -> dict[str, object]:
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            if message.topic.matches(topic_filter):
                return json.loads(message.payload)
    raise AssertionError("message stream ended")


# tomorrow 08:00-16:00 JST: signals are judged against the agent's clock, so the window must lie ahead of it
_DAY = (datetime.now(UTC) + timedelta(days=1)).astimezone(timezone(timedelta(hours=9))).date().isoformat()
GOOD_DR = {
    "id": "dr-1",
    "start": f"{_DAY}T08:00:00+09:00",
    "end": f"{_DAY}T09:00:00+09:00",  # 20 kWh: within what the test fleet can absorb
    "requested_increase_w": 20000,
    "price_per_kwh": 3.5,
}


async def test_telemetry_topics_and_retained_status(broker: Broker, tmp_path: Path) -> None:
    async with running_agent(broker, tmp_path) as app:
        async with peer(broker, f"{PREFIX}/#") as client:
            seen: dict[str, dict[str, object]] = {}
            async with asyncio.timeout(20):
                async for message in client.messages:
                    seen[message.topic.value] = json.loads(message.payload)
                    wanted = ("agent/status", "assets/bess/measurement", "assets/meter/status", "envelope")
                    if all(f"{PREFIX}/{w}" in seen for w in wanted):
                        break
        assert seen[f"{PREFIX}/agent/status"]["state"] == "online"
        measurement = seen[f"{PREFIX}/assets/bess/measurement"]
        assert measurement["asset_id"] == "bess" and 0 <= measurement["soc"] <= 1
        assert seen[f"{PREFIX}/assets/meter/status"]["available"] is True
        assert seen[f"{PREFIX}/envelope"]["assets_total"] == 2
        assert app.link is not None and app.link.stats.published > 0
    # after a clean stop the retained status says so
    async with peer(broker, f"{PREFIX}/agent/status") as client:
        status = await next_json(client, f"{PREFIX}/agent/status")
        assert status["state"] == "offline" and status["reason"] == "shutdown"


BAD_PAYLOADS = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (json.dumps({**GOOD_DR, "requested_increase_w": "lots"}).encode(), "requested_increase_w"),
    (json.dumps({**GOOD_DR, "end": f"{_DAY}T07:00:00+09:00"}).encode(), "must be after start"),
    (f'{{"id": "x", "start": "{_DAY}T08:00:00+09:00", "end": "{_DAY}T09:00:00+09:00",'
     ' "requested_increase_w": NaN, "price_per_kwh": 1}'.encode(), "requested_increase_w"),
    (json.dumps({**GOOD_DR, "start": f"{_DAY}T08:00:00"}).encode(), "timezone"),
    (json.dumps({**GOOD_DR, "extra": 1}).encode(), "extra"),
    (json.dumps({**GOOD_DR, "padding": "x" * 5000}).encode(), "exceeds the limit of 4096"),
]  # fmt: skip


async def test_signals_are_validated_stored_and_acknowledged(broker: Broker, tmp_path: Path) -> None:
    async with running_agent(broker, tmp_path) as app:
        assert app.link is not None and app.ingest is not None
        await eventually(lambda: app.link.connected, what="agent connected")
        async with peer(broker, f"{PREFIX}/ack") as client:
            for payload, reason in BAD_PAYLOADS:
                await client.publish(f"{PREFIX}/signals/up_dr", payload, qos=1)
                ack = await next_json(client, f"{PREFIX}/ack")
                assert ack["status"] == "rejected" and reason in str(ack["reason"]), (payload[:60], ack)
            await client.publish(f"{PREFIX}/signals/up_dr", json.dumps(GOOD_DR), qos=1)
            ack = await next_json(client, f"{PREFIX}/ack")
            assert ack == {**ack, "status": "accepted", "signal_id": "dr-1", "kind": "up_dr"}
            await client.publish(f"{PREFIX}/signals/up_dr", json.dumps(GOOD_DR), qos=1)
            assert (await next_json(client, f"{PREFIX}/ack"))["status"] == "duplicate"
        assert app.ingest.counts["rejected"] == len(BAD_PAYLOADS)
        assert list(app.ingest.book["up_dr"]) == ["dr-1"]
        cycles = app.loop.cycles
        await eventually(lambda: app.loop.cycles > cycles + 2, what="control loop still cycling")
        assert app.loop.fleet.assets["bess"].available


async def test_broker_restart_loses_no_acknowledged_signal(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    with running_broker(tmp_path / "broker") as broker:
        acked: set[str] = set()
        async with running_agent(broker, tmp_path) as app:
            assert app.link is not None and app.ingest is not None
            await eventually(lambda: app.link.connected, what="agent connected")
            # the grid operator's side: a persistent session, QoS 1, re-sends what was not acknowledged
            async with peer(broker, f"{PREFIX}/ack", identifier="operator", clean_session=False) as client:
                for n in range(5):
                    await client.publish(f"{PREFIX}/signals/up_dr", json.dumps({**GOOD_DR, "id": f"a{n}"}), qos=1)
                while len(acked) < 5:
                    acked.add(str((await next_json(client, f"{PREFIX}/ack"))["signal_id"]))
            await broker.astop()
            await eventually(lambda: not app.link.connected, what="agent sees the broker go")
            await broker.astart()
            async with peer(broker, f"{PREFIX}/ack", identifier="operator", clean_session=False) as client:
                for n in range(5, 10):
                    await client.publish(f"{PREFIX}/signals/up_dr", json.dumps({**GOOD_DR, "id": f"a{n}"}), qos=1)
                while len(acked) < 10:
                    acked.add(str((await next_json(client, f"{PREFIX}/ack", within_s=30))["signal_id"]))
            assert acked == {f"a{n}" for n in range(10)}
            assert set(app.ingest.book["up_dr"]) == acked
        # and a restarted agent still has every acknowledged signal
        async with running_agent(broker, tmp_path) as again:
            assert again.ingest is not None and set(again.ingest.book["up_dr"]) == acked


async def test_telemetry_buffered_while_broker_is_away(broker: Broker, tmp_path: Path) -> None:
    async with running_agent(broker, tmp_path) as app:
        assert app.link is not None
        await eventually(lambda: app.link.connected, what="agent connected")
        await broker.astop()
        await eventually(lambda: app.link.buffered > 10, what="telemetry buffered during the outage")
        assert app.loop.fleet.assets["bess"].available  # local control goes on without the broker
        await broker.astart()
        await eventually(lambda: app.link.connected and app.link.buffered == 0, what="buffer flushed", timeout_s=30)
        assert app.link.stats.dropped == 0


async def test_mosquitto_sub_sees_documented_topics(broker: Broker, tmp_path: Path) -> None:
    async with running_agent(broker, tmp_path):
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-v", "-C", "6", "-W", "20",
            "-t", f"{PREFIX}/assets/+/measurement", "-t", f"{PREFIX}/envelope", "-t", f"{PREFIX}/agent/status",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
    lines = out.decode().splitlines()
    topics = {line.split(" ", 1)[0] for line in lines}
    assert f"{PREFIX}/agent/status" in topics and f"{PREFIX}/envelope" in topics
    assert topics & {f"{PREFIX}/assets/bess/measurement", f"{PREFIX}/assets/meter/measurement"}
    for line in lines:
        json.loads(line.split(" ", 1)[1])  # every payload is JSON


async def test_tls_and_password_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_broker(tmp_path, users={"agent": "s3cret-pw"}, tls=True) as broker:
        monkeypatch.setenv("VPP_TEST_MQTT_PASSWORD", "s3cret-pw")
        extra = f'username = "agent"\npassword_env = "VPP_TEST_MQTT_PASSWORD"\nca_file = "{broker.ca_file}"'
        async with running_agent(broker, tmp_path, extra) as app:
            assert app.link is not None
            await eventually(lambda: app.link.connected, what="agent connected over TLS with its password")
            proc = await asyncio.create_subprocess_exec(
                "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(broker.ca_file),
                "-u", "agent", "-P", "s3cret-pw", "-t", f"{PREFIX}/agent/status", "-C", "1", "-W", "10",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert json.loads(out)["state"] == "online"
        monkeypatch.setenv("VPP_TEST_MQTT_PASSWORD", "wrong")
        (tmp_path / "second").mkdir()
        async with running_agent(broker, tmp_path / "second", extra) as app:
            assert app.link is not None
            await eventually(lambda: app.link.stats.connect_failures > 0, what="refused")
            assert not app.link.connected
            assert "135" in str(app.link.stats.last_error) or "authori" in str(app.link.stats.last_error).lower()
            cycles = app.loop.cycles
            await eventually(lambda: app.loop.cycles > cycles + 2, what="control goes on without the broker")


def test_missing_password_variable_is_a_config_error(tmp_path: Path) -> None:
    os.environ.pop("VPP_NOT_SET", None)
    config = parse_config('[mqtt]\nenabled = true\npassword_env = "VPP_NOT_SET"\n[trust]\nrequire_signatures = false\n')
    with pytest.raises(ValueError, match="environment variable VPP_NOT_SET is not set"):
        config.mqtt.password()


async def test_site_target_signal_moves_the_site(broker: Broker, tmp_path: Path) -> None:
    async with running_agent(broker, tmp_path) as app:
        assert app.link is not None
        await eventually(lambda: app.link.connected and app.loop.fleet.assets["meter"].available, what="running")
        async with peer(broker, f"{PREFIX}/ack") as client:
            await client.publish(f"{PREFIX}/signals/site_target", b'{"id": "t1", "site_target_w": 20000}', qos=1)
            assert (await next_json(client, f"{PREFIX}/ack"))["status"] == "accepted"
        assert app.loop.site_target_w == 20000
        await eventually(lambda: app.loop.last_setpoints["bess"].power_w > 10000, what="battery charging to the target")


MQTT_SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
lease_timeout_s = 3.0
state_file = "{store}"
[site]
meter = "meter"
[control]
mode = "site_target"  # the rule holds the meter at 0 W: a known setpoint to see over MQTT
site_target_w = 0.0
[mqtt]
enabled = true
port = {broker}
client_id = "agent-mqtt-devices"
topic_prefix = "vpp/test"
[trust]
require_signatures = false  # a lab: these tests send unsigned signals
[[assets]]
id = "bess"
map = "vppsim_battery_mqtt"
transport = "mqtt"
topic = "bridge/{id}"
[[assets]]
id = "meter"
map = "vppsim_dc_meter_mqtt"
transport = "mqtt"
topic = "bridge/{id}"
[simulation]
base_load_w = 12000.0
[simulation.mqtt]
port = {broker}
publish_period_s = 0.2
[[simulation.devices]]
id = "bess"
model = "vppsim_battery_mqtt"
transport = "mqtt"
topic = "bridge/bess"
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter_mqtt"
transport = "mqtt"
topic = "bridge/meter"
"""


async def test_agent_controls_an_mqtt_battery_end_to_end(broker: Broker, tmp_path: Path) -> None:
    text = MQTT_SITE.replace("{broker}", str(broker.port)).replace("{store}", str(tmp_path / "s.sqlite3"))
    config = parse_config(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(config, site.clock.now)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            bess, meter = site.devices["bess"], site.devices["meter"]
            # site target 0 W with 12 kW base load: the MQTT battery must discharge ~12 kW, seen at the MQTT meter
            await eventually(lambda: abs(meter.power_w) < 500 and bess.power_w < -10_000, what="steered over MQTT")
            assert bess.lease.timeout_s == 3.0  # the lease went over MQTT too
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        # the agent is gone: the battery's lease lapses and it returns to 0 W by itself
        await eventually(lambda: bess.power_w == 0.0, what="lease lapsed after the agent stopped")


async def test_will_announces_an_agent_that_died(broker: Broker, tmp_path: Path) -> None:
    """A killed agent sends nothing; the broker publishes its Will once the keepalive lapses."""
    port = free_port_block(1)
    text = (
        SITE.replace("{port}", str(port)).replace("{broker}", str(broker.port))
        .replace("{store}", str(tmp_path / "s.sqlite3")).replace("{mqtt_extra}", "keepalive_s = 5")
    ) + LAB  # fmt: skip
    config_path = tmp_path / "agent.toml"
    config_path.write_text(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])):
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with peer(broker, f"{PREFIX}/agent/status") as client:
                assert (await next_json(client, f"{PREFIX}/agent/status", within_s=30))["state"] == "online"
                agent.kill()  # no clean disconnect, no shutdown message
                status = await next_json(client, f"{PREFIX}/agent/status", within_s=30)
            assert status == {**status, "state": "offline", "reason": "connection lost"}
        finally:
            if agent.returncode is None:
                agent.kill()
            await agent.wait()
