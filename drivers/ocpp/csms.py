"""The CSMS's WebSocket server: who may connect, as whom, and which session serves each station.

A station dials wss://<host>:<port><path>/<station id> offering the subprotocol "ocpp2.1" (V2X) or "ocpp2.0.1"
(charge-only: its EVSEs offer no discharge); 2.1 wins when a station offers both, and a handshake with neither gets
HTTP 400 (OCPP 1.6 is not served). Security profiles (OCPP 2.x, docs/ocpp.md):
- 2: TLS and HTTP Basic, user name = the station id of the URL, password from `[ocpp] password_file/_env`;
- 3: TLS with a client certificate signed by `client_ca_file` whose subject CN is the station id (a station
  cannot act as another); a password is then needed only where one is configured for the station;
- 1: Basic over plain ws://, only with `insecure = true`, and a warning at every start.
A refused handshake is logged with the station id and the reason and answered 401 / 403 / 404; nothing else
changes. A station that connects again replaces its older session (it rebooted or lost the link).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ssl
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from drivers.ocpp.evse import OcppEvseDriver
from drivers.ocpp.session import VERSIONS, StationLink

log = structlog.get_logger("drivers.ocpp")

SUBPROTOCOLS = tuple(VERSIONS)  # "ocpp2.1", "ocpp2.0.1": in order of preference
STOP_TIMEOUT_S = 0.8


class CsmsSettings(Protocol):
    """What the CSMS reads of its settings: agent.config.OcppSettings satisfies it (agent/wiring.py passes that), so
    this package does not import the agent's config. The three methods read files or the environment at start."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def client_ca_file(self) -> Path | None: ...
    @property
    def heartbeat_interval_s(self) -> int: ...
    @property
    def response_timeout_s(self) -> float: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def meter_interval_s(self) -> int: ...

    def passwords(self) -> dict[str, str]: ...
    def tls_context(self) -> ssl.SSLContext | None: ...
    def accepted_id_tokens(self) -> frozenset[str] | None: ...


class Csms:
    """Sessions by station id, and the EVSE drivers each station's messages go to."""

    def __init__(
        self,
        settings: CsmsSettings,
        drivers: Iterable[OcppEvseDriver],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        passwords: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`passwords` and `tls` default to what `settings` names (read now: a missing file fails here)."""
        self.settings = settings
        self.now = now
        self.passwords = settings.passwords() if passwords is None else passwords
        self.tls = settings.tls_context() if tls is None else tls
        self.accepted_tokens = settings.accepted_id_tokens()  # read now: a missing file fails before listening
        self.evses: dict[str, dict[int, OcppEvseDriver]] = {}
        for driver in drivers:
            self.evses.setdefault(driver.station_id, {})[driver.evse_id] = driver
        self.links: dict[str, StationLink] = {}
        self.refused: dict[str, int] = {}  # handshakes refused, by reason
        self.server: Server | None = None
        self._prefix = settings.path.rstrip("/") + "/"

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for port 0)."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self.tls is None:
            log.warning("ocpp.insecure", host=self.settings.host, port=self.settings.port,
                        message="OCPP security profile 1: station passwords cross the network in the clear")
        self.server = await serve(
            self._serve,
            self.settings.host,
            self.settings.port,
            ssl=self.tls,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            process_request=self._admit,
            compression=None,
            max_size=self.settings.max_message_bytes,
            ping_interval=20,
            ping_timeout=20,
        )
        log.info("ocpp.listening", host=self.settings.host, port=self.port, tls=self.tls is not None,
                 client_certificates=self.settings.client_ca_file is not None, stations=len(self.evses))

    async def close(self) -> None:
        """Stop listening and close every session (bounded by STOP_TIMEOUT_S); safe to call twice."""
        server, self.server = self.server, None
        if server is None:
            return
        server.close(close_connections=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), STOP_TIMEOUT_S)
        for evses in self.evses.values():
            for driver in evses.values():
                driver.attach(None)

    # ---- handshake ---------------------------------------------------------------------------------------
    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Check path, credentials and certificate before the WebSocket opens; a Response refuses."""
        station = self._station_of(request.path)
        if station is None:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "path", None, request.path[:100])
        if self.settings.client_ca_file is not None:
            common_name = _peer_common_name(connection)
            if common_name != station:
                return self._refuse(connection, HTTPStatus.FORBIDDEN, "certificate", station,
                                    f"client certificate CN {common_name!r} is not the station id")
            if station not in self.passwords:
                return None
        expected = self.passwords.get(station)
        given = _basic_credentials(request.headers)
        if given is None:
            return self._refuse(connection, HTTPStatus.UNAUTHORIZED, "no_credentials", station, "no HTTP Basic")
        user, password = given
        if expected is None or user != station or not hmac.compare_digest(password.encode(), expected.encode()):
            return self._refuse(connection, HTTPStatus.UNAUTHORIZED, "bad_credentials", station,
                                "wrong user or password")
        return None

    def _station_of(self, path: str) -> str | None:
        path = path.split("?", 1)[0]
        if not path.startswith(self._prefix):
            return None
        station = unquote(path[len(self._prefix):])
        return station if station and "/" not in station else None

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, reason: str, station: str | None,
                detail: str) -> Response:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.warning("ocpp.refused", station=station, reason=reason, detail=detail,
                    peer=str(connection.remote_address))
        response = connection.respond(status, f"{status.phrase}\n")
        if status is HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
        return response

    # ---- sessions ---------------------------------------------------------------------------------------
    async def _serve(self, connection: ServerConnection) -> None:
        station = self._station_of(connection.request.path if connection.request else "")
        assert station is not None  # _admit refused anything else
        link = StationLink(station, connection, self.evses.get(station, {}), self.settings.heartbeat_interval_s,
                           self.settings.response_timeout_s, self.now, subprotocol=connection.subprotocol or "",
                           accepted_tokens=self.accepted_tokens, meter_interval_s=self.settings.meter_interval_s)
        old = self.links.get(station)
        self.links[station] = link
        for driver in self.evses.get(station, {}).values():
            driver.attach(link)
        log.info("ocpp.connected", station=station, subprotocol=connection.subprotocol,
                 peer=str(connection.remote_address), replaces=old is not None)
        if old is not None:
            await old._connection.close(code=1000, reason="replaced by a new connection")
        try:
            await link.start()
        except Exception as exc:  # websockets' ConnectionClosed*, or the link failed
            log.info("ocpp.disconnected", station=station, reason=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            await link.stop()
            if self.links.get(station) is link:
                del self.links[station]
                for driver in self.evses.get(station, {}).values():
                    driver.attach(None)


def _basic_credentials(headers: Headers) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic` header, None when absent or malformed (RFC 7617)."""
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def _peer_common_name(connection: ServerConnection) -> str | None:
    certificate: Any = connection.transport.get_extra_info("peercert")
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
