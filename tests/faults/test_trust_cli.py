"""Trust end to end through the shipped commands, as the people around a site use them.

A market desk and a TSO gateway make their keys with `vpp-agent keys new`, the site's config takes the entries it
prints, and the agent (`vpp-agent run`, its own process) gets a key of its own. Commands are signed with `vpp-agent
sign` and published with Debian's `mosquitto_pub`; a reader watches with `mosquitto_sub -v` and checks what it saw
with `vpp-agent verify` and `vpp-agent audit verify`. The devices are the simulator in this process, so every "it
moved" and "nothing moved" is read from the batteries' own write logs and the site meter.

Covered: accepted commands discharge the fleet and their sealed acks verify; forged acks do not; a config broken on
SIGHUP keeps the old keys and reports `degraded`; a key revoked on SIGHUP is refused without a restart; the exact
token of an accepted activation is a `duplicate`, also after a restart, and is not acted on again; the signed audit
heads a reader kept match the chain in the state file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from brokerkit import Broker
from faultkit import PREFIX, simulated_site
from sitekit import ROOT, Agent, agent_process, eventually

from agent.trust.keys import Signer, new_private_key
from agent.trust.seal import Sealer
from sim_devices.ports import free_port_block
from sim_devices.runner import SimSite

VPP_AGENT = Path(sys.executable).parent / "vpp-agent"  # the installed console script, as an operator runs it
SITE_ID = "site-a"
ACK, STATUS, ENVELOPE, HEAD = (f"{PREFIX}/ack", f"{PREFIX}/agent/status", f"{PREFIX}/envelope",
                               f"{PREFIX}/audit/head")  # fmt: skip
UP_W = 30000.0  # the award: an activation of 1.0 moves the site meter from +5 kW (import) to -25 kW (export)
DISCHARGING_W = -8000.0  # a battery setpoint below this is an activation at work (at rest they idle near 0 W)
WAIT_S = 60.0
# Two batteries and a meter, a steady 5 kW base load and no PV, held at 5 kW by the rule controller: at rest the
# batteries idle, so whatever discharges them is a command at work (the site of tests/integration/test_events.py).
SITE = """
[agent]
poll_period_s = 0.5
poll_timeout_s = 0.2
lease_timeout_s = 5.0
state_file = "{state}"
[site]
meter = "meter"
export_limit_w = 40000.0
[control]
mode = "site_target"
site_target_w = 5000.0
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker}
client_id = "vpp-agent-trust"
topic_prefix = "{prefix}"
[[assets]]
id = "bess{{i}}"
count = 2
map = "vppsim_battery"
host = "127.0.0.1"
port = {port}
units_per_port = 2
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
host = "127.0.0.1"
port = {port}
unit_id = 3
[simulation]
host = "127.0.0.1"
speed = 1.0
tick_s = 0.05
base_load_w = 5000.0
[[simulation.devices]]
id = "bess{{i}}"
count = 2
model = "vppsim_battery"
port = {port}
units_per_port = 2
[simulation.devices.params]
ramp_w_per_s = 50000.0
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {port}
unit_id = 3
"""
TARGET_W = 5000.0


@dataclass
class Done:
    code: int
    out: str
    err: str


async def command(*args: str, stdin: str = "") -> Done:
    """One run of a command line tool, without blocking the loop the simulated devices answer on."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), WAIT_S)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def vpp(*args: str, stdin: str = "") -> Done:
    return await command(str(VPP_AGENT), *args, stdin=stdin)


@dataclass
class Reader:
    """`mosquitto_sub -v` on some topics: every line it printed ("topic payload"), in order."""

    port: int
    topics: tuple[str, ...]
    lines: list[str] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self, out: Path | None = None) -> None:
        args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-v"]
        for topic in self.topics:
            args += ["-t", topic]
        if out is not None:  # straight into a file, as a reader keeps the audit heads
            with out.open("wb") as sink:
                self.proc = await asyncio.create_subprocess_exec(*args, stdout=sink)
            return
        self.proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().strip())

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    def mark(self) -> int:
        return len(self.lines)

    def bodies(self, topic: str, since: int = 0) -> list[tuple[str, Any]]:
        """(line, body as the sealed message claims it, unverified) per line on `topic` from index `since`."""
        return [(line, body) for line in self.lines[since:] if (seen := peek(line)) and seen[0] == topic
                for body in [seen[1]]]  # fmt: skip

    async def next_on(self, topic: str, since: int, match: Callable[[Any], bool], what: str) -> tuple[str, Any]:
        def found() -> bool:
            return any(match(body) for _, body in self.bodies(topic, since))

        await eventually(found, WAIT_S, what)
        return next((line, body) for line, body in self.bodies(topic, since) if match(body))

    async def cycles(self, since: int, count: int) -> None:
        """Wait until the agent has finished `count` control cycles after `since` (one envelope each)."""
        await eventually(lambda: len(self.bodies(ENVELOPE, since)) >= count, WAIT_S, f"{count} more agent cycles")


def peek(line: str) -> tuple[str, Any] | None:
    """A reader's first look at a line: the topic and the body a sealed message carries, before checking anything."""
    topic, _, token = line.partition(" ")
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return topic, claims["body"]
    except (IndexError, ValueError, KeyError, TypeError):
        return topic, None


@contextlib.asynccontextmanager
async def reading(port: int, *topics: str, out: Path | None = None) -> AsyncIterator[Reader]:
    reader = Reader(port, topics)
    await reader.start(out)
    try:
        yield reader
    finally:
        await reader.stop()


@dataclass
class Keys:
    """The key files and the text `keys new` printed for them."""

    folder: Path
    desk_entry: str
    tso_entry: str
    agent_public: str

    @property
    def desk(self) -> Path:
        return self.folder / "market-desk.pem"

    @property
    def tso(self) -> Path:
        return self.folder / "tso-gateway.pem"

    @property
    def agent(self) -> Path:
        return self.folder / "agent.pem"


def key_folder(tmp_path: Path) -> Path:
    """Where the key holders keep their private keys (in life each its own machine)."""
    folder = tmp_path / "keys"
    folder.mkdir()
    return folder


async def make_keys(folder: Path) -> Keys:
    desk = await vpp("keys", "new", "--kid", "market-desk", "--kinds", "prices,up_dr,as_award", "--out", str(folder))
    tso = await vpp("keys", "new", "--kid", "tso-gateway", "--kinds", "as_activation", "--out", str(folder))
    own = await vpp("keys", "new", "--kid", "agent", "--out", str(folder))
    assert (desk.code, tso.code, own.code) == (0, 0, 0), (desk.err, tso.err, own.err)
    public_line = next(line for line in own.out.splitlines() if line.startswith("public_key = "))
    agent_public = json.loads(public_line.removeprefix("public_key = "))
    shown = await vpp("keys", "public", str(folder / "agent.pem"))
    assert shown.code == 0 and shown.out.strip() == agent_public
    return Keys(folder, desk.out, tso.out, agent_public)


def quiet_site(tmp_path: Path, broker: Broker) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        SITE.format(state=tmp_path / "state.db", broker=broker.port, prefix=PREFIX, port=free_port_block(1))
    )
    return path


def trust_toml(keys: Keys) -> str:
    """`[trust]` as an operator writes it: the printed entries pasted, the tso-gateway's last so lines added
    after it are its own."""
    return (
        f'\n[trust]\nrequire_signatures = true\nsite_id = "{SITE_ID}"\nagent_key_file = "{keys.agent}"\n'
        f'agent_kid = "agent"\naudit_head_every_s = 10\n\n{keys.desk_entry}\n{keys.tso_entry}'
    )


class Desk:
    """A key holder: signs with `vpp-agent sign` and publishes with `mosquitto_pub`."""

    def __init__(self, key: Path, port: int) -> None:
        self.key = key
        self.port = port

    async def sign(self, kind: str, body: dict[str, Any], ttl_s: float = 300.0) -> str:
        done = await vpp("sign", "--key", str(self.key), "--site", SITE_ID, "--kind", kind, "--ttl", str(ttl_s),
                         "--compact", stdin=json.dumps(body) + "\n")  # fmt: skip
        assert done.code == 0, done.err
        token = done.out.strip()
        assert token.count(".") == 2 and "\n" not in token
        return token

    async def publish(self, kind: str, token: str) -> None:
        await publish(self.port, f"{PREFIX}/signals/{kind}", token)


async def publish(port: int, topic: str, message: str) -> None:
    done = await command("mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-m", message)
    assert done.code == 0, done.err


async def verified(lines: list[str], public_key: str) -> list[Any]:
    """`vpp-agent verify` on lines a reader kept: it must pass (exit 0); the bodies it printed."""
    done = await vpp("verify", "--public-key", public_key, "--site", SITE_ID, stdin="\n".join(lines) + "\n")
    assert done.code == 0, (done.out, done.err)
    printed = done.out.splitlines()
    assert len(printed) == len(lines) and all(line.startswith("ok ") for line in printed), printed
    return [json.loads(line.split(" ", 3)[3]) for line in printed]


def iso(moment: datetime) -> str:
    return moment.isoformat()


def activation(number: int, value: float) -> dict[str, Any]:
    return {"id": f"act{number}", "award_id": "a1", "at": iso(datetime.now(UTC)), "value": value}


def battery_writes_below(
    site: SimSite, since_s: dict[str, float], limit_w: float, batteries: tuple[str, ...] = ("bess1", "bess2")
) -> list[float]:
    """Setpoints written to the batteries since the given device times that discharge beyond `limit_w`."""
    return [w.setpoint_w for d in batteries for w in site.devices[d].write_log
            if w.t_s >= since_s[d] and w.setpoint_w < limit_w]  # fmt: skip


def device_times(site: SimSite) -> dict[str, float]:
    return {d: site.devices[d].t_s for d in ("bess1", "bess2")}


async def status_of(reader: Reader, since: int, state: str, public_key: str, reason: str | None = None) -> Any:
    """Wait for the agent's status `state` on its topic, then check that line with `vpp-agent verify`."""

    def fits(body: Any) -> bool:
        reasons = body.get("reasons", []) if isinstance(body, dict) else []
        wanted = reason is None or any(r.startswith(reason) for r in reasons)
        return isinstance(body, dict) and body.get("state") == state and wanted

    line, _ = await reader.next_on(STATUS, since, fits, f"agent status {state} {reason or ''}")
    [body] = await verified([line], public_key)
    return body


async def reload(agent: Agent, event: str) -> dict[str, Any]:
    before = len(agent.logged(event))
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: len(agent.logged(event)) > before, WAIT_S, f"agent logs {event}")
    return agent.logged(event)[-1]


async def test_trust_through_the_shipped_commands(tmp_path: Path, broker: Broker) -> None:
    keys = await make_keys(key_folder(tmp_path))
    config = quiet_site(tmp_path, broker)
    good = config.read_text() + trust_toml(keys)
    config.write_text(good)
    checked = await vpp("check-config", str(config))
    assert checked.code == 0, checked.err
    desk, tso = Desk(keys.desk, broker.port), Desk(keys.tso, broker.port)
    heads_file = tmp_path / "heads.txt"

    async with (
        simulated_site(config) as site,
        reading(broker.port, HEAD, out=heads_file) as heads,
        reading(broker.port, ACK, STATUS, ENVELOPE) as reader,
    ):
        meter = site.devices["meter"]
        async with agent_process(config) as agent:
            # 2. the agent is up: its status is sealed with its own key
            await status_of(reader, 0, "online", keys.agent_public)
            await reader.cycles(0, 2)

            # 3. the market desk's award, then the TSO's activation, each acknowledged under the agent's seal
            now = datetime.now(UTC)
            award = {"id": "a1", "product": "S-FRR", "block_start": iso(now),
                     "block_end": iso(now + timedelta(hours=1)), "up_w": UP_W, "down_w": UP_W}  # fmt: skip
            mark = reader.mark()
            await desk.publish("as_award", await desk.sign("as_award", award))
            award_ack, _ = await reader.next_on(ACK, mark, lambda b: b.get("signal_id") == "a1", "award acked")
            await agent.wait_logged("event.active", WAIT_S, event_id="a1")
            first = await tso.sign("as_activation", activation(1, 1.0), ttl_s=1800)
            since, mark = device_times(site), reader.mark()
            await tso.publish("as_activation", first)
            act_ack, _ = await reader.next_on(ACK, mark, lambda b: b.get("signal_id") == "act1", "activation acked")
            acks = await verified([award_ack, act_ack], keys.agent_public)
            assert [(a["signal_id"], a["status"]) for a in acks] == [("a1", "accepted"), ("act1", "accepted")], acks
            await eventually(
                lambda: meter.power_w < TARGET_W - 0.8 * UP_W, WAIT_S, "the site exports on the activation"
            )
            for bess in ("bess1", "bess2"):  # each battery discharges, as its own write log shows
                assert battery_writes_below(site, {bess: since[bess]}, DISCHARGING_W, (bess,)), bess

            # 4. a forged ack on the agent's ack topic: plain JSON, and a seal made with another key under "agent"
            intruder = Sealer(Signer("agent", new_private_key()), SITE_ID, lambda: datetime.now(UTC))
            fake = {"kind": "as_activation", "signal_id": "act9", "status": "accepted", "received_at": iso(now)}
            mark = reader.mark()
            await publish(broker.port, ACK, json.dumps(fake, separators=(",", ":")))
            await publish(broker.port, ACK, intruder.seal(ACK, json.dumps(fake).encode()).decode())
            await eventually(lambda: len(reader.bodies(ACK, mark)) >= 2, WAIT_S, "the forged acks are seen")
            forged = [line for line, _ in reader.bodies(ACK, mark)]
            checked_forged = await vpp("verify", "--public-key", keys.agent_public, "--site", SITE_ID,
                                       stdin="\n".join(forged) + "\n")  # fmt: skip
            assert checked_forged.code == 1, checked_forged.out
            assert checked_forged.out.count("FORGED") == 2 and "ok " not in checked_forged.out, checked_forged.out
            mixed = await vpp("verify", "--public-key", keys.agent_public, stdin=f"{act_ack}\n{forged[1]}\n")
            assert mixed.code == 1 and mixed.out.startswith("ok ") and "FORGED" in mixed.out, mixed.out

            # 6a. the exact accepted token again: a duplicate
            mark = reader.mark()
            await tso.publish("as_activation", first)
            line, _ = await reader.next_on(ACK, mark, lambda b: b.get("signal_id") == "act1", "replay acked")
            assert (await verified([line], keys.agent_public))[0]["status"] == "duplicate"

            # 5a. a config that no longer loads on SIGHUP: logged, the old keys stay, the status says degraded
            config.write_text(good + "revoked = tru\n")  # a typo
            mark = reader.mark()
            failed = await reload(agent, "trust.reload_failed")
            assert str(config) in failed["config"]
            degraded = await status_of(reader, mark, "degraded", keys.agent_public, reason="trust: ")
            assert any("previous ones stay in force" in r for r in degraded["reasons"]), degraded
            mark = reader.mark()
            await tso.publish("as_activation", await tso.sign("as_activation", activation(2, 0.0)))
            line, _ = await reader.next_on(ACK, mark, lambda b: b.get("signal_id") == "act2", "act2 acked")
            assert (await verified([line], keys.agent_public))[0]["status"] == "accepted"  # the old keys in force
            await eventually(lambda: abs(meter.power_w - TARGET_W) < 1500, WAIT_S, "back to the site target")

            # the config fixed: reloaded, online again
            config.write_text(good)
            mark = reader.mark()
            await reload(agent, "trust.reloaded")
            await status_of(reader, mark, "online", keys.agent_public)

            # 6b. the first activation (1.0) replayed while 0.0 is in force: a duplicate, and never acted on again
            await replayed_not_acted_on(site, reader, tso, first, keys.agent_public)
            assert await agent.stop() == 0

        # 6c. the same state file after a clean restart: still a duplicate
        mark = reader.mark()
        async with agent_process(config) as agent:
            await status_of(reader, mark, "online", keys.agent_public)
            await reader.cycles(mark, 2)
            await replayed_not_acted_on(site, reader, tso, first, keys.agent_public)

            # 5b. the TSO gateway's key revoked in the config, taken on SIGHUP without a restart
            config.write_text(good + "revoked = true\n")
            reloaded = await reload(agent, "trust.reloaded")
            assert reloaded["revoked"] == 1
            since = device_times(site)
            mark = reader.mark()
            await tso.publish("as_activation", await tso.sign("as_activation", activation(3, 1.0)))
            line, _ = await reader.next_on(ACK, mark, lambda b: b.get("status") == "rejected", "revoked acked")
            [ack] = await verified([line], keys.agent_public)
            assert "(revoked_key)" in ack["reason"], ack
            await reader.cycles(mark, 4)
            assert battery_writes_below(site, since, DISCHARGING_W) == []
            assert abs(meter.power_w - TARGET_W) < 2000
            assert await agent.stop() == 0

        # 7. the heads a reader kept (retained, and one at each shutdown) match the chain in the state file
        newest = await vpp("audit", "show", "--config", str(config), "--json", "-n", "1")
        assert newest.code == 0, newest.err
        last_row = {k: json.loads(newest.out)[k] for k in ("n", "hash", "at")}
        await eventually(lambda: any(b == last_row for _, b in heads_lines(heads_file)), WAIT_S, "the last head")
        await heads.stop()
    audit = await vpp("audit", "verify", "--config", str(config), "--head", str(heads_file))
    assert audit.code == 0, (audit.out, audit.err)
    assert "ignored" not in audit.out and "MISMATCH" not in audit.out, audit.out
    count = len({json.dumps(b) for _, b in heads_lines(heads_file)})
    assert count >= 2  # at least the two shutdowns'
    assert audit.out.splitlines()[-1].endswith(f"; {count} of {count} signed head(s) match"), audit.out
    # and the trail says what happened: who commanded what, the failed and the good reload, the revoked key refused
    shown = await vpp("audit", "show", "--config", str(config), "--json", "-n", "100")
    assert shown.code == 0, shown.err
    rows = [json.loads(line) for line in shown.out.splitlines()]
    commands = [(r["data"]["signal_id"], r["data"]["kid"]) for r in rows if r["kind"] == "command"]
    assert commands == [("a1", "market-desk"), ("act1", "tso-gateway"), ("act2", "tso-gateway")], commands
    overrides = [r["data"]["what"] for r in rows if r["kind"] == "override"]
    assert overrides == ["trust_reload_failed", "trust_reload", "trust_reload"], overrides
    assert [r["data"]["reason"] for r in rows if r["kind"] == "refused"] == ["revoked_key"], rows


async def replayed_not_acted_on(site: SimSite, reader: Reader, tso: Desk, token: str, public_key: str) -> None:
    since = device_times(site)
    mark = reader.mark()
    await tso.publish("as_activation", token)
    line, _ = await reader.next_on(ACK, mark, lambda b: b.get("signal_id") == "act1", "replay acked")
    assert (await verified([line], public_key))[0]["status"] == "duplicate"
    await reader.cycles(mark, 4)  # an activation taken acts at once (the fast path): four cycles are plenty
    assert battery_writes_below(site, since, DISCHARGING_W) == []
    assert abs(site.devices["meter"].power_w - TARGET_W) < 2000


def heads_lines(path: Path) -> list[tuple[str, Any]]:
    if not path.exists():
        return []
    return [seen for line in path.read_text().splitlines() if (seen := peek(line)) is not None]
