"""One charging station's OCPP 2.1 session on the CSMS side: framing, CALLERRORs and the messages a station sends.

Built on `ocpp.v21.ChargePoint` for its schemas (every CALL in and out is validated against OCPP 2.1's JSON
schemas) and its request/response correlation, but the frames are read here and handlers see the camelCase JSON of
the specification (drivers/ocpp/codec.py converts it), because:
- the library drops a frame it cannot parse without an answer and answers an unknown 2.1 action with nothing at
  all; OCPP-J wants a CALLERROR for each (RpcFrameworkError with message id "-1" when the id cannot be read,
  MessageTypeNotSupported, NotImplemented for an action OCPP 2.1 does not define, NotSupported for one a CSMS is
  not sent, and the schema's FormatViolation / TypeConstraintViolation / ... for a bad payload);
- its snake_case translation mangles some 2.1 names (targetSoC), and a golden test must read the fields as the
  specification writes them.
Every BootNotification is accepted (an authenticated station is known), so a station that reconnects without
rebooting, or finds a restarted agent, goes on without one. Every CALLERROR is logged with the station id and the
reason; nothing else changes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, CallResult, validate_payload
from ocpp.v21 import ChargePoint
from ocpp.v21.enums import Action

if TYPE_CHECKING:
    from drivers.ocpp.evse import OcppEvseDriver

log = structlog.get_logger("drivers.ocpp")

MAX_MESSAGE_ID_LENGTH = 36  # OCPP-J: messageId is at most 36 characters
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
    ) -> None:
        super().__init__(station_id, connection, response_timeout=response_timeout_s)
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
        if handler is None:
            known = action in Action._value2member_map_
            code = "NotSupported" if known else "NotImplemented"
            what = "not sent to a CSMS" if known else "not an OCPP 2.1 action"
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
        """Send one CALL (validated against the 2.1 schema) and return the answer's payload; CallFailed on a
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
            raise CallFailed(f"{action}: answer violates the 2.1 schema ({exc.code})") from exc
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
        return {"currentTime": _stamp(self.now()), "interval": self.heartbeat_interval_s, "status": "Accepted"}

    async def _heartbeat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"currentTime": _stamp(self.now())}

    async def _status_notification(self, payload: dict[str, Any]) -> dict[str, Any]:
        driver = self._evse(payload["evseId"])
        if driver is not None:
            driver.on_status(payload["connectorStatus"])
        return {}

    async def _transaction_event(self, payload: dict[str, Any]) -> dict[str, Any]:
        transaction_id = payload["transactionInfo"]["transactionId"]
        evse_id = payload.get("evse", {}).get("id", self._tx_evse.get(transaction_id))
        if evse_id is None:
            log.warning("ocpp.transaction_without_evse", station=self.station_id, transaction=transaction_id)
            return {}
        self._tx_evse[transaction_id] = evse_id
        if payload["eventType"] == "Ended":
            self._tx_evse.pop(transaction_id, None)
        driver = self._evse(evse_id)
        if driver is not None:
            driver.on_transaction_event(payload)
        return {"idTokenInfo": {"status": "Accepted"}} if "idToken" in payload else {}

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
        # a VPP site often has no authorisation backend: every idToken is accepted (docs/ocpp.md)
        return {"idTokenInfo": {"status": "Accepted"}}

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


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
