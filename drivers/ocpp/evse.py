"""One EVSE of an OCPP 2.1 station behind the Driver port (agent/ports.py), so the fleet, the envelope, the
dispatcher and the events treat it like a Modbus V2G charger.

The station pushes; the agent polls. The session (drivers/ocpp/session.py) feeds this driver what the station says
and `read()` hands out a Measurement built from it:
- connector status (StatusNotification) and the transaction (TransactionEvent Started / Ended) give availability
  and `ev_connected`: a Faulted connector is status FAULT (fault_code 1), Unavailable FAULT (fault_code 2);
- meter values give power, energy counters, SoC and the station's own setpoint (Power.Active.Setpoint) for the
  agent's read-back check; during a transaction, values older than `stale_after_s` fail the read (a station that
  stopped metering cannot be steered by what it last said);
- NotifyEVChargingNeeds gives the session: departure, target and minimum SoC, the power limits.
Control: the first setpoint of a transaction (or after a new lease) is a SetChargingProfile (TxProfile, Dynamic,
CentralSetpoint, maxOfflineDuration = the lease); later ones are UpdateDynamicSchedule. A station that rejects the
profile is logged with its reason and reports no charge or discharge capability (max 0 W) until its next
transaction or boot, so the envelope does not count it as controllable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from agent.model import AssetKind, DeviceStatus, Measurement
from agent.ports import DriverError
from drivers.measure import to_measurement
from drivers.ocpp.codec import (
    CodecError,
    central_setpoint_request,
    dynamic_update_request,
    meter_fields,
    session_fields,
)

if TYPE_CHECKING:
    from drivers.ocpp.session import StationLink

log = structlog.get_logger("drivers.ocpp")

STATUS_DEADBAND_W = 1.0  # as the Modbus charger: power within this band of zero is standby
FAULT_FAULTED = 1
FAULT_UNAVAILABLE = 2
SESSION_FIELDS = ("ev_departure", "capacity_wh", "ev_target_soc", "ev_min_soc", "rated_charge_w", "max_charge_w",
                  "rated_discharge_w", "max_discharge_w")


class OcppEvseDriver:
    """One EVSE (`evse_id` of station `station_id`) as an asset; the CSMS attaches the station's live session."""

    kind: AssetKind = AssetKind.EV_CHARGER

    def __init__(
        self,
        asset_id: str,
        station_id: str,
        evse_id: int,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        stale_after_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.asset_id = asset_id
        self.station_id = station_id
        self.evse_id = evse_id
        self.stale_after_s = stale_after_s
        self._now = now
        self._monotonic = monotonic
        self.link: StationLink | None = None
        self.connector_status: str | None = None
        self.transaction_id: str | None = None
        self.last_seq_no: int | None = None
        self.meter: dict[str, float] = {}
        self.meter_at: float | None = None  # monotonic arrival of the latest meter values
        self.session: dict[str, float] = {}
        self.lease_s = 0
        self.profile_id = evse_id  # one TxProfile per EVSE, replaced (same id) for each transaction
        self.profile_for: tuple[str, int] | None = None  # (transaction, lease) the station accepted a profile for
        self.rejected: str | None = None  # the station's reason, while its rejection stands
        self.bad_data: str | None = None
        self.profiles_sent = 0
        self.updates_sent = 0

    def __repr__(self) -> str:
        return f"OcppEvseDriver({self.asset_id} = {self.station_id} EVSE {self.evse_id})"

    # ---- from the session ------------------------------------------------------------------------------
    def attach(self, link: StationLink | None) -> None:
        """The station's session came (a link) or went (None). A new session must send a new profile."""
        self.link = link
        self.profile_for = None

    def on_boot(self) -> None:
        """A (re)boot: the station forgot its profiles; a rejection is retried."""
        self.profile_for = None
        self.rejected = None

    def on_status(self, connector_status: str) -> None:
        self.connector_status = connector_status

    def on_transaction_event(self, event: dict[str, Any]) -> None:
        transaction_id = event["transactionInfo"]["transactionId"]
        if event["eventType"] == "Ended":
            if transaction_id == self.transaction_id:
                self._end_transaction()
            return
        if transaction_id != self.transaction_id:
            self._end_transaction()
            self.transaction_id = transaction_id
            self.rejected = None
            log.info("ocpp.transaction", asset_id=self.asset_id, station=self.station_id, transaction=transaction_id)
        self.last_seq_no = event["seqNo"]
        if event.get("offline"):
            return  # queued while offline: history, not the present (M&V of such events: docs/ocpp.md)
        if "meterValue" in event:
            self.on_meter_values(event["meterValue"])

    def on_meter_values(self, meter_values: list[dict[str, Any]]) -> None:
        try:
            values = meter_fields(meter_values)
        except CodecError as exc:
            self._bad(str(exc))
            return
        self.bad_data = None
        self.meter.update(values)
        self.meter_at = self._monotonic()

    def on_charging_needs(self, needs: dict[str, Any]) -> None:
        try:
            self.session = session_fields(needs, self.meter.get("soc"))
        except CodecError as exc:
            self._bad(str(exc))
            return
        log.info("ocpp.charging_needs", asset_id=self.asset_id, **{k: round(v, 3) for k, v in self.session.items()})

    def _end_transaction(self) -> None:
        self.transaction_id = None
        self.last_seq_no = None
        self.session = {}
        self.meter = {k: v for k, v in self.meter.items() if k in ("energy_import_wh", "energy_export_wh")}
        self.profile_for = None

    def _bad(self, reason: str) -> None:
        if reason != self.bad_data:
            log.warning("ocpp.bad_values", asset_id=self.asset_id, station=self.station_id, reason=reason)
        self.bad_data = reason

    # ---- Driver protocol -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Nothing to open: the station dials in; the CSMS attaches its session."""

    async def read(self) -> Measurement:
        link = self.link
        if link is None:
            raise DriverError(self.asset_id, f"station {self.station_id} is not connected")
        if self.bad_data is not None:
            raise DriverError(self.asset_id, f"station {self.station_id} sent unusable values: {self.bad_data}")
        in_transaction = self.transaction_id is not None
        if in_transaction:
            if self.meter_at is None:
                raise DriverError(self.asset_id, f"transaction {self.transaction_id}: no meter values yet")
            age = self._monotonic() - self.meter_at
            if age > self.stale_after_s:
                raise DriverError(self.asset_id, f"meter values stale: last {age:.1f} s ago "
                                                 f"(meter_stale_after_s {self.stale_after_s:g})")
        return to_measurement(self.asset_id, self._fields(in_transaction), self._now, self._implausible)

    def _fields(self, in_transaction: bool) -> dict[str, float]:
        values: dict[str, float] = {"power_w": 0.0}
        values.update(self.meter if in_transaction else {})
        for name in ("energy_import_wh", "energy_export_wh"):
            if name in self.meter:
                values[name] = self.meter[name]
        connected = in_transaction or self.connector_status == "Occupied"
        values["ev_connected"] = 1.0 if connected else 0.0
        if in_transaction:
            values.update(self.session)
            if self.rejected is not None:
                values["max_charge_w"] = values["max_discharge_w"] = 0.0
            if self.profile_for is not None:
                values["lease_timeout_s"] = float(self.profile_for[1])
        power = values["power_w"]
        if self.connector_status == "Faulted":
            values["status"], values["fault_code"] = DeviceStatus.FAULT, FAULT_FAULTED
        elif self.connector_status == "Unavailable":
            values["status"], values["fault_code"] = DeviceStatus.FAULT, FAULT_UNAVAILABLE
        elif not connected:
            values["status"] = DeviceStatus.NO_EV
        elif power > STATUS_DEADBAND_W:
            values["status"] = DeviceStatus.CHARGING
        elif power < -STATUS_DEADBAND_W:
            values["status"] = DeviceStatus.DISCHARGING
        else:
            values["status"] = DeviceStatus.STANDBY
        return values

    def _implausible(self, field_name: str, value: float, problem: str) -> NoReturn:
        raise DriverError(self.asset_id, f"station {self.station_id} EVSE {self.evse_id}: {field_name} {value!r} "
                                         f"{problem}")

    async def write_lease_timeout(self, seconds: float) -> None:
        """The lease goes out as the next profile's maxOfflineDuration (whole seconds, at least 1)."""
        lease = max(1, round(seconds))
        if lease != self.lease_s:
            self.lease_s = lease
            self.profile_for = None  # a new lease needs a new profile

    async def write_setpoint(self, power_w: float) -> None:
        link, transaction = self.link, self.transaction_id
        if link is None:
            raise DriverError(self.asset_id, f"station {self.station_id} is not connected")
        if transaction is None:
            if power_w == 0.0:
                return  # nothing to steer and nothing asked: no EV, no profile
            raise DriverError(self.asset_id, f"no transaction at station {self.station_id} EVSE {self.evse_id}")
        if self.rejected is not None:
            raise DriverError(self.asset_id, f"station {self.station_id} rejected the charging profile: "
                                             f"{self.rejected}")
        from drivers.ocpp.session import CallFailed

        lease = self.lease_s or 1
        try:
            if self.profile_for == (transaction, lease):
                answer = await link.call_json("UpdateDynamicSchedule", dynamic_update_request(self.profile_id, power_w))
                self.updates_sent += 1
                action = "UpdateDynamicSchedule"
            else:
                request = central_setpoint_request(self.evse_id, self.profile_id, transaction, power_w, lease)
                answer = await link.call_json("SetChargingProfile", request)
                self.profiles_sent += 1
                action = "SetChargingProfile"
        except CallFailed as exc:
            raise DriverError(self.asset_id, str(exc)) from exc
        if answer.get("status") != "Accepted":
            info = answer.get("statusInfo") or {}
            reason = " ".join(str(x) for x in (info.get("reasonCode"), info.get("additionalInfo")) if x) or "no reason"
            self.profile_for = None
            if action == "SetChargingProfile":
                self.rejected = reason
            log.warning("ocpp.profile_rejected", asset_id=self.asset_id, station=self.station_id, action=action,
                        reason=reason, setpoint_w=power_w)
            raise DriverError(self.asset_id, f"station {self.station_id} rejected {action}: {reason}")
        self.profile_for = (transaction, lease)

    async def close(self) -> None:
        """The CSMS owns the sessions and closes them; safe to call twice."""
        self.link = None
