"""The Prometheus endpoint: what the running agent counts, served on `[metrics] host:port` for a scraper.

One home per count: almost every figure here is read at scrape time from the counter the agent already keeps (the
loop's cycles and writes, each asset's polls, the ingest's outcomes, the gate's refusal codes, the dispatcher's
solves, the MQTT link's buffer), by one custom collector, so no count exists twice and nothing is added to the hot
path. Only what needs each observation is recorded as it happens: the control cycle's duration (a histogram, fed by
a `loop.after_cycle` hook from the timing the loop measured) and each plan's solve time (a `dispatcher.adopted`
listener).

Served by the standard library's threaded WSGI server with prometheus_client's WSGI app, in one daemon thread, not
on the event loop: collecting and formatting a 1000-asset page takes ~20-25 ms of CPU here (bench/metrics_scrape.py),
which a handler on the loop would stall every cycle's I/O for in one block; from a thread the loop gets the GIL back
in slices (p99 lag ~15 ms while scraped back to back). It adds no dependency beyond prometheus-client (no asyncio
HTTP library: +2 MB RSS in today's agent, ~4 MB over a bare interpreter), and nothing of it is imported while
metrics are off. The collector only reads agent state from that thread: plain attributes, and dicts the loop may
grow copied in one C-level call (`dict(...)`, `list(...)`) so an insertion can never break a scrape.

A port that cannot be bound (taken, or a host that does not resolve) costs the metrics, never the agent: it is
logged as `metrics.unavailable` at error and the agent runs on.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import structlog

from agent.config import MetricsSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from agent.app import AgentApp
    from agent.dispatch.plan import Plan

log = structlog.get_logger("agent.metrics")

# Cycle durations (s). The loop's period is added as a bucket bound, so `le="<period>"` counts the cycles that kept
# to it, next to the overrun counter.
CYCLE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Plan solve times (s): the aggregate takes ~0.4 s, a full LP of many EVs tens of seconds (README, Dispatch).
SOLVE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Rejected signals the gate did not refuse: validation, time and room checks, admission, a Store failure (the
# audit's codes invalid / not_stored / internal, which SignalIngest does not count apart).
OTHER_CHECKS = "checks"
PLAN_PATHS = ("solver", "last_plan", "rule")
SERVE_POLL_S = 0.2  # the server thread looks for shutdown this often: close() returns within it
REQUEST_TIMEOUT_S = 10.0  # a scraper that opens a connection and says nothing frees its thread after this


class MetricsEndpoint:
    """What `start_metrics` returns: `close()` stops serving and removes the hooks (idempotent, ≤ SERVE_POLL_S).

    With metrics off, or when the port could not be bound, it serves nothing and `close()` does nothing.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        server: Any = None,
        thread: threading.Thread | None = None,
        unhook: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self._server = server
        self._thread = thread
        self._unhook = unhook

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) actually bound, None when not serving."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self._unhook is not None:
            self._unhook()
            self._unhook = None
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # waits for serve_forever to notice: at most SERVE_POLL_S
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None


def start_metrics(app: AgentApp, settings: MetricsSettings) -> MetricsEndpoint:
    """Serve the app's metrics on `settings.host:port` until `close()`; a no-op endpoint when disabled or when the
    address cannot be bound (then logged as `metrics.unavailable`, and the agent goes on without metrics)."""
    if not settings.enabled:
        return MetricsEndpoint()
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry()
    loop = app.loop
    buckets = sorted({*CYCLE_BUCKETS_S, loop.period_s})
    cycle_seconds = Histogram(
        "vpp_control_cycle_duration_seconds",
        "Time of one control cycle (poll + decide + write), wall seconds",
        buckets=buckets,
        registry=registry,
    )
    solve_seconds = Histogram(
        "vpp_plan_solve_duration_seconds",
        "Solver time of each plan adopted, by method (full per-asset LP, or aggregated)",
        ["method"],
        buckets=SOLVE_BUCKETS_S,
        registry=registry,
    )
    registry.register(AgentCollector(app))
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, CPU: the gateway's own budget

    try:
        server = _bind(registry, settings.host, settings.port)
    except OSError as exc:  # taken port (EADDRINUSE), an address not on this host, a name that does not resolve
        log.error("metrics.unavailable", host=settings.host, port=settings.port, reason=str(exc))
        return MetricsEndpoint()

    def observe_cycle() -> None:
        """After a cycle: its duration into the histogram (the loop measured it; this only files it)."""
        timing = loop.timings[-1]
        cycle_seconds.observe(timing.total_s)

    def observe_plan(plan: Plan, _start: datetime, method: str) -> None:
        solve_seconds.labels(method).observe(plan.solve_s)

    # first, so a failing hook after it cannot lose the observation
    loop.after_cycle.insert(0, observe_cycle)
    dispatcher = app.dispatcher
    if dispatcher is not None:
        dispatcher.adopted.append(observe_plan)

    def unhook() -> None:
        _discard(loop.after_cycle, observe_cycle)
        if dispatcher is not None:
            _discard(dispatcher.adopted, observe_plan)

    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SERVE_POLL_S}, name="vpp-metrics", daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    log.info("metrics.listening", host=host, port=port, path="/metrics")
    return MetricsEndpoint(registry, server, thread, unhook)


def _discard(hooks: list[Any], hook: Any) -> None:
    if hook in hooks:
        hooks.remove(hook)


def _bind(registry: CollectorRegistry, host: str, port: int) -> Any:
    """A bound (not yet serving) threaded WSGI server with prometheus_client's app; OSError when it cannot bind."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    from prometheus_client import make_wsgi_app

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # IPv6 hosts too

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a scrape in flight never holds up the agent's exit
        address_family = family

    class QuietHandler(WSGIRequestHandler):
        timeout = REQUEST_TIMEOUT_S

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are no log events (the base class writes every request to stderr)."""

    app = make_wsgi_app(registry)
    server = Server((host, port), QuietHandler)
    server.set_app(app)
    return server


class AgentCollector:
    """Reads the agent's own counters at scrape time (prometheus_client's custom-collector protocol: `collect`).

    Each section is guarded: a bug in one costs that section (logged once), not the scrape.
    """

    def __init__(self, app: AgentApp) -> None:
        self.app = app
        self._lock = threading.Lock()  # scrapes may overlap (one thread each): the seen-sets below are shared
        self._clamp_reasons_seen: set[str] = set()
        self._failed_sections: set[str] = set()
        try:
            self._version = version("vpp-agent")
        except PackageNotFoundError:
            self._version = "unknown"

    def collect(self) -> Iterator[Metric]:
        sections: list[tuple[str, Callable[[], list[Metric]]]] = [
            ("agent", self._agent),
            ("control", self._control),
            ("assets", self._assets),
            ("setpoints", self._setpoints),
            ("signals", self._signals),
            ("plan", self._plan),
            ("mqtt", self._mqtt),
            ("events", self._events),
        ]
        with self._lock:
            for name, section in sections:
                try:
                    metrics = section()
                except Exception as exc:
                    if name not in self._failed_sections:
                        self._failed_sections.add(name)
                        log.error("metrics.section_failed", section=name, error=f"{type(exc).__name__}: {exc}")
                    continue
                yield from metrics

    # -- sections -------------------------------------------------------------------------------------------
    def _agent(self) -> list[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily

        info = InfoMetricFamily("vpp_agent", "The running agent's version")
        info.add_metric([], {"version": self._version})
        health = self.app.health
        reasons = list(dict(health.reasons))
        degraded = GaugeMetricFamily("vpp_agent_degraded", "1 while the agent reports itself degraded, else 0")
        degraded.add_metric([], 1.0 if reasons else 0.0)
        by_source = GaugeMetricFamily(
            "vpp_agent_degraded_sources", "1 per source that makes the agent degraded now", labels=["source"]
        )
        for source in reasons:
            by_source.add_metric([source], 1.0)
        return [info, degraded, by_source]

    def _control(self) -> list[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        loop = self.app.loop
        return [
            CounterMetricFamily("vpp_control_cycles_total", "Control cycles completed", value=loop.cycles),
            CounterMetricFamily(
                "vpp_control_cycle_overruns_total",
                "Control cycles that took longer than the control period (logged as cycle.overrun)",
                value=loop.overruns,
            ),
            CounterMetricFamily(
                "vpp_control_cycle_failures_total",
                "Control cycles that raised (logged as cycle.failed)",
                value=loop.cycle_failures,
            ),
            CounterMetricFamily(
                "vpp_control_polls_total", "Poll phases run (a fast woken cycle may skip one)", value=loop.polls
            ),
            GaugeMetricFamily("vpp_control_period_seconds", "The configured control period", value=loop.period_s),
        ]

    def _assets(self) -> list[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        polls = CounterMetricFamily(
            "vpp_asset_polls_total",
            "Polls of each asset by result (ok: it answered; failed: it did not)",
            labels=["asset_id", "result"],
        )
        available = GaugeMetricFamily(
            "vpp_asset_available",
            "1 while the asset is available (answering, registers not frozen), 0 while it is out",
            labels=["asset_id"],
        )
        for state in list(self.app.loop.fleet.assets.values()):
            polls.add_metric([state.id, "ok"], state.polls_ok)
            polls.add_metric([state.id, "failed"], state.polls_failed)
            available.add_metric([state.id], 1.0 if state.available else 0.0)
        return [polls, available]

    def _setpoints(self) -> list[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        loop = self.app.loop
        by_reason: Counter[str] = Counter()
        for setpoint in list(loop.last_setpoints.values()):
            by_reason.update(setpoint.reasons)
        self._clamp_reasons_seen.update(by_reason)
        clamped = GaugeMetricFamily(
            "vpp_setpoints_clamped",
            "Assets whose latest setpoint the safety envelope cut, by the limit that cut it (one setpoint may name "
            "two: its own limit and the site's)",
            labels=["reason"],
        )
        for reason in sorted(self._clamp_reasons_seen):  # a reason once seen stays, at 0, so its series is whole
            clamped.add_metric([reason], by_reason.get(reason, 0))
        return [
            CounterMetricFamily("vpp_setpoints_written_total", "Setpoints written to devices", value=loop.writes),
            CounterMetricFamily(
                "vpp_setpoint_write_failures_total", "Setpoint writes that failed", value=loop.write_failures
            ),
            clamped,
        ]

    def _signals(self) -> list[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily

        counts = dict(self.app.ingest.counts)
        refusals = dict(self.app.gate.refusals)
        received = CounterMetricFamily(
            "vpp_signals_received_total",
            "Signals handled, by outcome (accepted, duplicate, rejected)",
            labels=["status"],
        )
        for status in ("accepted", "duplicate", "rejected"):
            received.add_metric([status], counts.get(status, 0))
        rejected = CounterMetricFamily(
            "vpp_signals_rejected_total",
            f"Signals rejected, by reason: the command gate's refusal codes, and {OTHER_CHECKS!r} for the agent's own "
            "checks after it (validation, time, room, admission, storage)",
            labels=["reason"],
        )
        for code, count in sorted(refusals.items()):
            rejected.add_metric([code], count)
        # every gate refusal is also a rejection the ingest counts; a scrape between the two increments sees one more
        rejected.add_metric([OTHER_CHECKS], max(0, counts.get("rejected", 0) - sum(refusals.values())))
        return [received, rejected]

    def _plan(self) -> list[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        from agent.dispatch.plan import REVENUE_TERMS

        d = self.app.dispatcher
        if d is None:  # site_target or idle mode: no optimiser, no plan
            return []
        plan = d.plan
        covered = d.requests(self.app.now()) is not None
        path = ("solver" if d.failures_in_a_row == 0 else "last_plan") if covered else "rule"
        path_gauge = GaugeMetricFamily(
            "vpp_plan_path",
            "What sets the setpoints now: 1 for the current path (solver: the latest plan; last_plan: the solver "
            "failed since, an older plan still covers now; rule: no plan covers now, the site-target rule runs)",
            labels=["path"],
        )
        for name in PLAN_PATHS:
            path_gauge.add_metric([name], 1.0 if name == path else 0.0)
        metrics: list[Metric] = [
            path_gauge,
            CounterMetricFamily("vpp_plan_solves_total", "Plans solved and adopted", value=d.solves),
            CounterMetricFamily("vpp_plan_failures_total", "Re-plans that produced no plan", value=d.failures),
            GaugeMetricFamily(
                "vpp_plan_failures_in_a_row", "Re-plans without a plan since the last one", value=d.failures_in_a_row
            ),
        ]
        if plan is not None:
            terms = GaugeMetricFamily(
                "vpp_plan_cost_terms",
                "The adopted plan's objective terms over its horizon, in the currency of the site's prices; "
                "flow says whether the term is paid (cost) or earned (revenue)",
                labels=["term", "flow"],
            )
            for term, value in sorted(dict(plan.breakdown).items()):
                terms.add_metric([term, "revenue" if term in REVENUE_TERMS else "cost"], value)
            metrics += [
                terms,
                GaugeMetricFamily(
                    "vpp_plan_net_cost",
                    "The adopted plan's costs minus revenues over its horizon (currency)",
                    value=plan.net_cost,
                ),
            ]
        return metrics

    def _mqtt(self) -> list[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        link = self.app.link
        if link is None:  # no broker configured
            return []
        return [
            GaugeMetricFamily("vpp_mqtt_connected", "1 while connected to the broker", value=float(link.connected)),
            GaugeMetricFamily(
                "vpp_mqtt_buffered_messages", "Publishes waiting for the broker to come back", value=link.buffered
            ),
            GaugeMetricFamily(
                "vpp_mqtt_buffer_limit_messages",
                "Most publishes kept while the broker is away; older are dropped",
                value=link.settings.buffer_limit,
            ),
            CounterMetricFamily(
                "vpp_mqtt_dropped_messages_total",
                "Buffered publishes dropped (oldest first) because the buffer was full",
                value=link.stats.dropped,
            ),
            CounterMetricFamily(
                "vpp_mqtt_published_messages_total", "Messages handed to the broker", value=link.stats.published
            ),
        ]

    def _events(self) -> list[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        from agent.events.lifecycle import OPEN_STATES, EventState

        events = list(self.app.events.events.values())
        open_events = GaugeMetricFamily(
            "vpp_events_open", "Grid events not finished yet, by kind and state", labels=["kind", "state"]
        )
        counts = Counter((e.kind, e.state.value) for e in events if e.state in OPEN_STATES)
        for (kind, state), count in sorted(counts.items()):
            open_events.add_metric([kind, state], count)
        delivered = GaugeMetricFamily(
            "vpp_event_delivered_ratio",
            "Completed up-DR events still in memory: delivered energy / requested energy (M&V report)",
            labels=["event_id"],
        )
        score = GaugeMetricFamily(
            "vpp_event_performance_score_ratio",
            "Completed award events still in memory: composite performance score of the response (0..1)",
            labels=["event_id"],
        )
        for event in events:
            report = event.report
            if event.state is not EventState.COMPLETED or report is None:
                continue
            if isinstance(value := report.get("delivered_fraction"), int | float):
                delivered.add_metric([event.id], float(value))
            if isinstance(value := report.get("score"), int | float):
                score.add_metric([event.id], float(value))
        return [open_events, delivered, score]
