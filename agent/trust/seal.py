"""The agent's own signature on what it publishes (acks, status, telemetry, the audit head), so a reader can tell
the agent's messages from a forgery by anyone else who can publish under its prefix.

A sealed message is a JWS compact token (agent/trust/keys.py) whose payload is
    {"site": "<site id>", "topic": "<topic it was published on>", "iat": <unix s>, "body": <the message as JSON>}
The topic is inside the signature, so a genuine ack re-published as a status (or on another site's tree) does not
verify as one; `iat` lets a reader refuse an old genuine message replayed as new. Without `[trust] agent_key_file`
the agent publishes the bodies unsigned, as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.ports import Bus, Handler
from agent.trust.keys import Signer, jwk_public, verify_compact

MESSAGE_TYPE = "vpp-agent-message+jws"


class NotSealed(ValueError):
    """A message that is not a valid seal of the expected key; the message says why."""


class Sealer:
    def __init__(self, signer: Signer, site_id: str, clock: Callable[[], datetime]) -> None:
        self.signer = signer
        self.site_id = site_id
        self.clock = clock
        self._head = b'{"site":' + json.dumps(site_id).encode() + b',"topic":'

    def seal(self, topic: str, body: bytes) -> bytes:
        """`body` (JSON the agent made) wrapped and signed; embedded as is, so it is never parsed again."""
        claims = b"".join(
            [self._head, json.dumps(topic).encode(), b',"iat":', str(int(self.clock().timestamp())).encode(),
             b',"body":', body, b"}"]
        )  # fmt: skip
        return self.signer.sign(claims, MESSAGE_TYPE).encode("ascii")


@dataclass(frozen=True)
class Sealed:
    site: str
    topic: str
    iat: int
    body: Any


def open_sealed(token: bytes | str, public_key: str, topic: str | None = None) -> Sealed:
    """The message inside a sealed token if the agent's key (config form) signed it, and for `topic` when given."""
    from joserfc.errors import JoseError  # deferred (agent/trust/keys.py's docstring)

    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    try:
        claims = json.loads(verify_compact(text.strip(), jwk_public(public_key)))
        sealed = Sealed(claims["site"], claims["topic"], int(claims["iat"]), claims["body"])
    except (JoseError, ValueError, KeyError, TypeError) as exc:
        raise NotSealed(f"not signed by this agent's key ({type(exc).__name__})") from exc
    if topic is not None and sealed.topic != topic:
        raise NotSealed(f"signed for topic {sealed.topic!r}, seen on {topic!r}")
    return sealed


class SealedBus:
    """A Bus whose publishes are sealed; what the agent's own parts (ingest, status, telemetry) publish through.
    Device bridges keep the plain link: devices expect their own formats."""

    def __init__(self, bus: Bus, sealer: Sealer) -> None:
        self.bus = bus
        self.sealer = sealer

    @property
    def connected(self) -> bool:
        return self.bus.connected

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, retained: bool = True) -> None:
        self.bus.subscribe(topic_filter, handler, qos=qos, retained=retained)

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, buffer: bool = True
    ) -> bool:
        body = payload.encode() if isinstance(payload, str) else payload
        return await self.bus.publish(topic, self.sealer.seal(topic, body), qos=qos, retain=retain, buffer=buffer)
