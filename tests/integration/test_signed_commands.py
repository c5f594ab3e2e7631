"""Only signed, authorised, fresh commands move the fleet, checked from the devices' side.

The attack of the issue: an award and an activation are all it takes to make every battery discharge at the
site's export limit. Here the site requires signatures: a signed award and activation do move it (the positive
control, so the test can fail), and each forged, replayed, expired, wrong-kind, wrong-site, revoked or unsigned
activation is refused on its ack while the batteries' own write logs show no discharge.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sitekit import eventually
from test_events import running

from agent.app import AgentApp
from agent.config import ConfigError, parse_config
from agent.trust.commands import sign_command
from agent.trust.keys import Signer, new_private_key
from sim_devices.runner import SimSite

SITE_ID = "site-a"


def trust_toml(desk: Signer, tso: Signer, revoked: Signer) -> str:
    def entry(signer: Signer, kinds: list[str], is_revoked: bool = False) -> str:
        return (f'[[trust.keys]]\nkid = "{signer.kid}"\npublic_key = "{signer.public_key}"\n'
                f"kinds = {json.dumps(kinds)}\nrevoked = {str(is_revoked).lower()}\n")  # fmt: skip

    return (
        f'[trust]\nrequire_signatures = true\nsite_id = "{SITE_ID}"\n'
        + entry(desk, ["prices", "up_dr", "as_award"])
        + entry(tso, ["as_activation"])
        + entry(revoked, ["as_activation"], is_revoked=True)
    )


class Sender:
    """A key holder numbering its commands as a real sender does."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.seq = 0

    def sign(self, kind: str, signal: dict[str, Any], now: datetime, site: str = SITE_ID, ttl: float = 60.0,
             iat_offset_s: float = 0.0) -> bytes:  # fmt: skip
        self.seq += 1
        body = json.loads(json.dumps(signal, default=str))
        return sign_command(self.signer, site, kind, body, now.timestamp() + iat_offset_s, ttl, self.seq).encode()


def discharge_writes(site: SimSite, since_s: float) -> list[float]:
    """Battery setpoints written after `since_s` (device time) that discharge by more than the rule's trim."""
    return [
        w.setpoint_w for d in ("bess1", "bess2") for w in site.devices[d].write_log
        if w.t_s >= since_s and w.setpoint_w < -2000
    ]  # fmt: skip


async def polls_pass(app: AgentApp, count: int) -> None:
    meter = app.loop.fleet.assets["meter"]
    target = meter.polls_ok + count
    await eventually(lambda: meter.polls_ok >= target, what=f"{count} more polls")


async def test_only_a_signed_authorised_fresh_activation_moves_the_fleet(tmp_path: Path) -> None:
    desk, tso = Sender(Signer("desk", new_private_key())), Sender(Signer("tso", new_private_key()))
    revoked = Sender(Signer("old-tso", new_private_key()))
    stranger = Sender(Signer("tso", new_private_key()))  # claims to be the TSO gateway
    async with running(tmp_path, extra=trust_toml(desk.signer, tso.signer, revoked.signer)) as (site, app):
        meter = site.devices["meter"]
        now = site.clock.now()
        award = {"id": "a1", "product": "S-FRR", "block_start": now, "block_end": now + timedelta(hours=1),
                 "up_w": 40000, "down_w": 40000}  # fmt: skip
        assert (await app.ingest.receive("as_award", json.dumps(award, default=str).encode())).status == "rejected"
        assert (await app.ingest.receive("as_award", desk.sign("as_award", award, now))).status == "accepted"
        await eventually(lambda: "a1" in app.events.events and app.events.events["a1"].state.value == "active",
                         what="award active")  # fmt: skip

        def activation(n: int, value: float) -> dict[str, Any]:
            return {"id": f"act{n}", "award_id": "a1", "at": site.clock.now(), "value": value}

        # the positive control: a signed activation from the key allowed to send it discharges the batteries
        full = tso.sign("as_activation", activation(1, 1.0), site.clock.now())
        assert (await app.ingest.receive("as_activation", full)).status == "accepted"
        await eventually(lambda: meter.power_w < 5000 - 30000, what="the site exports on a signed activation")
        back = tso.sign("as_activation", activation(2, 0.0), site.clock.now())
        assert (await app.ingest.receive("as_activation", back)).status == "accepted"
        await eventually(lambda: abs(meter.power_w - 5000) < 1500, what="back to the site target")
        await polls_pass(app, 3)

        attacks: list[tuple[str, str, bytes]] = [
            ("unsigned", "unsigned", json.dumps(activation(3, 1.0), default=str).encode()),
            ("forged: another key under the TSO's kid", "bad_signature",
             stranger.sign("as_activation", activation(4, 1.0), site.clock.now())),
            ("the market desk may not activate", "kind_not_allowed",
             desk.sign("as_activation", activation(5, 1.0), site.clock.now())),
            ("for another site", "wrong_site",
             tso.sign("as_activation", activation(6, 1.0), site.clock.now(), site="site-b")),
            ("expired", "expired", tso.sign("as_activation", activation(7, 1.0), site.clock.now(), iat_offset_s=-120)),
            ("revoked key", "revoked_key", revoked.sign("as_activation", activation(8, 1.0), site.clock.now())),
            ("replayed: the full activation again", "duplicate", full),
        ]  # fmt: skip
        for name, expected, raw in attacks:
            started = site.clock.seconds()
            ack = await app.ingest.receive("as_activation", raw)
            if expected == "duplicate":  # a byte-identical token was taken before: answered, never acted on again
                assert ack.status == "duplicate", (name, ack)
            else:
                assert ack.status == "rejected" and f"({expected})" in (ack.reason or ""), (name, ack.reason)
                claimed = json.loads(raw) if raw.startswith(b"{") else json.loads(_claims(raw))["signal"]
                assert ack.signal_id == claimed["id"], name  # echoed, unverified, so the sender can match it
            await polls_pass(app, 3)
            assert app.events.activation.get("a1", 0.0) == 0.0, name
            assert discharge_writes(site, started) == [], name
            assert abs(meter.power_w - 5000) < 1500, name
        assert sum(app.gate.refusals.values()) == len(attacks)  # the replay is not counted; the unsigned award is
        # the gate still takes the real sender afterwards: nothing above consumed its sequence
        assert (await app.ingest.receive("as_activation", tso.sign("as_activation", activation(9, 0.5),
                                                                  site.clock.now()))).status == "accepted"  # fmt: skip
        await eventually(lambda: meter.power_w < 5000 - 15000, what="the real sender still moves the site")


async def test_a_replayed_command_stays_refused_after_a_restart(tmp_path: Path) -> None:
    desk = Sender(Signer("desk", new_private_key()))
    extra = trust_toml(desk.signer, Signer("tso", new_private_key()), Signer("x", new_private_key()))
    async with running(tmp_path, extra=extra) as (site, app):
        now = site.clock.now()
        first = desk.sign("up_dr", {"id": "dr1", "start": now + timedelta(minutes=5),
                                    "end": now + timedelta(minutes=35), "requested_increase_w": 1000,
                                    "price_per_kwh": 5}, now)  # fmt: skip
        assert (await app.ingest.receive("up_dr", first)).status == "accepted"
        reused = desk.sign("up_dr", {"id": "dr2", "start": now + timedelta(minutes=5),
                                     "end": now + timedelta(minutes=35), "requested_increase_w": 1000,
                                     "price_per_kwh": 5}, now)  # fmt: skip
    desk.seq = 0  # a sender that lost its counter re-uses number 1 for another command
    async with running(tmp_path, extra=extra) as (site, app):
        assert (await app.ingest.receive("up_dr", first)).status == "duplicate"
        clash = desk.sign("up_dr", {"id": "dr3", "start": site.clock.now() + timedelta(minutes=5),
                                    "end": site.clock.now() + timedelta(minutes=35), "requested_increase_w": 1000,
                                    "price_per_kwh": 5}, site.clock.now())  # fmt: skip
        ack = await app.ingest.receive("up_dr", clash)
        assert ack.status == "rejected" and "(replay)" in (ack.reason or "")
        assert "dr3" not in app.events.events
        assert (await app.ingest.receive("up_dr", reused)).status == "accepted"  # number 2 was never used


def test_signatures_are_required_whenever_mqtt_is_on_unless_a_lab_says_otherwise() -> None:
    """Also on a loopback broker: in the shipped layout the agent dials 127.0.0.1 while the signal publishers reach
    the same broker from the network, so the agent's own link says nothing about who can send."""
    remote = '[mqtt]\nenabled = true\nhost = "192.0.2.10"\nca_file = "ca.pem"\n'
    local = '[mqtt]\nenabled = true\nhost = "127.0.0.1"\n'
    for mqtt in (remote, local):
        assert parse_config(mqtt + '[trust]\nsite_id = "s"\n').signatures_required
        assert not parse_config(mqtt + "[trust]\nrequire_signatures = false\n").signatures_required
        with pytest.raises(ConfigError, match=r"trust\.site_id is not set"):
            parse_config(mqtt)  # required, but commands could name no site: an error, not a site that takes none
    assert not parse_config("[mqtt]\nenabled = false\n").signatures_required  # nothing comes in but files


async def test_an_activation_is_never_acted_on_after_its_command_expires(tmp_path: Path) -> None:
    """The TSO gateway falls silent (or its key is revoked, so nothing newer can come): the last activation stops
    at its command's `exp` instead of holding the batteries at full discharge."""
    desk, tso = Sender(Signer("desk", new_private_key())), Sender(Signer("tso", new_private_key()))
    async with running(tmp_path, extra=trust_toml(desk.signer, tso.signer, Signer("x", new_private_key()))) as (
        site,
        app,
    ):
        meter = site.devices["meter"]
        now = site.clock.now()
        award = {"id": "a1", "product": "S-FRR", "block_start": now, "block_end": now + timedelta(hours=1),
                 "up_w": 40000, "down_w": 40000}  # fmt: skip
        assert (await app.ingest.receive("as_award", desk.sign("as_award", award, now))).status == "accepted"
        await eventually(lambda: "a1" in app.events.events and app.events.events["a1"].state.value == "active",
                         what="award active")  # fmt: skip
        body = {"id": "act1", "award_id": "a1", "at": site.clock.now(), "value": 1.0}
        signed = tso.sign("as_activation", body, site.clock.now(), ttl=4.0)
        assert (await app.ingest.receive("as_activation", signed)).status == "accepted"
        await eventually(lambda: meter.power_w < 5000 - 30000, what="the site exports on the activation")
        await eventually(lambda: app.events.activation.get("a1") == 0.0, what="the command expired")
        assert site.clock.now().timestamp() >= json.loads(_claims(signed))["exp"]  # never before it expired
        await eventually(lambda: abs(meter.power_w - 5000) < 1500, what="back to the site target")


def _claims(token: bytes) -> bytes:
    from agent.trust.keys import b64url_decode

    return b64url_decode(token.split(b".")[1].decode())


async def test_a_signals_file_passes_the_same_gate(tmp_path: Path) -> None:
    """`vpp-agent run --signals FILE`: lines `vpp-agent sign` wrote are taken, an unsigned line is refused."""
    from agent.trust.keys import write_private_key
    from agent.trust.tool import sign_entries

    desk = Signer("desk", new_private_key())
    key_path = tmp_path / "desk.pem"
    write_private_key(key_path, desk.key)
    extra = trust_toml(desk, Signer("tso", new_private_key()), Signer("x", new_private_key()))
    async with running(tmp_path, extra=extra) as (site, app):
        now = site.clock.now()
        dr = {"id": "dr-file", "start": (now + timedelta(minutes=5)).isoformat(),
              "end": (now + timedelta(minutes=35)).isoformat(), "requested_increase_w": 1000, "price_per_kwh": 5}
        unsigned = {**dr, "id": "dr-unsigned"}
        signed = sign_entries([("up_dr", dr)], desk, key_path, SITE_ID, 300.0, iat=now.timestamp())
        lines = [json.dumps({"kind": kind, "jws": token}) for kind, token in signed]
        lines.append(json.dumps({"kind": "up_dr", "payload": unsigned}))
        path = tmp_path / "signals.jsonl"
        path.write_text("\n".join(lines) + "\n")
        assert await app.feed_signals(path) == 2
        assert "dr-file" in app.ingest.book["up_dr"] and "dr-unsigned" not in app.ingest.book["up_dr"]
        assert app.gate.refusals == {"unsigned": 1}


def ops_toml(ops: Signer) -> str:
    return (f'[trust]\nrequire_signatures = true\nsite_id = "{SITE_ID}"\n[[trust.keys]]\nkid = "{ops.kid}"\n'
            f'public_key = "{ops.public_key}"\nkinds = ["site_target"]\n')  # fmt: skip


async def test_a_site_target_issued_before_the_one_in_force_is_stale_also_after_a_restart(tmp_path: Path) -> None:
    """QoS 1 may deliver an older target after a newer one: only the newest issued may steer the site."""
    ops = Sender(Signer("ops", new_private_key()))
    async with running(tmp_path, extra=ops_toml(ops.signer)) as (site, app):
        now = site.clock.now()
        older = ops.sign("site_target", {"id": "t-old", "site_target_w": -40000}, now, iat_offset_s=-10)
        newer = ops.sign("site_target", {"id": "t-new", "site_target_w": 4000}, now)
        assert (await app.ingest.receive("site_target", newer)).status == "accepted"
        ack = await app.ingest.receive("site_target", older)
        assert ack.status == "rejected" and "stale" in (ack.reason or "")
        assert app.loop.site_target_w == 4000
    async with running(tmp_path, extra=ops_toml(ops.signer)) as (site, app):
        # issued 5 s before the target in force, however long the restart took (its ttl outlasts a slow machine)
        late = ops.sign("site_target", {"id": "t-late", "site_target_w": -40000}, now, iat_offset_s=-5, ttl=600)
        ack = await app.ingest.receive("site_target", late)
        assert ack.status == "rejected" and "stale" in (ack.reason or "")


async def test_a_command_refused_as_not_stored_leaves_nothing_behind(tmp_path: Path) -> None:
    """The signal and its command's sequence number are one transaction: a failure in either keeps neither, so a
    restart does not find a signal the sender was told was not taken."""
    ops = Sender(Signer("ops", new_private_key()))
    async with running(tmp_path, extra=ops_toml(ops.signer)) as (site, app):
        with sqlite3.connect(tmp_path / "s.db") as db:  # the disk refuses the sequence number's row
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON trust_sequences BEGIN SELECT RAISE(ABORT, 'full'); END")
        target = ops.sign("site_target", {"id": "t1", "site_target_w": -40000}, site.clock.now())
        ack = await app.ingest.receive("site_target", target)
        assert ack.status == "rejected" and "not stored" in (ack.reason or "")
        assert "t1" not in app.ingest.book["site_target"]
        with sqlite3.connect(tmp_path / "s.db") as db:
            db.execute("DROP TRIGGER refuse")
    async with running(tmp_path, extra=ops_toml(ops.signer)) as (_, app):
        assert "t1" not in app.ingest.book["site_target"]
        assert (await app.ingest.receive("site_target", target)).status == "accepted"  # the sender's retry
