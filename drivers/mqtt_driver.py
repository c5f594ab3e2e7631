"""Driver for a device that publishes JSON telemetry over MQTT and takes JSON commands, driven by an MQTT map.

The device pushes; the agent polls. So the driver keeps the latest good telemetry (decoded and checked on arrival)
and `read()` hands it out while it is fresh. Every failure the agent must count toward the asset's availability
(DESIGN.md §7 rule 3) becomes a DriverError at `read()`: nothing yet, stale, or the last payload was bad. A bad
payload (DESIGN.md §7 rule 5) is rejected, logged once per distinct reason, counted, and never crashes the link.

All MQTT devices of a broker share one MqttLink (one connection, reconnects and re-subscribes by itself); the
driver only registers its subscription and publishes commands through it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import structlog

from agent.model import AssetKind, Measurement
from agent.ports import DriverError
from drivers.measure import to_measurement
from drivers.mqtt_link import MqttLink
from drivers.mqtt_map import MqttMap, PayloadError, nest

log = structlog.get_logger("drivers.mqtt_driver")

# A device state is a few hundred bytes; anything this large is a misrouted message or an attack on memory.
MAX_PAYLOAD_BYTES = 64 * 1024
COMMAND_QOS = 1


class BadTelemetry(ValueError):
    """One telemetry payload was rejected; the message is the reason the agent logs and the read reports."""


@dataclass(slots=True)
class TelemetryStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    commands: int = 0
    commands_refused: int = 0


def _reject_constant(name: str) -> NoReturn:
    raise BadTelemetry(f"not JSON: {name} is not a JSON number")


class MqttDriver:
    """One MQTT device: telemetry in on `{base_topic}/{telemetry}`, commands out on `{base_topic}/{command}`.

    Telemetry is subscribed with QoS 0 on purpose: it is a state snapshot repeated every period, so a lost message
    is replaced by the next one within a second, while QoS 1 would make the broker queue stale snapshots for a
    reconnecting agent (and then deliver a burst of outdated states). Freshness is judged by arrival time instead,
    so the subscription skips retained replays: a bridge that publishes with retain leaves its last state on the
    broker, which hands it over on every (re)subscribe however long ago the device died, and by arrival time that
    old state would look seconds old. A live device's next message arrives within its period.
    """

    def __init__(
        self,
        asset_id: str,
        mqtt_map: MqttMap,
        link: MqttLink,
        base_topic: str,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.asset_id = asset_id
        self.map = mqtt_map
        self.kind: AssetKind = mqtt_map.kind
        self.link = link
        self.base_topic = base_topic.rstrip("/")
        self.telemetry_topic = f"{self.base_topic}/{mqtt_map.model.telemetry}"
        self.command_topic = f"{self.base_topic}/{mqtt_map.model.command}"
        self.stats = TelemetryStats()
        self._now = now
        self._monotonic = monotonic
        self._latest: Measurement | None = None
        self._latest_at: float | None = None  # monotonic arrival time of the latest good telemetry
        self._bad_reason: str | None = None  # set while the most recent payload was bad
        self._closed = False
        link.subscribe(self.telemetry_topic, self._on_telemetry, qos=0, retained=False)

    def __repr__(self) -> str:
        return f"MqttDriver({self.asset_id} {self.map.id} @ {self.base_topic})"

    # ---- Driver protocol ------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Nothing to open: the shared MqttLink owns the connection and re-subscribes on every reconnect."""

    async def read(self) -> Measurement:
        """The latest good telemetry while fresh; its `at` is the wall time it arrived, not the time of the read.

        After a bad payload the read fails until a good one arrives, even if an older good one is still fresh:
        the device (or its bridge) is sending something we do not understand, and serving the older snapshot as
        current would hide that from the availability logic.
        """
        if self._bad_reason is not None:
            raise DriverError(self.asset_id, f"last telemetry on {self.telemetry_topic} was rejected: "
                                             f"{self._bad_reason}")
        if self._latest is None or self._latest_at is None:
            link = "" if self.link.connected else " (MQTT link down)"
            raise DriverError(self.asset_id, f"no telemetry yet on {self.telemetry_topic}{link}")
        age = self._monotonic() - self._latest_at
        if age > self.map.stale_after_s:
            link = "" if self.link.connected else "; MQTT link down"
            raise DriverError(
                self.asset_id,
                f"telemetry stale: last good message on {self.telemetry_topic} {age:.1f} s ago "
                f"(stale_after_s {self.map.stale_after_s:g}{link})",
            )
        return self._latest

    async def write_setpoint(self, power_w: float) -> None:
        await self._command("setpoint_w", power_w)

    async def write_lease_timeout(self, seconds: float) -> None:
        if self.map.has("lease_timeout_s"):
            await self._command("lease_timeout_s", seconds)

    async def close(self) -> None:
        """Stop accepting telemetry; the link is shared and closed by its owner. Safe to call twice."""
        self._closed = True

    # ---- commands -------------------------------------------------------------------------------------
    async def _command(self, field_name: str, value: float) -> None:
        """Publish `{"<key>": value}` with QoS 1, or raise DriverError when the link is down.

        A command is never buffered for later: a setpoint delivered after a reconnect may be minutes old and would
        push the device somewhere the plan left long ago, while a missing one is safe (the device's lease returns
        it to 0 W). So a down link is an error the agent counts, and the next control step writes a fresh value.
        """
        if not self.map.has(field_name):
            raise DriverError(self.asset_id, f"map {self.map.id} has no {field_name}")
        try:
            key, device_value = self.map.encode(field_name, value)
        except ValueError as exc:
            raise DriverError(self.asset_id, f"cannot encode {field_name}: {exc}") from exc
        if not self.link.connected:
            self.stats.commands_refused += 1
            raise DriverError(self.asset_id, f"MQTT link down: {field_name} not sent to {self.command_topic}")
        payload = json.dumps(nest(key, device_value), allow_nan=False)
        sent = await self.link.publish(self.command_topic, payload, qos=COMMAND_QOS, buffer=False)
        if not sent:
            # The link dropped between the check and the publish; the command is dropped, never sent late.
            self.stats.commands_refused += 1
            raise DriverError(self.asset_id, f"MQTT link dropped while sending {field_name} to {self.command_topic}")
        self.stats.commands += 1

    # ---- telemetry ------------------------------------------------------------------------------------
    def _on_telemetry(self, topic: str, payload: bytes) -> None:
        """Link handler: decode and check one payload; never raises."""
        if self._closed:
            return
        self.stats.received += 1
        try:
            measurement = self._decode(payload)
        except BadTelemetry as exc:
            self._reject(topic, str(exc))
            return
        except Exception as exc:  # a bug here must not reach the link, and must not look like data
            self._reject(topic, f"unusable telemetry: {type(exc).__name__}: {exc}")
            return
        self.stats.accepted += 1
        if self._bad_reason is not None:
            log.info("mqtt_driver.telemetry_recovered", asset=self.asset_id, topic=topic)
        self._bad_reason = None
        self._latest = measurement
        self._latest_at = self._monotonic()

    def _decode(self, payload: bytes) -> Measurement:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise BadTelemetry(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES} bytes")
        try:
            data: Any = json.loads(payload, parse_constant=_reject_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadTelemetry(f"not JSON: {exc}") from exc
        except RecursionError as exc:
            raise BadTelemetry("not JSON: nested too deeply") from exc
        if not isinstance(data, dict):
            raise BadTelemetry(f"not a JSON object but {type(data).__name__}")
        try:
            values = self.map.decode(data)
        except PayloadError as exc:
            raise BadTelemetry(f"wrong type: {exc}") from exc
        if "power_w" not in values:
            raise BadTelemetry(f"missing key {self.map.key('power_w')!r} (power_w)")
        return to_measurement(self.asset_id, values, self._now, self._implausible)

    def _implausible(self, field_name: str, value: float, problem: str) -> NoReturn:
        raise BadTelemetry(
            f"implausible: key {self.map.key(field_name)!r} ({field_name}) value {value!r} {problem} "
            f"(map {self.map.id})"
        )

    def _reject(self, topic: str, reason: str) -> None:
        self.stats.rejected += 1
        kind = reason.split(":", 1)[0]
        self.stats.rejected_by_reason[kind] = self.stats.rejected_by_reason.get(kind, 0) + 1
        if reason != self._bad_reason:  # a device repeating the same garbage every second is logged once
            log.warning("mqtt_driver.telemetry_rejected", asset=self.asset_id, topic=topic, reason=reason,
                        rejected=self.stats.rejected)
        self._bad_reason = reason
