"""The signed audit head on a real Mosquitto, kept by a reader with `mosquitto_sub -v` as docs/audit.md says, and
checked with the shipped `vpp-agent audit verify`: it passes on the agent's trail, and after a consistent rewrite of
the state file plain verify still passes while verify against the kept heads fails."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
from auditkit import rewrite
from brokerkit import Broker
from sitekit import ROOT, eventually, free_port_block
from test_agent_mqtt import PREFIX, SITE

from agent.app import AgentApp
from agent.audit.chain import Head
from agent.config import parse_config
from agent.store import Store
from agent.trust.commands import sign_command
from agent.trust.keys import Signer, new_private_key, write_private_key
from agent.trust.seal import open_sealed
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

HEAD_TOPIC = f"{PREFIX}/audit/head"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


def site_config(tmp_path: Path, broker: Broker, desk: Signer) -> Path:
    """A config file (the CLI reads it too) with the agent's own key and one trusted sender."""
    agent_key = tmp_path / "agent.pem"
    write_private_key(agent_key, new_private_key())
    text = (
        SITE.replace("{port}", str(free_port_block(1))).replace("{broker}", str(broker.port))
        .replace("{store}", str(tmp_path / "state.sqlite3")).replace("{mqtt_extra}", "")
        + f'[trust]\nrequire_signatures = true\nsite_id = "site-a"\nagent_key_file = "{agent_key}"\n'
        f'agent_kid = "agent"\naudit_head_every_s = 10\n'
        f'[[trust.keys]]\nkid = "desk"\npublic_key = "{desk.public_key}"\nkinds = ["prices"]\n'
    )  # fmt: skip
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def keeping_heads(broker: Broker, out: Path) -> AsyncIterator[None]:
    """A reader keeping every head, exactly as docs/audit.md tells one to."""
    with out.open("ab") as sink:
        reader = await asyncio.create_subprocess_exec(
            MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-v", "-t", HEAD_TOPIC, stdout=sink
        )
        try:
            yield
        finally:
            reader.terminate()
            await asyncio.wait_for(reader.wait(), 10)


def heads_in(text: str, public_key: str) -> list[Head]:
    """The heads in `mosquitto_sub -v` output, each checked against the agent's key and its topic."""
    lines = [line.rpartition(" ") for line in text.split("\n")[:-1] if line.strip()]  # complete lines only
    return [Head.from_body(open_sealed(token, public_key, topic).body) for topic, _, token in lines]


async def audit_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "audit", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_signed_head_catches_a_consistent_rewrite(broker: Broker, tmp_path: Path) -> None:
    desk = Signer("desk", new_private_key())
    config_path = site_config(tmp_path, broker, desk)
    text = config_path.read_text()
    config = parse_config(text)
    assert config.trust.agent_key_file is not None
    heads_file = tmp_path / "heads.txt"
    async with keeping_heads(broker, heads_file), \
            SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:  # fmt: skip
        app = AgentApp(config, site.clock.now)
        assert app.sealer is not None
        public = app.sealer.signer.public_key
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            await eventually(lambda: heads_file.exists() and len(heads_in(heads_file.read_text(), public)) >= 1,
                             what="a first head kept by the reader")  # fmt: skip
            now = site.clock.now()
            prices = {"id": "p1", "start": now.isoformat(), "interval_s": 1800, "prices_per_kwh": [10.0] * 4}
            token = sign_command(desk, "site-a", "prices", prices, now.timestamp(), 300, seq=1)
            async with aiomqtt.Client("127.0.0.1", broker.port) as sender:
                await sender.subscribe(f"{PREFIX}/ack", qos=1)
                await sender.publish(f"{PREFIX}/signals/prices", token, qos=1)
                async with asyncio.timeout(15):
                    async for message in sender.messages:  # the ack is sealed by the agent as well
                        ack = open_sealed(bytes(message.payload), public, f"{PREFIX}/ack").body  # type: ignore[arg-type]
                        if ack.get("signal_id") == "p1":
                            break
            assert ack["status"] == "accepted"
            await eventually(lambda: any(r.kind == "command" for r in app.store.audit_rows()), what="command row")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        final = Store(config.agent.state_file).audit_head()
        assert final is not None
        # the last head goes out at the clean stop: retained, so the reader (and anyone subscribing later) has it
        await eventually(lambda: final in heads_in(heads_file.read_text(), public), what="the final head kept")
    assert heads_in(heads_file.read_text(), public)[-1] == final
    late = await asyncio.create_subprocess_exec(
        MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(broker.port), "-v", "-C", "1", "-W", "10", "-t", HEAD_TOPIC,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    seen, _ = await asyncio.wait_for(late.communicate(), 20)
    assert heads_in(seen.decode(), public) == [final]

    code, out = await audit_cli("verify", "--config", str(config_path), "--head", str(heads_file))
    assert code == 0, out
    assert "MISMATCH" not in out and "match" in out

    rows = Store(config.agent.state_file).audit_rows()
    command = next(r for r in rows if r.kind == "command")
    rewrite(Path(config.agent.state_file), command.n, {"signal_id": "not-p1", "kid": "someone-else"})
    code, out = await audit_cli("verify", "--config", str(config_path))  # the rows alone are consistent again
    assert code == 0, out
    code, out = await audit_cli("verify", "--config", str(config_path), "--head", str(heads_file))
    assert code == 1, out
    assert "MISMATCH" in out and "rewritten" in out
