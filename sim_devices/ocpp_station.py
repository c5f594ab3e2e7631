"""Simulated OCPP 2.1 charging stations: a client per station, one DC_BPT EVSE each, driving the same EV-session
physics as the Modbus V2G charger (sim_devices/ev_charger.py).

Built on the `ocpp` library's own client idiom (`ocpp.v21.ChargePoint`, `@on` handlers in snake_case, `call()` with
its message classes) and never on drivers/ocpp, so the agent's CSMS and this peer cannot share a misreading
(DESIGN.md §2). What a station does:
- dials `<url>/<station id>` with subprotocol ocpp2.1, HTTP Basic and (wss) the CA; BootNotification once per
  power-up (and after a `reboot()`), StatusNotification of connector 1, Heartbeat at the interval it was given;
- a plugged-in EV is a transaction: TransactionEvent Started (+ NotifyEVChargingNeeds with departure, capacity,
  SoC and the V2X energy requests in Wh), Updated every `meter_period_s` with Power.Active.Import / .Export
  (magnitudes), Power.Active.Setpoint (signed), SoC (Percent) and the energy registers, Ended when it leaves;
- SetChargingProfile (TxProfile, Dynamic, CentralSetpoint, W) sets the physics' setpoint; UpdateDynamicSchedule
  moves it; anything else is Rejected with a reason;
- the lease is OCPP's: once offline (link lost) for the profile's maxOfflineDuration, a profile with
  invalidAfterOfflineDuration is dropped and the EVSE falls back to `fallback_w` (no TxDefaultProfile here). The
  physics' own Modbus-style lease is switched off: it would lapse a live profile that is simply not updated.
Faults: the DeviceFaults `offline` switch drops the link and keeps it down; `reject_profiles` answers Rejected with
that reason code; `meter_silent` stops meter values; `reboot()` reconnects with a new BootNotification.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import websockets
from ocpp.routing import on
from ocpp.v21 import ChargePoint, call, call_result
from ocpp.v21.datatypes import StatusInfoType
from ocpp.v21.enums import Action
from websockets.asyncio.client import connect

from sim_devices.clock import Clock
from sim_devices.config import OcppSimConfig, SimulationError
from sim_devices.ev_charger import EVCharger
from sim_devices.ev_sessions import EVSession
from sim_devices.faults import DeviceFaults

log = structlog.get_logger(__name__)

EVSE_ID = 1
CONNECTOR_ID = 1
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
WATCH_PERIOD_S = 0.05  # wall seconds between offline-lease checks
DC_MAX_CURRENT_A = 200.0
DC_MAX_VOLTAGE_V = 500.0


@dataclass(slots=True)
class Profile:
    """The TxProfile the station follows."""

    id: int
    transaction_id: str
    setpoint_w: float
    max_offline_s: float | None
    invalid_after_offline: bool


class _Client(ChargePoint):
    """The library's client with this station's handlers for the CSMS's calls."""

    def __init__(self, station: OcppStation, connection: Any) -> None:
        super().__init__(station.station_id, connection, response_timeout=10)
        self.station = station

    @on(Action.set_charging_profile)
    async def on_set_charging_profile(self, charging_profile: dict[str, Any], evse_id: int,
                                      **_: Any) -> call_result.SetChargingProfile:
        reason = self.station.take_profile(charging_profile, evse_id)
        if reason is None:
            return call_result.SetChargingProfile(status="Accepted")
        return call_result.SetChargingProfile(status="Rejected", status_info=StatusInfoType(reason_code=reason))

    @on(Action.update_dynamic_schedule)
    async def on_update_dynamic_schedule(self, charging_profile_id: int, schedule_update: dict[str, Any],
                                         **_: Any) -> call_result.UpdateDynamicSchedule:
        reason = self.station.take_update(charging_profile_id, schedule_update)
        if reason is None:
            return call_result.UpdateDynamicSchedule(status="Accepted")
        return call_result.UpdateDynamicSchedule(status="Rejected", status_info=StatusInfoType(reason_code=reason))


class OcppStation:
    """One simulated station (`station_id`) whose EVSE 1 is `physics`."""

    def __init__(self, station_id: str, physics: EVCharger, faults: DeviceFaults, settings: OcppSimConfig,
                 clock: Clock, password: str | None) -> None:
        self.station_id = station_id
        self.physics = physics
        physics.write_lease_timeout(0.0)  # the profile's maxOfflineDuration is this station's lease
        self.faults = faults
        self.settings = settings
        self.clock = clock
        self.password = password
        self.profile: Profile | None = None
        self.online = False
        self.offline_since_s: float | None = 0.0  # sim seconds; never connected counts as offline
        self.booted = False
        self.boots = 0
        self.fallbacks = 0
        self.reject_profiles: str | None = None
        self.meter_silent = False
        self.heartbeat_s = 60.0
        self.transaction_id: str | None = None
        self.seq_no = 0
        self.meter_events = 0
        self.last_meter: dict[str, float] = {}  # what the last TransactionEvent reported, for tests
        self._tx_session: EVSession | None = None
        self._client: _Client | None = None
        self._reboot = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- CSMS calls, in the library's snake_case -----------------------------------------------------------
    def take_profile(self, profile: dict[str, Any], evse_id: int) -> str | None:
        """Follow a SetChargingProfile; the reason code when it is rejected."""
        if self.reject_profiles is not None:
            return self.reject_profiles
        if evse_id != EVSE_ID:
            return "UnknownEvse"
        if profile.get("charging_profile_purpose") != "TxProfile" or profile.get("charging_profile_kind") != "Dynamic":
            return "UnsupportedPurpose"
        if self.transaction_id is None or profile.get("transaction_id") != self.transaction_id:
            return "TxNotFound"
        schedule = profile["charging_schedule"][0]
        period = schedule["charging_schedule_period"][0]
        if schedule.get("charging_rate_unit") != "W" or period.get("operation_mode") != "CentralSetpoint":
            return "UnsupportedRateUnit" if schedule.get("charging_rate_unit") != "W" else "UnsupportedOperationMode"
        if "setpoint" not in period:
            return "NoSetpoint"
        self.profile = Profile(profile["id"], self.transaction_id, float(period["setpoint"]),
                               profile.get("max_offline_duration"), bool(profile.get("invalid_after_offline_duration")))
        self.physics.write_setpoint(self.profile.setpoint_w)
        return None

    def take_update(self, profile_id: int, update: dict[str, Any]) -> str | None:
        if self.reject_profiles is not None:
            return self.reject_profiles
        if self.profile is None or self.profile.id != profile_id:
            return "UnknownProfile"
        if "setpoint" not in update:
            return "NoSetpoint"
        self.profile.setpoint_w = float(update["setpoint"])
        self.physics.write_setpoint(self.profile.setpoint_w)
        return None

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"ocpp-{self.station_id}"),
                       asyncio.create_task(self._watch(), name=f"ocpp-watch-{self.station_id}")]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=0.5)
        self._tasks = []

    def reboot(self) -> None:
        """Power-cycle: drop the link, forget the profile, boot again."""
        self.booted = False
        self._drop_profile()
        self._reboot.set()

    # ---- the link --------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        while not self._stop.is_set():
            if self.faults.state.offline:
                await asyncio.sleep(WATCH_PERIOD_S)
                continue
            try:
                async with connect(f"{self.settings.url.rstrip('/')}/{self.station_id}", subprotocols=["ocpp2.1"],
                                   ssl=self._tls(), additional_headers=self._auth(), open_timeout=5,
                                   compression=None) as connection:
                    backoff = RECONNECT_MIN_S
                    await self._session(connection)
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                log.debug("ocpp_station.link_failed", station=self.station_id, error=repr(exc)[:200])
            finally:
                if self.online:
                    self.online = False
                    self.offline_since_s = self.clock.seconds()
                self._client = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _session(self, connection: Any) -> None:
        client = _Client(self, connection)
        self._client = client
        self._reboot.clear()
        receiver = asyncio.create_task(client.start())
        try:
            if not self.booted:
                answer = await client.call(call.BootNotification(
                    charging_station={"model": "vppsim DC_BPT", "vendor_name": "vpp-agent simulator"},
                    reason="PowerUp" if self.boots == 0 else "RemoteReset"))
                if answer is None or answer.status != "Accepted":
                    return
                self.booted = True
                self.boots += 1
                self.heartbeat_s = float(answer.interval)
            self.online = True
            self.offline_since_s = None
            await self._status(client)
            next_heartbeat = asyncio.get_running_loop().time() + self.heartbeat_s
            while not self._stop.is_set() and not self._reboot.is_set() and not self.faults.state.offline:
                if receiver.done():
                    return
                await self._meter_tick(client)
                if asyncio.get_running_loop().time() >= next_heartbeat:
                    await client.call(call.Heartbeat())
                    next_heartbeat += self.heartbeat_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reboot.wait(), self.settings.meter_period_s)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
            await connection.close()

    async def _status(self, client: _Client) -> None:
        status = "Occupied" if self.physics.session is not None else "Available"
        await client.call(call.StatusNotification(timestamp=self._stamp(), connector_status=status,
                                                  evse_id=EVSE_ID, connector_id=CONNECTOR_ID))

    async def _meter_tick(self, client: _Client) -> None:
        """Start, update or end the transaction to match the physics' EV session."""
        session = self.physics.session
        if self.transaction_id is not None and session is not self._tx_session:
            await self._event(client, "Ended", "EVDeparted", stopped_reason="EVDisconnected")
            self.transaction_id, self._tx_session = None, None
            self._drop_profile()
            await self._status(client)
        if session is not None and self.transaction_id is None:
            self.transaction_id, self._tx_session, self.seq_no = str(uuid.uuid4()), session, 0
            await self._status(client)
            await self._event(client, "Started", "CablePluggedIn")
            await client.call(call.NotifyEVChargingNeeds(charging_needs=self._needs(session), evse_id=EVSE_ID))
        elif session is not None and not self.meter_silent:
            await self._event(client, "Updated", "MeterValuePeriodic")

    async def _event(self, client: _Client, event_type: str, trigger: str, stopped_reason: str | None = None) -> None:
        assert self.transaction_id is not None
        info: dict[str, Any] = {"transaction_id": self.transaction_id,
                                "charging_state": "EVConnected" if event_type != "Ended" else "Idle"}
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        meter = self._meter_value()
        await client.call(call.TransactionEvent(
            event_type=event_type, timestamp=self._stamp(), trigger_reason=trigger, seq_no=self.seq_no,
            transaction_info=info, evse={"id": EVSE_ID, "connector_id": CONNECTOR_ID}, meter_value=[meter]))
        self.seq_no += 1
        self.meter_events += 1

    def _meter_value(self) -> dict[str, Any]:
        p = self.physics
        power = p.power_w
        self.last_meter = {"import_w": max(power, 0.0), "export_w": max(-power, 0.0), "soc_percent": p.soc * 100,
                           "setpoint_w": p.lease.setpoint_w}
        sampled = [
            {"value": round(max(power, 0.0), 1), "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
            {"value": round(max(-power, 0.0), 1), "measurand": "Power.Active.Export", "unit_of_measure": {"unit": "W"}},
            {"value": round(p.lease.setpoint_w, 1), "measurand": "Power.Active.Setpoint",
             "unit_of_measure": {"unit": "W"}},
            {"value": round(p.import_wh / 1000.0, 4), "measurand": "Energy.Active.Import.Register",
             "unit_of_measure": {"unit": "kWh"}},
            {"value": round(p.export_wh, 1), "measurand": "Energy.Active.Export.Register",
             "unit_of_measure": {"unit": "Wh"}},
        ]
        if p.session is not None:
            sampled.append({"value": round(p.soc * 100, 2), "measurand": "SoC", "location": "EV",
                            "unit_of_measure": {"unit": "Percent"}})
        return {"timestamp": self._stamp(), "sampled_value": sampled}

    def _needs(self, s: EVSession) -> dict[str, Any]:
        """The EV's needs as ISO 15118-20 gives them: energies in Wh from the SoC now."""
        soc = self.physics.soc
        return {
            "requested_energy_transfer": "DC_BPT",
            "departure_time": self._stamp(self.physics.start_unix_s + s.departure_s),
            "dc_charging_parameters": {"ev_max_current": DC_MAX_CURRENT_A, "ev_max_voltage": DC_MAX_VOLTAGE_V,
                                       "ev_energy_capacity": s.capacity_wh, "state_of_charge": round(soc * 100)},
            "v2x_charging_parameters": {
                "max_charge_power": self.physics.rated_charge_w,
                "max_discharge_power": self.physics.rated_discharge_w,
                "ev_target_energy_request": round((s.target_soc - soc) * s.capacity_wh, 1),
                "ev_min_energy_request": round((s.min_soc - soc) * s.capacity_wh, 1),
            },
        }

    # ---- the offline lease -------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        while not self._stop.is_set():
            self.check_offline()
            await asyncio.sleep(WATCH_PERIOD_S)

    def check_offline(self) -> bool:
        """Drop a profile whose maxOfflineDuration has run out while offline; True when it just did."""
        profile, since = self.profile, self.offline_since_s
        if profile is None or self.online or since is None or profile.max_offline_s is None:
            return False
        if not profile.invalid_after_offline or self.clock.seconds() - since < profile.max_offline_s:
            return False
        log.info("ocpp_station.fallback", station=self.station_id, offline_s=round(self.clock.seconds() - since, 2),
                 fallback_w=self.settings.fallback_w)
        self._drop_profile()
        self.fallbacks += 1
        return True

    def _drop_profile(self) -> None:
        self.profile = None
        self.physics.write_setpoint(self.settings.fallback_w)

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _stamp(self, unix_s: float | None = None) -> str:
        when = self.clock.now() if unix_s is None else datetime.fromtimestamp(unix_s, UTC)
        return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _tls(self) -> ssl.SSLContext | None:
        if not self.settings.url.startswith("wss://"):
            return None
        context = ssl.create_default_context(cafile=self.settings.ca_file)
        return context

    def _auth(self) -> dict[str, str]:
        if self.password is None:
            return {}
        token = base64.b64encode(f"{self.station_id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


def station_passwords(settings: OcppSimConfig) -> dict[str, str]:
    """The JSON object of station id -> password that `[simulation.ocpp]` names (SimulationError if unusable)."""
    if settings.password_env is not None:
        text = os.environ.get(settings.password_env)
        if text is None:
            raise SimulationError(f"simulation.ocpp.password_env: {settings.password_env} is not set")
    elif settings.password_file is not None:
        try:
            text = Path(settings.password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SimulationError(f"simulation.ocpp.password_file: cannot read {settings.password_file}: "
                                  f"{exc.strerror}") from exc
    else:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SimulationError(f"simulation.ocpp: passwords are not a JSON object: {exc}") from exc
    if not isinstance(data, dict):
        raise SimulationError("simulation.ocpp: passwords must be a JSON object of station id to password")
    return {str(k): str(v) for k, v in data.items()}


class OcppStations:
    """Every simulated OCPP station of a site, started and stopped together."""

    def __init__(self, settings: OcppSimConfig, devices: list[tuple[str, EVCharger, DeviceFaults]],
                 clock: Clock) -> None:
        passwords = station_passwords(settings)
        self.stations = {station_id: OcppStation(station_id, physics, faults, settings, clock,
                                                 passwords.get(station_id))
                         for station_id, physics, faults in devices}

    def start(self) -> None:
        for station in self.stations.values():
            station.start()

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.stations.values()))
