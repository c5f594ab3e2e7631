"""A throw-away CA, the agent's CSMS on a free loopback port, a raw OCPP-J client for golden tests, and stations
built on the `ocpp` library's own client classes.

Imported as `ocppkit` (the conftest puts this folder on sys.path). The raw client speaks JSON frames over a real
TLS WebSocket with nothing of drivers/ocpp or the ocpp library in between, so a golden test checks the CSMS
against the specification's text alone. The library stations (`lib_station`, 2.0.1 or 2.1) are a second,
independent peer: written here, not in sim_devices, so the simulator cannot share a misreading with them.
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
from ocpp import v21, v201
from ocpp.routing import on
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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
    ca_key: Path


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
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "ca.key")
    pki.ca_key.write_bytes(_pem_key(ca_key))
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_pem_key(key))
    return pki


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def client_certificate(pki: Pki, common_name: str, directory: Path) -> tuple[Path, Path]:
    """A station's client certificate (subject CN = `common_name`) signed by `pki`'s CA: (cert, key) PEM files."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path, key_path = directory / f"{common_name}.pem", directory / f"{common_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return cert_path, key_path


def fill_site(tmp_path: Path, template: str, stations: list[str], **values: object) -> tuple[str, Pki]:
    """`template` (an agent config, often with its [simulation]) with its placeholders filled, and the CA made for it:
    {cert} {key} {ca} from a new CA, {passwords} for `stations`, {state} in `tmp_path`, {ocpp_port} and {port} on
    free loopback ports; `values` fill or override any placeholder (a test that needs to know a port passes it)."""
    pki = make_ca(tmp_path)
    filled: dict[str, object] = {"cert": pki.cert, "key": pki.key, "ca": pki.ca,
                                 "passwords": password_file(tmp_path, stations), "state": tmp_path / "state.db"}
    for name in ("ocpp_port", "port"):
        if "{" + name + "}" in template:
            filled[name] = free_port_block(1)
    filled.update(values)
    text = template
    for key, value in filled.items():
        text = text.replace("{" + key + "}", str(value))
    return text, pki


def password_file(directory: Path, stations: list[str]) -> Path:
    path = directory / "ocpp-passwords.json"
    path.write_text(json.dumps(dict.fromkeys(stations, PASSWORD)))
    return path


def settings(pki: Pki, passwords: Path, port: int, **overrides: Any) -> OcppSettings:
    return OcppSettings(**{"enabled": True, "host": HOST, "port": port, "cert_file": str(pki.cert),
                           "key_file": str(pki.key), "password_file": str(passwords), "response_timeout_s": 5.0,
                           **overrides})


@contextlib.asynccontextmanager
async def running_csms(tmp_path: Path, drivers: list[OcppEvseDriver], **overrides: Any,
                       ) -> AsyncIterator[tuple[Csms, Pki]]:
    """The agent's CSMS over TLS on a free port, serving `drivers`, with every station's password PASSWORD;
    `overrides` are further `[ocpp]` settings (client_ca_file is given the test CA when set to True)."""
    pki = make_ca(tmp_path)
    if overrides.get("client_ca_file") is True:
        overrides["client_ca_file"] = str(pki.ca)
    stations = sorted({d.station_id for d in drivers} | {"CP-OTHER"})
    csms = Csms(settings(pki, password_file(tmp_path, stations), free_port_block(1), **overrides), drivers)
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
                      subprotocols: tuple[str, ...] = ("ocpp2.1",), echo_composite: bool = True,
                      ) -> AsyncIterator[RawStation]:
    url = f"wss://{HOST}:{csms.port}/ocpp/{station}"
    async with connect(url, ssl=client_tls(pki), subprotocols=list(subprotocols),  # type: ignore[arg-type]
                       additional_headers=basic(station, password), compression=None) as ws:
        raw = RawStation(ws, echo_composite)
        reader = asyncio.create_task(raw.read_frames())
        try:
            yield raw
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


class RawStation:
    """OCPP-J frames by hand: send a CALL and read its answer, or read the CSMS's CALL and answer it.

    A reader sorts what the CSMS sends: its CALLs wait for `expect_call`, answers for `call` / `send_raw`. With
    `echo_composite`, a GetCompositeSchedule is answered at once with the last setpoint this station accepted (so a
    test that is not about K08 sees only the calls it is about); `answered` keeps every (action, payload) answered."""

    def __init__(self, ws: ClientConnection, echo_composite: bool = True) -> None:
        self.ws = ws
        self.count = 0
        self.echo_composite = echo_composite
        self.calls: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.answers: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.accepted_setpoint_w: float | None = None
        self.composites_answered = 0

    async def read_frames(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # the test asserts how the link ended, not this reader
            await self._read_frames()

    async def _read_frames(self) -> None:
        async for text in self.ws:
            frame = json.loads(text)
            if frame[0] == 2 and frame[2] == "GetCompositeSchedule" and self.echo_composite:
                await self.ws.send(json.dumps([3, frame[1], composite_answer(frame[3], self.accepted_setpoint_w)]))
                self.composites_answered += 1
            elif frame[0] == 2:
                self.calls.put_nowait(frame)
            else:
                self.answers.put_nowait(frame)

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self.count += 1
        message_id = f"m{self.count}"
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        answer = await asyncio.wait_for(self.answers.get(), 10)
        assert answer[1] == message_id, answer
        return answer

    async def send_raw(self, frame: str) -> list[Any]:
        await self.ws.send(frame)
        return await asyncio.wait_for(self.answers.get(), 10)

    async def expect_call(self) -> list[Any]:
        return await asyncio.wait_for(self.calls.get(), 10)

    async def answer(self, call_frame: list[Any], payload: dict[str, Any]) -> None:
        asked = _setpoint_of(call_frame)
        if payload.get("status") == "Accepted" and asked is not None:
            self.accepted_setpoint_w = asked
        await self.ws.send(json.dumps([3, call_frame[1], payload]))

    async def boot(self, variables: dict[str, str] | None = None) -> list[Any]:
        """BootNotification, then answer the CSMS's SetVariables (each variable Accepted unless `variables` names
        another status for "Component.Variable"); returns that SetVariables CALL."""
        answer = await self.call("BootNotification", {
            "reason": "PowerUp", "chargingStation": {"model": "Golden", "vendorName": "Hand-written"}})
        assert answer[0] == 3 and answer[2]["status"] == "Accepted", answer
        request = await self.expect_call()
        assert request[2] == "SetVariables", request
        results = []
        for item in request[3]["setVariableData"]:
            name = f"{item['component']['name']}.{item['variable']['name']}"
            status = (variables or {}).get(name, "Accepted")
            result = {"attributeStatus": status, "component": item["component"], "variable": item["variable"]}
            if status != "Accepted":
                result["attributeStatusInfo"] = {"reasonCode": "ValueTooLow", "additionalInfo": "golden refusal"}
            results.append(result)
        await self.answer(request, {"setVariableResult": results})
        return request


def _setpoint_of(call_frame: list[Any]) -> float | None:
    """The setpoint (or 2.0.1 limit) a SetChargingProfile / UpdateDynamicSchedule CALL asks for, else None."""
    action, payload = call_frame[2], call_frame[3]
    if action == "UpdateDynamicSchedule":
        return float(payload["scheduleUpdate"]["setpoint"])
    if action == "SetChargingProfile" and payload["chargingProfile"]["chargingProfilePurpose"] == "TxProfile":
        period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
        return float(period.get("setpoint", period.get("limit")))
    return None


def composite_answer(request: dict[str, Any], setpoint_w: float | None, version: str = "2.1") -> dict[str, Any]:
    """A GetCompositeScheduleResponse following `setpoint_w` (2.1: a CentralSetpoint period; 2.0.1: a limit)."""
    if setpoint_w is None:
        return {"status": "Rejected", "statusInfo": {"reasonCode": "NoProfile"}}
    period: dict[str, Any] = {"startPeriod": 0}
    if version == "2.1":
        period.update(setpoint=setpoint_w, operationMode="CentralSetpoint")
    else:
        period["limit"] = setpoint_w
    return {"status": "Accepted", "schedule": {
        "evseId": request["evseId"], "duration": request["duration"],
        "scheduleStart": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "chargingRateUnit": "W", "chargingSchedulePeriod": [period]}}


class _LibHandlers:
    """A station built on the `ocpp` library's own client classes (snake_case `@on` handlers, its call classes):
    an independent peer for the CSMS, written here and not in sim_devices. It records every CALL of the CSMS and
    answers as a compliant station would; `variable_status`, `composite_w` and `reject_composite` bend it."""

    version = "2.1"
    results: Any

    def setup(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.variable_status: dict[str, str] = {}  # "Component.Variable" -> status other than Accepted
        self.tx_w: float | None = None  # the TxProfile's value (2.1 setpoint / 2.0.1 limit) in force
        self.default_w: float | None = None  # the TxDefaultProfile's limit
        self.composite_w: float | None = None  # answer this instead of tx_w (a station that misreads the profile)
        self.composite_rtt_seen = 0

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.received if name == action]

    @on("SetVariables")
    async def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        self.received.append(("SetVariables", {"set_variable_data": set_variable_data}))
        results = []
        for item in set_variable_data:
            name = f"{item['component']['name']}.{item['variable']['name']}"
            status = self.variable_status.get(name, "Accepted")
            result = {"attribute_status": status, "component": item["component"], "variable": item["variable"]}
            if status != "Accepted":
                result["attribute_status_info"] = {"reason_code": "OutOfRange"}
            results.append(result)
        return self.results.SetVariables(set_variable_result=results)

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        self.received.append(("SetChargingProfile", {"evse_id": evse_id, "charging_profile": charging_profile}))
        period = charging_profile["charging_schedule"][0]["charging_schedule_period"][0]
        value = period.get("setpoint", period.get("limit"))
        if charging_profile["charging_profile_purpose"] == "TxDefaultProfile":
            self.default_w = value
        else:
            self.tx_w = value
        return self.results.SetChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    async def on_get_composite_schedule(self, duration: int, evse_id: int, **_: Any) -> Any:
        self.received.append(("GetCompositeSchedule", {"duration": duration, "evse_id": evse_id, **_}))
        value = self.composite_w if self.composite_w is not None else self.tx_w
        if value is None:
            value = self.default_w if self.default_w is not None else 0.0
        period: dict[str, Any] = {"start_period": 0}
        if self.version == "2.1":
            period.update(setpoint=value, operation_mode="CentralSetpoint")
        else:
            period["limit"] = value
        start = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return self.results.GetCompositeSchedule(status="Accepted", schedule={
            "evse_id": evse_id, "duration": duration, "schedule_start": start, "charging_rate_unit": "W",
            "charging_schedule_period": [period]})


class LibStation201(_LibHandlers, v201.ChargePoint):
    version = "2.0.1"
    results = v201.call_result


class LibStation21(_LibHandlers, v21.ChargePoint):
    version = "2.1"
    results = v21.call_result

    @on("UpdateDynamicSchedule")
    async def on_update_dynamic_schedule(self, charging_profile_id: int, schedule_update: dict[str, Any],
                                         **_: Any) -> Any:
        self.received.append(("UpdateDynamicSchedule", {"schedule_update": schedule_update}))
        self.tx_w = schedule_update["setpoint"]
        return self.results.UpdateDynamicSchedule(status="Accepted")


@contextlib.asynccontextmanager
async def lib_station(csms: Csms, pki: Pki, station: str, version: str = "2.0.1",
                      ssl_context: ssl.SSLContext | None = None, password: str | None = PASSWORD,
                      ) -> AsyncIterator[LibStation201 | LibStation21]:
    """A library station (OCPP `version` 2.0.1 or 2.1) connected over TLS, its message loop running."""
    url = f"wss://{HOST}:{csms.port}/ocpp/{station}"
    subprotocol = "ocpp2.0.1" if version == "2.0.1" else "ocpp2.1"
    headers = basic(station, password) if password is not None else {}
    async with connect(url, ssl=ssl_context or client_tls(pki), subprotocols=[subprotocol],  # type: ignore[list-item]
                       additional_headers=headers, compression=None) as ws:
        cp: LibStation201 | LibStation21 = (LibStation201 if version == "2.0.1" else LibStation21)(
            station, ws, response_timeout=10)
        cp.setup()
        loop = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop


def meter(power_w: float, when: str = "2026-11-23T00:00:00Z", import_wh: float = 1000.0) -> list[dict[str, Any]]:
    """One MeterValue in the library's snake_case: Power.Active.Import in W and the import register in Wh."""
    return [{"timestamp": when, "sampled_value": [
        {"value": power_w, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
        {"value": import_wh, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "Wh"}}]}]
