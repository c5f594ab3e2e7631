"""The audit trail of a running agent on a simulated site: accepted commands and overrides with their key, sequence
number and token digest; a plan change; a flood of forged commands adding rows per reason, not per message."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sitekit import eventually
from test_events import running
from test_signed_commands import SITE_ID, Sender, trust_toml

from agent.audit.chain import check_rows
from agent.store import Store
from agent.trust.keys import Signer, new_private_key

FLOOD = 5000


def rows_of(path: Path) -> list[tuple[str, dict[str, object]]]:
    store = Store(path)
    try:
        rows = store.audit_rows()
        assert check_rows(rows).broken is None
        return [(r.kind, json.loads(r.data)) for r in rows]
    finally:
        store.close()


def keys_toml(desk: Sender, tso: Sender, ops: Sender) -> str:
    return trust_toml(desk.signer, tso.signer, Signer("old", new_private_key())) + (
        f'[[trust.keys]]\nkid = "ops"\npublic_key = "{ops.signer.public_key}"\nkinds = ["site_target"]\n'
        'issuer = "site operator"\n'
    )


async def test_accepted_commands_and_overrides_are_audited_with_their_key(tmp_path: Path) -> None:
    desk, tso, ops = (Sender(Signer(k, new_private_key())) for k in ("desk", "tso", "ops"))
    async with running(tmp_path, extra=keys_toml(desk, tso, ops)) as (site, app):
        now = site.clock.now()
        award = desk.sign("as_award", {"id": "a1", "product": "S-FRR", "block_start": now,
                                       "block_end": now + timedelta(hours=1), "up_w": 20000, "down_w": 20000}, now)
        activation = tso.sign("as_activation", {"id": "act1", "award_id": "a1", "at": now, "value": 0.5}, now)
        target = ops.sign("site_target", {"id": "t1", "site_target_w": 4000}, now)  # fmt: skip
        assert (await app.ingest.receive("as_award", award)).status == "accepted"
        assert (await app.ingest.receive("as_activation", activation)).status == "accepted"
        assert (await app.ingest.receive("site_target", target)).status == "accepted"
        assert (await app.ingest.receive("as_award", award)).status == "duplicate"  # not a second row
        app.reload_trust(app.config.model_copy(update={"trust": app.config.trust.model_copy(
            update={"keys": [k.model_copy(update={"revoked": True}) if k.kid == "tso" else k
                             for k in app.config.trust.keys]})}))  # SIGHUP revoking the TSO's key
        app.trust_reload_failed("config.toml: 1 problem(s):\n  trust.keys: ...")
        await eventually(lambda: len(app.store.audit_rows()) >= 6, what="the commands flushed to the audit")
    rows = rows_of(tmp_path / "s.db")
    kinds = [k for k, _ in rows]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    start = rows[0][1]
    assert start["signatures_required"] is True and sorted(start["keys"]) == ["desk", "ops", "tso"]  # type: ignore
    assert start["revoked"] == ["old"]
    taken = [(k, d) for k, d in rows if k == "command" or d.get("what") == "site_target"]
    assert [(k, d["signal_kind"], d["signal_id"], d["kid"], d["seq"]) for k, d in taken] == [
        ("command", "as_award", "a1", "desk", 1),
        ("command", "as_activation", "act1", "tso", 1),
        ("override", "site_target", "t1", "ops", 1),
    ]
    assert [d["digest"] for _, d in taken] == [hashlib.sha256(t).hexdigest() for t in (award, activation, target)]
    assert taken[2][1]["issuer"] == "site operator" and taken[2][1]["site_target_w"] == "4000"
    assert taken[1][1]["value"] == "0.5"
    reloads = [d for k, d in rows if k == "override" and d["what"] != "site_target"]
    assert reloads[0]["what"] == "trust_reload" and reloads[0]["revoked"] == ["old", "tso"]
    assert sorted(reloads[0]["keys"]) == ["desk", "ops"]  # type: ignore[arg-type]
    assert reloads[1] == {"what": "trust_reload_failed", "error": "config.toml: 1 problem(s):"}


async def test_a_flood_of_forgeries_adds_rows_per_reason_not_per_message(tmp_path: Path) -> None:
    desk, tso, ops = (Sender(Signer(k, new_private_key())) for k in ("desk", "tso", "ops"))
    stranger = Sender(Signer("tso", new_private_key()))  # claims to be the TSO's gateway
    nobody = Sender(Signer("nobody", new_private_key()))
    async with running(tmp_path, extra=keys_toml(desk, tso, ops)) as (site, app):
        await eventually(lambda: app.audit.head is not None, what="the start row written")
        before = len(app.store.audit_rows())
        for i in range(FLOOD):
            signal = {"id": f"f{i}", "award_id": "a1", "at": site.clock.now(), "value": 1.0}
            forgery = (stranger, nobody)[i % 2].sign("as_activation", signal, site.clock.now())
            if i % 5 == 0:  # some without any signature
                forgery = json.dumps(signal, default=str).encode()
            assert (await app.ingest.receive("as_activation", forgery)).status == "rejected"
        assert app.events.activation.get("a1", 0.0) == 0.0
        samples = app.config.trust.audit_refusal_samples
        await eventually(lambda: len(app.store.audit_rows()) >= before + 3 * samples, what="samples flushed")
    rows = rows_of(tmp_path / "s.db")[before:]
    counts = Counter(k for k, _ in rows)
    reasons = {d["reason"] for k, d in rows if k == "refusals"}
    assert reasons == {"bad_signature", "unknown_key", "unsigned"}
    # per reason and hour: `samples` sampled rows and one count row (the flood may straddle an hour: twice that)
    assert counts["refused"] <= 2 * len(reasons) * samples and counts["refusals"] <= 2 * len(reasons)
    assert sum(d["count"] for k, d in rows if k == "refusals") == FLOOD  # type: ignore[misc]
    assert set(counts) == {"refused", "refusals", "stop"}
    print(f"{FLOOD} forgeries added {len(rows) - 1} audit rows ({dict(counts)})")


async def test_a_new_plan_and_an_unsigned_command_are_audited(tmp_path: Path) -> None:
    async with running(tmp_path, mode="dispatch") as (site, app):
        assert app.dispatcher is not None
        await eventually(lambda: app.dispatcher is not None and app.dispatcher.solves >= 1, timeout_s=60,
                         what="a first plan")  # fmt: skip
        solves = app.dispatcher.solves
        start = site.clock.now().replace(minute=0, second=0, microsecond=0)
        prices = json.dumps({"id": "p1", "start": start.isoformat(), "interval_s": 1800,
                             "prices_per_kwh": [5.0] * 8 + [80.0] * 40}).encode()  # fmt: skip
        assert (await app.ingest.receive("prices", prices)).status == "accepted"
        await eventually(lambda: app.dispatcher is not None and app.dispatcher.solves > solves, timeout_s=60,
                         what="a plan on the new prices")  # fmt: skip
        await eventually(lambda: sum(r.kind == "plan" for r in app.store.audit_rows()) >= 2, what="plans audited")
    rows = rows_of(tmp_path / "s.db")
    assert rows[0][1]["signatures_required"] is False
    command = next(d for k, d in rows if k == "command")
    assert command["issuer"] == command["kid"] == "unsigned" and command["seq"] is None
    assert command["digest"] == hashlib.sha256(prices).hexdigest()
    plans = [d for k, d in rows if k == "plan"]
    assert len({p["schedule_sha256"] for p in plans}) == len(plans)  # a row per change, not per solve
    plan = plans[-1]
    assert plan["method"] == "full" and plan["assets"] == 2 and int(plan["steps"]) > 0  # type: ignore[call-overload]
    assert {"start", "end", "net_cost", "breakdown", "solve_s", "step_s"} <= set(plan)
    float(plan["net_cost"])  # type: ignore[arg-type]  # a decimal string
    assert SITE_ID  # the signed tests' site id is the one keys_toml trusts
