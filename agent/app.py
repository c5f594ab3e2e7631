"""The running agent: control loop plus, when MQTT is on, the broker link, telemetry and signal ingestion.

Composition root for `vpp-agent run` and `demo` and for tests that want the whole agent: it is where drivers are
chosen (DESIGN.md §2); everything it wires sees the others through the Driver and Bus interfaces only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import structlog

from agent.config import AppConfig
from agent.control.loop import ControlLoop
from agent.dispatch.runner import Dispatcher
from agent.events.lifecycle import EventManager
from agent.signals.ingest import SignalIngest
from agent.signals.models import SIGNAL_TYPES, AsActivation, GridFrequency, SignalModel, SiteTarget
from agent.store import Store
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
        state_file = config.agent.state_file
        if state_dir is not None and state_file != ":memory:" and not Path(state_file).is_absolute():
            state_file = str(state_dir / state_file)
        self.store = Store(state_file)
        prefix = config.mqtt.topic_prefix
        self.ingest = SignalIngest(self.link, prefix, self.store, config.mqtt.max_payload_bytes, now)
        self.ingest.on_accepted.append(self._apply_signal)
        # a meter reading stands for the power after it for at most 10 periods (device time): longer gaps stay gaps
        hold_s = max(5.0, 10 * config.agent.poll_period_s * time_scale)
        self.events = EventManager(self.store, self.loop.fleet, config.events, max_hold_s=hold_s)
        self.loop.target_source = self.events.site_target_w
        self.loop.award_shift_source = self.events.award_shift_w
        self.loop.after_cycle.append(self._events_cycle)
        self.telemetry: TelemetryPublisher | None = None
        if self.link is not None:
            self.telemetry = TelemetryPublisher(self.link, prefix)
            self.loop.after_cycle.append(self._publish_telemetry)
        self.dispatcher: Dispatcher | None = None
        if config.control.mode == "dispatch":
            self.dispatcher = Dispatcher(config, now, self.ingest.book)
            self.loop.schedule = self.dispatcher.requests
            self.loop.reserve_source = self.dispatcher.reserves
            self.ingest.on_accepted.append(lambda kind, signal: self.dispatcher and self.dispatcher.request_replan())
        self.now = now
        self._events_task: asyncio.Task[None] | None = None
        self.first_cycle = asyncio.Event()  # set once the fleet has been polled: capability checks need it
        self._background: set[asyncio.Task[object]] = set()
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
        """Signals that act at once: targets, events and activations; all are also in the dispatcher's book."""
        if isinstance(signal, SiteTarget):
            self.loop.set_site_target(signal.site_target_w)
            self.loop.wake()
            return
        task = asyncio.get_running_loop().create_task(self._to_events(kind, signal))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _to_events(self, kind: str, signal: SignalModel) -> None:
        await self.events.receive(kind, signal, self.now())
        if isinstance(signal, AsActivation | GridFrequency):
            self.loop.wake(fast=True)  # the fast path: act on the activation now, from the last poll

    def _events_cycle(self) -> None:
        """After each cycle: feed the site meter to the events and move them along (never blocks the cycle)."""
        now = self.now()
        self.first_cycle.set()
        self.events.observe_site(now, self.loop.site_meter_w())
        if self._events_task is None or self._events_task.done():
            self._events_task = asyncio.get_running_loop().create_task(self.events.tick(now))
            self._events_task.add_done_callback(_log_events_failure)

    async def feed_signals(self, path: Path) -> int:
        """Signals from a JSON-lines file ({"kind": ..., "payload": {...}} per line), as if they came over MQTT."""
        count = 0
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                kind, payload = entry["kind"], json.dumps(entry["payload"]).encode()
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                log.warning("signal.file_line_rejected", file=str(path), line=number, error=str(exc))
                continue
            if kind not in SIGNAL_TYPES:
                log.warning("signal.file_line_rejected", file=str(path), line=number, error=f"unknown kind {kind!r}")
                continue
            await self.ingest.receive(kind, payload)
            count += 1
        return count

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
            for task in [*self._background, self._events_task]:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            with contextlib.suppress(Exception):  # progress of active events, so a restart resumes them
                await self.events.flush()
            self.store.close()
            log.info("agent.stop", cycles=self.loop.cycles, writes=self.loop.writes)


def _log_events_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("events.tick_failed", error=repr(task.exception()))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("telemetry.failed", error=repr(task.exception()))
