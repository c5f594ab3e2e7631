"""The message bus as the agent sees it: publish and subscribe, nothing of MQTT's API.

drivers.mqtt_link.MqttLink is the implementation; keeping the agent on this protocol keeps it protocol-free
(DESIGN.md §2) and lets telemetry and signal logic be tested against any bus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

Handler = Callable[[str, bytes], Awaitable[None] | None]


class Bus(Protocol):
    @property
    def connected(self) -> bool: ...

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None: ...

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, buffer: bool = True
    ) -> bool: ...
