"""The ports the agent depends on: the face of a device (Driver) and of the message bus (Bus) (DESIGN.md §2).

Drivers and the MQTT link implement these; the agent imports no protocol library, so adding a transport means adding
a class that fits here. A driver turns one device into Measurements and takes setpoints, both in SI units and the
agent's sign convention; the bus is publish and subscribe, nothing of MQTT's API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from agent.model import AssetKind, Measurement


class DriverError(Exception):
    """A device did not answer, answered with an exception, or sent values that make no sense.

    The message names the asset and what failed; the agent counts it toward the asset's availability.
    """

    def __init__(self, asset_id: str, message: str) -> None:
        super().__init__(f"{asset_id}: {message}")
        self.asset_id = asset_id


@runtime_checkable
class Driver(Protocol):
    asset_id: str
    kind: AssetKind
    # Optional attribute `channel`: drivers with equal channels share a connection that serves one request at a
    # time, so the loop reads them in turn instead of queueing a task per device on the connection's lock.

    async def connect(self) -> None:
        """Open what the driver needs; failing to connect is not fatal (reads will retry)."""

    async def read(self) -> Measurement:
        """One poll of the device; raises DriverError when it fails."""

    async def write_setpoint(self, power_w: float) -> float | None:
        """Write a power setpoint that has already passed the SafetyEnvelope; raises DriverError. Returns the power
        the device was actually told when the driver had to change it (a request below the device's minimum power
        is written as 0 W), else None."""

    async def write_lease_timeout(self, seconds: float) -> None:
        """Set the device's communication timeout after which it returns to 0 W by itself."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""

Handler = Callable[[str, bytes], Awaitable[None] | None]


class Bus(Protocol):
    @property
    def connected(self) -> bool: ...

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1, retained: bool = True) -> None:
        """Call `handler(topic, payload)` for each message; it has been handled (and, on MQTT, is acknowledged to
        the broker) only once the handler returns. `retained=False` skips messages the broker replays from its
        retained store on subscribing: state, not a fresh command."""

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, buffer: bool = True
    ) -> bool: ...
