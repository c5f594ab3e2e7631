"""The agent's own health: `online`, or `degraded` with the reasons, for `{prefix}/agent/status` and the log.

Degraded means the agent runs and keeps the site safe, but something it relies on is wrong and a person should look:
the clock is unset (signals are held), the site meter disagrees with the assets behind it, the state file cannot be
written (a full disk), a device's registers are frozen, the optimiser keeps failing. Each source reports its own
reason; a reason clears when its source recovers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

log = structlog.get_logger("agent.status")


class Health:
    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}  # source -> reason, in the order they arose

    @property
    def state(self) -> str:
        return "degraded" if self.reasons else "online"

    def report(self, source: str, reason: str | None) -> bool:
        """Set or clear one source's reason; True when the published status changes."""
        if self.reasons.get(source) == reason:
            return False
        if reason is None:
            del self.reasons[source]
            log.info("agent.recovered", source=source, still_degraded=sorted(self.reasons))
        else:
            self.reasons[source] = reason
            log.warning("agent.degraded", source=source, reason=reason)
        return True

    def payload(self, at: datetime) -> bytes:
        """`{prefix}/agent/status` while connected (docs/schemas/agent-status.json)."""
        state: Literal["online", "degraded"] = "degraded" if self.reasons else "online"
        return status_payload(state, at, reasons=[f"{k}: {v}" for k, v in self.reasons.items()])


class AgentStatus(BaseModel):
    """Retained on `{prefix}/agent/status`: `online` or `degraded` (with `reasons`) while connected, `offline` (with
    `reason`) in the Will the broker publishes when the agent vanishes and on a clean shutdown."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["online", "degraded", "offline"]
    at: datetime
    reason: str | None = Field(None, description="why offline: 'connection lost' (the Will) or 'shutdown'")
    reasons: list[str] = Field(default_factory=list, description="why degraded, one line per source")


def status_payload(
    state: Literal["online", "degraded", "offline"],
    at: datetime,
    reason: str | None = None,
    reasons: list[str] | None = None,
) -> bytes:
    return (
        AgentStatus(state=state, at=at, reason=reason, reasons=reasons or [])
        .model_dump_json(exclude_none=True)
        .encode()
    )
