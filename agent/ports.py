"""The ports the agent depends on: the face of a device (Driver; RegisterHistory for one that keeps its own energy
registers) and of the message bus (Bus) (DESIGN.md §2).

Drivers and the MQTT link implement these; the agent imports no protocol library, so adding a transport means adding
a class that fits here. A driver turns one device into Measurements and takes setpoints, both in SI units and the
agent's sign convention; the bus is publish and subscribe, nothing of MQTT's API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

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
    # Optional attribute `lease_lapse_is_zero` (default True): False when the device does something other than 0 W
    # once its lease lapses (a SunSpec inverter returns to its own mode), so the loop refreshes a held 0 W like any
    # other setpoint instead of letting the lease run out.

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


class RegisterLog(Protocol):
    """One run of an asset's cumulative energy registers (an OCPP transaction: drivers/ocpp/txlog.py)."""

    source: str  # unique to this log: the Store keys its bookings by it

    def take_change(self, before_ts: float | None = None) -> float | None:
        """The earliest measuring time (unix s) whose booking may have changed since the last take, if before
        `before_ts` (None: any), and reset it; else None."""
        ...

    def registers(self, field: str = "import_wh", from_ts: float | None = None) -> list[tuple[float, float]]:
        """(measured at, Wh) of `field` in the order the device produced them, from the last reading at or before
        `from_ts` on."""
        ...


@runtime_checkable
class RegisterHistory(Protocol):
    """A driver that keeps its asset's energy registers with the time each was measured (an OCPP EVSE)."""

    asset_id: str

    def transaction_logs(self) -> Sequence[RegisterLog]: ...


class DriverMemory(Protocol):
    """A little state a driver keeps across agent restarts (the agent's Store: agent/store.py StoredMemory), for a
    device that does not repeat it: an OCPP station sends an EV's charging needs once per transaction, and a
    transaction's register log must go on where it was. Values are JSON-able dicts by key; a driver's keys start
    with its own prefix. `put` is cheap (the agent writes changed keys in the background, and all at shutdown);
    keys not put for the agent's retention time are forgotten at start."""

    def get(self, key: str) -> dict[str, Any] | None:
        """The value last put under `key` (before the restart too), or None."""
        ...

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Remember `value` (JSON-able) under `key`."""
        ...

    def drop(self, key: str) -> None:
        """Forget `key` (what it described is over)."""
        ...
