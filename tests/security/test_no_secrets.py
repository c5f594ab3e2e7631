"""No secret in a run's output: the shipped CLI, with MQTT to the shipped broker over TLS, logs at debug level
(paho's packet log included) while it connects, publishes and answers a signal, and none of its output holds the
broker password (from the environment or from a file) or any line of its client key.

The same run shows that deploy/mosquitto.acl fits what the real agent does: Mosquitto denies nothing it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest
from tlskit import HOST, ROOT, Pki, ShippedBroker, eventually, shipped_config_on_free_ports

AGENT_ID = "vpp-agent-site1"


def agent_config(tmp_path: Path, broker: ShippedBroker, pki: Pki, password_line: str) -> Path:
    """The shipped config.toml (devices served by vpp-sim on free ports) with [mqtt] as a site1 deployment sets it:
    TLS with a client certificate, user site1, the password from `password_line`; and debug logging."""
    path = shipped_config_on_free_ports(tmp_path)
    issued = pki.client("site1")
    mqtt = (
        f'[mqtt]\nenabled = true\nhost = "{HOST}"\nport = {broker.tls_port}\nclient_id = "{AGENT_ID}"\n'
        f'username = "site1"\n{password_line}\nca_file = "{pki.ca_file}"\ncert_file = "{issued.cert}"\n'
        f'key_file = "{issued.key}"\ntopic_prefix = "vpp/site1"\n\n'
        "[trust]\nrequire_signatures = false  # a lab: the test sends an unsigned signal\n\n"
    )
    text, count = re.subn(r"^\[mqtt\]\n(?:[^\[\n].*\n|\n)*", mqtt, path.read_text(), flags=re.MULTILINE)
    assert count == 1, "config.toml has no [mqtt] table to replace"
    text, count = re.subn(r'^log_level = "info"', 'log_level = "debug"', text, flags=re.MULTILINE)
    assert count == 1, "config.toml has no log_level line to replace"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def process(*args: str, env: dict[str, str]) -> AsyncIterator[tuple[asyncio.subprocess.Process, bytearray]]:
    """A child whose stdout and stderr are read all along (a debug log would fill a pipe and stall it); on exit of
    the block it gets SIGTERM and must stop cleanly."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env
    )
    output = bytearray()

    async def drain(stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            output.extend(chunk)

    readers = [asyncio.create_task(drain(proc.stdout)), asyncio.create_task(drain(proc.stderr))]
    try:
        yield proc, output
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
            await asyncio.gather(*readers)


def cli(name: str, module: str) -> list[str]:
    """The installed console script (what a user runs), else the module it points at."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


@pytest.mark.parametrize("source", ["password_env", "password_file"])
async def test_a_run_logs_no_secret(tmp_path: Path, source: str) -> None:
    password = f"S3cret-{uuid.uuid4().hex}"
    users = {"site1": password, "market-desk": f"desk-{uuid.uuid4().hex}", "telemetry-reader": uuid.uuid4().hex}
    pki = Pki(tmp_path / "pki")
    broker = ShippedBroker(tmp_path / "broker", users=users, pki=pki)
    broker.directory.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPP_")}
    if source == "password_env":
        env["VPP_TEST_MQTT_PASSWORD"] = password
        line = 'password_env = "VPP_TEST_MQTT_PASSWORD"'
    else:
        secret_file = tmp_path / "mqtt-password"
        secret_file.write_text(password + "\n")
        secret_file.chmod(0o600)
        line = f'password_file = "{secret_file}"'
    config = agent_config(tmp_path, broker, pki, line)
    key_lines = [ln for ln in pki.client("site1").key.read_text().splitlines() if ln and not ln.startswith("-----")]
    secrets = [password, *key_lines]

    def tls(user: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=pki.ca_file)
        issued = pki.client(user)
        context.load_cert_chain(issued.cert, issued.key)
        return context

    def peer(user: str) -> aiomqtt.Client:
        return aiomqtt.Client(HOST, broker.tls_port, username=user, password=users[user], tls_context=tls(user),
                              identifier=f"{user}-{uuid.uuid4().hex[:8]}", timeout=15)  # fmt: skip

    broker.start()
    try:
        async with (
            process(*cli("vpp-sim", "sim_devices.cli"), "--config", str(config), env=env) as (sim, sim_output),
            peer("telemetry-reader") as reader,
            peer("market-desk") as desk,
        ):
            await reader.subscribe("vpp/site1/#", qos=1)
            await desk.subscribe("vpp/site1/ack", qos=1)
            # the sim serves before the agent starts (it would only retry)
            await eventually(lambda: b"meter-pv" in sim_output or sim.returncode is not None, 60, "vpp-sim serving")
            assert sim.returncode is None, sim_output.decode(errors="replace")
            agent_args = [*cli("vpp-agent", "agent.cli"), "run", "--config", str(config)]
            async with process(*agent_args, env=env) as (agent, output):
                seen: set[str] = set()
                async with asyncio.timeout(90):  # bounds a failing run only
                    async for message in reader.messages:
                        topic = message.topic.value
                        if topic == "vpp/site1/agent/status" and b'"online"' in bytes(message.payload):  # type: ignore[arg-type]
                            seen.add("online")
                        elif topic == "vpp/site1/envelope":
                            seen.add("envelope")
                        elif topic.endswith("/measurement"):
                            seen.add("measurement")
                        if seen == {"online", "envelope", "measurement"}:
                            break
                signal_id = f"prices-{uuid.uuid4().hex[:8]}"
                prices = {"id": signal_id, "start": datetime.now(UTC).isoformat(), "prices_per_kwh": [10.0, 12.5]}
                await desk.publish("vpp/site1/signals/prices", json.dumps(prices), qos=1)
                async with asyncio.timeout(60):
                    async for message in desk.messages:
                        if json.loads(bytes(message.payload)).get("signal_id") == signal_id:  # type: ignore[arg-type]
                            break  # answered (accepted or refused): the signal path ran end to end
                assert agent.returncode is None, output.decode(errors="replace")
            assert agent.returncode == 0, output.decode(errors="replace")[-3000:]
    finally:
        broker.stop()

    text = output.decode(errors="replace")
    assert "mqtt.connected" in text and "agent.stop" in text, text[-3000:]  # the log is there to be searched
    leaked = [s[:12] + "…" for s in secrets if s in text]
    assert not leaked, f"secrets in the agent's output: {leaked}"
    denied = [ln for ln in broker.log_text().splitlines() if "Denied" in ln and AGENT_ID in ln]
    assert not denied, f"deploy/mosquitto.acl refuses what the agent publishes: {denied[:5]}"
