"""The shipped broker configuration (deploy/mosquitto.conf + deploy/mosquitto.acl) against a real Mosquitto, over TLS.

Each credential may do its own job and nothing else: the agent cannot publish a signal, a reader cannot command a
site, one site cannot read or write another site's tree, a signal publisher sends only its kinds, and no role gets a
site's rights (Home Assistant discovery, a vpp/<role>/ tree) just for having a user name. What a
refused publish looks like: Mosquitto drops it (and with MQTT 3.1.1 still answers PUBACK), so "not delivered" is
proved by order, never by waiting: after the refused publish has been acknowledged, an allowed publisher sends a
marker to the same watcher, and the watcher must see the marker with nothing forged before it. Where nobody may
read a topic (Home Assistant discovery), the broker's own verdict is asked instead: over MQTT 5 its PUBACK says
"not authorized" (reason code 135) for a refused publish.

The ACL is what deploy/acl-for-sites.sh writes from deploy/mosquitto.acl for site1 and site2.

The agent's own link (drivers/mqtt_link.py, built by agent/wiring.py from [mqtt]) connects with a client
certificate and a password over TLS, and with a password on the loopback listener; a refused password or a missing
certificate is an error line with a back-off, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs
from tlskit import DEPLOY, HOST, Pki, ShippedBroker, acl_for_sites, eventually

from agent.config import AppConfig, MqttSettings, parse_config
from agent.preflight import preflight, start_warnings
from agent.wiring import build_link
from drivers.mqtt_link import LinkSettings, MqttLink

KINDS = ("site_target", "prices", "up_dr", "as_award", "as_offer", "as_activation", "frequency")
# the roles of deploy/mosquitto.acl and the signal kinds each may send (to site1)
PUBLISHERS = {
    "market-desk": {"prices", "up_dr", "as_award", "as_offer"},
    "tso-gateway": {"as_activation"},
    "frequency-meter": {"frequency"},
    "fleet-coordinator": {"site_target"},
}
SITES = ("site1", "site2")
# every credential of deploy/mosquitto.acl that is not a site's agent
ROLES = ["telemetry-reader", "homeassistant", "bridge-site1", *PUBLISHERS]
USERS = [*SITES, *ROLES]
_ids = itertools.count()


@dataclass
class Site:
    broker: ShippedBroker
    pki: Pki
    passwords: dict[str, str]

    def tls(self, user: str | None) -> ssl.SSLContext:
        """What a client of the TLS listener uses: the site CA, and `user`'s certificate (None: no certificate)."""
        context = ssl.create_default_context(cafile=self.pki.ca_file)
        if user is not None:
            issued = self.pki.client(user)
            context.load_cert_chain(issued.cert, issued.key)
        return context

    def client(self, user: str) -> aiomqtt.Client:
        """An independent MQTT client for `user` on the TLS listener, with certificate and password."""
        return aiomqtt.Client(
            HOST,
            self.broker.tls_port,
            username=user,
            password=self.passwords[user],
            identifier=f"{user}-{next(_ids)}",
            tls_context=self.tls(user),
            timeout=15,
        )


@pytest.fixture
def site(tmp_path: Path) -> AsyncIterator[Site]:
    # random passwords: nothing in the tests may depend on them, and a leak would be unique text
    passwords = {user: f"pw-{user}-{uuid.uuid4().hex}" for user in USERS}
    pki = Pki(tmp_path / "pki")
    broker = ShippedBroker(tmp_path / "broker", users=passwords, pki=pki, sites=SITES)
    broker.directory.mkdir()
    broker.start()
    try:
        yield Site(broker, pki, passwords)
    finally:
        broker.stop()


@dataclass
class Inbox:
    """Everything one subscriber received, in order."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self._arrived.set()

    async def until(self, payload: bytes, timeout_s: float = 20.0) -> list[tuple[str, bytes]]:
        """Wait for `payload` (the deadline bounds a failing test only); returns what arrived before it."""
        async with asyncio.timeout(timeout_s):
            while True:
                for i, (_, seen) in enumerate(self.messages):
                    if seen == payload:
                        return self.messages[:i]
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def listening(site: Site, user: str, *filters: str) -> AsyncIterator[Inbox]:
    """`user` subscribed to `filters` (SUBACK received) for the duration of the block."""
    inbox = Inbox()
    async with site.client(user) as client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)

        async def read() -> None:
            async for message in client.messages:
                inbox.add(message.topic.value, bytes(message.payload))  # type: ignore[arg-type]

        reader = asyncio.create_task(read())
        try:
            yield inbox
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def token(label: str) -> bytes:
    return f"{label}-{uuid.uuid4().hex}".encode()


async def assert_not_delivered(
    site: Site, forger: str, topics: list[str], inbox: Inbox, marker_from: str, marker_topic: str
) -> None:
    """`forger` publishes to each of `topics` (QoS 1 and 0, retained too); then `marker_from`, who may, publishes a
    marker. The broker has handled the forged messages before the marker (the QoS 1 publish was acknowledged, and
    one connection's QoS 0 is handled in order before it), so a watcher that gets the marker first never gets them."""
    forged = []
    async with site.client(forger) as client:
        for topic in topics:
            for qos, retain in ((0, False), (1, True), (1, False)):
                payload = token(f"forged-by-{forger}")
                forged.append(payload)
                await client.publish(topic, payload, qos=qos, retain=retain)  # MQTT 3.1.1: PUBACK even if refused
    marker = token("marker")
    async with site.client(marker_from) as client:
        await client.publish(marker_topic, marker, qos=1)
    before = await inbox.until(marker)
    leaked = [(topic, payload) for topic, payload in before if payload in forged]
    assert not leaked, f"{forger} got through the ACL: {leaked}"


async def test_agent_credential_cannot_publish_a_signal(site: Site) -> None:
    async with listening(site, "site1", "vpp/site1/signals/+") as agent_inbox:
        topics = [f"vpp/site1/signals/{kind}" for kind in KINDS]
        await assert_not_delivered(site, "site1", topics, agent_inbox, "market-desk", "vpp/site1/signals/prices")
    # the same credential does its own job: its envelope and acks reach whoever may read them
    async with (
        listening(site, "telemetry-reader", "vpp/site1/#") as reader,
        listening(site, "market-desk", "vpp/site1/ack") as desk,
    ):
        envelope, ack = token("envelope"), token("ack")
        async with site.client("site1") as agent:
            await agent.publish("vpp/site1/envelope", envelope, qos=1)
            await agent.publish("vpp/site1/ack", ack, qos=1)
        await reader.until(envelope)
        await desk.until(ack)


async def test_reader_cannot_command_the_site_or_forge_its_answers(site: Site) -> None:
    async with listening(site, "site1", "vpp/site1/signals/+", "vpp/site1/devices/#") as agent_inbox:
        commands = [f"vpp/site1/signals/{kind}" for kind in KINDS] + ["vpp/site1/devices/bat-1/set"]
        await assert_not_delivered(site, "telemetry-reader", commands, agent_inbox, "tso-gateway",
                                   "vpp/site1/signals/as_activation")  # fmt: skip
    # nor can it forge what the agent says (an ack a market desk would act on, a retained status, the envelope)
    async with listening(site, "market-desk", "vpp/site1/ack") as desk:
        await assert_not_delivered(site, "telemetry-reader", ["vpp/site1/ack"], desk, "site1", "vpp/site1/ack")
    async with listening(site, "telemetry-reader", "vpp/site1/#") as reader:
        topics = ["vpp/site1/agent/status", "vpp/site1/envelope", "vpp/site1/assets/bat-1/measurement"]
        await assert_not_delivered(site, "telemetry-reader", topics, reader, "site1", "vpp/site1/agent/status")
    # and nothing forged was kept as retained state for a later subscriber
    async with listening(site, "telemetry-reader", "vpp/site1/#") as late:
        marker = token("late-marker")
        async with site.client("site1") as agent:
            await agent.publish("vpp/site1/envelope", marker, qos=1)
        assert not [m for m in await late.until(marker) if m[1].startswith(b"forged")]


async def test_one_site_cannot_read_or_write_another_sites_tree(site: Site) -> None:
    # reading: site2 subscribes to all of site1 (Mosquitto 2.0 grants the SUBSCRIBE and filters each message)
    async with listening(site, "site2", "vpp/site1/#", "vpp/+/signals/+", "vpp/site2/signals/+") as site2:
        secret_signal, secret_telemetry = token("site1-signal"), token("site1-telemetry")
        async with site.client("market-desk") as desk:
            await desk.publish("vpp/site1/signals/prices", secret_signal, qos=1)
        async with site.client("site1") as agent1:
            await agent1.publish("vpp/site1/envelope", secret_telemetry, qos=1)
        marker = token("site2-marker")
        async with site.client("market-desk") as desk:
            await desk.publish("vpp/site2/signals/prices", marker, qos=1)
        before = await site2.until(marker)
        assert not [m for m in before if m[0].startswith("vpp/site1/")], before
    # writing: neither its signals nor its telemetry, status, acks or device commands
    async with listening(site, "site1", "vpp/site1/signals/+", "vpp/site1/devices/#") as agent1:
        topics = [f"vpp/site1/signals/{kind}" for kind in KINDS] + ["vpp/site1/devices/bat-1/set"]
        await assert_not_delivered(site, "site2", topics, agent1, "market-desk", "vpp/site1/signals/up_dr")
    async with listening(site, "telemetry-reader", "vpp/site1/#") as reader:
        topics = ["vpp/site1/agent/status", "vpp/site1/envelope", "vpp/site1/ack", "vpp/site1/assets/x/measurement"]
        await assert_not_delivered(site, "site2", topics, reader, "site1", "vpp/site1/envelope")


@pytest.mark.parametrize("publisher", sorted(PUBLISHERS))
async def test_a_signal_publisher_sends_only_its_kinds(site: Site, publisher: str) -> None:
    allowed = PUBLISHERS[publisher]
    async with listening(site, "site1", "vpp/site1/signals/+") as agent_inbox:
        forbidden = [f"vpp/site1/signals/{kind}" for kind in KINDS if kind not in allowed]
        forbidden += ["vpp/site1/ack", "vpp/site1/agent/status"]  # nor the agent's answers
        sent = {}
        async with site.client(publisher) as client:
            for topic in forbidden:
                await client.publish(topic, token("forged"), qos=1)
            for kind in sorted(allowed):
                sent[kind] = token(kind)
                await client.publish(f"vpp/site1/signals/{kind}", sent[kind], qos=1)
        last = sent[sorted(allowed)[-1]]
        before = await agent_inbox.until(last)  # its own kinds are delivered, the last one is the marker
        got = {topic.rsplit("/", 1)[1] for topic, _ in before} | {sorted(allowed)[-1]}
        assert got == allowed, f"{publisher}: delivered {got}, allowed {allowed}"


async def test_frequency_meter_feeds_only_its_own_site(site: Site) -> None:
    async with listening(site, "site2", "vpp/site2/signals/+") as site2:
        await assert_not_delivered(site, "frequency-meter", ["vpp/site2/signals/frequency"], site2, "market-desk",
                                   "vpp/site2/signals/prices")  # fmt: skip


# -- no role gets a site's rights ----------------------------------------------------------------------------------

NOT_AUTHORIZED = 135  # MQTT 5 PUBACK reason code; 0 (success) or 16 (no matching subscribers) when accepted


def _verdicts(site: Site, user: str, topics: list[str]) -> dict[str, int]:
    """`user` publishes once to each of `topics` (QoS 1, MQTT 5, TLS with certificate and password); the PUBACK
    reason code the broker answered for each. Blocking (paho's own network thread): run it in a worker thread."""
    connected, codes = threading.Event(), {}
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{user}-v5-{next(_ids)}",
                         protocol=paho.MQTTv5)  # fmt: skip
    client.username_pw_set(user, site.passwords[user])
    client.tls_set_context(site.tls(user))
    client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
    client.on_publish = lambda _c, _u, mid, reason, _p: codes.__setitem__(mid, reason.value)  # before wait returns
    client.connect(HOST, site.broker.tls_port)
    client.loop_start()
    try:
        assert connected.wait(15), f"{user} did not connect"
        verdicts = {}
        for topic in topics:
            info = client.publish(topic, token(f"v5-{user}"), qos=1)
            info.wait_for_publish(15)
            verdicts[topic] = codes[info.mid]
        return verdicts
    finally:
        client.disconnect()
        client.loop_stop()


async def verdicts(site: Site, user: str, topics: list[str]) -> dict[str, int]:
    return await asyncio.to_thread(_verdicts, site, user, topics)


def discovery(node: str) -> list[str]:
    """Home Assistant discovery config topics with node_id `node` (homeassistant/<component>/<node>/<object>/config),
    as the agent would announce its entities."""
    return [f"homeassistant/{component}/{node}/vpp_{component}/config" for component in ("number", "sensor", "switch")]


def agent_tree(prefix: str) -> list[str]:
    """What a site's agent writes under its prefix (its devices' commands too)."""
    tails = ["agent/status", "assets/bat-1/measurement", "envelope", "ack", "audit/head", "devices/bat-1/set",
             "ha/assets/bat-1", "ha/availability"]
    return [f"{prefix}/{tail}" for tail in tails]


@pytest.mark.parametrize("role", ROLES)
async def test_a_role_cannot_announce_entities_nor_write_a_tree_of_its_own(site: Site, role: str) -> None:
    """A reader, a signal publisher or a device bridge may not create Home Assistant entities (discovery configs under
    its own name or a site's) nor write anything under vpp/<its name>/, as a site's agent does under vpp/<site>/."""
    topics = [*discovery(role), *discovery("site1"), *agent_tree(f"vpp/{role}")]
    answered = await verdicts(site, role, topics)
    accepted = [topic for topic, code in answered.items() if code != NOT_AUTHORIZED]
    assert not accepted, f"{role} may publish {accepted}"
    # and nothing it sends there reaches a reader (the reader may read every vpp/+/agent, assets, envelope, ack, audit)
    async with listening(site, "telemetry-reader", f"vpp/{role}/#", "vpp/site1/envelope") as reader:
        await assert_not_delivered(site, role, agent_tree(f"vpp/{role}"), reader, "site1", "vpp/site1/envelope")


async def test_home_assistant_sees_what_a_site_announces_and_cannot_command_it(site: Site) -> None:
    """Home Assistant's credential reads the discovery configs and the plain states a site's agent publishes, and may
    send its own birth message; it can neither write a site's tree nor send a signal."""
    async with listening(site, "homeassistant", "homeassistant/#", "vpp/+/ha/#") as ha:
        config, state = token("config"), token("state")
        async with site.client("site1") as agent:
            await agent.publish("homeassistant/sensor/site1/bat_1_power/config", config, qos=1)
            await agent.publish("vpp/site1/ha/assets/bat-1", state, qos=1)
        before = await ha.until(state)  # one publisher, one QoS: the config arrives before the state
        assert ("homeassistant/sensor/site1/bat_1_power/config", config) in before
    answered = await verdicts(site, "homeassistant", ["homeassistant/status", "vpp/site1/signals/site_target"])
    assert answered["homeassistant/status"] != NOT_AUTHORIZED
    assert answered["vpp/site1/signals/site_target"] == NOT_AUTHORIZED


async def test_a_sites_agent_announces_its_own_entities_only(site: Site) -> None:
    for agent, other in (("site1", "site2"), ("site2", "site1")):
        answered = await verdicts(site, agent, [*discovery(agent), f"vpp/{agent}/envelope", *discovery(other)])
        refused = [topic for topic, code in answered.items() if code == NOT_AUTHORIZED]
        assert refused == discovery(other), f"{agent}: refused {refused}"


def test_the_acl_generator_writes_one_block_per_site_and_refuses_bad_ids() -> None:
    shipped = (DEPLOY / "mosquitto.acl").read_text()

    def rules(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    assert rules(acl_for_sites(("site1",))) == rules(shipped)  # the shipped file is the generator's site1 output
    two = rules(acl_for_sites(("site1", "north-7")))
    block = rules(shipped)[: rules(shipped).index("user market-desk")]
    assert two == block + [line.replace("site1", "north-7") for line in block] + rules(shipped)[len(block) :]
    assert "pattern" not in " ".join(rules(shipped)).split()  # a pattern line would apply to every user
    for bad in [[], ["market-desk"], ["telemetry-reader"], ["a/b"], ["a+b"], ["#"], ["s 1"], ["-x"], ["x&y"],
                ["site3", "site3"]]:  # fmt: skip
        done = subprocess.run(["sh", str(DEPLOY / "acl-for-sites.sh"), *bad], capture_output=True, text=True)
        assert done.returncode != 0 and done.stderr and not done.stdout, (bad, done)


def agent_settings(site: Site, *, tls: bool, cert: bool, env: str = "VPP_TEST_MQTT_PASSWORD") -> MqttSettings:
    """The [mqtt] table a site1 deployment writes: TLS listener with CA and client certificate, or loopback."""
    issued = site.pki.client("site1")
    table: dict[str, object] = {
        "enabled": True,
        "host": HOST,
        "port": site.broker.tls_port if tls else site.broker.port,
        "client_id": f"vpp-agent-site1-{next(_ids)}",
        "username": "site1",
        "password_env": env,
        "topic_prefix": "vpp/site1",
    }
    if tls:
        table["ca_file"] = str(site.pki.ca_file)
    if cert:
        table |= {"cert_file": str(issued.cert), "key_file": str(issued.key)}
    return MqttSettings.model_validate(table)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[MqttLink]:
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        yield link
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.mark.parametrize("tls", [True, False], ids=["tls-certificate-and-password", "loopback-password"])
async def test_agent_link_connects_and_does_its_job(site: Site, tls: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's own link, built from [mqtt] as `vpp-agent run` builds it: its birth status reaches a reader and
    a market-desk signal reaches its handler, through the shipped ACL."""
    monkeypatch.setenv("VPP_TEST_MQTT_PASSWORD", site.passwords["site1"])
    link = build_link(agent_settings(site, tls=tls, cert=tls), lambda: datetime.now(UTC))
    got: list[bytes] = []
    link.subscribe("vpp/site1/signals/+", lambda _topic, payload: got.append(payload), qos=1, retained=False)
    async with listening(site, "telemetry-reader", "vpp/site1/agent/status") as reader, running(link):
        await asyncio.wait_for(link.wait_connected(), 20)
        await eventually(lambda: any(b'"online"' in p for _, p in reader.messages), what="birth status seen")
        signal = token("signal")
        async with site.client("market-desk") as desk:
            await desk.publish("vpp/site1/signals/prices", signal, qos=1)
        await eventually(lambda: signal in got, what="signal handed to the agent")
    assert link.stats.auth_failures == 0


async def collect_refusals(link: MqttLink, event: str, count: int) -> list[dict[str, object]]:
    """Run `link` until it has logged `event` `count` times; returns those log entries."""
    with capture_logs() as logs:
        async with running(link):
            await eventually(lambda: sum(e["event"] == event for e in logs) >= count, 60, f"{count} × {event}")
        assert not link.connected
    return [e for e in logs if e["event"] == event]


async def test_wrong_password_is_an_error_with_growing_back_off(site: Site) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    settings = LinkSettings(HOST, site.broker.tls_port, client_id="site1-wrong", username="site1", password=wrong,
                            tls=site.tls("site1"), reconnect_min_s=0.05, reconnect_max_s=0.4)  # fmt: skip
    link = MqttLink(settings)
    refusals = await collect_refusals(link, "mqtt.auth_failed", 6)
    assert all(e["log_level"] == "error" for e in refusals)
    assert all(e["host"] == HOST and e["user"] == "site1" and e["code"] == 135 for e in refusals), refusals[0]
    waits = [e["retry_s"] for e in refusals]
    assert waits[:4] == [0.05, 0.1, 0.2, 0.4] and set(waits[4:]) == {0.4}, waits
    assert link.stats.auth_failures >= 6
    assert wrong not in repr(refusals) and wrong not in repr(settings) and wrong not in repr(link)


async def test_certificate_without_password_is_refused(site: Site) -> None:
    """require_certificate alone does not log anyone in: the password file still decides (two factors)."""
    settings = LinkSettings(HOST, site.broker.tls_port, client_id="site1-nopw", username="site1",
                            tls=site.tls("site1"), reconnect_min_s=0.05, reconnect_max_s=0.2)  # fmt: skip
    refusals = await collect_refusals(MqttLink(settings), "mqtt.auth_failed", 2)
    assert refusals[0]["log_level"] == "error"


async def test_missing_client_certificate_is_a_tls_error(site: Site) -> None:
    """The right password without a certificate: the broker ends the TLS session (with TLS 1.3 after the
    handshake, so aiomqtt itself only times out); the link says why, at error level."""
    settings = LinkSettings(HOST, site.broker.tls_port, client_id="site1-nocert", username="site1",
                            password=site.passwords["site1"], tls=site.tls(None), reconnect_min_s=0.05,
                            reconnect_max_s=0.2)  # fmt: skip
    refusals = await collect_refusals(MqttLink(settings), "mqtt.tls_failed", 2)
    assert refusals[0]["log_level"] == "error"
    assert "certificate" in str(refusals[0]["error"]).lower(), refusals[0]
    assert site.passwords["site1"] not in repr(refusals)


async def test_untrusted_broker_certificate_is_a_tls_error(site: Site, tmp_path: Path) -> None:
    other = Pki(tmp_path / "other-ca", name="someone-else")
    context = ssl.create_default_context(cafile=other.ca_file)
    settings = LinkSettings(HOST, site.broker.tls_port, client_id="site1-untrusted", username="site1",
                            password=site.passwords["site1"], tls=context, reconnect_min_s=0.05,
                            reconnect_max_s=0.2)  # fmt: skip
    refusals = await collect_refusals(MqttLink(settings), "mqtt.tls_failed", 2)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refusals[0]["error"]), refusals[0]


# -- the link's files and start-up warnings (agent/preflight.py) ---------------------------------------------------


def config_with(tmp_path: Path, mqtt: str, trust: str = 'site_id = "site1"') -> AppConfig:
    text = f'[agent]\nstate_file = "{tmp_path / "state.db"}"\n[mqtt]\n{mqtt}\n[trust]\n{trust}\n'
    return parse_config(text, "site.toml")


def tls_table(pki: Pki, cert: Path, key: Path) -> str:
    return (
        f'enabled = true\nhost = "127.0.0.1"\nport = 8883\nusername = "site1"\n'
        f'ca_file = "{pki.ca_file}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    )


def test_client_certificate_problems_name_the_file(tmp_path: Path) -> None:
    """check-config and run report which of cert_file / key_file is wrong and why, before anything connects."""
    pki = Pki(tmp_path / "pki")
    good, other = pki.client("site1"), pki.client("site2")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(good.key.read_bytes(), None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cases = [
        (garbage, good.key, f"mqtt.cert_file = {str(garbage)!r}: not a PEM certificate"),
        (good.cert, good.cert, f"mqtt.key_file = {str(good.cert)!r}: not a PEM private key"),
        (good.cert, encrypted, f"mqtt.key_file = {str(encrypted)!r}: the private key is encrypted"),
        (good.cert, other.key, f"mqtt.key_file = {str(other.key)!r}: not the private key of mqtt.cert_file"),
    ]
    for cert, key, expected in cases:
        problems = preflight(config_with(tmp_path, tls_table(pki, cert, key)))
        assert len(problems) == 1 and problems[0].startswith(expected), (expected, problems)
    assert preflight(config_with(tmp_path, tls_table(pki, good.cert, good.key))) == []


def test_start_warnings_name_clear_text_and_unsigned_operation(tmp_path: Path) -> None:
    remote_insecure = 'enabled = true\nhost = "192.0.2.10"\ninsecure = true\n'
    lines = start_warnings(config_with(tmp_path, remote_insecure, 'site_id = "site1"'))
    assert len(lines) == 1 and lines[0].startswith("mqtt.insecure = true: the broker 192.0.2.10:1883"), lines
    lines = start_warnings(config_with(tmp_path, remote_insecure, "require_signatures = false"))
    assert len(lines) == 2 and "unsigned commands are accepted (trust.require_signatures = false)" in lines[1]
    # signatures are required on a loopback broker too (publishers reach it from the network): nothing to warn of
    assert start_warnings(config_with(tmp_path, 'enabled = true\nhost = "127.0.0.1"')) == []
    pki = Pki(tmp_path / "pki")
    issued = pki.client("site1")
    remote_tls = tls_table(pki, issued.cert, issued.key).replace("127.0.0.1", "192.0.2.10") + "insecure = true\n"
    assert start_warnings(config_with(tmp_path, remote_tls, 'site_id = "site1"')) == []  # TLS on: nothing to say
    assert start_warnings(config_with(tmp_path, "enabled = false", "require_signatures = false")) == []
