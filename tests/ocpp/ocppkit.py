"""A throw-away CA, the agent's CSMS on a free loopback port, and a raw OCPP-J client for golden tests.

Imported as `ocppkit` (the conftest puts this folder on sys.path). The raw client speaks JSON frames over a real
TLS WebSocket with nothing of drivers/ocpp or the ocpp library in between, so a golden test checks the CSMS
against the specification's text alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import ClientConnection, connect

from agent.config import OcppSettings
from drivers.ocpp.csms import Csms
from drivers.ocpp.evse import OcppEvseDriver
from sim_devices.ports import free_port_block

HOST = "127.0.0.1"
PASSWORD = "correct-horse-battery-staple"


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 / localhost, valid for a day (EC P-256: fast to make)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("vpp-test-ca")).issuer_name(_name("vpp-test-ca"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")])
    cert = (
        x509.CertificateBuilder().subject_name(_name(HOST)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(san, critical=False).sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pki


def password_file(directory: Path, stations: list[str]) -> Path:
    path = directory / "ocpp-passwords.json"
    path.write_text(json.dumps(dict.fromkeys(stations, PASSWORD)))
    return path


def settings(pki: Pki, passwords: Path, port: int) -> OcppSettings:
    return OcppSettings(enabled=True, host=HOST, port=port, cert_file=str(pki.cert), key_file=str(pki.key),
                        password_file=str(passwords), response_timeout_s=5.0)


@contextlib.asynccontextmanager
async def running_csms(tmp_path: Path, drivers: list[OcppEvseDriver]) -> AsyncIterator[tuple[Csms, Pki]]:
    """The agent's CSMS over TLS on a free port, serving `drivers`, with every station's password PASSWORD."""
    pki = make_ca(tmp_path)
    stations = sorted({d.station_id for d in drivers} | {"CP-OTHER"})
    csms = Csms(settings(pki, password_file(tmp_path, stations), free_port_block(1)), drivers)
    await csms.start()
    try:
        yield csms, pki
    finally:
        await csms.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def client_tls(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


@contextlib.asynccontextmanager
async def raw_station(csms: Csms, pki: Pki, station: str, password: str = PASSWORD,
                      subprotocols: tuple[str, ...] = ("ocpp2.1",)) -> AsyncIterator[RawStation]:
    url = f"wss://{HOST}:{csms.port}/ocpp/{station}"
    async with connect(url, ssl=client_tls(pki), subprotocols=list(subprotocols),  # type: ignore[arg-type]
                       additional_headers=basic(station, password), compression=None) as ws:
        yield RawStation(ws)


class RawStation:
    """OCPP-J frames by hand: send a CALL and read its answer, or read the CSMS's CALL and answer it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.count = 0

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self.count += 1
        message_id = f"m{self.count}"
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        answer = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        assert answer[1] == message_id, answer
        return answer

    async def send_raw(self, frame: str) -> list[Any]:
        await self.ws.send(frame)
        return json.loads(await asyncio.wait_for(self.ws.recv(), 10))

    async def expect_call(self) -> list[Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        assert frame[0] == 2, frame
        return frame

    async def answer(self, call_frame: list[Any], payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps([3, call_frame[1], payload]))

    async def boot(self) -> None:
        answer = await self.call("BootNotification", {
            "reason": "PowerUp", "chargingStation": {"model": "Golden", "vendorName": "Hand-written"}})
        assert answer[0] == 3 and answer[2]["status"] == "Accepted", answer
