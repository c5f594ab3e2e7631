"""One MQTT connection that survives a flaky link: reconnect with back-off, re-subscribe, buffer, flush.

Everything MQTT in the agent (telemetry out, signals in, MQTT-bridged devices) goes through one MqttLink per
broker. It follows the reconnect pattern verified in REFERENCE.md (a reusable aiomqtt client in a retry loop that
re-subscribes on every connect) and adds what an edge gateway needs on top (DESIGN.md §7 rule 4):
  * publishes made while the broker is away are kept in a bounded buffer, oldest dropped and counted, and sent in
    order after reconnect, so telemetry survives short outages and a long one cannot exhaust memory;
  * a persistent session (clean_session = False, fixed client id) so the broker queues QoS 1 signals for us while
    we are away;
  * a retained birth message on connect and a retained Will for when the connection dies, so anyone watching
    the status topic knows whether the agent is alive;
  * QoS 1 messages are acknowledged to the broker (PUBACK) only after every handler for them has returned, so a
    message the agent dies while handling is delivered again after it restarts, instead of being lost between the
    broker's hand-over and the agent's store (paho acknowledges on receipt by default);
  * subscriptions may skip retained replays (`retained=False`): what the broker sends from its retained store on
    (re)subscribing is old state, not a command given now;
  * a broker that refuses our credentials (bad user name or password, not authorised, banned) or a TLS handshake
    that fails (untrusted broker certificate) is an error a person must fix, not a blip: it is logged as
    `mqtt.auth_failed` / `mqtt.tls_failed` at error level with the host and user name (never the password), and
    retried with a back-off that doubles up to `reconnect_max_s`, so a wrong password neither floods the broker with
    attempts nor hides among info lines.
Handlers run on the event loop; an exception in one is logged and counted, never propagated into the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTT_LOG_ERR

log = structlog.get_logger("drivers.mqtt")

Handler = Callable[[str, bytes], Awaitable[None] | None]

# CONNACK codes that mean "these credentials are refused here": MQTT 3.1.1 return codes 4 (bad user name or password)
# and 5 (not authorised), and MQTT 5 reason codes 134 (bad user name or password), 135 (not authorised), 138
# (banned) and 140 (bad authentication method). paho 2 reports 3.1.1's 4 and 5 as 134 and 135; both are listed so
# the check does not depend on that translation. Mosquitto 2.0 answers a wrong password with 5 (3.1.1) / 135 (5).
AUTH_REFUSED = frozenset({4, 5, 134, 135, 138, 140})


@dataclass(frozen=True, slots=True)
class Retained:
    """A message the link publishes by itself (birth on connect, Will on an unclean disconnect)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class LinkSettings:
    host: str
    port: int = 1883
    client_id: str = "vpp-agent"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log line or a traceback's locals
    tls: ssl.SSLContext | None = None  # None: plain TCP
    keepalive_s: int = 30
    persistent_session: bool = True
    birth: Retained | None = None
    will: Retained | None = None
    buffer_limit: int = 10_000
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 30.0


@dataclass(slots=True)
class LinkStats:
    connects: int = 0
    connect_failures: int = 0
    auth_failures: int = 0  # refused credentials or a failed TLS handshake (a subset of connect_failures)
    published: int = 0
    buffered: int = 0
    dropped: int = 0
    received: int = 0
    handler_errors: int = 0
    retained_skipped: int = 0
    acked: int = 0  # QoS 1 messages acknowledged to the broker after handling
    last_error: str | None = None


@dataclass(slots=True)
class _Subscription:
    topic_filter: str
    qos: int
    handler: Handler
    retained: bool = True


@dataclass(slots=True)
class _Pending:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class MqttLink:
    settings: LinkSettings
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        self._subscriptions: list[_Subscription] = []
        self._buffer: deque[_Pending] = deque()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._flushing = False
        self._socket_error: str | None = None  # what paho saw on the socket during the current connect attempt

    # -- public ---------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def set_birth(self, payload: bytes) -> None:
        """The birth message from the next connect on (the agent's status changes while it runs)."""
        if self.settings.birth is not None:
            birth = self.settings.birth
            self.settings = replace(self.settings, birth=Retained(birth.topic, payload, birth.qos, birth.retain))

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, retained: bool = True) -> None:
        """Register a subscription; it is (re)made on every connect, including one already up. `retained=False`
        skips messages the broker replays from its retained store."""
        subscription = _Subscription(topic_filter, qos, handler, retained)
        self._subscriptions.append(subscription)
        if self._client is not None and self.connected:
            task = asyncio.get_running_loop().create_task(self._client.subscribe(topic_filter, qos))
            task.add_done_callback(_log_failure)

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, buffer: bool = True
    ) -> bool:
        """Send now if connected (True), else keep it for after reconnect (False).

        `buffer=False` drops instead of keeping: for commands, where a late delivery is worse than none.
        """
        data = payload.encode() if isinstance(payload, str) else payload
        if self._client is not None and self.connected and not self._flushing:
            try:
                await self._client.publish(topic, data, qos=qos, retain=retain)
                self.stats.published += 1
                return True
            except aiomqtt.MqttError as exc:
                self.stats.last_error = str(exc)
        if buffer:
            self._keep(_Pending(topic, data, qos, retain))
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set; returns after a clean disconnect."""
        self._client = self._make_client()
        delay = self.settings.reconnect_min_s
        while not stop.is_set():
            self._watch_socket_errors(self._client)
            try:
                async with self._client as client:
                    delay = self.settings.reconnect_min_s
                    await self._on_connect(client)
                    await self._serve(client, stop)
            except aiomqtt.MqttError as exc:
                self.stats.connect_failures += 1
                self.stats.last_error = str(exc)
                refusal = None if self.connected else refused(exc, self._socket_error)
                if self.connected:
                    log.warning("mqtt.disconnected", host=self.settings.host, error=str(exc))
                elif refusal is not None:
                    self._log_refusal(refusal, exc, delay)
                else:
                    log.info("mqtt.connect_failed", host=self.settings.host, error=str(exc), retry_s=round(delay, 2))
            finally:
                self._connected.clear()
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(self.settings.reconnect_max_s, delay * 2)

    # -- internals ------------------------------------------------------------------------------------------
    def _log_refusal(self, refusal: Literal["auth", "tls"], exc: aiomqtt.MqttError, delay: float) -> None:
        """One error line per refused attempt; the back-off (doubling to reconnect_max_s) bounds how many."""
        self.stats.auth_failures += 1
        s = self.settings
        context = {
            "host": s.host,
            "port": s.port,
            "user": s.username,
            "client_id": s.client_id,
            "attempt": self.stats.auth_failures,
            "retry_s": round(delay, 2),
        }
        if refusal == "auth":
            code = _connack_code(exc)
            hint = "check the user name and password, and that the broker's password file and ACL list this user"
            log.error("mqtt.auth_failed", code=code, error=str(exc), hint=hint, **context)
        else:
            cause = exc.__cause__ or exc.__context__
            error = str(cause) if isinstance(cause, ssl.SSLError) else (self._socket_error or str(exc))
            hint = (
                "check mqtt.ca_file against the broker's certificate, and cert_file/key_file if the broker requires "
                "a client certificate"
            )
            log.error("mqtt.tls_failed", error=error, hint=hint, **context)

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        will = aiomqtt.Will(s.will.topic, s.will.payload, s.will.qos, s.will.retain) if s.will else None
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            clean_session=not s.persistent_session,
            keepalive=s.keepalive_s,
            will=will,
            tls_context=s.tls,
            timeout=10,
            max_queued_outgoing_messages=s.buffer_limit,
        )
        client.pending_calls_threshold = 10_000  # many concurrent QoS 1 publishes are normal here
        # aiomqtt 2.x exposes no manual acknowledgement, its paho client does (aiomqtt is pinned <3 in pyproject)
        client._client.manual_ack_set(True)
        return client

    def _watch_socket_errors(self, client: aiomqtt.Client) -> None:
        """Keep paho's socket errors of this connect attempt. A broker that wants a client certificate we did not
        show rejects it after the TLS 1.3 handshake: paho logs the alert, and aiomqtt, which never hears why, would
        wait out its whole connect timeout and fail with a bare "timed out". A TLS error ends the attempt at once
        instead. Only while connecting: paho formats every log line for this callback, which would cost time per
        message once connected."""
        self._socket_error = None
        loop = asyncio.get_running_loop()

        def fail(error: str) -> None:
            waiting = getattr(client, "_connected", None)  # aiomqtt 2.x (pinned <3): the future __aenter__ awaits
            if isinstance(waiting, asyncio.Future) and not waiting.done():
                waiting.set_exception(aiomqtt.MqttError(error))

        def on_log(_client: object, _userdata: object, level: int, buf: str) -> None:
            if level != MQTT_LOG_ERR:
                return
            self._socket_error = buf[:300]
            if "[SSL" in buf:  # paho may call this from the connect executor's thread: hand it to the loop
                loop.call_soon_threadsafe(fail, self._socket_error)

        client._client.on_log = on_log

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        client._client.on_log = None  # connected: stop watching (see _watch_socket_errors)
        self.stats.connects += 1
        _no_delay(client)
        for sub in self._subscriptions:
            await client.subscribe(sub.topic_filter, sub.qos)
        if self.settings.birth is not None:
            b = self.settings.birth
            await client.publish(b.topic, b.payload, qos=b.qos, retain=b.retain)
        self._flushing = True
        self._connected.set()
        try:
            flushed = 0
            while self._buffer:
                item = self._buffer[0]
                await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
                self._buffer.popleft()
                flushed += 1
            self.stats.published += flushed
        finally:
            self._flushing = False
        log.info("mqtt.connected", host=self.settings.host, port=self.settings.port, flushed=flushed)

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        reader = asyncio.create_task(self._read(client))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()  # re-raise the MqttError that ended the connection
        finally:
            for task in (reader, stopper):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await asyncio.gather(reader, stopper)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.stats.received += 1
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            for sub in self._subscriptions:
                if not message.topic.matches(sub.topic_filter):
                    continue
                if message.retain and not sub.retained:
                    self.stats.retained_skipped += 1
                    log.info("mqtt.retained_skipped", topic=topic[:200])
                    continue
                await self._dispatch(sub, topic, payload)
            if message.qos > 0:  # handled (or refused with a reason) by now: the broker may forget it
                client._client.ack(message.mid, message.qos)
                self.stats.acked += 1

    async def _dispatch(self, sub: _Subscription, topic: str, payload: bytes) -> None:
        try:
            result = sub.handler(topic, payload)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # a bad message or handler must never take the link down
            self.stats.handler_errors += 1
            log.error("mqtt.handler_failed", topic=topic, error=f"{type(exc).__name__}: {exc}")

    def _keep(self, item: _Pending) -> None:
        if len(self._buffer) >= self.settings.buffer_limit:
            self._buffer.popleft()
            self.stats.dropped += 1
        self._buffer.append(item)
        self.stats.buffered += 1


def refused(exc: aiomqtt.MqttError, socket_error: str | None = None) -> Literal["auth", "tls"] | None:
    """Whether a failed connect was a refusal that retrying cannot fix by itself: "auth" for refused credentials,
    "tls" for a failed TLS handshake (an untrusted broker certificate, or the broker's alert that it wants a client
    certificate, which paho reports as `socket_error` while aiomqtt only times out); None for anything else (the
    broker is down, the network is away), which the next attempt may well get past."""
    if isinstance(exc, MqttConnectError) and _connack_code(exc) in AUTH_REFUSED:
        return "auth"
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "tls"
    if socket_error is not None and "[SSL" in socket_error:
        return "tls"
    return None


def _connack_code(exc: aiomqtt.MqttError) -> int | None:
    """The CONNACK code as a number: aiomqtt passes paho's ReasonCode (which has `.value`) or a plain int."""
    rc = getattr(exc, "rc", None)
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def _no_delay(client: aiomqtt.Client) -> None:
    """Send small packets at once. Neither paho nor aiomqtt sets TCP_NODELAY, so each acknowledgement waited for the
    broker's delayed ACK of the one before (Nagle): ~40 ms per signal, 24 signals/s, measured on loopback."""
    sock = client._client.socket()
    if isinstance(sock, socket.socket):  # a TLS socket is one too; a websocket transport is not
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("mqtt.subscribe_failed", error=str(task.exception()))
