"""Who may connect, and what a bad frame gets: the CALLERROR OCPP-J names, and nothing else changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ocppkit import PASSWORD, raw_station, running_csms
from websockets.exceptions import InvalidStatus

from drivers.ocpp.evse import OcppEvseDriver

STATION = "CP-1"


def _driver() -> OcppEvseDriver:
    return OcppEvseDriver("ev1", STATION, 1, lambda: datetime(2026, 11, 23, tzinfo=UTC))


async def _refused(csms, pki, station: str, password: str = PASSWORD, subprotocols=("ocpp2.1",)) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidStatus) as refused:
        async with raw_station(csms, pki, station, password, subprotocols):
            pass
    return refused.value.response.status_code


async def test_wrong_password_another_stations_password_and_no_subprotocol_are_refused(tmp_path: Path) -> None:
    driver = _driver()
    async with running_csms(tmp_path, [driver]) as (csms, pki):
        assert await _refused(csms, pki, STATION, "not-the-password") == 401
        assert await _refused(csms, pki, "CP-UNKNOWN") == 401  # no password for it
        assert await _refused(csms, pki, STATION, subprotocols=()) == 400
        assert await _refused(csms, pki, STATION, subprotocols=("ocpp1.6",)) == 400
        assert csms.refused == {"bad_credentials": 2}
        assert driver.link is None  # no refused handshake reached the asset
        async with raw_station(csms, pki, STATION) as station:
            await station.boot()
            assert driver.link is not None


async def test_a_station_cannot_act_as_another(tmp_path: Path) -> None:
    """CP-OTHER's own (right) password on CP-1's URL: Basic's user must be the station of the URL."""
    import base64

    from ocppkit import HOST, client_tls
    from websockets.asyncio.client import connect

    driver = _driver()
    async with running_csms(tmp_path, [driver]) as (csms, pki):
        token = base64.b64encode(f"CP-OTHER:{PASSWORD}".encode()).decode()
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"wss://{HOST}:{csms.port}/ocpp/{STATION}", ssl=client_tls(pki),
                               subprotocols=["ocpp2.1"],  # type: ignore[list-item]
                               additional_headers={"Authorization": f"Basic {token}"}):
                pass
        assert refused.value.response.status_code == 401
        assert driver.link is None


async def test_malformed_and_unknown_frames_get_the_named_callerror_and_change_nothing(tmp_path: Path) -> None:
    driver = _driver()
    async with running_csms(tmp_path, [driver]) as (csms, pki), raw_station(csms, pki, STATION) as station:
        await station.boot()
        await station.call("StatusNotification", {"timestamp": "2026-11-23T00:00:00Z", "connectorStatus": "Occupied",
                                                  "evseId": 1, "connectorId": 1})
        before = await driver.read()
        cases = [
            ("this is not json", ["-1", "RpcFrameworkError"]),
            (json.dumps({"not": "an array"}), ["-1", "RpcFrameworkError"]),
            (json.dumps([2, 17, "Heartbeat", {}]), ["-1", "RpcFrameworkError"]),  # the id must be a string
            (json.dumps([2, "a1", "Heartbeat"]), ["a1", "RpcFrameworkError"]),
            (json.dumps([9, "a2", "Heartbeat", {}]), ["a2", "MessageTypeNotSupported"]),
            (json.dumps([2, "a3", "MakeCoffee", {}]), ["a3", "NotImplemented"]),
            (json.dumps([2, "a4", "SetChargingProfile", {}]), ["a4", "NotSupported"]),  # a CSMS-to-station action
            (json.dumps([2, "a5", "StatusNotification", {"timestamp": "2026-11-23T00:00:00Z",
                                                          "connectorStatus": "Faulted", "evseId": "one",
                                                          "connectorId": 1}]), ["a5", "TypeConstraintViolation"]),
            (json.dumps([2, "a6", "StatusNotification", {"timestamp": "2026-11-23T00:00:00Z",
                                                          "connectorStatus": "Exploded", "evseId": 1,
                                                          "connectorId": 1}]), ["a6", "FormatViolation"]),
            (json.dumps([2, "a7", "StatusNotification", {"connectorStatus": "Faulted"}]), ["a7", "ProtocolError"]),
        ]
        for frame, (message_id, code) in cases:
            answer = await station.send_raw(frame)
            assert answer[:3] == [4, message_id, code], (frame, answer)
            assert isinstance(answer[3], str) and answer[4] == {}
        assert driver.connector_status == "Occupied"  # no bad StatusNotification got through
        assert await driver.read() == before
        assert (await station.call("Heartbeat", {}))[0] == 3  # the session goes on
        assert csms.links[STATION].errors_sent == len(cases)
