"""What `vpp-agent demo` adds around the agent so a person can follow it: which config it runs, where the logs go
while the live table owns the terminal, the plan's context for the table's reasons, and the opening up-DR event.

The demo is the agent as deployed (AgentApp against Modbus devices) plus a simulated site in the same process; it
changes nothing in how the agent decides. The opening event is an ordinary unsigned up-DR signal sent through the
agent's own ingest (stored, audited, settled with an M&V report that `vpp-agent events` lists), so the first minute
shows the agent answering the grid at any hour instead of sitting on a flat price.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from agent import defaults
from agent.config import AppConfig, ConfigError
from agent.reasons import PlanContext

if TYPE_CHECKING:
    from agent.app import AgentApp
    from agent.dispatch.plan import Plan

LOG_NAME = "vpp-demo.log"
EVENT_LEAD_WALL_S = 10.0  # wall seconds from the first poll to the opening event's start, at any --speed
EVENT_INCREASE_W = 15_000.0  # what the opening event asks: 15 kW above the site's pre-event demand
EVENT_LENGTH_S = 300.0  # site seconds: short, so the plan's own reasons show again soon after


def choose_config(given: str | None) -> tuple[Path, str]:
    """The config the demo runs and how it was chosen: --config, else ./config.toml, else the packaged default
    (so `vpp-agent demo` works in any directory of any install)."""
    if given is not None:
        return Path(given), "--config"
    local = Path("config.toml")
    if local.is_file():
        return local, "./config.toml"
    return defaults.config_path(), "the packaged demo site (`vpp-agent init` writes a copy to edit)"


def log_path(config: AppConfig, given: str | None) -> Path:
    """--log, else vpp-demo.log beside the state file (the working directory for an in-memory state)."""
    if given is not None:
        return Path(given)
    state = config.agent.state_file
    folder = Path(".") if state == ":memory:" else Path(state).parent
    return folder / LOG_NAME


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at `path` (truncated) until the block ends: structlog's handler, pymodbus, Python
    warnings and the solver process (which inherits the descriptor) then all write there, never through the live
    table. Logging configured inside the block sees a file, not a terminal, and writes JSON lines."""
    try:
        target = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed below; the descriptor is duplicated)
    except OSError as exc:
        raise ConfigError(f"log file {str(path)!r}: cannot write: {exc.strerror}") from exc
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(target.fileno(), 2)
    finally:
        target.close()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class WarningTap(logging.Handler):
    """Counts warnings and errors and keeps the last one's event name, so the table can say that something went
    wrong (and where to read about it) while the log itself goes to a file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        message = record.msg  # structlog hands the event dict to the standard library; others log a string
        if isinstance(message, dict):
            event = str(message.get("event", ""))
            asset = message.get("asset_id")
            self.last = f"{event} {asset}" if asset else event
        else:
            self.last = f"{record.name}: {record.getMessage()}"[:80]


def plan_context(app: AgentApp, plan: Plan, start: datetime) -> PlanContext:
    """The plan with the prices and up-DR window it was made against, as the dispatcher kept them, so the table's
    reasons quote the planner's own prices."""
    dispatcher = app.dispatcher
    assert dispatcher is not None and dispatcher.plan_site is not None  # called when a plan is adopted
    updr = dispatcher.plan_updr
    return PlanContext(
        plan, start, dispatcher.plan_site.price_per_kwh, None if updr is None else updr.window,
        0.0 if updr is None else updr.price_per_kwh,
    )  # fmt: skip


@dataclass(frozen=True)
class OpeningEvent:
    """The up-DR event the demo sends once the fleet is polled, and the answer the agent gave it."""

    id: str
    start: datetime
    end: datetime
    increase_w: float
    price_per_kwh: float
    refused: str | None  # the agent's reason, when it did not take the event


def opening_event_payload(now: datetime, config: AppConfig, speed: float) -> dict[str, object]:
    """An up-DR event starting EVENT_LEAD_WALL_S wall seconds from `now` and lasting EVENT_LENGTH_S of site time,
    asking for EVENT_INCREASE_W above the pre-event demand (measured just before it: the site has no history for
    a High 4 of 5 baseline), paid the dearest price of the configured day."""
    start = now + timedelta(seconds=EVENT_LEAD_WALL_S * speed)
    end = start + timedelta(seconds=EVENT_LENGTH_S)
    profile = config.dispatch.price_profile_per_kwh
    reward = max(profile) if profile else config.dispatch.default_price_per_kwh
    return {
        "id": f"demo-updr-{start:%Y%m%dT%H%M%SZ}",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "requested_increase_w": EVENT_INCREASE_W,
        "price_per_kwh": float(max(reward, 0.0)),
        "baseline_method": "pre_event_average",
    }


async def send_opening_event(app: AgentApp, now: Callable[[], datetime], speed: float) -> OpeningEvent:
    """Wait for the first poll, then send the opening event through the agent's own ingest (as a signal from MQTT
    or --signals would arrive); returns it with the agent's answer."""
    await app.first_cycle.wait()
    payload = opening_event_payload(now(), app.config, speed)
    ack = await app.ingest.receive("up_dr", json.dumps(payload).encode())
    refused = ack.reason if ack.status == "rejected" else None
    return OpeningEvent(
        str(payload["id"]), datetime.fromisoformat(str(payload["start"])),
        datetime.fromisoformat(str(payload["end"])), EVENT_INCREASE_W, float(payload["price_per_kwh"]),  # type: ignore[arg-type]
        refused,
    )  # fmt: skip


def status_url(config: AppConfig) -> str | None:
    """The status page's address when `[web]` is on (agent/web/), for the demo to print."""
    web = config.web
    if not web.enabled:
        return None
    scheme = "https" if web.cert_file else "http"
    host = f"[{web.host}]" if ":" in web.host else web.host
    return f"{scheme}://{host}:{web.port}/"
