"""Security profile 3 (TLS client certificates, CN = the station id) and oversized frames (closed with 1009, RFC
6455 section 7.4.1, as websockets' max_size does; the agent goes on serving)."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
from ocpp import v201
from ocppkit import (
    HOST,
    client_certificate,
    lib_station,
    make_ca,
    raw_station,
    running_csms,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from drivers.ocpp.evse import OcppEvseDriver

STATION = "CP-CERT"


def _client_tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


async def test_profile_3_takes_a_trusted_certificate_of_the_station_and_refuses_others(tmp_path: Path) -> None:
    driver = OcppEvseDriver("ev1", STATION, 1)
    passwords = tmp_path / "none.json"
    passwords.write_text("{}")  # profile 3 alone: no station has a password
    async with running_csms(tmp_path, [driver], client_ca_file=True, password_file=str(passwords)) as (csms, pki):
        own = _client_tls(pki.ca, *client_certificate(pki, STATION, tmp_path))
        other = _client_tls(pki.ca, *client_certificate(pki, "CP-OTHER", tmp_path))
        (tmp_path / "stranger").mkdir()
        stranger = make_ca(tmp_path / "stranger")  # a CA the agent does not trust, issuing the right CN
        forged = _client_tls(pki.ca, *client_certificate(stranger, STATION, tmp_path / "stranger"))
        url = f"wss://{HOST}:{csms.port}/ocpp/{STATION}"

        with pytest.raises(InvalidStatus) as refused:  # a trusted certificate of another station
            async with connect(url, ssl=other, subprotocols=["ocpp2.0.1"]):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 403
        for context in (forged, ssl.create_default_context(cafile=str(pki.ca))):  # untrusted CA; no certificate
            with pytest.raises((ssl.SSLError, ConnectionClosed, InvalidMessage, OSError)):  # TLS refuses it
                async with connect(url, ssl=context, subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
                    await ws.recv()
        assert driver.link is None and csms.refused == {"certificate": 1}

        async with lib_station(csms, pki, STATION, "2.0.1", ssl_context=own, password=None) as station:
            answer = await station.call(v201.call.BootNotification(
                charging_station={"model": "Cert", "vendor_name": "ocpp.v201"}, reason="PowerUp"))
            assert answer.status == "Accepted" and driver.link is not None


async def test_an_oversized_frame_closes_the_link_with_1009_and_the_agent_serves_on(tmp_path: Path) -> None:
    driver = OcppEvseDriver("ev1", STATION, 1)
    async with running_csms(tmp_path, [driver], max_message_bytes=1024) as (csms, pki):
        async with raw_station(csms, pki, STATION) as station:
            await station.boot()
            await station.call("StatusNotification", {"timestamp": "2026-11-23T00:00:00Z",
                                                      "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1})
            big = json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "A" * 2000}])
            await station.ws.send(big)
            await asyncio.wait_for(station.ws.wait_closed(), 10)
            assert station.ws.close_code == 1009  # "message too big" (RFC 6455 7.4.1), no CALLERROR
        assert driver.connector_status == "Occupied"  # nothing else changed
        async with raw_station(csms, pki, STATION) as station:  # the station comes back; the agent serves on
            await station.boot()
            assert (await station.call("Heartbeat", {}))[0] == 3
