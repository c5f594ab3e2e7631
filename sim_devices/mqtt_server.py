"""Serving simulated devices over MQTT: one client per site publishes every device's JSON telemetry and takes
JSON commands, with the same physics and faults as the Modbus servers.

One connection for the whole site (not one per device) mirrors a real MQTT bridge or gateway and keeps 1000
devices to one socket. The client follows REFERENCE.md's reconnect pattern: a reusable aiomqtt client in a loop
with exponential back-off, re-subscribing on every connect, so a broker restart only costs a gap in telemetry.

Commands are subscribed with QoS 1 and a clean session: the broker must not hand a reconnecting device a queue of
old setpoints (a late setpoint is worse than none; the lease covers the gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiomqtt
import structlog

from sim_devices.config import MqttSimConfig
from sim_devices.faults import DeviceFaults
from sim_devices.mqtt_codec import CommandError, MqttModel

log = structlog.get_logger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 10.0


class MqttPhysics(Protocol):
    def fields(self) -> Mapping[str, float]: ...


@dataclass(eq=False)
class MqttEndpoint:
    """One device as seen on the broker: its base topic, map, physics, fault switches and counters."""

    device_id: str
    base_topic: str
    model: MqttModel
    physics: MqttPhysics
    faults: DeviceFaults
    published: int = 0
    commands: int = 0
    bad_commands: int = 0
    ignored_commands: int = 0  # arrived while the device was offline
    last_payload: bytes | None = field(default=None, repr=False)
    _last_bad: str | None = field(default=None, repr=False)

    @property
    def telemetry_topic(self) -> str:
        return f"{self.base_topic}/{self.model.telemetry}"

    @property
    def command_topic(self) -> str:
        return f"{self.base_topic}/{self.model.command}"

    def telemetry(self) -> bytes | None:
        """What to publish now: nothing while offline, the old bytes while frozen, else the current state."""
        if self.faults.state.offline:
            return None
        if self.faults.state.frozen and self.last_payload is not None:
            return self.last_payload
        said = self.faults.reported(self.physics.fields())  # through a lying-device fault, if any
        self.last_payload = json.dumps(self.model.telemetry_json(said), allow_nan=False).encode()
        return self.last_payload

    def apply_command(self, payload: bytes) -> None:
        """Decode and apply one command; a bad one is logged (once per distinct reason), counted and ignored."""
        if self.faults.state.offline:
            self.ignored_commands += 1
            return
        try:
            if len(payload) > MAX_COMMAND_BYTES:
                raise CommandError(f"{len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
            try:
                data: Any = json.loads(payload, parse_constant=_no_constant)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise CommandError(f"not JSON: {exc}") from exc
            changes = self.model.decode_command(data)
        except CommandError as exc:
            self.bad_commands += 1
            if str(exc) != self._last_bad:
                log.warning("sim.mqtt_command_rejected", device=self.device_id, reason=str(exc),
                            rejected=self.bad_commands)
            self._last_bad = str(exc)
            return
        self._last_bad = None
        self.commands += 1
        if "lease_timeout_s" in changes:
            self.physics.write_lease_timeout(changes["lease_timeout_s"])  # type: ignore[attr-defined]
        if "setpoint_w" in changes:
            self.physics.write_setpoint(changes["setpoint_w"])  # type: ignore[attr-defined]


def _no_constant(name: str) -> None:
    raise CommandError(f"not JSON: {name} is not a JSON number")


class MqttDeviceServer:
    """One aiomqtt client serving every MQTT device of a site until stopped."""

    def __init__(self, settings: MqttSimConfig, endpoints: list[MqttEndpoint]) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self._by_command = {e.command_topic: e for e in endpoints}
        self.connected = asyncio.Event()
        self.connects = 0
        self.connect_failures = 0
        self.rounds = 0  # publish rounds completed (all devices once)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self.run(), name="sim-mqtt")

    async def stop(self, timeout_s: float = 0.8) -> None:
        """Disconnect cleanly if the broker answers within `timeout_s`, else cancel."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        _, pending = await asyncio.wait({task}, timeout=timeout_s)
        if pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Stay connected until stopped: connect, subscribe, publish every period; back off on failure."""
        client = self._make_client()
        delay = RECONNECT_MIN_S
        while not self._stop.is_set():
            try:
                async with client:
                    for endpoint in self.endpoints:
                        if endpoint.model.kind != "meter":
                            await client.subscribe(endpoint.command_topic, qos=1)
                    self.connects += 1
                    self.connected.set()
                    delay = RECONNECT_MIN_S
                    log.info("sim.mqtt_connected", host=self.settings.host, port=self.settings.port,
                             devices=len(self.endpoints))
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self.connect_failures += 1
                log.info("sim.mqtt_disconnected", error=str(exc), retry_s=round(delay, 2))
            finally:
                self.connected.clear()
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            delay = min(RECONNECT_MAX_S, delay * 2)

    # ---- internals -------------------------------------------------------------------------------------
    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        tls = ssl.create_default_context(cafile=s.ca_file) if s.ca_file else None
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.resolved_password(),
            identifier=s.client_id or f"vpp-sim-{os.getpid()}-{id(self):x}",
            clean_session=True,
            keepalive=30,
            timeout=5,
            tls_context=tls,
        )
        client.pending_calls_threshold = 10_000
        return client

    async def _serve(self, client: aiomqtt.Client) -> None:
        tasks = {
            asyncio.create_task(self._publish_loop(client)),
            asyncio.create_task(self._read_loop(client)),
            asyncio.create_task(self._stop.wait()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        period = self.settings.publish_period_s
        next_at = loop.time()
        while True:
            for endpoint in self.endpoints:
                payload = endpoint.telemetry()
                if payload is not None:
                    await client.publish(endpoint.telemetry_topic, payload, qos=self.settings.qos)
                    endpoint.published += 1
            self.rounds += 1
            next_at = max(next_at + period, loop.time())  # no burst after a stall: skip missed rounds
            await asyncio.sleep(next_at - loop.time())

    async def _read_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            endpoint = self._by_command.get(message.topic.value)
            if endpoint is None:
                continue
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            endpoint.apply_command(payload)
