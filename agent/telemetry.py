"""Telemetry out: every asset's measurements, availability and the VPP envelope on the topic tree of docs/mqtt.md.

QoS choices: measurements are QoS 0 and not retained — a fresh one follows every period, so a lost one costs
nothing and QoS 1 would halve throughput; asset status, the envelope and the agent's own status are retained
QoS 1, because a dashboard or coordinator that subscribes late must see the current state at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import TypeAdapter

from agent.fleet import AssetState, Envelope, Fleet
from agent.model import Measurement
from agent.ports import Bus

MEASUREMENT_JSON = TypeAdapter(Measurement)
ENVELOPE_JSON = TypeAdapter(Envelope)
PUBLISH_CONCURRENCY = 200  # outstanding publishes per batch: enough to keep the socket busy, bounded memory


@dataclass(frozen=True, slots=True)
class AssetStatus:
    """Retained per asset; changes only when availability or the error changes."""

    asset_id: str
    available: bool
    consecutive_failures: int
    last_error: str | None


STATUS_JSON = TypeAdapter(AssetStatus)


class TelemetryPublisher:
    def __init__(self, bus: Bus, prefix: str) -> None:
        self.bus = bus
        self.prefix = prefix
        self._sent_polls: dict[str, int] = {}
        self._sent_status: dict[str, AssetStatus] = {}
        self.published = 0

    def measurement_topic(self, asset_id: str) -> str:
        return f"{self.prefix}/assets/{asset_id}/measurement"

    def status_topic(self, asset_id: str) -> str:
        return f"{self.prefix}/assets/{asset_id}/status"

    @property
    def envelope_topic(self) -> str:
        return f"{self.prefix}/envelope"

    async def publish_cycle(self, fleet: Fleet) -> None:
        """Publish what changed since the last call: new measurements, changed statuses, the envelope."""
        messages: list[tuple[str, bytes, int, bool]] = []
        for state in fleet.assets.values():
            if state.measurement is not None and self._sent_polls.get(state.id) != state.polls_ok:
                self._sent_polls[state.id] = state.polls_ok
                body = MEASUREMENT_JSON.dump_json(state.measurement, exclude_none=True)
                messages.append((self.measurement_topic(state.id), body, 0, False))
            status = _status(state)
            if self._sent_status.get(state.id) != status:
                self._sent_status[state.id] = status
                messages.append((self.status_topic(state.id), STATUS_JSON.dump_json(status), 1, True))
        messages.append((self.envelope_topic, ENVELOPE_JSON.dump_json(fleet.envelope()), 1, True))
        for start in range(0, len(messages), PUBLISH_CONCURRENCY):
            batch = messages[start : start + PUBLISH_CONCURRENCY]
            await asyncio.gather(*(self.bus.publish(t, b, qos=q, retain=r) for t, b, q, r in batch))
        self.published += len(messages)


def _status(state: AssetState) -> AssetStatus:
    return AssetStatus(state.id, state.available, state.consecutive_failures, state.last_error)
