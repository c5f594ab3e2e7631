"""Simulated OCPP charging stations: a client per station with 1..N EVSEs (one connector each), every EVSE driving
its own EV-session physics, the same EVCharger as the Modbus V2G charger (sim_devices/ev_charger.py).

Built on the `ocpp` library's own client idiom (`ChargePoint`, `@on` handlers in snake_case, `call()` with its
message classes) and never on drivers/ocpp, so the agent's CSMS and this peer cannot share a misreading
(DESIGN.md §2). Two models (OCPP_VERSIONS):
- `ocpp21_dc_bpt`: subprotocol ocpp2.1 (`ocpp.v21`), DC_BPT, V2X: SetChargingProfile (TxProfile, Dynamic,
  CentralSetpoint, signed `setpoint` in W) then UpdateDynamicSchedule; NotifyEVChargingNeeds with the V2X energy
  requests in Wh; TxProfile Absolute W limits (ChargingOnly) are obeyed too;
- `ocpp201_charge`: subprotocol ocpp2.0.1 only (`ocpp.v201`), charge only: obeys TxProfile Absolute (or Relative)
  W limits >= 0, rejects anything else, sends no V2X message (no NotifyEVChargingNeeds).
What every station does:
- dials `<url>/<station id>` with HTTP Basic and (wss) the CA; BootNotification once per power-up, a
  StatusNotification per EVSE on each connect and on each change, Heartbeat at the interval it was given;
- a plugged-in EV is a transaction per EVSE: TransactionEvent Started, Updated every `TxUpdatedInterval` with the
  `TxUpdatedMeasurands` (both SampledDataCtrlr variables, settable by SetVariables, read by GetVariables; an unknown
  component or variable is answered UnknownComponent / UnknownVariable, a non-Actual attribute
  NotSupportedAttributeType, a value it cannot use Rejected), Ended when the EV leaves;
- GetCompositeSchedule (K08) answers, in W, the schedule the EVSE will follow from now: its TxProfile's period(s)
  clipped to the nameplate, or its default power when no profile is in force;
- offline: TransactionEvents produced while the link is down are queued with `offline: true` and their
  transaction's increasing `seqNo`, and sent in order once the station is back (before anything newer).
The lease is OCPP's. The 2.1 schema (ChargingProfileType, the `ocpp` library's copy of the OCA JSON schema) says of
`maxOfflineDuration`: "Period in seconds that this charging profile remains valid after the Charging Station has
gone offline. After this period the charging profile becomes invalid for as long as it is offline and the Charging
Station reverts back to a valid profile with a lower stack level. If invalidAfterOfflineDuration is true, then this
charging profile will become permanently invalid. A value of 0 means that the charging profile is immediately
invalid while offline. When the field is absent, then no timeout applies", and of `invalidAfterOfflineDuration`:
"When absent defaults to false". So past maxOfflineDuration offline every EVSE falls back to its default power
(`fallback_w`: no lower-stack profile is kept here); with invalidAfterOfflineDuration true the profile is dropped
for good, with false it is suspended and followed again once the station is back online. The physics' own
Modbus-style lease is switched off: it would lapse a live profile that is simply not updated.
Faults (sim_devices/faults.py, per station): offline drops the link and keeps it down; slow delays every answer to
the CSMS; reject answers every profile Rejected with that reasonCode; silent stops meter values; device trips every
EVSE (connector Faulted); reboot is a power cycle: profiles are forgotten, a new BootNotification follows, and each
ongoing transaction either resumes (2.1, `tx_resumption_timeout_s` > 0, EV still plugged in: TransactionEvent
Updated with triggerReason TxResumed, same transactionId) or is ended with stoppedReason PowerLoss, a new one
starting if the EV is still there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog
import websockets
from ocpp import v21, v201
from ocpp.exceptions import OCPPError
from ocpp.routing import on
from websockets.asyncio.client import connect

from sim_devices.clock import Clock
from sim_devices.config import OcppSimConfig, SimulationError
from sim_devices.ev_charger import EVCharger
from sim_devices.ev_sessions import EVSession
from sim_devices.faults import DeviceFaults

log = structlog.get_logger(__name__)

# model -> OCPP version it speaks (the subprotocol is "ocpp" + version)
OCPP_VERSIONS: dict[str, str] = {"ocpp21_dc_bpt": "2.1", "ocpp201_charge": "2.0.1"}
CONNECTOR_ID = 1
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
WATCH_PERIOD_S = 0.05  # wall seconds between offline-lease checks while a profile may lapse
IDLE_TICK_S = 1.0  # longest wall pause of the metering loop (EV arrivals and departures are seen within it)
OUTBOX_MAX = 10_000  # queued messages kept per station while offline; the oldest go first past it
DC_MAX_CURRENT_A = 200.0
DC_MAX_VOLTAGE_V = 500.0
SAMPLED_DATA_CTRLR = "SampledDataCtrlr"
TX_MEASURANDS = "TxUpdatedMeasurands"
TX_INTERVAL = "TxUpdatedInterval"
MEASURANDS = ("Power.Active.Import", "Power.Active.Export", "Power.Active.Setpoint", "Energy.Active.Import.Register",
              "Energy.Active.Export.Register", "SoC")
MEASURANDS_201 = tuple(m for m in MEASURANDS if m != "Power.Active.Setpoint")  # 2.0.1 has no setpoint measurand


class ProfileRejected(Exception):
    """A profile the station does not take; the message is the OCPP reasonCode (at most 20 characters)."""


@dataclass(slots=True)
class Period:
    """One charging schedule period: from `start_s` after the schedule's start, a limit or a setpoint in W."""

    start_s: float
    limit_w: float | None = None
    setpoint_w: float | None = None
    mode: str = "ChargingOnly"


@dataclass(slots=True)
class Profile:
    """The TxProfile an EVSE follows. Dynamic: one period whose setpoint UpdateDynamicSchedule moves; Absolute and
    Relative: periods from `start_unix_s` (sim time), for `duration_s` if given."""

    id: int
    transaction_id: str
    kind: str
    periods: list[Period]
    start_unix_s: float
    duration_s: float | None
    max_offline_s: float | None
    invalid_after_offline: bool
    valid_to_unix_s: float | None = None
    purpose: str = "TxProfile"

    @property
    def setpoint_w(self) -> float:
        """The Dynamic profile's setpoint (the first period's), W, negative = discharge."""
        return float(self.periods[0].setpoint_w or 0.0)

    def in_force(self, now_unix_s: float) -> Period | None:
        """The period that applies at `now_unix_s`, None before the schedule starts or after its duration."""
        if self.valid_to_unix_s is not None and now_unix_s >= self.valid_to_unix_s:
            return None
        if self.kind == "Dynamic":
            return self.periods[0]
        elapsed = now_unix_s - self.start_unix_s
        if elapsed < self.periods[0].start_s or (self.duration_s is not None and elapsed >= self.duration_s):
            return None
        current = self.periods[0]
        for period in self.periods:
            if period.start_s <= elapsed:
                current = period
        return current


@dataclass(slots=True)
class Evse:
    """One EVSE (connector 1): its physics, transaction and profile."""

    evse_id: int
    physics: EVCharger
    default_w: float  # what it does with no profile in force
    profile: Profile | None = None  # the TxProfile of the transaction
    default_profile: Profile | None = None  # a TxDefaultProfile: in force when no TxProfile is
    suspended: bool = False  # offline past maxOfflineDuration with invalidAfterOfflineDuration false
    transaction_id: str | None = None
    tx_session: EVSession | None = None
    tx_start_unix_s: float = 0.0
    seq_no: int = 0
    needs_sent: bool = False
    status: str | None = None  # the connector status last told to the CSMS
    next_meter_at: float = 0.0  # monotonic
    meter_events: int = 0
    fallbacks: int = 0
    resumes: int = 0
    last_meter: dict[str, float] = field(default_factory=dict)

    def target_w(self, now_unix_s: float) -> float:
        """The power the EVSE is told to follow now: the TxProfile's period in force, else the TxDefaultProfile's,
        else its default power."""
        period = None if self.profile is None or self.suspended else self.profile.in_force(now_unix_s)
        if period is None and self.default_profile is not None:
            period = self.default_profile.in_force(now_unix_s)
        if period is None:
            return self.default_w
        if period.setpoint_w is not None:
            return period.setpoint_w
        return min(float(period.limit_w or 0.0), self.physics.rated_charge_w)

    def apply(self, now_unix_s: float) -> None:
        """Hand the physics its target when it changed (a write is an event in its log, not a tick)."""
        target = self.target_w(now_unix_s)
        if target != self.physics.lease.setpoint_w or self.physics.lease.writes == 0:
            self.physics.write_setpoint(target)

    def connector_status(self) -> str:
        if self.physics.fault_code:
            return "Faulted"
        return "Occupied" if self.physics.session is not None else "Available"


class _Handlers:
    """The CSMS's calls both versions answer, in the library's snake_case; `station` does the work."""

    station: OcppStation
    results: ModuleType

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, charging_profile: dict[str, Any], evse_id: int, **_: Any) -> Any:
        await self.station.answer_delay()
        try:
            self.station.take_profile(charging_profile, evse_id)
        except ProfileRejected as exc:
            return self.results.SetChargingProfile(status="Rejected", status_info={"reason_code": str(exc)})
        return self.results.SetChargingProfile(status="Accepted")

    @on("GetCompositeSchedule")
    async def on_get_composite_schedule(self, duration: int, evse_id: int, charging_rate_unit: str | None = None,
                                        **_: Any) -> Any:
        await self.station.answer_delay()
        try:
            schedule = self.station.composite_schedule(evse_id, duration, charging_rate_unit)
        except ProfileRejected as exc:
            return self.results.GetCompositeSchedule(status="Rejected", status_info={"reason_code": str(exc)})
        return self.results.GetCompositeSchedule(status="Accepted", schedule=schedule)

    @on("SetVariables")
    async def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        await self.station.answer_delay()
        return self.results.SetVariables(set_variable_result=[self.station.set_variable(d) for d in set_variable_data])

    @on("GetVariables")
    async def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        await self.station.answer_delay()
        return self.results.GetVariables(get_variable_result=[self.station.get_variable(d) for d in get_variable_data])


class _Client21(_Handlers, v21.ChargePoint):
    """An OCPP 2.1 station: the shared handlers plus UpdateDynamicSchedule (2.1 only)."""

    results = v21.call_result

    def __init__(self, station: OcppStation, connection: Any) -> None:
        super().__init__(station.station_id, connection, response_timeout=10)
        self.station = station

    @on("UpdateDynamicSchedule")
    async def on_update_dynamic_schedule(self, charging_profile_id: int, schedule_update: dict[str, Any],
                                         **_: Any) -> Any:
        await self.station.answer_delay()
        try:
            self.station.take_update(charging_profile_id, schedule_update)
        except ProfileRejected as exc:
            return self.results.UpdateDynamicSchedule(status="Rejected", status_info={"reason_code": str(exc)})
        return self.results.UpdateDynamicSchedule(status="Accepted")


class _Client201(_Handlers, v201.ChargePoint):
    """An OCPP 2.0.1 station: the shared handlers only."""

    results = v201.call_result

    def __init__(self, station: OcppStation, connection: Any) -> None:
        super().__init__(station.station_id, connection, response_timeout=10)
        self.station = station


class OcppStation:
    """One simulated station (`station_id`) whose EVSE k (1-based) is `physics[k - 1]`."""

    def __init__(self, station_id: str, physics: list[EVCharger], faults: DeviceFaults, settings: OcppSimConfig,
                 clock: Clock, password: str | None, version: str = "2.1") -> None:
        if version not in ("2.1", "2.0.1"):
            raise SimulationError(f"station {station_id}: OCPP version {version!r} is not simulated")
        self.station_id = station_id
        self.version = version
        self.v2x = version == "2.1"
        self.calls = v21.call if self.v2x else v201.call
        self.faults = faults
        faults.on_reboot = self.reboot
        faults.on_offline = lambda _offline: self._wake.set()  # the session loop looks at the switch at once
        self.settings = settings
        self.clock = clock
        self.password = password
        default = settings.fallback_w if self.v2x else None
        self.evses: dict[int, Evse] = {}
        for number, evse_physics in enumerate(physics, start=1):
            evse_physics.write_lease_timeout(0.0)  # the profile's maxOfflineDuration is this station's lease
            self.evses[number] = Evse(number, evse_physics,
                                      evse_physics.rated_charge_w if default is None else default)
        self.online = False
        self.offline_since_s: float | None = 0.0  # sim seconds; never connected counts as offline
        self.ticks = 0  # metering ticks done (tests wait on it instead of sleeping)
        self.link_failures = 0
        self.booted = False
        self.booting = False  # rebooted, not yet accepted: no transaction is started meanwhile
        self.boots = 0
        self.heartbeat_s = 60.0
        self.measurands = MEASURANDS if self.v2x else MEASURANDS_201  # what this station can meter
        self.tx_measurands: tuple[str, ...] = self.measurands
        self.tx_interval_s: float = settings.meter_period_s
        self.outbox: deque[Any] = deque(maxlen=OUTBOX_MAX)
        self.sent: list[dict[str, Any]] = []  # TransactionEvents as sent (eventType, seqNo, offline), for tests
        self._client: _Client21 | _Client201 | None = None
        self._wake = asyncio.Event()
        self._reboot = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- views for tests and docs (EVSE 1 of a one-EVSE station) --------------------------------------------
    @property
    def physics(self) -> EVCharger:
        return self.evses[1].physics

    @property
    def profile(self) -> Profile | None:
        return self.evses[1].profile

    @property
    def transaction_id(self) -> str | None:
        return self.evses[1].transaction_id

    @property
    def last_meter(self) -> dict[str, float]:
        return self.evses[1].last_meter

    @property
    def fallbacks(self) -> int:
        return sum(e.fallbacks for e in self.evses.values())

    @property
    def meter_events(self) -> int:
        return sum(e.meter_events for e in self.evses.values())

    # ---- CSMS calls --------------------------------------------------------------------------------------------
    async def answer_delay(self) -> None:
        """The `slow` fault: every answer to the CSMS comes this many wall seconds late."""
        if self.faults.state.slow_s > 0:
            await asyncio.sleep(self.faults.state.slow_s)

    def _evse(self, evse_id: int) -> Evse:
        evse = self.evses.get(evse_id)
        if evse is None:
            raise ProfileRejected("UnknownEvse")
        return evse

    def take_profile(self, profile: dict[str, Any], evse_id: int) -> None:
        """Follow a SetChargingProfile (ProfileRejected with the reasonCode otherwise)."""
        if self.faults.state.reject_reason is not None:
            raise ProfileRejected(self.faults.state.reject_reason)
        purpose = profile.get("charging_profile_purpose")
        if purpose == "TxDefaultProfile":  # evse 0: every EVSE of the station
            targets = list(self.evses.values()) if evse_id == 0 else [self._evse(evse_id)]
            for evse in targets:
                evse.default_profile = self._parse_profile(profile, evse)
                evse.apply(self._now_unix())
            return
        evse = self._evse(evse_id)
        if purpose != "TxProfile":
            raise ProfileRejected("UnsupportedPurpose")
        if evse.transaction_id is None or profile.get("transaction_id") != evse.transaction_id:
            raise ProfileRejected("TxNotFound")
        evse.profile = self._parse_profile(profile, evse)
        evse.suspended = False
        evse.apply(self._now_unix())

    def _parse_profile(self, profile: dict[str, Any], evse: Evse) -> Profile:
        kind = profile.get("charging_profile_kind")
        allowed = ("Dynamic", "Absolute", "Relative") if self.v2x else ("Absolute", "Relative")
        if kind not in allowed:
            raise ProfileRejected("UnsupportedKind")
        schedule = profile["charging_schedule"][0]
        if schedule.get("charging_rate_unit") != "W":
            raise ProfileRejected("UnsupportedRateUnit")
        periods: list[Period] = []
        for raw in sorted(schedule["charging_schedule_period"], key=lambda p: p["start_period"]):
            mode = raw.get("operation_mode", "ChargingOnly")
            if kind == "Dynamic":
                if mode != "CentralSetpoint":
                    raise ProfileRejected("UnsupportedOperationMode")
                if "setpoint" not in raw:
                    raise ProfileRejected("NoSetpoint")
                periods.append(Period(0.0, raw.get("limit"), float(raw["setpoint"]), mode))
                break  # a dynamic profile has one period
            if mode != "ChargingOnly":
                raise ProfileRejected("UnsupportedOperationMode")
            if "limit" not in raw:
                raise ProfileRejected("NoLimit")
            if raw["limit"] < 0:
                raise ProfileRejected("NegativeLimit")
            periods.append(Period(float(raw["start_period"]), float(raw["limit"])))
        if kind == "Relative":
            start = evse.tx_start_unix_s if evse.transaction_id is not None else self._now_unix()
        elif kind == "Absolute" and "start_schedule" in schedule:
            start = datetime.fromisoformat(schedule["start_schedule"]).timestamp()
        else:
            start = self._now_unix()
        max_offline = profile.get("max_offline_duration") if self.v2x else None
        valid_to = profile.get("valid_to")
        return Profile(int(profile["id"]), evse.transaction_id or "", str(kind), periods, start,
                       schedule.get("duration"), max_offline, bool(profile.get("invalid_after_offline_duration")),
                       datetime.fromisoformat(valid_to).timestamp() if valid_to else None,
                       str(profile["charging_profile_purpose"]))

    def take_update(self, profile_id: int, update: dict[str, Any]) -> None:
        """Move a Dynamic profile's setpoint (UpdateDynamicSchedule)."""
        if self.faults.state.reject_reason is not None:
            raise ProfileRejected(self.faults.state.reject_reason)
        evse = next((e for e in self.evses.values() if e.profile is not None and e.profile.id == profile_id), None)
        if evse is None or evse.profile is None or evse.profile.kind != "Dynamic":
            raise ProfileRejected("UnknownProfile")
        if "setpoint" not in update:
            raise ProfileRejected("NoSetpoint")
        evse.profile.periods[0].setpoint_w = float(update["setpoint"])
        evse.apply(self._now_unix())

    def composite_schedule(self, evse_id: int, duration: int, unit: str | None) -> dict[str, Any]:
        """K08: the schedule EVSE `evse_id` will follow for `duration` s from now, in W (snake_case for the
        library). Setpoints and limits are clipped to the nameplate, as the physics will clip them."""
        if unit not in (None, "W"):
            raise ProfileRejected("UnsupportedRateUnit")
        if evse_id == 0:
            raise ProfileRejected("UnknownEvse")  # the grid connection's schedule is not simulated
        evse = self._evse(evse_id)
        now = self._now_unix()
        points: list[tuple[float, float]] = []  # (start from now, W), a limit or a setpoint
        profile = None if evse.suspended else evse.profile
        points.append((0.0, evse.target_w(now)))
        edges: list[float] = []
        for each in (profile, evse.default_profile):
            if each is None:
                continue
            if each.kind != "Dynamic":
                edges += [each.start_unix_s + p.start_s for p in each.periods]
                edges += [each.start_unix_s + each.duration_s] if each.duration_s is not None else []
            edges += [each.valid_to_unix_s] if each.valid_to_unix_s is not None else []
        for edge in sorted(edges):
            if now < edge < now + duration:
                points.append((edge - now, evse.target_w(edge)))
        dynamic = profile is not None and profile.kind == "Dynamic" and profile.in_force(now) is not None
        setpoint = self.v2x and dynamic
        periods = []
        for start, watts in points:
            if periods and periods[-1]["_w"] == watts:
                continue
            entry: dict[str, Any] = {"start_period": int(start), "_w": watts}
            if setpoint:
                clipped = min(max(watts, -evse.physics.rated_discharge_w), evse.physics.rated_charge_w)
                entry.update(setpoint=clipped, operation_mode="CentralSetpoint")
            else:
                entry["limit"] = min(max(watts, 0.0), evse.physics.rated_charge_w)
            periods.append(entry)
        for entry in periods:
            del entry["_w"]
        return {"evse_id": evse_id, "duration": duration, "schedule_start": self._stamp(),
                "charging_rate_unit": "W", "charging_schedule_period": periods}

    def set_variable(self, data: dict[str, Any]) -> dict[str, Any]:
        """One SetVariableData: applied to what the meter tick sends, or refused with the spec's status."""
        result = self._variable_result(data)
        if result["attribute_status"] != "Accepted":
            return result
        name, value = data["variable"]["name"].lower(), str(data["attribute_value"]).strip()
        if name == TX_INTERVAL.lower():
            if not value.isdigit():
                return {**result, "attribute_status": "Rejected",
                        "attribute_status_info": {"reason_code": "InvalidValue"}}
            self.tx_interval_s = float(value) if self.settings.follow_tx_interval else self.tx_interval_s
        else:
            chosen = tuple(m.strip() for m in value.split(",") if m.strip())
            unknown = [m for m in chosen if m not in self.measurands]
            if unknown:
                return {**result, "attribute_status": "Rejected",
                        "attribute_status_info": {"reason_code": "UnsupportedMeasurand",
                                                  "additional_info": ",".join(unknown)[:500]}}
            self.tx_measurands = chosen
        for evse in self.evses.values():
            evse.next_meter_at = 0.0  # the new setting applies from the next tick
        self._wake.set()
        log.info("ocpp_station.variable_set", station=self.station_id, variable=data["variable"]["name"],
                 value=value)
        return result

    def get_variable(self, data: dict[str, Any]) -> dict[str, Any]:
        result = self._variable_result(data)
        if result["attribute_status"] == "Accepted":
            name = data["variable"]["name"].lower()
            result["attribute_value"] = (f"{self.tx_interval_s:g}" if name == TX_INTERVAL.lower()
                                         else ",".join(self.tx_measurands))
        return result

    def _variable_result(self, data: dict[str, Any]) -> dict[str, Any]:
        """Status of a Get/SetVariableData before its value is looked at (OCPP 2.x B05/B06 status names)."""
        component, variable = data["component"], data["variable"]
        attribute = data.get("attribute_type", "Actual")
        result: dict[str, Any] = {"attribute_type": attribute, "component": component, "variable": variable,
                                  "attribute_status": "Accepted"}
        evse = component.get("evse")
        if component["name"].lower() != SAMPLED_DATA_CTRLR.lower() or (evse and evse["id"] not in self.evses):
            result["attribute_status"] = "UnknownComponent"
        elif variable["name"].lower() not in (TX_MEASURANDS.lower(), TX_INTERVAL.lower()):
            result["attribute_status"] = "UnknownVariable"
        elif attribute != "Actual":
            result["attribute_status"] = "NotSupportedAttributeType"
        return result

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        now = self._now_unix()
        for evse in self.evses.values():
            evse.apply(now)
        self._tasks = [asyncio.create_task(self._run(), name=f"ocpp-{self.station_id}"),
                       asyncio.create_task(self._meter_loop(), name=f"ocpp-meter-{self.station_id}")]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=0.5)
        self._tasks = []

    def reboot(self) -> None:
        """Power-cycle: profiles forgotten, each transaction resumed or ended (see the module docstring), the link
        dropped, a new BootNotification."""
        resume = self.v2x and self.settings.tx_resumption_timeout_s > 0
        for evse in self.evses.values():
            evse.profile, evse.suspended = None, False
            if evse.transaction_id is not None:
                if resume and evse.physics.session is evse.tx_session:
                    self._queue_event(evse, "Updated", "TxResumed")
                    evse.resumes += 1
                else:
                    self._queue_event(evse, "Ended", "AbnormalCondition", stopped_reason="PowerLoss")
                    evse.transaction_id, evse.tx_session = None, None
            evse.apply(self._now_unix())
        self.booted = False
        self.booting = True
        self._reboot.set()

    # ---- the link --------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        subprotocol = "ocpp" + self.version
        while not self._stop.is_set():
            if self.faults.state.offline:
                await asyncio.sleep(WATCH_PERIOD_S)
                continue
            try:
                async with connect(f"{self.settings.url.rstrip('/')}/{self.station_id}",
                                   subprotocols=[subprotocol],  # type: ignore[list-item]
                                   ssl=self._tls(), additional_headers=self._auth(), open_timeout=5,
                                   compression=None) as connection:
                    backoff = RECONNECT_MIN_S
                    await self._session(connection)
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                self.link_failures += 1
                log.debug("ocpp_station.link_failed", station=self.station_id, error=repr(exc)[:200])
            except Exception as exc:  # a message the library refused (a bug here): loud, and the station goes on
                self.link_failures += 1
                log.exception("ocpp_station.session_failed", station=self.station_id, error=repr(exc)[:200])
            finally:
                if self.online:
                    self.online = False
                    self.offline_since_s = self.clock.seconds()
                self._client = None
            if self._reboot.is_set():
                continue  # a reboot reconnects at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _session(self, connection: Any) -> None:
        client: _Client21 | _Client201 = (_Client21 if self.v2x else _Client201)(self, connection)
        self._client = client
        self._reboot.clear()
        receiver = asyncio.create_task(client.start())
        try:
            if not self.booted:
                answer = await client.call(self.calls.BootNotification(
                    charging_station={"model": "vppsim DC_BPT" if self.v2x else "vppsim charge-only",
                                      "vendor_name": "vpp-agent simulator"},
                    reason="PowerUp"))
                if answer is None or answer.status != "Accepted":
                    return
                self.booted, self.booting = True, False
                self.boots += 1
                self.heartbeat_s = float(answer.interval)
            self.online = True
            self.offline_since_s = None
            now = self._now_unix()
            for evse in self.evses.values():  # a suspended profile is valid again (invalidAfterOffline false)
                evse.suspended = False
                evse.apply(now)
                evse.status = evse.connector_status()
                await client.call(self.calls.StatusNotification(
                    timestamp=self._stamp(), connector_status=evse.status, evse_id=evse.evse_id,
                    connector_id=CONNECTOR_ID))
            loop = asyncio.get_running_loop()
            next_heartbeat = loop.time() + self.heartbeat_s
            while not self._stop.is_set() and not self._reboot.is_set() and not self.faults.state.offline:
                if receiver.done():
                    return
                self._queue_missing_needs()
                await self._flush(client)
                if loop.time() >= next_heartbeat:
                    await client.call(self.calls.Heartbeat())
                    next_heartbeat += self.heartbeat_s
                self._wake.clear()
                if self.outbox:
                    continue
                with contextlib.suppress(TimeoutError):
                    pause = max(0.0, min(next_heartbeat - loop.time(), 1.0))
                    await asyncio.wait_for(self._wait_any(receiver), pause)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
            await connection.close()

    async def _wait_any(self, receiver: asyncio.Task[Any]) -> None:
        """Until there is something to send, a reboot, or the link ends (the offline fault: checked by the caller
        at least every second)."""
        wake = asyncio.ensure_future(self._wake.wait())
        reboot = asyncio.ensure_future(self._reboot.wait())
        try:
            await asyncio.wait((wake, reboot, receiver), return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            reboot.cancel()

    async def _flush(self, client: _Client21 | _Client201) -> None:
        """Send the queued messages in order; one that fails on the link stays first in line."""
        while self.outbox and not self._reboot.is_set() and not self.faults.state.offline:
            request = self.outbox[0]
            try:
                answer = await client.call(request)
            except OCPPError:  # our own message broke the schema: a bug, logged; the queue must go on
                log.exception("ocpp_station.bad_message", station=self.station_id, action=type(request).__name__)
                answer = None
            self.outbox.popleft()
            if answer is None:
                log.warning("ocpp_station.call_error", station=self.station_id, action=type(request).__name__)
            if isinstance(request, self.calls.TransactionEvent):
                self.sent.append({"event_type": request.event_type, "seq_no": request.seq_no,
                                  "offline": bool(request.offline), "evse": request.evse["id"],
                                  "transaction_id": request.transaction_info["transaction_id"],
                                  "trigger_reason": request.trigger_reason})

    def _queue(self, request: Any) -> None:
        self.outbox.append(request)
        self._wake.set()

    def _queue_missing_needs(self) -> None:
        if not self.v2x:
            return
        for evse in self.evses.values():
            if evse.transaction_id is not None and not evse.needs_sent and evse.tx_session is not None:
                evse.needs_sent = True
                self._queue(self.calls.NotifyEVChargingNeeds(charging_needs=self._needs(evse, evse.tx_session),
                                                             evse_id=evse.evse_id))

    # ---- metering: runs online and offline ---------------------------------------------------------------------
    async def _meter_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug here must be loud but must not stop the station's clock
                log.exception("ocpp_station.tick_failed", station=self.station_id)
            lapsing = not self.online and any(e.profile is not None for e in self.evses.values())
            pause = WATCH_PERIOD_S if lapsing else min(self.tx_interval_s or IDLE_TICK_S, IDLE_TICK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    def tick(self) -> None:
        """One look at every EVSE: the offline lease, its status, its transaction, meter values when due."""
        self.ticks += 1
        self.check_offline()
        now = self._now_unix()
        wall = time.monotonic()
        for evse in self.evses.values():
            evse.apply(now)
            if self.online:
                status = evse.connector_status()
                if status != evse.status:
                    evse.status = status
                    self._queue(self.calls.StatusNotification(timestamp=self._stamp(), connector_status=status,
                                                              evse_id=evse.evse_id, connector_id=CONNECTOR_ID))
            if self.booting or self.boots == 0:
                continue  # no transaction before the station has booted once, nor while it reboots
            session = evse.physics.session
            if evse.transaction_id is not None and session is not evse.tx_session:
                self._queue_event(evse, "Ended", "EVDeparted", stopped_reason="EVDisconnected")
                evse.transaction_id, evse.tx_session, evse.profile, evse.suspended = None, None, None, False
                evse.apply(now)
            if session is not None and evse.transaction_id is None:
                evse.transaction_id, evse.tx_session, evse.seq_no = str(uuid.uuid4()), session, 0
                evse.tx_start_unix_s, evse.needs_sent = now, False
                self._queue_event(evse, "Started", "CablePluggedIn")
                evse.next_meter_at = wall + self.tx_interval_s
            elif (session is not None and self.tx_interval_s > 0 and wall >= evse.next_meter_at
                  and not self.faults.state.meter_silent):
                self._queue_event(evse, "Updated", "MeterValuePeriodic")
                evse.next_meter_at = wall + self.tx_interval_s

    def _queue_event(self, evse: Evse, event_type: str, trigger: str, stopped_reason: str | None = None) -> None:
        assert evse.transaction_id is not None
        info: dict[str, Any] = {"transaction_id": evse.transaction_id,
                                "charging_state": "EVConnected" if event_type != "Ended" else "Idle"}
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        meter = self._meter_value(evse)
        self._queue(self.calls.TransactionEvent(
            event_type=event_type, timestamp=self._stamp(), trigger_reason=trigger, seq_no=evse.seq_no,
            transaction_info=info, evse={"id": evse.evse_id, "connector_id": CONNECTOR_ID},
            meter_value=[meter] if meter is not None else None, offline=True if not self.online else None))
        evse.seq_no += 1
        evse.meter_events += 1

    def _meter_value(self, evse: Evse) -> dict[str, Any] | None:
        p = evse.physics
        power = p.power_w
        evse.last_meter = {"import_w": max(power, 0.0), "export_w": max(-power, 0.0), "soc_percent": p.soc * 100,
                           "setpoint_w": p.lease.setpoint_w}
        values = {
            "Power.Active.Import": (round(max(power, 0.0), 1), "W"),
            "Power.Active.Export": (round(max(-power, 0.0), 1), "W"),
            "Power.Active.Setpoint": (round(p.lease.setpoint_w, 1), "W"),
            "Energy.Active.Import.Register": (round(p.import_wh / 1000.0, 4), "kWh"),
            "Energy.Active.Export.Register": (round(p.export_wh, 1), "Wh"),
            "SoC": (round(p.soc * 100, 2), "Percent"),
        }
        sampled = []
        for measurand in self.tx_measurands:
            if measurand == "SoC" and p.session is None:
                continue
            value, unit = values[measurand]
            item: dict[str, Any] = {"value": value, "measurand": measurand, "unit_of_measure": {"unit": unit}}
            if measurand == "SoC":
                item["location"] = "EV"
            sampled.append(item)
        if not sampled:
            return None
        return {"timestamp": self._stamp(), "sampled_value": sampled}

    def _needs(self, evse: Evse, s: EVSession) -> dict[str, Any]:
        """The EV's needs as ISO 15118-20 gives them: energies in Wh from the SoC now."""
        soc = evse.physics.soc
        return {
            "requested_energy_transfer": "DC_BPT",
            "departure_time": self._stamp(evse.physics.start_unix_s + s.departure_s),
            "dc_charging_parameters": {"ev_max_current": DC_MAX_CURRENT_A, "ev_max_voltage": DC_MAX_VOLTAGE_V,
                                       "ev_energy_capacity": s.capacity_wh, "state_of_charge": round(soc * 100)},
            "v2x_charging_parameters": {
                "max_charge_power": evse.physics.rated_charge_w,
                "max_discharge_power": evse.physics.rated_discharge_w,
                "ev_target_energy_request": round((s.target_soc - soc) * s.capacity_wh, 1),
                "ev_min_energy_request": round((s.min_soc - soc) * s.capacity_wh, 1),
            },
        }

    # ---- the offline lease -------------------------------------------------------------------------------------
    def check_offline(self) -> bool:
        """Past maxOfflineDuration offline, drop (invalidAfterOfflineDuration true) or suspend (false) each
        EVSE's profile; True when one just did."""
        since = self.offline_since_s
        if self.online or since is None:
            return False
        offline_s = self.clock.seconds() - since
        changed = False
        for evse in self.evses.values():
            profile = evse.profile
            if profile is None or evse.suspended or profile.max_offline_s is None or offline_s < profile.max_offline_s:
                continue
            if profile.invalid_after_offline:
                evse.profile = None
            else:
                evse.suspended = True
            evse.fallbacks += 1
            changed = True
            log.info("ocpp_station.fallback", station=self.station_id, evse=evse.evse_id,
                     offline_s=round(offline_s, 2), fallback_w=evse.default_w, dropped=profile.invalid_after_offline)
            evse.apply(self._now_unix())
        return changed

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _now_unix(self) -> float:
        return self.clock.now().timestamp()

    def _stamp(self, unix_s: float | None = None) -> str:
        when = self.clock.now() if unix_s is None else datetime.fromtimestamp(unix_s, UTC)
        return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _tls(self) -> ssl.SSLContext | None:
        if not self.settings.url.startswith("wss://"):
            return None
        return ssl.create_default_context(cafile=self.settings.ca_file)

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


@dataclass(frozen=True, slots=True)
class StationSpec:
    """What the runner hands over for one station: its id, the physics of its EVSEs, faults and OCPP version."""

    station_id: str
    evses: list[EVCharger]
    faults: DeviceFaults
    version: str = "2.1"


class OcppStations:
    """Every simulated OCPP station of a site, started and stopped together."""

    def __init__(self, settings: OcppSimConfig, specs: list[StationSpec], clock: Clock) -> None:
        passwords = station_passwords(settings)
        self.stations = {spec.station_id: OcppStation(spec.station_id, spec.evses, spec.faults, settings, clock,
                                                      passwords.get(spec.station_id), spec.version)
                         for spec in specs}

    def start(self) -> None:
        for station in self.stations.values():
            station.start()

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.stations.values()))
