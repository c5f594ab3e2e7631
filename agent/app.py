"""The running agent: control loop plus, when MQTT is on, the broker link, telemetry and signal ingestion.

Composition root for `vpp-agent run` and `demo` and for tests that want the whole agent: it is where drivers are
chosen (DESIGN.md §2); everything it wires sees the others through the Driver and Bus interfaces only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent.audit.chain import Head, timestamp
from agent.audit.trail import AuditTrail
from agent.config import AppConfig
from agent.control.loop import ControlLoop
from agent.events.lifecycle import EventManager
from agent.metrics import start_metrics
from agent.notify import Notifier, health_status
from agent.ports import Bus
from agent.preflight import start_warnings
from agent.signals.ingest import SignalIngest
from agent.signals.models import (
    SIGNAL_TYPES,
    AsActivation,
    AsAward,
    AsOffer,
    GridFrequency,
    PriceSeries,
    SignalModel,
    SiteTarget,
    UpDrEvent,
)
from agent.signals.sanity import clock_is_sane
from agent.status import Health, status_payload
from agent.store import Store, StoredMemory, StoreError
from agent.telemetry import TelemetryPublisher
from agent.trust.gate import CommandGate
from agent.trust.keys import Signer
from agent.trust.seal import SealedBus, Sealer

if TYPE_CHECKING:
    from agent.dispatch.runner import Dispatcher
    from agent.homeassistant import HomeAssistant
    from drivers.mqtt_link import MqttLink

log = structlog.get_logger("agent.app")

PRUNE_EVERY_S = 3600.0  # loop seconds between retention passes over the state file and the signal book
DISPATCH_FAILURES_DEGRADED = 3  # re-plans in a row without a plan before the agent says it is degraded
STATS_EVERY_S = 60.0  # loop seconds between `agent.stats` log lines (what the soak bench and an operator read)


class AgentApp:
    def __init__(
        self, config: AppConfig, now: Callable[[], datetime], time_scale: float = 1.0, state_dir: Path | None = None
    ) -> None:
        from agent.wiring import build_drivers, build_link

        self.config = config
        self.sealer = _sealer(config, now)  # None: the agent has no key of its own and publishes unsigned
        seal = self.sealer.seal if self.sealer is not None else None
        self.link = build_link(config.mqtt, now, seal) if config.mqtt.enabled else None
        # what the agent's own parts publish goes out sealed; device bridges keep the plain link
        self.out: Bus | None = SealedBus(self.link, self.sealer) if self.link and self.sealer else self.link
        state_file = config.agent.state_file
        if state_dir is not None and state_file != ":memory:" and not Path(state_file).is_absolute():
            state_file = str(state_dir / state_file)
        self.store = Store(state_file)
        self.memory = StoredMemory(self.store, now)  # drivers' state across restarts (an OCPP transaction's)
        try:
            self.drivers, self.pool = build_drivers(config, now, self.link, self.memory)
        except BaseException:
            self.store.close()
            raise
        self.loop = ControlLoop(config, self.drivers, clock=now, time_scale=time_scale)
        # every accepted command, plan change, override and (counted, sampled) refusal; docs/audit.md
        self.audit = AuditTrail(self.store, now, config.trust.audit_refusal_samples)
        self.audit.trust("start", config.trust, required=config.signatures_required)
        prefix = config.mqtt.topic_prefix
        self.audit_topic = f"{prefix}/audit/head"
        # a meter reading stands for the power after it for at most 10 periods (device time): longer gaps stay gaps
        hold_s = max(5.0, 10 * config.agent.poll_period_s * time_scale)
        self.events = EventManager(
            self.store, self.loop.fleet, config.events, max_hold_s=hold_s, energy_sources=self.drivers.values()
        )  # OCPP EVSEs book their own register history per interval (agent.ports.RegisterHistory)
        self.gate = CommandGate(
            config.trust, config.signatures_required, self.store, clock_skew_s=config.signals.clock_skew_s
        )
        self.ingest = SignalIngest(
            self.out, prefix, self.store, config.mqtt.max_payload_bytes, now, config.signals, self.gate, self.audit
        )
        self.ingest.admission.append(self.events.admit)
        self.ingest.on_accepted.append(self._apply_signal)
        self.health = Health()
        self.status_topic = f"{prefix}/agent/status"
        self.loop.target_source = self.events.site_target_w
        self.loop.award_shift_source = self.events.award_shift_w
        self.loop.after_cycle.append(self._events_cycle)
        self.telemetry: TelemetryPublisher | None = None
        if self.link is not None:
            self.telemetry = TelemetryPublisher(self.out, prefix)
            self.loop.after_cycle.append(self._publish_telemetry)
        self.homeassistant: HomeAssistant | None = None
        if self.link is not None and config.homeassistant.enabled:
            self.homeassistant = _home_assistant(config, self.link)
        self.dispatcher: Dispatcher | None = None
        if config.control.mode == "dispatch":
            from agent.dispatch.runner import Dispatcher  # deferred: its plan inputs need numpy (~10 MB of RSS)

            self.dispatcher = Dispatcher(config, now, self.ingest.book, time_scale=time_scale, store=self.store)
            self.loop.schedule = self.dispatcher.requests
            self.loop.reserve_source = self.dispatcher.reserves
            self.dispatcher.adopted.append(self.audit.plan)
        self.now = now
        self._events_task: asyncio.Task[None] | None = None
        self.first_cycle = asyncio.Event()  # set once the fleet has been polled: capability checks need it
        self._background: set[asyncio.Task[object]] = set()
        self._telemetry_task: asyncio.Task[None] | None = None
        self.telemetry_skipped = 0
        self._resumed = False  # activations of active awards taken up once the clock is sane
        self._next_prune = 0.0
        self._next_stats = time.monotonic() + STATS_EVERY_S
        self._prune_task: asyncio.Task[None] | None = None
        self._status_lock = asyncio.Lock()
        self._offline = False  # set at shutdown: no status goes out after `offline`
        # systemd (agent/notify.py): READY=1 after the first cycle, then WATCHDOG=1 per completed cycle. Keep this
        # hook the last one: a ping then also says every hook before it ran.
        self.notifier = Notifier.from_environment(period_s=config.agent.poll_period_s)
        self.loop.after_cycle.append(lambda: self.notifier.cycle_completed(health_status(self.health)))

    def reload_trust(self, config: AppConfig) -> None:
        """Take the `[trust]` keys and rights of a re-read config (SIGHUP); everything else needs a restart."""
        self.gate.reload(config.trust, config.signatures_required)
        self.audit.trust("trust_reload", config.trust, required=config.signatures_required)
        self._report("trust", None)
        log.info("trust.reloaded", keys=len(config.trust.keys), revoked=sum(k.revoked for k in config.trust.keys))
        self._warn_about_trust(config)

    def trust_reload_failed(self, error: str) -> None:
        """The keys in force stay (a typo must not open the site); the status says the reload did not happen."""
        first_line = error.splitlines()[0] if error else "unknown error"
        self.audit.trust("trust_reload_failed", error=first_line)
        self._report("trust", f"keys not reloaded, the previous ones stay in force: {first_line}")

    def _warn_about_trust(self, config: AppConfig) -> None:
        """At every start and reload: say what an operator must know about who can command this site."""
        for line in start_warnings(config):
            log.warning("config.unsafe", message=line)
        if not config.signatures_required:
            return
        missing = self.gate.keys.kinds_without_key(list(SIGNAL_TYPES))
        if missing:
            log.warning("trust.no_key", kinds=missing, message="no trusted key may send these kinds: all are refused")

    def _publish_telemetry(self) -> None:
        """Start this cycle's telemetry unless the last one is still going (then skip: never queue up behind)."""
        if self.telemetry is None:
            return
        if self._telemetry_task is not None and not self._telemetry_task.done():
            self.telemetry_skipped += 1
            return
        self._telemetry_task = asyncio.get_running_loop().create_task(self.telemetry.publish_cycle(self.loop.fleet))
        self._telemetry_task.add_done_callback(_log_failure)

    async def _apply_signal(self, kind: str, signal: SignalModel, expires: float | None) -> None:
        """Act on an admitted signal before it is acknowledged: targets, events and activations at once; prices,
        events and awards also make the optimiser plan again. An activation holds until its signed command
        expires (`expires`), never longer."""
        now = self.now()
        if isinstance(signal, SiteTarget):
            self.loop.set_site_target(signal.site_target_w)
            self.loop.wake()
        elif isinstance(signal, AsActivation | GridFrequency):
            if self.events.apply(signal, now, expires):
                self.loop.wake(fast=True)  # the fast path: act on a changed activation now, from the last poll
        elif isinstance(signal, UpDrEvent | AsAward):
            await self.events.receive(kind, signal, now)
        if self.dispatcher is not None and isinstance(signal, PriceSeries | UpDrEvent | AsAward | AsOffer):
            self.dispatcher.request_replan()

    def _events_cycle(self) -> None:
        """After each cycle: judge the clock, feed the site meter to the events and move them along, keep the
        agent's status and the retention rules (never blocks the cycle)."""
        now = self.now()
        sane = clock_is_sane(now)
        self._report("clock", None if sane else f"clock reads {now.isoformat()}: signals are held until it is set")
        if sane:
            if not self._resumed:
                self.events.resume(now)
                self._resumed = True
            self.ingest.ready.set()  # the fleet has been polled (this is after a cycle) and the clock can be trusted
        else:
            self.ingest.ready.clear()
        self.first_cycle.set()
        # a meter the loop does not believe is no basis for baselines or M&V: those intervals stay gaps
        self.events.observe_site(now, None if self.loop.meter_problem else self.loop.site_meter_w())
        if self._events_task is None or self._events_task.done():
            self._events_task = asyncio.get_running_loop().create_task(self.events.tick(now))
            self._events_task.add_done_callback(_log_events_failure)
        self._report("meter", self.loop.meter_problem)
        self._report("store", None if self.store.last_error is None else f"state file: {self.store.last_error}")
        self._report("audit", self.audit.problem)
        self._report("dispatch", self._dispatch_problem())
        frozen = sorted(s.id for s in self.loop.fleet.assets.values() if s.frozen)
        self._report("assets", f"frozen registers, out of service: {', '.join(frozen)}" if frozen else None)
        self._housekeeping(now)
        self.memory.flush_soon(time.monotonic())

    def _dispatch_problem(self) -> str | None:
        d = self.dispatcher
        if d is None or d.failures_in_a_row < DISPATCH_FAILURES_DEGRADED:
            return None
        return (f"optimiser failed {d.failures_in_a_row} times in a row ({d.last_failure}): the last plan, then "
                "the rule controller, run on")  # fmt: skip

    def _report(self, source: str, reason: str | None) -> None:
        if self.health.report(source, reason) and self.link is not None:
            birth = self.health.payload(self.now())
            self.link.set_birth(self.sealer.seal(self.status_topic, birth) if self.sealer else birth)  # not "online"
            task = asyncio.get_running_loop().create_task(self._publish_status())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _publish_status(self) -> None:
        """Publish the status as it is when this turn comes: changes in quick succession end on the latest one."""
        async with self._status_lock:
            if self.out is not None and not self._offline:
                await self.out.publish(self.status_topic, self.health.payload(self.now()), qos=1, retain=True)

    async def _publish_offline(self) -> None:
        """A clean shutdown: `offline` with the time of stopping, sealed like every status (the Will, built at start,
        is for a crash); the last status published, whatever change was still queued. Sent before the link closes,
        and not waited for beyond a second when the broker is unreachable (the link would only buffer it)."""
        async with self._status_lock:
            self._offline = True
            if self.out is not None and self.link is not None and self.link.connected:
                payload = status_payload("offline", self.now(), reason="shutdown")
                await asyncio.wait_for(self.out.publish(self.status_topic, payload, qos=1, retain=True), 1.0)

    async def _publish_audit_head(self, head: Head) -> None:
        """The chain head, sealed by SealedBus with the agent's key, retained so a reader who subscribes gets it."""
        if self.out is not None:
            await self.out.publish(self.audit_topic, head.body(), qos=1, retain=True)

    def _housekeeping(self, now: datetime) -> None:
        """Hourly: forget ended signals and prune the state file; every minute: one `agent.stats` line."""
        mono = time.monotonic()
        if mono >= self._next_prune and (self._prune_task is None or self._prune_task.done()) and clock_is_sane(now):
            self._next_prune = mono + PRUNE_EVERY_S
            self.ingest.forget_ended(now)
            self._prune_task = asyncio.get_running_loop().create_task(self._prune(now))
        if mono >= self._next_stats:
            self._next_stats = mono + STATS_EVERY_S
            self._log_stats()

    async def _prune(self, now: datetime) -> None:
        signals_before = now - timedelta(days=self.config.signals.keep_days)
        events_before = now - timedelta(days=self.config.events.report_keep_days)
        audit_before = timestamp(now - timedelta(days=self.config.trust.audit_keep_days))
        try:
            removed = await asyncio.to_thread(self.store.prune, signals_before.timestamp(), events_before.timestamp())
            removed["audit"] = await asyncio.to_thread(self.store.prune_audit, audit_before)
        except StoreError as exc:
            log.error("store.failed", error=str(exc))
            return
        if any(removed.values()):
            log.info("store.pruned", **removed)

    def _log_stats(self) -> None:
        timings = sorted(t.total_s for t in self.loop.timings)
        pick = (lambda q: round(timings[min(len(timings) - 1, int(q * len(timings)))], 4)) if timings else None
        log.info(
            "agent.stats",
            cycles=self.loop.cycles,
            polls=self.loop.polls,
            cycle_p50_s=pick(0.5) if pick else None,
            cycle_p99_s=pick(0.99) if pick else None,
            writes=self.loop.writes,
            write_failures=self.loop.write_failures,
            cycle_failures=self.loop.cycle_failures,
            signals=dict(self.ingest.counts),
            refused=dict(self.gate.refusals),  # commands the gate refused, per code (docs/security.md)
            rss_mb=_rss_mb(),
            state=self.health.state,
        )

    def _setpoints_w(self) -> dict[str, float]:
        return {asset: setpoint.power_w for asset, setpoint in self.loop.last_setpoints.items()}

    async def feed_signals(self, path: Path) -> int:
        """Signals from a JSON-lines file, as if they came over MQTT (the same gate and checks): per line
        {"kind": ..., "jws": "<signed command>"} as `vpp-agent sign` writes it, or {"kind": ..., "payload": {...}}
        unsigned (taken only where `[trust]` allows unsigned signals)."""
        count = 0
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                kind = entry["kind"]
                signed = entry.get("jws")
                payload = signed.encode() if isinstance(signed, str) else json.dumps(entry["payload"]).encode()
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # ValueError: JSON
                log.warning("signal.file_line_rejected", file=str(path), line=number, error=repr(exc)[:200])
                continue
            if not isinstance(kind, str):
                log.warning("signal.file_line_rejected", file=str(path), line=number, error="kind is not a string")
                continue
            await self.ingest.receive(kind, payload)
            count += 1
        return count

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "agent.start", assets=len(self.drivers), period_s=self.config.agent.poll_period_s, mqtt=bool(self.link)
        )
        self._warn_about_trust(self.config)
        # the link outlives `stop` by the audit's last flush, so the final signed head still goes out
        link_stop = asyncio.Event()
        link_task = asyncio.create_task(self.link.run(link_stop)) if self.link is not None else None
        publish_head = self._publish_audit_head if self.sealer is not None and self.out is not None else None
        audit_task = asyncio.create_task(self.audit.run(stop, publish_head, self.config.trust.audit_head_every_s))
        dispatch_task = (
            asyncio.create_task(self.dispatcher.run(self.loop.fleet, lambda: self.loop.uncontrolled_w, stop))
            if self.dispatcher is not None
            else None
        )
        metrics = start_metrics(self, self.config.metrics)
        from agent.wiring import build_csms  # the OCPP CSMS (docs/ocpp.md); ocpp is imported only when on

        csms = build_csms(self.config, self.drivers, self.now)
        if csms is not None:
            await csms.start()
        web = None
        if self.config.web.enabled:  # the status page (docs/web.md); it and microdot are imported only when on
            from agent.web.server import start_web

            web = await start_web(self, self.config.web)
        ha_task = (
            asyncio.create_task(
                self.homeassistant.run(self.loop.fleet, self._setpoints_w, self.loop.site_meter_w, stop)
            )
            if self.homeassistant is not None
            else None
        )
        try:
            await self.loop.run(stop)
        finally:
            stop.set()
            self.notifier.stopping()
            metrics.close()
            if csms is not None:
                await csms.close()  # stations see the CSMS go: each falls back after its maxOfflineDuration
            if web is not None:
                await web.close()
            if self._telemetry_task is not None:
                self._telemetry_task.cancel()
            if dispatch_task is not None:
                dispatch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatch_task
            try:
                await _logged(audit_task, "audit.failed")  # it returns within a flush of `stop`
                await _logged(self.audit.close(publish_head), "audit.close_failed")  # counts, `stop`, flush, head
            finally:
                await _logged(self._publish_offline(), "agent.offline_status_failed")
                if ha_task is not None and self.homeassistant is not None:
                    ha_task.cancel()  # it may be waiting on a broker that is gone: never hold the shutdown
                    with contextlib.suppress(asyncio.CancelledError):
                        await _logged(ha_task, "homeassistant.failed")
                    await _logged(self.homeassistant.offline(), "homeassistant.offline_failed")
                link_stop.set()
            if link_task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(link_task, timeout=1.0)
            self.pool.close()
            # every driver's own connections (a plugin's, an MQTT device's subscriptions); Modbus ones share the pool
            closing = asyncio.gather(*(_logged(d.close(), "driver.close_failed") for d in self.drivers.values()))
            try:  # a driver that hangs in close() must not hold the shutdown
                await asyncio.wait_for(closing, timeout=1.0)
            except TimeoutError:
                log.warning("driver.close_timeout", timeout_s=1.0)
            for task in [*self._background, self._events_task]:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            with contextlib.suppress(Exception):  # progress of active events, so a restart resumes them
                await self.events.flush()
            await _logged(self.audit.flush(), "audit.close_failed")  # commands taken while the link was closing
            await _logged(self.memory.flush(), "memory.flush_failed")  # what the drivers' close() remembered
            self.store.close()
            log.info("agent.stop", cycles=self.loop.cycles, writes=self.loop.writes)
            self.notifier.close()


def _home_assistant(config: AppConfig, link: MqttLink) -> HomeAssistant:
    """Discovery for Home Assistant over the plain link (its state topics are never sealed: agent/homeassistant.py);
    imported only when `[homeassistant]` is on. The site id names the entities: [trust] site_id, else the last level
    of the topic prefix (the shipped ACL's user name and prefix, deploy/mosquitto.acl)."""
    from agent import installed_version
    from agent.homeassistant import HomeAssistant

    ha = config.homeassistant
    site = config.trust.site_id or config.mqtt.topic_prefix.rsplit("/", 1)[-1]
    return HomeAssistant(
        link,
        config.mqtt.topic_prefix,
        site,
        ha.discovery_prefix,
        ha.every_s,
        lambda: link.stats.connects,
        installed_version(),
    )


def _sealer(config: AppConfig, now: Callable[[], datetime]) -> Sealer | None:
    """The agent's own signer, from `[trust] agent_key_file` (KeyFileError naming the file if it cannot be used)."""
    trust = config.trust
    if trust.agent_key_file is None or trust.agent_kid is None:
        return None
    site = trust.site_id or config.mqtt.topic_prefix
    return Sealer(Signer.from_file(trust.agent_kid, trust.agent_key_file), site, now)


def _rss_mb() -> float | None:
    """This process's resident memory (Linux /proc), for the stats line."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


async def _logged(work: Awaitable[object], event: str) -> None:
    """Await a shutdown step; a failure is logged and the shutdown goes on (the Store must still be closed)."""
    try:
        await work
    except Exception as exc:
        log.error(event, error=repr(exc))


def _log_events_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("events.tick_failed", error=repr(task.exception()))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("telemetry.failed", error=repr(task.exception()))
