"""Signed commands: the envelope a signal travels in, how a sender makes one, and how the agent checks one.

On the wire a signed command is a JWS in compact serialization (RFC 7515): `header.payload.signature`, each part
base64url. The header names the algorithm (`Ed25519`) and the key (`kid`); the payload is a JSON object

    {"site": "<trust.site_id>", "kind": "<signal kind>", "iat": <unix s>, "exp": <unix s>, "seq": <int>,
     "signal": {<the signal, exactly as an unsigned one>}}

The signature covers the exact bytes sent, so no canonical JSON is needed and any JOSE library can make one.
Checks run cheapest first, so a flood of forgeries costs a header decode each, and a signature check only when the
header names a key the site trusts for that kind:
  header and key (unknown, revoked, not allowed this kind) → signature → claims (kind as the topic, site, issued
  no later than now + skew, not expired, validity no longer than `max_validity_s`) → replay window (replay.py).
Each refusal has a code (`Refusal.code`) so refusals can be counted per reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pydantic_core

from agent.config import TrustedKey, TrustSettings
from agent.signals.models import EARLIEST, LATEST, safe_id, shown
from agent.trust.keys import ACCEPTED_ALGORITHMS, KeyFileError, Signer, b64url_decode, jwk_public, verify_compact

COMMAND_TYPE = "vpp-command+jws"
CLAIMS = ("site", "kind", "iat", "exp", "seq", "signal")
_COMPACT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+")
MAX_SEQ = 2**53  # JSON numbers beyond this lose integer precision in many senders' languages

if TYPE_CHECKING:
    from joserfc.jwk import OKPKey


class Refusal(ValueError):
    """A signed command the site does not take; `code` counts it, the message is the published reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Command:
    """A command whose signature, claims and key rights checked out; `signal` is the inner signal's JSON bytes."""

    kid: str
    issuer: str
    seq: int
    digest: str  # of the whole token: a byte-identical redelivery has the same one
    signal: bytes
    expires_ts: float  # the command's `exp`: what it commands must not be acted on after this
    issued_ts: float  # its `iat`: orders commands where only the newest counts (site targets)


def is_signed(payload: bytes) -> bool:
    """Whether `payload` has the shape of a JWS compact token (three base64url parts), not of a bare signal."""
    return _COMPACT.fullmatch(payload.strip()) is not None


def claimed_signal_id(payload: bytes) -> str | None:
    """The signal id a refused message claims, unverified: echoed in the ack only so its sender can match the
    refusal to what it sent (never trusted for anything else; None unless it is a well-formed id)."""
    try:
        text = payload.strip()
        if is_signed(text):
            data = pydantic_core.from_json(b64url_decode(text.split(b".")[1].decode("ascii"))).get("signal")
        else:
            data = pydantic_core.from_json(text)
        return safe_id(data.get("id")) if isinstance(data, dict) else None
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def command_payload(site: str, kind: str, signal: dict[str, Any], iat: float, exp: float, seq: int) -> bytes:
    claims = {"site": site, "kind": kind, "iat": int(iat), "exp": int(exp), "seq": seq, "signal": signal}
    return json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()


def sign_command(
    signer: Signer, site: str, kind: str, signal: dict[str, Any], iat: float, ttl_s: float, seq: int
) -> str:
    """The signed command a sender publishes on `{prefix}/signals/<kind>`."""
    return signer.sign(command_payload(site, kind, signal, iat, iat + ttl_s, seq), COMMAND_TYPE)


class TrustedKeys:
    """The keys of `[trust]`, ready to verify with (parsed once, replaced whole on reload)."""

    def __init__(self, settings: TrustSettings) -> None:
        self.settings = settings
        self._keys: dict[str, tuple[TrustedKey, OKPKey]] = {}
        for entry in settings.keys:
            # deferred to the first key: joserfc only where signatures are checked (agent/trust/keys.py's docstring)
            from joserfc.errors import JoseError

            try:
                self._keys[entry.kid] = (entry, jwk_public(entry.public_key))
            except (KeyFileError, ValueError, JoseError) as exc:
                raise KeyFileError(f"trust.keys kid {entry.kid!r}: public_key is not an Ed25519 key ({exc})") from exc

    def kinds_without_key(self, kinds: list[str]) -> list[str]:
        """Signal kinds no usable (unrevoked) key may send."""
        allowed = {k for entry, _ in self._keys.values() if not entry.revoked for k in entry.kinds}
        return [k for k in kinds if k not in allowed]

    def verify(self, kind: str, token: bytes, now: datetime, clock_skew_s: float) -> Command:
        """The command in `token`, received on the topic of `kind`; Refusal with code and reason otherwise."""
        try:
            text = token.decode("ascii").strip()
            header_part, _, _ = text.split(".")
            header = pydantic_core.from_json(b64url_decode(header_part))
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refusal("malformed", "not a signed command (JWS compact: header.payload.signature)") from exc
        if not isinstance(header, dict) or header.get("alg") not in ACCEPTED_ALGORITHMS:
            raise Refusal("malformed", f"JWS header alg must be {ACCEPTED_ALGORITHMS[0]}")
        kid = header.get("kid")
        found = self._keys.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise Refusal("unknown_key", f"key {shown(kid)} is not trusted by this site")
        entry, public = found
        if entry.revoked:
            raise Refusal("revoked_key", f"key {kid!r} is revoked")
        if kind not in entry.kinds:
            raise Refusal("kind_not_allowed", f"key {kid!r} may not send {kind} (it may send {', '.join(entry.kinds)})")
        from joserfc.errors import JoseError  # deferred (agent/trust/keys.py's docstring)

        try:
            payload = verify_compact(text, public)
        except JoseError as exc:
            raise Refusal("bad_signature", f"signature does not verify with key {kid!r}") from exc
        claims = _claims(payload)
        self._check_claims(kind, claims, now, clock_skew_s)
        signal = pydantic_core.to_json(claims["signal"])
        digest = hashlib.sha256(text.encode("ascii")).hexdigest()
        return Command(
            kid=kid, issuer=entry.issuer or kid, seq=claims["seq"], digest=digest, signal=signal,
            expires_ts=float(claims["exp"]), issued_ts=float(claims["iat"]),
        )  # fmt: skip

    def _check_claims(self, kind: str, claims: dict[str, Any], now: datetime, skew_s: float) -> None:
        if claims["kind"] != kind:
            raise Refusal("kind_mismatch", f"signed for {shown(claims['kind'])}, received on the {kind} topic")
        if claims["site"] != self.settings.site_id:
            raise Refusal("wrong_site", f"signed for site {shown(claims['site'])}, this is {self.settings.site_id!r}")
        t = now.timestamp()
        iat, exp = claims["iat"], claims["exp"]
        if iat > t + skew_s:
            raise Refusal("not_yet_valid", f"issued {iat - t:.0f} s in the future (clock skew allowed {skew_s:g} s)")
        # strict: what a command orders lasts until its exp at most (an activation stops there), so an expired one
        # would be acknowledged and never acted on; the skew allowance is for a sender whose clock runs ahead
        if exp <= t:
            raise Refusal("expired", f"expired {t - exp:.0f} s ago")
        if exp - iat > self.settings.max_validity_s:
            longest = self.settings.max_validity_s
            raise Refusal("too_long", f"valid {exp - iat:.0f} s, longer than trust.max_validity_s {longest:g}")


def _claims(payload: bytes) -> dict[str, Any]:
    """The signed claims, each present and of its type (a signer's bug, but one we must not act on)."""
    try:
        claims = pydantic_core.from_json(payload)
    except ValueError as exc:
        raise Refusal("malformed", "signed payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise Refusal("malformed", "signed payload is not a JSON object")
    missing = [c for c in CLAIMS if c not in claims]
    if missing:
        raise Refusal("malformed", f"signed payload lacks {', '.join(missing)}")
    extra = sorted(set(claims) - set(CLAIMS))
    if extra:
        raise Refusal("malformed", f"signed payload has unknown claim(s) {shown(extra)}")
    earliest, latest = EARLIEST.timestamp(), LATEST.timestamp()
    for name in ("iat", "exp"):
        value = claims[name]  # NaN and ±Infinity (which a JSON parser may take) fail the range check too
        if not isinstance(value, int | float) or isinstance(value, bool) or not earliest <= value < latest:
            raise Refusal(
                "malformed", f"{name} must be seconds since 1970 between {EARLIEST.year} and {LATEST.year}"
            )
    seq = claims["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < MAX_SEQ:
        raise Refusal("malformed", f"seq must be an integer from 0 to 2^53, got {shown(seq)}")
    if not isinstance(claims["site"], str) or not isinstance(claims["kind"], str):
        raise Refusal("malformed", "site and kind must be strings")
    if not isinstance(claims["signal"], dict):
        raise Refusal("malformed", "signal must be a JSON object")
    return claims
