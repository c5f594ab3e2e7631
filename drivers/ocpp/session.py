"""One charging station's OCPP 2.1 or 2.0.1 session on the CSMS side: framing, CALLERRORs, the messages a station
sends, and what the CSMS asks of it at boot.

Built on `ocpp.v21.ChargePoint` for its request/response correlation, with the schemas of the subprotocol the
station chose (every CALL in and out is validated against OCPP 2.1's or 2.0.1's JSON schemas: `ocpp_version`), but
the frames are read here and handlers see the camelCase JSON of the specification (drivers/ocpp/codec.py converts
it), because:
- the library drops a frame it cannot parse without an answer and answers an unknown 2.1 action with nothing at
  all; OCPP-J wants a CALLERROR for each (RpcFrameworkError with message id "-1" when the id cannot be read,
  MessageTypeNotSupported, NotImplemented for an action OCPP 2.1 does not define, NotSupported for one a CSMS is
  not sent, and the schema's FormatViolation / TypeConstraintViolation / ... for a bad payload);
- its snake_case translation mangles some 2.1 names (targetSoC), and a golden test must read the fields as the
  specification writes them.
Every BootNotification is accepted (an authenticated station is known), so a station that reconnects without
rebooting, or finds a restarted agent, goes on without one. Once the answer is sent, the CSMS configures the
station in the background (SetVariables: the measurands the codec reads, at `[ocpp] meter_interval_s`; for a 2.0.1
station also each EVSE's fallback TxDefaultProfile); a rejected variable is logged with its reason and nothing else
changes. Authorize and TransactionEvent's idTokenInfo answer by the `[ocpp] id_tokens` policy. Every CALLERROR is
logged with the station id and the reason; nothing else changes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, CallResult, validate_payload
from ocpp.v21 import ChargePoint
from ocpp.v21.enums import Action as Action21
from ocpp.v201.enums import Action as Action201

from drivers.ocpp.codec import measurand_variables, stamp

if TYPE_CHECKING:
    from drivers.ocpp.evse import OcppEvseDriver

log = structlog.get_logger("drivers.ocpp")

MAX_MESSAGE_ID_LENGTH = 36  # OCPP-J: messageId is at most 36 characters
# subprotocol -> (the ocpp library's schema version, the actions that version defines)
VERSIONS: dict[str, tuple[str, frozenset[str]]] = {
    "ocpp2.1": ("2.1", frozenset(Action21._value2member_map_)),
    "ocpp2.0.1": ("2.0.1", frozenset(Action201._value2member_map_)),
}
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class CallFailed(Exception):
    """A CSMS call got a CALLERROR, no answer in time, or the station is gone; the message says which."""


class _Refused(Exception):
    """A frame that gets a CALLERROR: `code` is OCPP-J's error code, `id` the message id to answer to."""

    def __init__(self, message_id: str, code: str, description: str) -> None:
        super().__init__(description)
        self.message_id = message_id
        self.code = code
        self.description = description


class StationLink(ChargePoint):
    """The CSMS end of one station's WebSocket: routes its calls to the EVSE drivers and sends the CSMS's calls."""

    def __init__(
        self,
        station_id: str,
        connection: Any,
        evses: Mapping[int, OcppEvseDriver],
        heartbeat_interval_s: int,
        response_timeout_s: float,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        subprotocol: str = "ocpp2.1",
        accepted_tokens: frozenset[str] | None = None,
        meter_interval_s: int = 5,
    ) -> None:
        """`accepted_tokens`: the idTokens Authorize accepts (None: every one); `meter_interval_s`: the
        TxUpdatedInterval asked at boot."""
        super().__init__(station_id, connection, response_timeout=response_timeout_s)
        self.subprotocol = subprotocol
        self._ocpp_version, self._actions = VERSIONS[subprotocol]
        self.charge_only = subprotocol == "ocpp2.0.1"  # 2.0.1 defines no discharge
        self.accepted_tokens = accepted_tokens
        self.meter_interval_s = meter_interval_s
        self.rejected_variables: dict[str, str] = {}  # "Component.Variable" -> status and reason, from the last boot
        self._tasks: set[asyncio.Task[None]] = set()
        self.station_id = station_id
        self.evses = evses
        self.heartbeat_interval_s = heartbeat_interval_s
        self.now = now
        self.booted = False
        self.boot: dict[str, Any] | None = None
        self.errors_sent = 0
        self.last_seen = now()
        self._tx_evse: dict[str, int] = {}  # transactionId -> EVSE id, for events that omit the EVSE
        self._unknown_evses: set[int] = set()
        self._handlers: dict[str, Handler] = {
            "BootNotification": self._boot_notification,
            "Heartbeat": self._heartbeat,
            "StatusNotification": self._status_notification,
            "TransactionEvent": self._transaction_event,
            "MeterValues": self._meter_values,
            "NotifyEVChargingNeeds": self._notify_ev_charging_needs,
            "Authorize": self._authorize,
            "NotifyEvent": self._accept_empty,
            "SecurityEventNotification": self._accept_empty,
            "NotifyReport": self._accept_empty,
        }

    # ---- frames in --------------------------------------------------------------------------------------
    async def route_message(self, raw_msg: str | bytes) -> None:
        """Handle one frame; never raises (a bad frame is answered and logged, the session goes on)."""
        self.last_seen = self.now()
        try:
            frame = _parse(raw_msg)
            message_type = frame[0]
            if message_type == 2:
                await self._on_call(frame)
            elif message_type in (3, 4, 5):  # CALLRESULT, CALLERROR, 2.1's CALLRESULTERROR: to the waiting call
                self._on_answer(frame)
            elif message_type == 6:  # 2.1 SEND (periodic event streams): never answered
                log.info("ocpp.send_ignored", station=self.station_id, action=frame[2] if len(frame) > 2 else None)
            else:
                raise _Refused(_message_id(frame), "MessageTypeNotSupported",
                               f"message type {message_type!r} is not supported")
        except _Refused as refused:
            await self._send_error(refused.message_id, refused.code, refused.description)
        except Exception as exc:  # a bug in a handler must not end the session or look like the station's fault
            log.exception("ocpp.handler_failed", station=self.station_id)
            message_id = _message_id_of(raw_msg)
            if message_id != "-1":
                await self._send_error(message_id, "InternalError", f"{type(exc).__name__}")

    async def _on_call(self, frame: list[Any]) -> None:
        message_id = _message_id(frame)
        if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
            raise _Refused(message_id, "RpcFrameworkError",
                           "a CALL is [2, messageId, action, {payload}]")
        action, payload = frame[2], frame[3]
        handler = self._handlers.get(action)
        if handler is None or action not in self._actions:
            known = action in self._actions
            code = "NotSupported" if known else "NotImplemented"
            what = "not sent to a CSMS" if known else f"not an OCPP {self._ocpp_version} action"
            raise _Refused(message_id, code, f"{action} is {what}")
        call = Call(message_id, action, payload)
        try:
            await validate_payload(call, self._ocpp_version)
        except OCPPError as exc:
            cause = exc.details.get("cause", exc.description) if isinstance(exc.details, dict) else exc.description
            raise _Refused(message_id, exc.code, str(cause)[:300]) from None
        response = await handler(payload)
        result = call.create_call_result(response)
        await validate_payload(result, self._ocpp_version)  # our own answer: a bug here is an InternalError
        await self._send(result.to_json())
        if action == "BootNotification":  # only once the station has its answer may the CSMS send it calls
            self.spawn(self._configure())

    # ---- background work owned by the session -------------------------------------------------------------
    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the session (never blocking a frame or the control cycle); cancelled by `stop`."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel the session's background work (the link is gone): bounded, safe to call twice."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.5)

    async def _configure(self) -> None:
        """After a boot: ask for the measurands the agent reads at its interval, then (2.0.1) install each EVSE's
        fallback profile. A refusal is logged and the session goes on with what the station does."""
        try:
            answer = await self.call_json("SetVariables", {"setVariableData": measurand_variables(
                self.meter_interval_s)})
        except CallFailed as exc:
            log.warning("ocpp.set_variables_failed", station=self.station_id, error=str(exc))
        else:
            self.rejected_variables = {}
            for result in answer.get("setVariableResult", []):
                name = f"{result['component']['name']}.{result['variable']['name']}"
                status = result["attributeStatus"]
                if status not in ("Accepted", "RebootRequired"):
                    info = result.get("attributeStatusInfo") or {}
                    reason = " ".join(str(x) for x in (status, info.get("reasonCode"), info.get("additionalInfo"))
                                      if x)
                    self.rejected_variables[name] = reason
                    log.warning("ocpp.variable_rejected", station=self.station_id, variable=name, reason=reason,
                                message="the station keeps its own setting; the agent reads what it sends")
                elif status == "RebootRequired":
                    log.info("ocpp.variable_needs_reboot", station=self.station_id, variable=name)
        if self.charge_only:
            for driver in self.evses.values():
                await driver.install_fallback(self)

    def _on_answer(self, frame: list[Any]) -> None:
        message_id = _message_id(frame)
        if frame[0] == 3 and len(frame) == 3:
            self._response_queue.put_nowait(CallResult(message_id, frame[2]))
        elif frame[0] in (4, 5) and len(frame) >= 4:
            details = frame[4] if len(frame) > 4 else {}
            self._response_queue.put_nowait(CallError(message_id, frame[2], frame[3], details))
        else:
            log.warning("ocpp.bad_answer", station=self.station_id, message_id=message_id)

    async def _send_error(self, message_id: str, code: str, description: str) -> None:
        self.errors_sent += 1
        log.warning("ocpp.call_error", station=self.station_id, message_id=message_id, code=code, reason=description)
        frame = json.dumps([4, message_id, code, description, {}], separators=(",", ":"))
        try:
            await self._send(frame)
        except Exception as exc:  # the link is going down: the session's end is handled by its owner
            log.info("ocpp.send_failed", station=self.station_id, error=repr(exc))

    # ---- calls out --------------------------------------------------------------------------------------
    async def call_json(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one CALL (validated against the session's schema) and return the answer's payload; CallFailed on a
        CALLERROR, a timeout or a closed link."""
        call = Call(str(self._unique_id_generator()), action, payload)
        await validate_payload(call, self._ocpp_version)
        async with self._call_lock:
            try:
                await self._send(call.to_json())
                answer = await self._get_specific_response(call.unique_id, self._response_timeout)
            except TimeoutError as exc:
                raise CallFailed(f"{action}: no answer within {self._response_timeout:g} s") from exc
            except Exception as exc:  # websockets' ConnectionClosed and friends
                raise CallFailed(f"{action}: link lost ({type(exc).__name__})") from exc
        if isinstance(answer, CallError):
            raise CallFailed(f"{action}: CALLERROR {answer.error_code} {answer.error_description!r}")
        answer.action = action
        try:
            await validate_payload(answer, self._ocpp_version)
        except OCPPError as exc:
            raise CallFailed(f"{action}: answer violates the {self._ocpp_version} schema ({exc.code})") from exc
        return dict(answer.payload)

    # ---- handlers: payloads are the camelCase JSON the schema validated ----------------------------------
    async def _boot_notification(self, payload: dict[str, Any]) -> dict[str, Any]:
        first = not self.booted
        self.booted = True
        self.boot = payload
        station = payload.get("chargingStation", {})
        log.info("ocpp.boot", station=self.station_id, reason=payload.get("reason"), vendor=station.get("vendorName"),
                 model=station.get("model"), first=first)
        for driver in self.evses.values():
            driver.on_boot()
        return {"currentTime": stamp(self.now()), "interval": self.heartbeat_interval_s, "status": "Accepted"}

    async def _heartbeat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"currentTime": stamp(self.now())}

    async def _status_notification(self, payload: dict[str, Any]) -> dict[str, Any]:
        driver = self._evse(payload["evseId"])
        if driver is not None:
            driver.on_status(payload["connectorStatus"])
        return {}

    def token_status(self, id_token: Mapping[str, Any]) -> str:
        """Accepted or Unknown by the `[ocpp] id_tokens` policy (a VPP site often has no authorisation backend)."""
        if self.accepted_tokens is None or id_token.get("idToken") in self.accepted_tokens:
            return "Accepted"
        return "Unknown"

    async def _transaction_event(self, payload: dict[str, Any]) -> dict[str, Any]:
        transaction_id = payload["transactionInfo"]["transactionId"]
        evse_id = payload.get("evse", {}).get("id", self._tx_evse.get(transaction_id))
        if evse_id is None:
            log.warning("ocpp.transaction_without_evse", station=self.station_id, transaction=transaction_id)
            return {}
        self._tx_evse[transaction_id] = evse_id
        if payload["eventType"] == "Ended":
            self._tx_evse.pop(transaction_id, None)
        status = self.token_status(payload["idToken"]) if "idToken" in payload else None
        if status is not None and status != "Accepted":
            log.warning("ocpp.id_token_refused", station=self.station_id, evse=evse_id, transaction=transaction_id,
                        status=status)
        driver = self._evse(evse_id)
        if driver is not None:
            driver.on_transaction_event(payload, status)
        return {"idTokenInfo": {"status": status}} if status is not None else {}

    async def _meter_values(self, payload: dict[str, Any]) -> dict[str, Any]:
        driver = self._evse(payload["evseId"])
        if driver is not None:
            driver.on_meter_values(payload["meterValue"])
        return {}

    async def _notify_ev_charging_needs(self, payload: dict[str, Any]) -> dict[str, Any]:
        driver = self._evse(payload["evseId"])
        if driver is None:
            return {"status": "Rejected"}
        driver.on_charging_needs(payload["chargingNeeds"])
        return {"status": "Accepted"}

    async def _authorize(self, payload: dict[str, Any]) -> dict[str, Any]:
        status = self.token_status(payload["idToken"])
        if status != "Accepted":
            log.warning("ocpp.id_token_refused", station=self.station_id, status=status)
        return {"idTokenInfo": {"status": status}}

    async def _accept_empty(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _evse(self, evse_id: int) -> OcppEvseDriver | None:
        driver = self.evses.get(evse_id)
        if driver is None and evse_id not in self._unknown_evses:
            self._unknown_evses.add(evse_id)
            log.warning("ocpp.unknown_evse", station=self.station_id, evse=evse_id,
                        message="no [[assets]] entry has this station and EVSE: its messages are acknowledged only")
        return driver


def _parse(raw: str | bytes) -> list[Any]:
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: not JSON, or bytes that are not UTF-8
        raise _Refused("-1", "RpcFrameworkError", "not a JSON array: the message id cannot be read") from None
    if not isinstance(frame, list) or not frame or not isinstance(frame[0], int) or isinstance(frame[0], bool):
        raise _Refused(_message_id(frame) if isinstance(frame, list) else "-1", "RpcFrameworkError",
                       "not an OCPP-J frame [messageTypeId, messageId, ...]")
    return frame


def _message_id(frame: list[Any]) -> str:
    if len(frame) > 1 and isinstance(frame[1], str) and 0 < len(frame[1]) <= MAX_MESSAGE_ID_LENGTH:
        return frame[1]
    raise _Refused("-1", "RpcFrameworkError", "the message id cannot be read")


def _message_id_of(raw: str | bytes) -> str:
    try:
        return _message_id(_parse(raw))
    except _Refused:
        return "-1"


