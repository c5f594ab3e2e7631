"""The running agent: control loop plus, when MQTT is on, the broker link, telemetry and signal ingestion.

Composition root for `vpp-agent run` and `demo` and for tests that want the whole agent: it is where drivers are
chosen (DESIGN.md §2); everything it wires sees the others through the Driver and Bus interfaces only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import structlog

from agent.config import AppConfig
from agent.dispatch.runner import Dispatcher
from agent.ingest import SignalIngest
from agent.loop import ControlLoop
from agent.signals import SignalModel, SiteTarget
from agent.store import SignalStore
from agent.telemetry import TelemetryPublisher

log = structlog.get_logger("agent.app")


class AgentApp:
    def __init__(
        self, config: AppConfig, now: Callable[[], datetime], time_scale: float = 1.0, state_dir: Path | None = None
    ) -> None:
        from drivers.factory import build_drivers, build_link

        self.config = config
        self.link = build_link(config.mqtt, now) if config.mqtt.enabled else None
        self.drivers, self.pool = build_drivers(config, now, self.link)
        self.loop = ControlLoop(config, self.drivers, clock=now, time_scale=time_scale)
        self.telemetry: TelemetryPublisher | None = None
        self.ingest: SignalIngest | None = None
        self.store: SignalStore | None = None
        if self.link is not None:
            prefix = config.mqtt.topic_prefix
            store_path = Path(config.mqtt.signal_store)
            if state_dir is not None and not store_path.is_absolute():
                store_path = state_dir / store_path
            self.store = SignalStore(store_path)
            self.telemetry = TelemetryPublisher(self.link, prefix)
            self.ingest = SignalIngest(self.link, prefix, self.store, config.mqtt.max_payload_bytes, now)
            self.loop.after_cycle.append(self._publish_telemetry)
            self.ingest.on_accepted.append(self._apply_signal)
        self.dispatcher: Dispatcher | None = None
        if config.control.mode == "dispatch":
            book = self.ingest.book if self.ingest is not None else {}
            self.dispatcher = Dispatcher(config, now, book)
            self.loop.schedule = self.dispatcher.requests
            if self.ingest is not None:
                self.ingest.on_accepted.append(
                    lambda kind, signal: self.dispatcher and self.dispatcher.request_replan()
                )
        self._telemetry_task: asyncio.Task[None] | None = None
        self.telemetry_skipped = 0

    def _publish_telemetry(self) -> None:
        """Start this cycle's telemetry unless the last one is still going (then skip: never queue up behind)."""
        if self.telemetry is None:
            return
        if self._telemetry_task is not None and not self._telemetry_task.done():
            self.telemetry_skipped += 1
            return
        self._telemetry_task = asyncio.get_running_loop().create_task(self.telemetry.publish_cycle(self.loop.fleet))
        self._telemetry_task.add_done_callback(_log_failure)

    def _apply_signal(self, kind: str, signal: SignalModel) -> None:
        """Signals that act at once; the rest are kept in the book for the dispatcher (issues 4 and 5)."""
        if isinstance(signal, SiteTarget):
            self.loop.set_site_target(signal.site_target_w)
            self.loop.wake()

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "agent.start", assets=len(self.drivers), period_s=self.config.agent.poll_period_s, mqtt=bool(self.link)
        )
        link_task = asyncio.create_task(self.link.run(stop)) if self.link is not None else None
        dispatch_task = (
            asyncio.create_task(self.dispatcher.run(self.loop.fleet, lambda: self.loop.uncontrolled_w, stop))
            if self.dispatcher is not None
            else None
        )
        try:
            await self.loop.run(stop)
        finally:
            stop.set()
            if self._telemetry_task is not None:
                self._telemetry_task.cancel()
            if dispatch_task is not None:
                dispatch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatch_task
            if link_task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(link_task, timeout=1.0)
            self.pool.close()
            if self.store is not None:
                self.store.close()
            log.info("agent.stop", cycles=self.loop.cycles, writes=self.loop.writes)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("telemetry.failed", error=repr(task.exception()))
