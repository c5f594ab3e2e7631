"""One EVSE of an OCPP 2.1 or 2.0.1 station behind the Driver port (agent/ports.py), so the fleet, the envelope, the
dispatcher and the events treat it like a Modbus V2G charger.

The station pushes; the agent polls. The session (drivers/ocpp/session.py) feeds this driver what the station says
and `read()` hands out a Measurement built from it:
- connector status (StatusNotification) and the transaction (TransactionEvent Started / Ended) give availability
  and `ev_connected`: a Faulted connector is status FAULT (fault_code 1), Unavailable FAULT (fault_code 2);
- meter values give power, energy counters, SoC and the station's own setpoint (Power.Active.Setpoint) for the
  agent's read-back check; during a transaction, values older than `stale_after_s` fail the read (a station that
  stopped metering cannot be steered by what it last said). The station's setpoint is reported only from a meter
  value measured (its timestamp) and received after the station accepted the agent's last write: the station
  pushes, so the freshest value the agent holds may describe the setpoint before that write, and the control loop
  (which can only tell when it polled, not when the station measured) would call it a mismatch and rewrite;
- NotifyEVChargingNeeds gives the session: departure, target and minimum SoC, the power limits.
Control, OCPP 2.1: the first setpoint of a transaction (or after a new lease) is a SetChargingProfile (TxProfile,
Dynamic, CentralSetpoint, maxOfflineDuration = the lease); later ones are UpdateDynamicSchedule.
Control, OCPP 2.0.1 (charge-only: the EVSE offers no discharge): every setpoint is a SetChargingProfile (TxProfile,
Absolute, one period, `limit` >= 0 W) whose validTo is now + the lease; the station falls back to the 0 W
TxDefaultProfile the CSMS installs at boot (`install_fallback`) once it lapses.
After each accepted write, GetCompositeSchedule (K08) checks in the background (at most one check per EVSE at a time)
that the station will do what was asked; a mismatch is logged with both values.
The EVSE offers no charge or discharge capability (max 0 W), so the envelope does not count it as controllable,
while: the station rejected the profile (until its next transaction or boot), the last composite schedule did not
match (until one matches), or the transaction's idToken was not accepted by the `[ocpp] id_tokens` policy.
Restarts: OCPP 2.1 cannot ask a station to repeat NotifyEVChargingNeeds (MessageTriggerEnumType has no such value),
so the driver keeps each running transaction in the agent's memory (agent.ports.DriverMemory): the EV's needs as
the codec converted them, the idToken's status and what its register log needs to go on (txlog.py `snapshot`).
A TransactionEvent of a remembered transaction after a restart resumes it (no second start; the same log); the
entry goes when the transaction ends (or is replaced by another on the EVSE), and after a week unwritten.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from agent.model import AssetKind, DeviceStatus, Measurement
from agent.ports import DriverError, DriverMemory
from drivers.measure import to_measurement
from drivers.ocpp.codec import (
    CodecError,
    central_setpoint_request,
    charge_limit_request,
    composite_power_w,
    composite_schedule_request,
    default_limit_request,
    dynamic_update_request,
    latest_meter_value,
    meter_value_fields,
    schedule_matches,
    session_fields,
    setpoint_value,
)
from drivers.ocpp.txlog import TransactionLog

if TYPE_CHECKING:
    from drivers.ocpp.session import StationLink

log = structlog.get_logger("drivers.ocpp")

STATUS_DEADBAND_W = 1.0  # as the Modbus charger: power within this band of zero is standby
FAULT_FAULTED = 1
FAULT_UNAVAILABLE = 2
VERIFY_WINDOW_S = 60  # GetCompositeSchedule duration: only the period in force now is compared
FALLBACK_PROFILE_ID_BASE = 100_000  # TxDefaultProfile ids (2.0.1 fallback), apart from the TxProfile ids (EVSE id)
FALLBACK_W = 0.0  # what a 2.0.1 EVSE charges at once the agent's lease lapses: the safe default of DESIGN.md §8
KEPT_TRANSACTION_LOGS = 8  # ended transactions whose readings stay here for settlement
MEMORY_EVERY_S = 30.0  # a running transaction's register log is remembered at most this often (and at close)
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
        memory: DriverMemory | None = None,
        memory_tail_s: float = 1800.0,
    ) -> None:
        """`memory`: where running transactions survive an agent restart (None: they do not); `memory_tail_s`: how
        much of a transaction's register log it keeps, at least the settlement interval (`[events] interval_s`)."""
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
        self.meter_clock_at: datetime | None = None  # the arrival of the latest power, agent's clock: Measurement.at
        # the station's Power.Active.Setpoint: (W, measured at UNIX s, monotonic arrival)
        self.station_setpoint: tuple[float, float, float] | None = None
        self.accepted_at: tuple[float, float] | None = None  # last accepted write: (UNIX s, monotonic)
        self.session: dict[str, float] = {}
        self.lease_s = 0
        self.profile_id = evse_id  # one TxProfile per EVSE, replaced (same id) for each transaction
        self.profile_for: tuple[str, int] | None = None  # (transaction, lease) the station accepted a profile for
        self.rejected: str | None = None  # the station's reason, while its rejection stands
        self.bad_data: str | None = None
        self.profiles_sent = 0
        self.updates_sent = 0
        self.token_status: str | None = None  # the policy's answer to the transaction's idToken, when one was sent
        self.asked_w: float | None = None  # the last setpoint / limit the station accepted
        self.unverified: str | None = None  # why the last composite schedule did not match, while it stands
        self.verifications = 0
        self.verify_rtt_ms: float | None = None  # round trip of the last GetCompositeSchedule
        self.fallback_installed = False
        self._verifying = False
        self.tx_log: TransactionLog | None = None  # the current transaction's readings, in seqNo order
        self.ended_logs: deque[TransactionLog] = deque(maxlen=KEPT_TRANSACTION_LOGS)
        self.memory = memory
        self.memory_tail_s = memory_tail_s
        self._remembered_at = -math.inf  # monotonic time of the last put of the running transaction

    def __repr__(self) -> str:
        return f"OcppEvseDriver({self.asset_id} = {self.station_id} EVSE {self.evse_id})"

    # ---- from the session ------------------------------------------------------------------------------
    def attach(self, link: StationLink | None) -> None:
        """The station's session came (a link) or went (None). A new session must send a new profile."""
        self.link = link
        self.profile_for = None

    def on_boot(self) -> None:
        """A (re)boot: the station forgot its profiles; a rejection is retried, the schedule checked anew."""
        self.profile_for = None
        self.rejected = None
        self.unverified = None
        self.fallback_installed = False

    def on_status(self, connector_status: str) -> None:
        self.connector_status = connector_status

    def on_transaction_event(self, event: dict[str, Any], token_status: str | None = None) -> None:
        """`token_status`: the id_tokens policy's answer to the event's idToken (None when it carries none)."""
        transaction_id = event["transactionInfo"]["transactionId"]
        if event["eventType"] == "Ended":
            if self.transaction_id is None and self._remembered(transaction_id) is not None:
                self._begin(transaction_id)  # ended while the agent was away: its last readings still count
            if transaction_id == self.transaction_id:
                self._log_event(event)
                self._end_transaction()
            return
        if transaction_id != self.transaction_id:
            self._begin(transaction_id)
        if token_status is not None:
            self.token_status = token_status
        self.last_seq_no = event["seqNo"]
        self._log_event(event)
        self._remember()
        if event.get("offline"):
            return  # queued while offline: history (kept in tx_log by its timestamps), not the present
        if "meterValue" in event:
            self.on_meter_values(event["meterValue"])

    def _begin(self, transaction_id: str) -> None:
        """`transaction_id` is now the EVSE's: resumed from the memory when the agent had it before a restart."""
        self._end_transaction()
        self.transaction_id = transaction_id
        self.rejected = None
        self.unverified = None
        if not self._resume(transaction_id):
            log.info("ocpp.transaction", asset_id=self.asset_id, station=self.station_id, transaction=transaction_id)
            self.tx_log = TransactionLog(self.station_id, self.evse_id, transaction_id)
        self._remembered_at = -math.inf  # a transaction is remembered from its first event

    # ---- across agent restarts (agent.ports.DriverMemory) ---------------------------------------------------
    def _memory_key(self, transaction_id: str) -> str:
        return f"ocpp/{self.station_id}/{self.evse_id}/{transaction_id}"

    def _remembered(self, transaction_id: str) -> dict[str, Any] | None:
        return None if self.memory is None else self.memory.get(self._memory_key(transaction_id))

    def _resume(self, transaction_id: str) -> bool:
        """Take up a transaction the agent had before it restarted: its EV's needs, idToken status and log."""
        saved = self._remembered(transaction_id)
        if saved is None:
            return False
        try:
            tx_log = TransactionLog.restore(self.station_id, self.evse_id, transaction_id, saved["log"])
            session = {k: float(v) for k, v in saved["session"].items() if k in SESSION_FIELDS}
            token = saved.get("token_status")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("ocpp.memory_unusable", asset_id=self.asset_id, station=self.station_id,
                        transaction=transaction_id, error=str(exc)[:200])
            return False
        self.tx_log, self.session = tx_log, session
        self.token_status = token if isinstance(token, str) else None
        log.info("ocpp.transaction_resumed", asset_id=self.asset_id, station=self.station_id,
                 transaction=transaction_id, seq_no=tx_log.highest, readings=len(tx_log.readings),
                 needs=sorted(session))
        return True

    def _remember(self, now: bool = False) -> None:
        """Put the running transaction in the memory: `now`, or when MEMORY_EVERY_S have passed since the last."""
        if self.memory is None or self.transaction_id is None or self.tx_log is None:
            return
        mono = self._monotonic()
        if not now and mono < self._remembered_at + MEMORY_EVERY_S:
            return
        self._remembered_at = mono
        self.memory.put(self._memory_key(self.transaction_id), {
            "session": self.session, "token_status": self.token_status,
            "log": self.tx_log.snapshot(self.memory_tail_s)})

    def on_meter_values(self, meter_values: list[dict[str, Any]]) -> None:
        try:
            measured_at, values = latest_meter_value(meter_values)
        except CodecError as exc:
            self._bad(str(exc))
            return
        self.bad_data = None
        self.meter_at = self._monotonic()
        if "power_w" in values:  # values without power (an energy register alone) do not date the power held
            self.meter_clock_at = self._now()
        setpoint = values.pop("setpoint_w", None)
        self.meter.update(values)
        if setpoint is not None and measured_at is not None:
            self.station_setpoint = (setpoint, measured_at, self.meter_at)

    def reported_setpoint(self) -> float | None:
        """The station's own setpoint, when it was measured and received after the last write it accepted (else
        None: the value may describe an earlier setpoint, which is no evidence of a mismatch)."""
        if self.station_setpoint is None:
            return None
        value, measured_at, arrived = self.station_setpoint
        if self.accepted_at is not None and (measured_at < self.accepted_at[0] or arrived < self.accepted_at[1]):
            return None
        return value

    def on_charging_needs(self, needs: dict[str, Any]) -> None:
        try:
            self.session = session_fields(needs, self.meter.get("soc"))
        except CodecError as exc:
            self._bad(str(exc))
            return
        log.info("ocpp.charging_needs", asset_id=self.asset_id, **{k: round(v, 3) for k, v in self.session.items()})
        self._remember(now=True)  # sent once per transaction: it must outlive a restart

    def _log_event(self, event: dict[str, Any]) -> None:
        """Keep the event's energy registers by seqNo and measuring time (offline ones included) for settlement."""
        if self.tx_log is None:
            return
        try:
            values = [meter_value_fields(mv) for mv in event.get("meterValue", [])]
        except CodecError as exc:  # a live event's bad value is reported by on_meter_values; history's here
            if event.get("offline"):
                log.warning("ocpp.bad_history", asset_id=self.asset_id, station=self.station_id,
                            seq_no=event["seqNo"], reason=str(exc))
            values = []
        self.tx_log.add(event["seqNo"], bool(event.get("offline")), values)

    def transaction_logs(self) -> list[TransactionLog]:
        """The readings of the last ended transactions and of the current one, oldest first."""
        return [*self.ended_logs, *([self.tx_log] if self.tx_log is not None else [])]

    def _end_transaction(self) -> None:
        if self.memory is not None and self.transaction_id is not None:
            self.memory.drop(self._memory_key(self.transaction_id))
        if self.tx_log is not None:
            self.ended_logs.append(self.tx_log)
            self.tx_log = None
        self.transaction_id = None
        self.last_seq_no = None
        self.token_status = None
        self.asked_w = None
        self.session = {}
        self.meter = {k: v for k, v in self.meter.items() if k in ("energy_import_wh", "energy_export_wh")}
        self.station_setpoint = None
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
        arrived = self.meter_clock_at
        pushed = in_transaction and arrived is not None and "power_w" in self.meter
        measured_at = (lambda: arrived) if pushed else self._now
        return to_measurement(self.asset_id, self._fields(in_transaction), measured_at, self._implausible)

    def _fields(self, in_transaction: bool) -> dict[str, float]:
        values: dict[str, float] = {"power_w": 0.0}
        values.update(self.meter if in_transaction else {})
        if in_transaction and (setpoint := self.reported_setpoint()) is not None:
            values["setpoint_w"] = setpoint
        for name in ("energy_import_wh", "energy_export_wh"):
            if name in self.meter:
                values[name] = self.meter[name]
        connected = in_transaction or self.connector_status == "Occupied"
        values["ev_connected"] = 1.0 if connected else 0.0
        if in_transaction:
            values.update(self.session)
            if self.not_controllable() is not None:
                values["max_charge_w"] = values["max_discharge_w"] = 0.0
            if self.profile_for is not None:
                values["lease_timeout_s"] = float(self.profile_for[1])
        if self.link is not None and self.link.charge_only:  # OCPP 2.0.1 defines no discharge
            values["rated_discharge_w"] = values["max_discharge_w"] = 0.0
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

    def not_controllable(self) -> str | None:
        """Why the envelope must not count this EVSE now (its limits read 0 W), or None."""
        if self.rejected is not None:
            return f"station {self.station_id} rejected the charging profile: {self.rejected}"
        if self.unverified is not None:
            return f"composite schedule mismatch: {self.unverified}"
        if self._token_refused():
            return f"transaction {self.transaction_id}: idToken not accepted ({self.token_status or 'none sent'})"
        return None

    def _token_refused(self) -> bool:
        """The transaction's idToken was refused, or none was sent where the policy is a list."""
        if self.token_status is not None:
            return self.token_status != "Accepted"
        return self.link is not None and self.link.accepted_tokens is not None

    async def write_setpoint(self, power_w: float) -> float | None:
        """Send the setpoint (2.1) or charge limit (2.0.1); returns 0.0 when a 2.0.1 station was asked to discharge
        (it cannot: it is told 0 W), else None."""
        link, transaction = self.link, self.transaction_id
        if link is None:
            raise DriverError(self.asset_id, f"station {self.station_id} is not connected")
        if transaction is None:
            if power_w == 0.0:
                return None  # nothing to steer and nothing asked: no EV, no profile
            raise DriverError(self.asset_id, f"no transaction at station {self.station_id} EVSE {self.evse_id}")
        if self.rejected is not None:
            raise DriverError(self.asset_id, f"station {self.station_id} rejected the charging profile: "
                                             f"{self.rejected}")
        if self._token_refused():
            if power_w == 0.0:
                return None  # an unauthorised transaction: nothing to steer
            raise DriverError(self.asset_id, str(self.not_controllable()))
        from drivers.ocpp.session import CallFailed

        lease = self.lease_s or 1
        commanded: float | None = None
        try:
            if link.charge_only:
                if power_w < 0:
                    power_w, commanded = 0.0, 0.0  # the envelope offers no discharge; never send a negative limit
                request = charge_limit_request(self.evse_id, self.profile_id, transaction, power_w, lease, self._now())
                answer = await link.call_json("SetChargingProfile", request)
                self.profiles_sent += 1
                action = "SetChargingProfile"
            elif self.profile_for == (transaction, lease):
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
            reason = _reason(answer)
            self.profile_for = None
            if action == "SetChargingProfile":
                self.rejected = reason
            log.warning("ocpp.profile_rejected", asset_id=self.asset_id, station=self.station_id, action=action,
                        reason=reason, setpoint_w=power_w)
            raise DriverError(self.asset_id, f"station {self.station_id} rejected {action}: {reason}")
        self.profile_for = (transaction, lease)
        self.accepted_at = (self._now().timestamp(), self._monotonic())
        self._verify_soon(link, setpoint_value(power_w))
        return commanded

    # ---- K08: does the station do what it accepted? ----------------------------------------------------------
    def _verify_soon(self, link: StationLink, asked_w: float) -> None:
        """Check the accepted value in the background: one GetCompositeSchedule in flight per EVSE; writes while it
        runs are checked by one more round when it returns."""
        self.asked_w = asked_w
        if not self._verifying:
            self._verifying = True
            link.spawn(self._verify(link))

    async def _verify(self, link: StationLink) -> None:
        from drivers.ocpp.session import CallFailed

        try:
            while self.link is link and self.asked_w is not None:
                asked = self.asked_w
                started = self._monotonic()
                try:
                    answer = await link.call_json("GetCompositeSchedule",
                                                  composite_schedule_request(self.evse_id, VERIFY_WINDOW_S))
                    composite = composite_power_w(answer)
                except (CallFailed, CodecError) as exc:
                    # no answer to compare is no mismatch: the state stands (docs/ocpp.md)
                    log.warning("ocpp.verify_failed", asset_id=self.asset_id, station=self.station_id,
                                evse=self.evse_id, error=str(exc))
                    return
                self.verify_rtt_ms = (self._monotonic() - started) * 1000.0
                self.verifications += 1
                if self.asked_w != asked:
                    continue  # a newer value was accepted meanwhile: check that one
                if schedule_matches(asked, composite):
                    if self.unverified is not None:
                        log.info("ocpp.schedule_verified", asset_id=self.asset_id, station=self.station_id,
                                 evse=self.evse_id, asked_w=asked, composite_w=composite)
                    self.unverified = None
                else:
                    self.unverified = f"asked {asked:g} W, station's composite schedule {composite:g} W"
                    log.warning("ocpp.schedule_mismatch", asset_id=self.asset_id, station=self.station_id,
                                evse=self.evse_id, asked_w=asked, composite_w=composite,
                                message="not controllable until a later check matches")
                return
        finally:
            self._verifying = False

    async def install_fallback(self, link: StationLink) -> None:
        """OCPP 2.0.1: the TxDefaultProfile (FALLBACK_W) the EVSE returns to when the agent's TxProfile lapses at
        its validTo. A refusal is logged: the station then falls back to its own default, which may be full power."""
        from drivers.ocpp.session import CallFailed

        try:
            answer = await link.call_json("SetChargingProfile", default_limit_request(
                self.evse_id, FALLBACK_PROFILE_ID_BASE + self.evse_id, FALLBACK_W))
        except CallFailed as exc:
            log.warning("ocpp.fallback_failed", asset_id=self.asset_id, station=self.station_id, error=str(exc))
            return
        self.fallback_installed = answer.get("status") == "Accepted"
        if not self.fallback_installed:
            log.warning("ocpp.fallback_rejected", asset_id=self.asset_id, station=self.station_id,
                        reason=_reason(answer), message="a lapsed lease leaves the EVSE at the station's own default")

    async def close(self) -> None:
        """The CSMS owns the sessions and closes them; safe to call twice. The running transaction goes to the
        memory as it is now (the agent writes it before closing the Store)."""
        self._remember(now=True)
        self.link = None


def _reason(answer: dict[str, Any]) -> str:
    """A refusal's reason as the station gave it (statusInfo reasonCode and additionalInfo)."""
    info = answer.get("statusInfo") or {}
    return " ".join(str(x) for x in (info.get("reasonCode"), info.get("additionalInfo")) if x) or "no reason"
