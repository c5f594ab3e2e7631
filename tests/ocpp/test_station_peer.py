"""The simulated OCPP stations (sim_devices/ocpp_station.py) against an independent peer: a tiny CSMS built from the
`ocpp` library's own server-side ChargePoint classes (ocpp.v21 / ocpp.v201), over TLS on 127.0.0.1. It sends what
the agent's CSMS does not send yet (GetCompositeSchedule, SetVariables, 2.0.1 Absolute TxProfiles) and records every
message the stations send, so each test checks the station by what it says on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp import v21, v201
from ocpp.routing import on
from ocppkit import HOST, Pki, make_ca, password_file
from sitekit import eventually
from websockets.asyncio.server import Server, ServerConnection, serve

from sim_devices.config import SimulationError, parse_simulation
from sim_devices.ports import free_port_block
from sim_devices.runner import SimSite

LONG_SESSION = [{"arrival_s": 0, "departure_s": 86400, "capacity_kwh": 60, "soc": 0.6, "target_soc": 0.8,
                 "min_soc": 0.2}]


# ---- the peer CSMS ----------------------------------------------------------------------------------------------
class _Recorder:
    """What a station sent, by action, as the library hands it over (snake_case)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def of(self, action: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.messages if name == action]


def _point_class(version: str) -> type:
    lib = v21 if version == "2.1" else v201

    class Point(lib.ChargePoint):  # type: ignore[misc,name-defined]
        recorder: _Recorder

        @on("BootNotification")
        async def boot(self, **payload: Any) -> Any:
            self.recorder.messages.append(("BootNotification", payload))
            return lib.call_result.BootNotification(current_time=_now(), interval=60, status="Accepted")

        @on("StatusNotification")
        async def status(self, **payload: Any) -> Any:
            self.recorder.messages.append(("StatusNotification", payload))
            return lib.call_result.StatusNotification()

        @on("Heartbeat")
        async def heartbeat(self, **payload: Any) -> Any:
            return lib.call_result.Heartbeat(current_time=_now())

        @on("TransactionEvent")
        async def transaction(self, **payload: Any) -> Any:
            self.recorder.messages.append(("TransactionEvent", payload))
            return lib.call_result.TransactionEvent()

        @on("NotifyEVChargingNeeds")
        async def needs(self, **payload: Any) -> Any:
            self.recorder.messages.append(("NotifyEVChargingNeeds", payload))
            return lib.call_result.NotifyEVChargingNeeds(status="Accepted")

    return Point


class PeerCsms:
    """A CSMS of one OCPP version: one library ChargePoint per connected station, restartable on its port."""

    def __init__(self, pki: Pki, version: str = "2.1") -> None:
        self.version = version
        self.lib = v21 if version == "2.1" else v201
        self.point_class = _point_class(version)
        self.port = free_port_block(1)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(pki.cert, pki.key)
        self.points: dict[str, Any] = {}
        self.recorders: dict[str, _Recorder] = defaultdict(_Recorder)
        self.subprotocols: dict[str, str | None] = {}
        self.server: Server | None = None

    async def start(self) -> None:
        self.server = await serve(self._serve, HOST, self.port, ssl=self.tls,
                                  subprotocols=["ocpp" + self.version])  # type: ignore[list-item]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, connection: ServerConnection) -> None:
        station = (connection.request.path if connection.request else "").rsplit("/", 1)[-1]
        point = self.point_class(station, connection, response_timeout=5)
        point.recorder = self.recorders[station]
        self.points[station] = point
        self.subprotocols[station] = connection.subprotocol
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await point.start()
        if self.points.get(station) is point:
            del self.points[station]

    def sent(self, station: str, action: str) -> list[dict[str, Any]]:
        return self.recorders[station].of(action)

    def events(self, station: str, evse: int | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.sent(station, "TransactionEvent")
                if (evse is None or e["evse"]["id"] == evse) and (kind is None or e["event_type"] == kind)]

    async def call(self, station: str, request: Any) -> Any:
        return await self.points[station].call(request)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextlib.asynccontextmanager
async def station_site(tmp_path: Path, ids: list[str], version: str = "2.1", evses: int = 1,
                       timeline: Path | None = None, **ocpp: Any) -> AsyncIterator[tuple[SimSite, PeerCsms]]:
    """A peer CSMS and a simulated site whose stations `ids` (model by version) dial it."""
    pki = make_ca(tmp_path)
    peer = PeerCsms(pki, version)
    await peer.start()
    model = "ocpp21_dc_bpt" if version == "2.1" else "ocpp201_charge"
    config = parse_simulation({
        "tick_s": 0.05, "base_load_w": 0.0, **({"fault_timeline": str(timeline)} if timeline else {}),
        "ocpp": {"url": f"wss://{HOST}:{peer.port}/ocpp", "ca_file": str(pki.ca),
                 "password_file": str(password_file(tmp_path, ids)), "meter_period_s": 0.2, **ocpp},
        "devices": [{"id": i, "transport": "ocpp", "model": model, "evses": evses,
                     "params": {"sessions": LONG_SESSION}} for i in ids],
    })
    site = SimSite.from_config(config)
    await site.start()
    try:
        yield site, peer
    finally:
        await site.stop()
        await peer.stop()


async def _started(peer: PeerCsms, station: str, evse: int = 1) -> str:
    await eventually(lambda: bool(peer.events(station, evse, "Started")) and station in peer.points,
                     what=f"{station} EVSE {evse} transaction started")
    return str(peer.events(station, evse, "Started")[-1]["transaction_info"]["transaction_id"])


def _dynamic(tx: str, setpoint: float, max_offline: int | None = None, invalid_after: bool | None = None,
             profile_id: int = 1) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "id": profile_id, "stack_level": 0, "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Dynamic", "transaction_id": tx,
        "charging_schedule": [{"id": 1, "charging_rate_unit": "W", "charging_schedule_period": [
            {"start_period": 0, "setpoint": setpoint, "operation_mode": "CentralSetpoint"}]}]}
    if max_offline is not None:
        profile["max_offline_duration"] = max_offline
    if invalid_after is not None:
        profile["invalid_after_offline_duration"] = invalid_after
    return profile


def _absolute(tx: str, periods: list[tuple[int, float]], purpose: str = "TxProfile",
              start: datetime | None = None, profile_id: int = 2) -> dict[str, Any]:
    schedule: dict[str, Any] = {"id": 1, "charging_rate_unit": "W", "charging_schedule_period": [
        {"start_period": s, "limit": w} for s, w in periods]}
    schedule["start_schedule"] = (start or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    profile = {"id": profile_id, "stack_level": 0, "charging_profile_purpose": purpose,
               "charging_profile_kind": "Absolute", "charging_schedule": [schedule]}
    if purpose == "TxProfile":
        profile["transaction_id"] = tx
    return profile


# ---- 1..N EVSEs ---------------------------------------------------------------------------------------------
async def test_a_station_with_two_evses_runs_a_transaction_on_each_and_steers_each_alone(tmp_path: Path) -> None:
    async with station_site(tmp_path, ["CP-2E"], evses=2) as (site, peer):
        tx1, tx2 = await _started(peer, "CP-2E", 1), await _started(peer, "CP-2E", 2)
        assert tx1 != tx2
        statuses = {(s["evse_id"], s["connector_status"]) for s in peer.sent("CP-2E", "StatusNotification")}
        assert {(1, "Occupied"), (2, "Occupied")} <= statuses
        needs = peer.sent("CP-2E", "NotifyEVChargingNeeds")
        await eventually(lambda: {n["evse_id"] for n in peer.sent("CP-2E", "NotifyEVChargingNeeds")} == {1, 2},
                         what="needs of both EVSEs")
        assert all(n["charging_needs"]["requested_energy_transfer"] == "DC_BPT" for n in needs)

        answer = await peer.call("CP-2E", v21.call.SetChargingProfile(evse_id=2, charging_profile=_dynamic(
            tx2, -4000.0)))
        assert answer.status == "Accepted"
        evse1, evse2 = site.devices["CP-2E-evse1"], site.devices["CP-2E-evse2"]
        await eventually(lambda: evse2.power_w == pytest.approx(-4000.0), what="EVSE 2 discharges 4 kW")
        assert evse1.lease.setpoint_w == 0.0 and evse1.power_w == 0.0  # EVSE 1 keeps its default
        # a profile for EVSE 2's transaction sent to EVSE 1 is not EVSE 1's
        wrong = await peer.call("CP-2E", v21.call.SetChargingProfile(evse_id=1, charging_profile=_dynamic(
            tx2, 3000.0)))
        assert wrong.status == "Rejected" and wrong.status_info["reason_code"] == "TxNotFound"
        await eventually(lambda: any(e["evse"]["id"] == 2 and _measurand(e, "Power.Active.Export") == 4000.0
                                     for e in peer.events("CP-2E", 2, "Updated")), what="EVSE 2 meters 4 kW out")


def _measurand(event: dict[str, Any], name: str) -> float | None:
    for meter in event.get("meter_value") or []:
        for sample in meter["sampled_value"]:
            if sample.get("measurand") == name:
                return float(sample["value"])
    return None


def test_station_config_errors_name_the_key() -> None:
    base = {"id": "CP1", "transport": "ocpp", "model": "ocpp21_dc_bpt"}
    with pytest.raises(SimulationError, match=r"simulation\.devices\[0\]\.evses = 0"):
        parse_simulation({"devices": [{**base, "evses": 0}]})
    with pytest.raises(SimulationError, match=r"simulation\.devices\[0\].*: evses is only for transport = 'ocpp'"):
        parse_simulation({"devices": [{"id": "m", "model": "vppsim_dc_meter", "port": 1502, "evses": 2}]})
    with pytest.raises(SimulationError, match=r"devices\[0\]\.evses: EVSE id 'CP1-evse1' is already a device id"):
        parse_simulation({"devices": [{**base, "evses": 2}, {**base, "id": "CP1-evse1"}]})
    with pytest.raises(SimulationError, match=r"simulation\.devices\[0\]\.model = 'ocpp16'"):
        parse_simulation({"devices": [{**base, "model": "ocpp16"}]})


# ---- K08 and SampledDataCtrlr ---------------------------------------------------------------------------------
async def test_get_composite_schedule_answers_what_the_evse_will_follow(tmp_path: Path) -> None:
    async with station_site(tmp_path, ["CP-K08"], evses=2) as (site, peer):
        tx1 = await _started(peer, "CP-K08", 1)
        tx2 = await _started(peer, "CP-K08", 2)
        get = v21.call.GetCompositeSchedule
        idle = await peer.call("CP-K08", get(duration=300, evse_id=1, charging_rate_unit="W"))
        assert idle.status == "Accepted"
        assert idle.schedule["charging_rate_unit"] == "W" and idle.schedule["evse_id"] == 1
        assert [(p["start_period"], p["limit"]) for p in idle.schedule["charging_schedule_period"]] == [(0, 0.0)]

        await peer.call("CP-K08", v21.call.SetChargingProfile(evse_id=1, charging_profile=_dynamic(tx1, -25000.0)))
        dynamic = await peer.call("CP-K08", get(duration=300, evse_id=1))
        (period,) = dynamic.schedule["charging_schedule_period"]
        # the schedule it will actually follow: the setpoint clipped to the 11 kW nameplate
        assert period["operation_mode"] == "CentralSetpoint" and period["setpoint"] == -11000.0

        start = datetime.now(UTC) - timedelta(seconds=5)
        answer = await peer.call("CP-K08", v21.call.SetChargingProfile(
            evse_id=2, charging_profile=_absolute(tx2, [(0, 4000.0), (65, 2000.0)], start=start)))
        assert answer.status == "Accepted"
        absolute = await peer.call("CP-K08", get(duration=300, evse_id=2))
        periods = absolute.schedule["charging_schedule_period"]
        assert [p["limit"] for p in periods] == [4000.0, 2000.0]
        assert periods[0]["start_period"] == 0 and 58 <= periods[1]["start_period"] <= 60
        await eventually(lambda: site.devices["CP-K08-evse2"].power_w == pytest.approx(4000.0),
                         what="EVSE 2 follows the limit in force")

        unknown = await peer.call("CP-K08", get(duration=60, evse_id=7))
        amps = await peer.call("CP-K08", get(duration=60, evse_id=1, charging_rate_unit="A"))
        assert (unknown.status, unknown.status_info["reason_code"]) == ("Rejected", "UnknownEvse")
        assert (amps.status, amps.status_info["reason_code"]) == ("Rejected", "UnsupportedRateUnit")


def _variable(component: str, variable: str, value: str | None = None, attribute: str | None = None
              ) -> dict[str, Any]:
    data: dict[str, Any] = {"component": {"name": component}, "variable": {"name": variable}}
    if value is not None:
        data["attribute_value"] = value
    if attribute is not None:
        data["attribute_type"] = attribute
    return data


async def test_set_variables_change_what_the_meter_tick_sends_and_unknowns_get_the_specs_status(
    tmp_path: Path,
) -> None:
    async with station_site(tmp_path, ["CP-VAR"]) as (site, peer):
        await _started(peer, "CP-VAR")
        answer = await peer.call("CP-VAR", v21.call.SetVariables(set_variable_data=[
            _variable("SampledDataCtrlr", "TxUpdatedMeasurands", "Power.Active.Import,SoC"),
            _variable("SampledDataCtrlr", "TxUpdatedInterval", "1"),
            _variable("NoSuchCtrlr", "TxUpdatedInterval", "1"),
            _variable("SampledDataCtrlr", "NoSuchVariable", "1"),
            _variable("SampledDataCtrlr", "TxUpdatedInterval", "1", attribute="MaxSet"),
            _variable("SampledDataCtrlr", "TxUpdatedMeasurands", "Power.Active.Import,Frequency"),
            _variable("SampledDataCtrlr", "TxUpdatedInterval", "soon"),
        ]))
        statuses = [r["attribute_status"] for r in answer.set_variable_result]
        assert statuses == ["Accepted", "Accepted", "UnknownComponent", "UnknownVariable",
                            "NotSupportedAttributeType", "Rejected", "Rejected"]
        station = site.ocpp.stations["CP-VAR"]  # type: ignore[union-attr]
        assert station.tx_measurands == ("Power.Active.Import", "SoC") and station.tx_interval_s == 1.0
        seen = len(peer.events("CP-VAR", kind="Updated"))
        await eventually(lambda: len(peer.events("CP-VAR", kind="Updated")) > seen + 1, what="new meter values")
        latest = peer.events("CP-VAR", kind="Updated")[-1]
        names = [s["measurand"] for s in latest["meter_value"][0]["sampled_value"]]
        assert names == ["Power.Active.Import", "SoC"]
        got = await peer.call("CP-VAR", v21.call.GetVariables(get_variable_data=[
            _variable("SampledDataCtrlr", "TxUpdatedInterval"), _variable("OCPPCommCtrlr", "HeartbeatInterval")]))
        assert [(r["attribute_status"], r.get("attribute_value")) for r in got.get_variable_result] == [
            ("Accepted", "1"), ("UnknownComponent", None)]


# ---- offline: fallback, queue, resume ---------------------------------------------------------------------------
@pytest.mark.parametrize("invalid_after", [False, True])
async def test_offline_past_max_offline_duration_falls_back_queues_events_and_resends_them_in_order(
    tmp_path: Path, invalid_after: bool,
) -> None:
    async with station_site(tmp_path, ["CP-OFF"]) as (site, peer):
        tx = await _started(peer, "CP-OFF")
        station = site.ocpp.stations["CP-OFF"]  # type: ignore[union-attr]
        ev = site.devices["CP-OFF"]
        answer = await peer.call("CP-OFF", v21.call.SetChargingProfile(evse_id=1, charging_profile=_dynamic(
            tx, -3000.0, max_offline=1, invalid_after=invalid_after)))
        assert answer.status == "Accepted"
        await eventually(lambda: ev.power_w == pytest.approx(-3000.0), what="discharging 3 kW")

        await peer.stop()  # the CSMS goes silent
        await eventually(lambda: not station.online, what="station offline")
        await eventually(lambda: station.fallbacks == 1, what="fallback after maxOfflineDuration")
        await eventually(lambda: abs(ev.power_w) < 1.0, what="back at the 0 W default")
        assert (station.profile is None) is invalid_after  # true: gone for good; false: suspended
        await eventually(lambda: sum(1 for r in station.outbox if getattr(r, "offline", None)) >= 3,
                         what="meter values queued while offline")
        online_seq = [e["seq_no"] for e in peer.events("CP-OFF", kind="Updated")]

        await peer.start()  # back on the same port
        await eventually(lambda: any(e.get("offline") for e in peer.events("CP-OFF")), what="queued events sent")
        await eventually(lambda: not station.outbox, what="outbox drained")
        events = peer.events("CP-OFF")
        seqs = [e["seq_no"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, none twice
        assert seqs == list(range(len(seqs)))  # and none lost
        offline = [e for e in events if e.get("offline")]
        assert offline and all(e["transaction_info"]["transaction_id"] == tx for e in offline)
        assert min(e["seq_no"] for e in offline) > max(online_seq)
        await eventually(lambda: peer.events("CP-OFF")[-1]["seq_no"] > offline[-1]["seq_no"], what="online again")
        assert not any(e.get("offline") for e in peer.events("CP-OFF") if e["seq_no"] > offline[-1]["seq_no"])
        if invalid_after:
            assert station.profile is None and ev.lease.setpoint_w == 0.0
        else:  # a profile that was only invalid while offline is followed again
            await eventually(lambda: ev.power_w == pytest.approx(-3000.0), what="profile valid again online")


# ---- faults ------------------------------------------------------------------------------------------------------
async def test_station_faults_reject_slow_silent_and_reboot(tmp_path: Path) -> None:
    async with station_site(tmp_path, ["CP-F"]) as (site, peer):
        tx = await _started(peer, "CP-F")
        faults = site.faults("CP-F")
        station = site.ocpp.stations["CP-F"]  # type: ignore[union-attr]

        faults.set_reject("Overloaded")
        rejected = await peer.call("CP-F", v21.call.SetChargingProfile(evse_id=1, charging_profile=_dynamic(
            tx, 2000.0)))
        assert (rejected.status, rejected.status_info["reason_code"]) == ("Rejected", "Overloaded")
        faults.set_reject(None)
        assert (await peer.call("CP-F", v21.call.SetChargingProfile(
            evse_id=1, charging_profile=_dynamic(tx, 2000.0)))).status == "Accepted"

        faults.set_slow(3.0)  # answers come after 3 s: a CSMS waiting 0.5 s gives up
        point = peer.points["CP-F"]
        point._response_timeout = 0.5
        with pytest.raises(asyncio.TimeoutError):
            await point.call(v21.call.GetCompositeSchedule(duration=60, evse_id=1))
        faults.set_slow(0.0)
        point._response_timeout = 10
        assert (await point.call(v21.call.GetCompositeSchedule(duration=60, evse_id=1))).status == "Accepted"

        faults.set_meter_silent(True)
        await eventually(lambda: not station.outbox, what="outbox empty")
        count = len(peer.events("CP-F", kind="Updated"))
        ticks = station.ticks
        await eventually(lambda: station.ticks >= ticks + 5, what="five metering ticks")
        assert len(peer.events("CP-F", kind="Updated")) == count  # silent: nothing new
        faults.set_meter_silent(False)
        await eventually(lambda: len(peer.events("CP-F", kind="Updated")) > count, what="meter values again")

        # reboot without transaction resumption: the transaction ends (PowerLoss), a new one starts, a new boot
        faults.reboot()
        await eventually(lambda: len(peer.sent("CP-F", "BootNotification")) == 2, what="second boot")
        await eventually(lambda: len(peer.events("CP-F", 1, "Started")) == 2, what="new transaction")
        ended = peer.events("CP-F", kind="Ended")
        assert [(e["transaction_info"]["transaction_id"], e["transaction_info"]["stopped_reason"]) for e in ended] == [
            (tx, "PowerLoss")]
        assert peer.events("CP-F", 1, "Started")[-1]["transaction_info"]["transaction_id"] != tx
        assert station.profile is None  # the profile did not survive the power cycle


async def test_a_reboot_resumes_the_transaction_when_resumption_is_on(tmp_path: Path) -> None:
    async with station_site(tmp_path, ["CP-R"], tx_resumption_timeout_s=60.0) as (site, peer):
        tx = await _started(peer, "CP-R")
        site.faults("CP-R").reboot()
        await eventually(lambda: len(peer.sent("CP-R", "BootNotification")) == 2, what="second boot")
        await eventually(lambda: any(e["trigger_reason"] == "TxResumed" for e in peer.events("CP-R")),
                         what="TxResumed")
        resumed = next(e for e in peer.events("CP-R") if e["trigger_reason"] == "TxResumed")
        assert resumed["event_type"] == "Updated" and resumed["transaction_info"]["transaction_id"] == tx
        assert not peer.events("CP-R", kind="Ended") and len(peer.events("CP-R", kind="Started")) == 1


async def test_offline_fault_drops_the_link_and_clearing_it_reconnects(tmp_path: Path) -> None:
    async with station_site(tmp_path, ["CP-D"]) as (site, peer):
        await _started(peer, "CP-D")
        station = site.ocpp.stations["CP-D"]  # type: ignore[union-attr]
        site.faults("CP-D").set_offline(True)
        await eventually(lambda: "CP-D" not in peer.points and not station.online, what="link dropped")
        site.faults("CP-D").set_offline(False)
        await eventually(lambda: "CP-D" in peer.points and station.online, what="reconnected")
        assert len(peer.sent("CP-D", "BootNotification")) == 1  # a reconnect is not a reboot


# ---- 2.0.1 charge-only ---------------------------------------------------------------------------------------
async def test_a_201_station_offers_only_201_obeys_absolute_watt_limits_and_sends_no_v2x(tmp_path: Path) -> None:
    async with station_site(tmp_path, ["CP-201"], version="2.0.1") as (site, peer):
        tx = await _started(peer, "CP-201")
        assert peer.subprotocols["CP-201"] == "ocpp2.0.1"
        ev = site.devices["CP-201"]
        await eventually(lambda: ev.power_w == pytest.approx(11000.0), what="no limit: full charge")
        answer = await peer.call("CP-201", v201.call.SetChargingProfile(
            evse_id=1, charging_profile=_absolute(tx, [(0, 3000.0)])))
        assert answer.status == "Accepted"
        await eventually(lambda: ev.power_w == pytest.approx(3000.0), what="charges at the 3 kW limit")
        negative = await peer.call("CP-201", v201.call.SetChargingProfile(
            evse_id=1, charging_profile=_absolute(tx, [(0, -3000.0)])))
        assert (negative.status, negative.status_info["reason_code"]) == ("Rejected", "NegativeLimit")
        default = await peer.call("CP-201", v201.call.SetChargingProfile(
            evse_id=0, charging_profile=_absolute(tx, [(0, 0.0)], purpose="TxDefaultProfile", profile_id=9)))
        assert default.status == "Accepted"
        composite = await peer.call("CP-201", v201.call.GetCompositeSchedule(duration=60, evse_id=1,
                                                                             charging_rate_unit="W"))
        assert [p["limit"] for p in composite.schedule["charging_schedule_period"]] == [3000.0]
        assert min(ev.write_log, key=lambda w: w.setpoint_w).setpoint_w >= 0.0  # never a discharge
        assert not peer.sent("CP-201", "NotifyEVChargingNeeds")


async def test_a_21_only_csms_refuses_a_201_station(tmp_path: Path) -> None:
    async with station_site(tmp_path, ["CP-X"], version="2.0.1") as (site, peer):
        await _started(peer, "CP-X")  # the 2.0.1 peer takes it
    (tmp_path / "other").mkdir()
    pki = make_ca(tmp_path / "other")
    v21_only = PeerCsms(pki, "2.1")
    await v21_only.start()
    config = parse_simulation({"ocpp": {"url": f"wss://{HOST}:{v21_only.port}/ocpp", "ca_file": str(pki.ca)},
                               "devices": [{"id": "CP-X", "transport": "ocpp", "model": "ocpp201_charge"}]})
    site = SimSite.from_config(config)
    await site.start()
    try:
        station = site.ocpp.stations["CP-X"]  # type: ignore[union-attr]
        await eventually(lambda: station.link_failures >= 2, what="the station tried twice")
        assert not v21_only.points and not station.online and station.boots == 0
    finally:
        await site.stop()
        await v21_only.stop()


async def test_a_timeline_file_reboots_a_station_and_silences_it_for_a_while(tmp_path: Path) -> None:
    timeline = tmp_path / "faults.toml"
    timeline.write_text("[[faults]]\nat_s = 2\ndevice = 'CP-T'\nkind = 'reboot'\n"
                        "[[faults]]\nat_s = 3\ndevice = 'CP-T'\nkind = 'silent'\nfor_s = 2\n")
    async with station_site(tmp_path, ["CP-T"], timeline=timeline) as (site, peer):
        await _started(peer, "CP-T")
        await eventually(lambda: len(peer.sent("CP-T", "BootNotification")) == 2, what="reboot from the timeline")
        faults = site.faults("CP-T")
        await eventually(lambda: faults.state.meter_silent, what="silent from t = 3 s")
        await eventually(lambda: not faults.state.meter_silent, what="talking again from t = 5 s")
        assert [(a.kind, a.clear) for a in site.timeline.applied] == [  # type: ignore[union-attr]
            ("reboot", False), ("silent", False), ("silent", True)]
