"""The command gate refuses every kind of untrusted command with its own code, and takes a good one once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config import TrustSettings
from agent.store import Store
from agent.trust.commands import Refusal, sign_command
from agent.trust.gate import CommandGate, Opened
from agent.trust.keys import Signer, new_private_key

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
SIGNAL = {"id": "a", "site_target_w": 1000.0}


def settings(desk: Signer, **extra: object) -> TrustSettings:
    keys = [{"kid": desk.kid, "public_key": desk.public_key, "kinds": ["site_target", "prices"]}]
    return TrustSettings.model_validate({"site_id": "site-a", "keys": keys, "replay_window": 16, **extra})


@pytest.fixture
def desk() -> Signer:
    return Signer("desk", new_private_key())


def gate_for(tmp_path: Path, desk: Signer, required: bool = True, **extra: object) -> CommandGate:
    return CommandGate(settings(desk, **extra), required, Store(tmp_path / "s.db"), clock_skew_s=5.0)


def token(signer: Signer, seq: int = 1, site: str = "site-a", kind: str = "site_target", iat: float | None = None,
          ttl: float = 60.0, signal: dict[str, object] | None = None) -> bytes:  # fmt: skip
    issued = NOW.timestamp() if iat is None else iat
    return sign_command(signer, site, kind, signal or SIGNAL, issued, ttl, seq).encode()


async def take(gate: CommandGate, opened: Opened) -> None:
    """What SignalIngest does once a command is admitted: its sequence row on disk, then remembered."""
    row = gate.sequence(opened)
    if row is not None:
        await gate.replay.store.save_sequence(row)
    gate.taken(row)


def refusal(gate: CommandGate, payload: bytes, kind: str = "site_target") -> str:
    with pytest.raises(Refusal) as caught:
        gate.open(kind, payload, NOW)
    return caught.value.code


async def test_a_good_command_opens_to_its_signal_and_is_taken_once(tmp_path: Path, desk: Signer) -> None:
    gate = gate_for(tmp_path, desk)
    good = token(desk)
    opened = gate.open("site_target", good, NOW)
    assert json.loads(opened.signal) == SIGNAL and opened.command is not None and not opened.redelivered
    await take(gate, opened)
    again = gate.open("site_target", good, NOW)  # the broker delivers the same bytes again
    assert again.redelivered
    assert gate.refusals == {}


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unsigned", "unsigned"),
        ("not a JWS", "unsigned"),
        ("JWS without alg", "malformed"),
        ("alg none", "malformed"),
        ("stranger key under a trusted kid", "bad_signature"),
        ("tampered payload", "bad_signature"),
        ("unknown kid", "unknown_key"),
        ("kind the key may not send", "kind_not_allowed"),
        ("signed for another kind", "kind_mismatch"),
        ("another site", "wrong_site"),
        ("expired", "expired"),
        ("issued in the future", "not_yet_valid"),
        ("valid for a month", "too_long"),
    ],
)
def test_each_untrusted_command_is_refused_with_its_code(tmp_path: Path, desk: Signer, case: str, code: str) -> None:
    gate = gate_for(tmp_path, desk)
    stranger = Signer("desk", new_private_key())
    kind = "site_target"
    payload = {
        "unsigned": json.dumps(SIGNAL).encode(),
        "not a JWS": b"eyJhbGciOiJub25lIn0.e30",  # two parts
        "JWS without alg": b"e30.e30.AAAA",
        "alg none": b"eyJhbGciOiJub25lIiwia2lkIjoiZGVzayJ9.e30.AAAA",
        "stranger key under a trusted kid": token(stranger),
        "unknown kid": token(Signer("nobody", desk.key)),
        "signed for another kind": token(desk, kind="prices"),
        "another site": token(desk, site="site-b"),
        "expired": token(desk, iat=NOW.timestamp() - 120, ttl=60),
        "issued in the future": token(desk, iat=NOW.timestamp() + 60),
        "valid for a month": token(desk, ttl=30 * 86400),
    }.get(case)
    if case == "tampered payload":
        header, body, sig = token(desk).split(b".")
        payload = b".".join([header, body[:-4] + (b"AAAA" if body[-4:] != b"AAAA" else b"BBBB"), sig])
    if case == "kind the key may not send":
        payload, kind = token(desk, kind="up_dr"), "up_dr"
    assert payload is not None
    assert refusal(gate, payload, kind) == code
    assert gate.refusals[code] == 1


def test_a_revoked_key_is_refused_and_a_reload_revokes_without_restart(tmp_path: Path, desk: Signer) -> None:
    gate = gate_for(tmp_path, desk)
    good = token(desk)
    assert gate.open("site_target", good, NOW).command is not None
    revoked = settings(desk).model_dump()
    revoked["keys"][0]["revoked"] = True
    gate.reload(TrustSettings.model_validate(revoked), required=True)
    assert refusal(gate, good) == "revoked_key"


def test_unsigned_signals_pass_only_where_the_site_allows_them(tmp_path: Path, desk: Signer) -> None:
    lab = gate_for(tmp_path, desk, required=False)
    assert json.loads(lab.open("site_target", json.dumps(SIGNAL).encode(), NOW).signal) == SIGNAL
    assert refusal(lab, token(desk, site="site-b")) == "wrong_site"  # a signed one is still checked in a lab


async def test_sequence_numbers_out_of_order_once_each_within_the_window_and_across_restarts(
    tmp_path: Path, desk: Signer
) -> None:
    gate = gate_for(tmp_path, desk)  # window 16
    for seq in (5, 3, 18, 4):  # QoS 1 may reorder: all inside the window of the newest (18)
        opened = gate.open("site_target", token(desk, seq=seq, signal={"id": f"s{seq}", "site_target_w": 1.0}), NOW)
        await take(gate, opened)
    assert refusal(gate, token(desk, seq=3, signal={"id": "other", "site_target_w": 9.0})) == "replay"  # reused
    assert refusal(gate, token(desk, seq=4, ttl=61)) == "replay"  # same number, other bytes
    assert refusal(gate, token(desk, seq=2)) == "replay"  # at or below 18 - 16
    assert gate.open("site_target", token(desk, seq=7), NOW).command is not None  # a gap is fine
    restarted = gate_for(tmp_path, desk)  # the same state file: numbers taken before the restart stay taken
    assert refusal(restarted, token(desk, seq=3, signal={"id": "other", "site_target_w": 9.0})) == "replay"
    assert refusal(restarted, token(desk, seq=2)) == "replay"


async def test_what_is_kept_per_key_stays_within_the_window(tmp_path: Path, desk: Signer) -> None:
    gate = gate_for(tmp_path, desk)  # window 16
    for seq in range(1, 201):
        await take(
            gate,
            gate.open("site_target", token(desk, seq=seq, signal={"id": f"s{seq}", "site_target_w": 1.0}), NOW)
        )
    rows = gate.replay.store.load_sequences()
    assert len(rows) <= 17 and max(q for _, q, _ in rows) == 200
    assert len(gate.replay._keys["desk"].seen) <= 2 * 16


@pytest.mark.parametrize(
    ("iat", "exp"),
    [
        ("NaN", None),  # NaN compares false both ways: it used to pass every time check
        (None, "NaN"),  # and an activation under it never expired
        (None, "Infinity"),
        ("-Infinity", None),
        (None, 10**400),  # used to overflow while the refusal was written: no ack at all
        (-(10**400), None),
        (True, None),
        (None, "2099"),
    ],
)
def test_times_that_are_not_finite_seconds_in_the_era_are_malformed(
    tmp_path: Path, desk: Signer, iat: object, exp: object
) -> None:
    gate = gate_for(tmp_path, desk)
    now = int(NOW.timestamp())
    claims = {"site": "site-a", "kind": "site_target", "iat": now, "exp": now + 60, "seq": 1, "signal": SIGNAL}
    text = json.dumps(claims)
    for name, value in (("iat", iat), ("exp", exp)):
        if value is not None:
            literal = value if isinstance(value, str) and value != "2099" else json.dumps(value)
            text = text.replace(f'"{name}": {claims[name]}', f'"{name}": {literal}')
    assert refusal(gate, desk.sign(text.encode(), "vpp-command+jws").encode()) == "malformed"


def test_a_command_past_its_exp_is_refused_even_within_the_clock_skew(tmp_path: Path, desk: Signer) -> None:
    """What a command orders lasts until its exp: taking it after that would acknowledge an order never carried out."""
    gate = gate_for(tmp_path, desk)
    assert refusal(gate, token(desk, iat=NOW.timestamp() - 61, ttl=60)) == "expired"
    assert gate.open("site_target", token(desk, iat=NOW.timestamp() - 59, ttl=60), NOW).command is not None


def test_a_reload_that_turns_signatures_on_closes_the_gate(tmp_path: Path, desk: Signer) -> None:
    lab = gate_for(tmp_path, desk, required=False)
    unsigned = json.dumps(SIGNAL).encode()
    assert lab.open("site_target", unsigned, NOW).command is None
    lab.reload(settings(desk), required=True)
    assert refusal(lab, unsigned) == "unsigned"
