"""The agent's state as the status page shows it, built once per refresh on the agent's loop and shared by viewers.

What it reads is what agent/metrics.py reads (the loop's counters, the fleet, the dispatcher's plan, the events, the
health), never a copy kept on the side. A build walks the fleet once for the envelope, the counts and the filter's
keys, and is reused for `max_age_s`, so ten open browsers or a page reloaded in a loop cost the control cycle one
build per refresh, not one per request; a request then filters the keys and formats only the rows of the page asked
for (50, not 1000). Figures are formatted here (agent/web/fmt.py): the page's JavaScript only places strings.

Charts are drawn on request (agent/web/svg.py) and cached by what they depend on: the plan object and the current
step for the plan charts (a new plan or a new step redraws them), the sample count for a running event's delivery.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from agent import installed_version, money
from agent.events.lifecycle import OPEN_STATES, Event, EventState
from agent.model import AssetKind, DeviceStatus
from agent.signals.models import AsAward, UpDrEvent
from agent.web import delivery, fmt, svg

if TYPE_CHECKING:
    from agent.app import AgentApp
    from agent.dispatch.plan import Plan
    from agent.fleet import AssetState
    from agent.model import Setpoint

PAGE_SIZE = 50  # asset rows per page unless the page asks for another size
MAX_PAGE_SIZE = 500
RECENT_EVENTS = 10  # finished events listed after the open ones
KIND_NAMES = {AssetKind.EV_CHARGER: "EV chargers", AssetKind.BATTERY: "batteries", AssetKind.METER: "meters"}
STATUS_NAMES = {
    DeviceStatus.STANDBY: "standby",
    DeviceStatus.CHARGING: "charging",
    DeviceStatus.DISCHARGING: "discharging",
    DeviceStatus.FAULT: "fault",
    DeviceStatus.NO_EV: "no EV",
}


@dataclass
class _Built:
    at_mono: float
    summary: str  # JSON text of everything but the asset rows
    states: list[AssetState]  # every asset, in config order; only the page asked for is formatted, per request
    keys: list[str]  # lower-case ids, for the filter
    problems: list[bool]  # unavailable, clamped or faulted: what "problems only" keeps
    setpoints: dict[str, Setpoint]  # the loop's last setpoints (it replaces the dict each cycle: this one stays)
    planned: dict[str, float] | None  # the plan's value for now per asset
    build_ms: float


class Snapshot:
    """Builds and caches the page's state; `status_json` answers /api/status, the chart methods the SVG routes."""

    def __init__(self, app: AgentApp, refresh_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        """`refresh_s`: how often the page asks; a build is reused for half of it (at most 1 s), so what a viewer
        sees is never older than that and every viewer shares one build."""
        self.app = app
        self.refresh_s = refresh_s
        self.max_age_s = min(1.0, refresh_s / 2)
        self.monotonic = monotonic
        self.zone = ZoneInfo(app.config.events.timezone)
        self.currency = app.config.site.currency
        self.started = app.now()
        self.version = installed_version()
        self.builds = 0
        self._built: _Built | None = None
        self._plan_cache: dict[str, tuple[Plan, tuple[datetime, int], str]] = {}
        self._event_cache: dict[str, tuple[object, str]] = {}

    # -- status ---------------------------------------------------------------------------------------------------
    def current(self) -> _Built:
        """The latest build, rebuilt when older than `max_age_s`."""
        built = self._built
        if built is None or self.monotonic() - built.at_mono >= self.max_age_s:
            built = self._built = self._build()
        return built

    def status_json(self, page: int = 0, per: int = PAGE_SIZE, query: str = "", problems_only: bool = False) -> str:
        """The page's JSON: the shared summary plus one page of asset rows matching the filter."""
        built = self.current()
        per = max(1, min(MAX_PAGE_SIZE, per))
        needle = query.strip().lower()
        chosen = [i for i, key in enumerate(built.keys)
                  if (not needle or needle in key) and (not problems_only or built.problems[i])]  # fmt: skip
        pages = max(1, math.ceil(len(chosen) / per))
        page = max(0, min(page, pages - 1))
        rows = [
            self._asset_row(built.states[i], built.setpoints.get(built.states[i].id), built.planned)
            for i in chosen[page * per : (page + 1) * per]
        ]
        table = {"matching": len(chosen), "page": page, "pages": pages, "per": per, "rows": rows}
        return f'{{"summary":{built.summary},"assets":{json.dumps(table, separators=(",", ":"))}}}'

    def _build(self) -> _Built:
        t0 = time.perf_counter()
        app = self.app
        now = app.now()
        planned = app.dispatcher.requests(now) if app.dispatcher is not None else None
        states = list(app.loop.fleet.assets.values())
        keys, problems = [], []
        counts = {"available": 0, "out": 0, "clamped": 0}
        setpoints = app.loop.last_setpoints
        for state in states:
            setpoint = setpoints.get(state.id)
            clamped = setpoint is not None and bool(setpoint.reasons)
            m = state.measurement
            keys.append(state.id.lower())
            problems.append(not state.available or clamped or (m is not None and m.status is DeviceStatus.FAULT))
            counts["available" if state.available else "out"] += 1
            counts["clamped"] += clamped
        summary = {
            "site": self._site(now),
            "health": self._health(),
            "envelope": self._envelope(counts),
            "plan": self._plan(now),
            "events": self._events(now),
        }
        build_ms = (time.perf_counter() - t0) * 1000
        summary["health"]["snapshot_ms"] = f"{build_ms:.1f} ms"
        self.builds += 1
        text = json.dumps(summary, separators=(",", ":"), default=str)
        return _Built(self.monotonic(), text, states, keys, problems, setpoints, planned, build_ms)

    def _site(self, now: datetime) -> dict[str, Any]:
        config = self.app.config
        return {
            "name": config.trust.site_id or config.mqtt.topic_prefix,
            "mode": config.control.mode,
            "currency": self.currency,
            "timezone": config.events.timezone,
            "now": fmt.local_time(now, self.zone),
            "refresh_s": self.refresh_s,
            "version": self.version,
        }

    def _health(self) -> dict[str, Any]:
        app = self.app
        loop = app.loop
        timings = [t.total_s for t in list(loop.timings)]
        link = app.link
        if link is None:
            mqtt = "off"
        else:
            mqtt = "connected" if link.connected else "not connected"
            mqtt += f", {link.buffered} buffered, {link.stats.dropped} dropped"
        counts = dict(app.ingest.counts)
        return {
            "state": app.health.state,
            "reasons": [f"{source}: {reason}" for source, reason in dict(app.health.reasons).items()],
            "cycles": loop.cycles,
            "period": fmt.duration(loop.period_s) if loop.period_s >= 1 else f"{loop.period_s * 1000:.0f} ms",
            "cycle_last": f"{timings[-1] * 1000:.0f} ms" if timings else fmt.DASH,
            "cycle_median": f"{statistics.median(timings) * 1000:.0f} ms" if timings else fmt.DASH,
            "cycle_max": f"{max(timings) * 1000:.0f} ms" if timings else fmt.DASH,
            "cycle_window": len(timings),
            "overruns": loop.overruns,
            "cycle_failures": loop.cycle_failures,
            "polls": loop.polls,
            "writes": loop.writes,
            "write_failures": loop.write_failures,
            "signals": {k: counts.get(k, 0) for k in ("accepted", "duplicate", "rejected")},
            "refused": dict(app.gate.refusals),
            "mqtt": mqtt,
            "store": app.store.last_error or "ok",
            "up_since": fmt.local_time(self.started, self.zone),
        }

    def _envelope(self, counts: dict[str, int]) -> dict[str, Any]:
        loop = self.app.loop
        env = loop.fleet.envelope()
        site = self.app.config.site
        return {
            "assets": env.assets_total,
            "available": counts["available"],
            "out": counts["out"],
            "clamped": counts["clamped"],
            "power": fmt.power(env.power_w),
            "stored": fmt.energy(env.stored_wh),
            "absorb": fmt.magnitude(env.absorb_w),
            "absorb_for": fmt.duration(env.absorb_for_s),
            "deliver": fmt.magnitude(env.deliver_w),
            "deliver_for": fmt.duration(env.deliver_for_s),
            "ev_needed": fmt.energy(env.ev_energy_needed_wh),
            "site_meter": fmt.power(loop.site_meter_w()),
            "site_target": fmt.power(loop.site_target_w),
            "import_limit": fmt.limit(site.import_limit_w),
            "export_limit": fmt.limit(site.export_limit_w),
        }

    def _asset_row(
        self, state: AssetState, setpoint: Setpoint | None, planned: dict[str, float] | None
    ) -> dict[str, Any]:
        """One asset's table row, formatted (only the rows of the page asked for are: 50, not 1000)."""
        m = state.measurement
        if state.frozen:
            availability = "frozen"
        elif state.available:
            availability = "available"
        else:
            availability = "out" if state.polls_ok or state.polls_failed else "not polled yet"
        status = STATUS_NAMES.get(m.status, str(m.status)) if m is not None else fmt.DASH
        reasons = list(setpoint.reasons) if setpoint is not None else []
        ev = ""
        if m is not None and state.kind is AssetKind.EV_CHARGER and m.ev_connected:
            parts = [f"target {fmt.percent(m.ev_target_soc)}"]
            if m.ev_departure is not None:
                parts.append(f"leaves {fmt.local_time(m.ev_departure, self.zone)}")
            needed = state.ev_energy_needed_wh()
            if needed > 0:
                parts.append(f"needs {fmt.energy(needed)}")
            ev = ", ".join(parts)
        return {
            "id": state.id,
            "kind": state.kind.value,
            "availability": availability,
            "status": status,
            "power": fmt.power(m.power_w if m is not None else None),
            "setpoint": fmt.power(setpoint.power_w) if setpoint is not None else fmt.DASH,
            "clamped": ", ".join(reasons),
            "planned": fmt.power(planned.get(state.id)) if planned is not None and state.id in planned else fmt.DASH,
            "soc": fmt.percent(m.soc if m is not None else None),
            "ev": ev,
            "error": state.last_error or "",
        }

    def _plan(self, now: datetime) -> dict[str, Any] | None:
        from agent.dispatch.plan import REVENUE_TERMS

        d = self.app.dispatcher
        if d is None:
            return None
        plan, start = d.plan, d.plan_start
        out: dict[str, Any] = {
            "solves": d.solves,
            "failures_in_a_row": d.failures_in_a_row,
            "last_failure": d.last_failure or "",
            "covers_now": d.requests(now) is not None,
        }
        if plan is None or start is None:
            return out
        steps = plan.power_w.shape[1]
        out.update(
            version=f"{d.solves}-{self._step_index(plan, start, now)}",  # a new plan or step: redraw the chart
            start=fmt.local_time(start, self.zone),
            end=fmt.local_time(start + timedelta(seconds=plan.step_s * steps), self.zone),
            step=fmt.duration(plan.step_s),
            steps=steps,
            assets=len(plan.asset_ids),
            method=d.method,
            solve=f"{plan.solve_s:.2f} s",
            status=plan.status,
            net=money.flow(plan.net_cost, self.currency, plan.step_s * steps / 3600),
            terms=[  # a revenue is a negative cost: money.flow says "earns" for it
                {"term": term, "value": money.flow(-value if term in REVENUE_TERMS else value, self.currency)}
                for term, value in sorted(plan.breakdown.items())
            ],
            violations=[f"{k}: {fmt.kwh(v)} short" for k, v in sorted(plan.violations.items()) if v > 1e-6],
            reserve=self._reserve_now(plan, start, now),
        )
        return out

    def _reserve_now(self, plan: Plan, start: datetime, now: datetime) -> str:
        """The band the plan holds in the step that covers now, and the reserve offers (`as_offer`) priced now: an
        offer is only priced into the plan (no bid is published), so this line is where an operator sees its effect."""
        step = self._step_index(plan, start, now)
        if 0 <= step < plan.reserve_up_w.shape[1]:
            up, down = float(plan.reserve_up_w[:, step].sum()), float(plan.reserve_down_w[:, step].sum())
            held = f"reserve held now: up {fmt.magnitude(up)}, down {fmt.magnitude(down)}"
        else:
            held = "reserve held now: none (the plan does not cover now)"
        from agent.dispatch.build import offered_prices  # dispatch mode only: numpy is loaded already

        now_step = start + timedelta(seconds=plan.step_s * step)
        offers = [f"{o.product} offered at up {money.price(o.up_per_kw_h)}, down {money.price(o.down_per_kw_h)} "
                  f"{self.currency} per kW·h" for o in offered_prices(self.app.ingest.book, now_step, plan.step_s)]
        if not offers:
            return held
        return f"{held}; {'; '.join(offers)} this step (priced into the plan, no bid published)"

    @staticmethod
    def _step_index(plan: Plan, start: datetime, now: datetime) -> int:
        return int((now - start).total_seconds() // plan.step_s)

    def _events(self, now: datetime) -> list[dict[str, Any]]:
        events = list(self.app.events.events.values())
        open_events = sorted((e for e in events if e.state in OPEN_STATES), key=lambda e: e.start)
        finished = [e for e in reversed(events) if e.state not in OPEN_STATES][:RECENT_EVENTS]
        return [self._event(e, now) for e in [*open_events, *finished]]

    def _event(self, event: Event, now: datetime) -> dict[str, Any]:
        manager = self.app.events
        signal = event.signal
        ts = now.timestamp()
        baseline = event.baseline_at(ts, manager.settings.interval_s) if event.state is EventState.ACTIVE else None
        baseline = event.baseline_w if baseline is None else baseline
        row: dict[str, Any] = {
            "id": event.id,
            "kind": "up-DR" if isinstance(signal, UpDrEvent) else f"award {signal.product}",
            "state": event.state.value,
            "window": f"{fmt.local_time(event.start, self.zone)} – {fmt.local_time(event.end, self.zone, False)}",
            "baseline": fmt.power(baseline) + (f" ({event.baseline_method})" if event.baseline_method else ""),
            "chart": None,
            "now": "",
            "result": event.reason or "",
        }
        if isinstance(signal, UpDrEvent):
            row["ask"] = f"{fmt.power(signal.requested_increase_w)} above the baseline"
            row["money"] = f"{money.price(signal.price_per_kwh, self.currency)} earned per kWh above the baseline"
            if event.state is EventState.ACTIVE:
                row["chart"] = f"live-{len(event.samples)}"
            elif event.state is EventState.COMPLETED and event.report and event.report.get("intervals"):
                row["chart"] = "final"
        else:
            assert isinstance(signal, AsAward)
            row["ask"] = f"up {fmt.magnitude(signal.up_w)}, down {fmt.magnitude(signal.down_w)}"
            row["money"] = f"{money.price(signal.capacity_price_per_kw_h)} {self.currency} per kW·h of capacity earned"
            if event.state is EventState.ACTIVE:
                row["now"] = f"activation {manager.activation.get(event.id, 0.0):+.2f}"
        if event.state is EventState.ACTIVE:
            meter = self.app.loop.site_meter_w()
            above = meter - baseline if meter is not None and baseline is not None else None
            row["now"] = ", ".join(x for x in (row["now"], f"site {fmt.power(meter)}",
                                               f"{fmt.power(above)} vs baseline") if x)  # fmt: skip
        report = event.report
        if event.state is EventState.COMPLETED and report:
            row["result"] = _report_line(report)
        return row

    # -- charts ---------------------------------------------------------------------------------------------------
    def plan_svg(self, asset_id: str | None = None) -> str | None:
        """The fleet's plan (summed per kind) or one asset's, with price and SoC; None for an asset not in the plan."""
        import numpy as np  # deferred: only this chart needs it (the control process serves the page without it)

        app = self.app
        d = app.dispatcher
        title = "plan" if asset_id is None else f"plan of {asset_id}"
        if d is None or d.plan is None or d.plan_start is None or d.plan_site is None:
            why = "no optimiser: control.mode is not dispatch" if d is None else "no plan yet"
            return svg.empty_chart(title, why)
        plan, start, now = d.plan, d.plan_start, app.now()
        key = (start, self._step_index(plan, start, now))
        cached = self._plan_cache.get(asset_id or "")
        if cached is not None and cached[0] is plan and cached[1] == key:
            return cached[2]
        index = {a: i for i, a in enumerate(plan.asset_ids)}
        fleet = app.loop.fleet.assets
        if asset_id is None:
            groups: dict[str, list[int]] = {}
            for i, a in enumerate(plan.asset_ids):
                state = fleet.get(a)
                groups.setdefault(KIND_NAMES[state.kind] if state else "other", []).append(i)
        elif asset_id in index:
            groups = {asset_id: [index[asset_id]]}
        else:
            return None
        power, soc = [], []
        for name, rows in groups.items():
            power.append(svg.Series(name, plan.power_w[rows].sum(axis=0).tolist()))
            capacity = np.array([_capacity(fleet.get(plan.asset_ids[i])) for i in rows])
            known = capacity > 0
            if known.any():
                stored = plan.energy_wh[np.asarray(rows)[known]].sum(axis=0)
                soc.append(svg.Series(name, (stored / capacity[known].sum()).tolist()))
        steps = plan.power_w.shape[1]
        when = f"from {fmt.local_time(start, self.zone)}, {fmt.duration(plan.step_s)} steps"
        title = f"{title}: {len(plan.asset_ids)} assets {when}"
        prices = d.plan_site.price_per_kwh[:steps].tolist()  # what the plan was made against
        chart = svg.plan_chart(title, start, plan.step_s, power, prices, soc, self.currency, self.zone, now)
        self._plan_cache[asset_id or ""] = (plan, key, chart)
        if len(self._plan_cache) > 64:  # viewers looking at many assets: keep the fleet's, drop the rest
            self._plan_cache = {k: v for k, v in self._plan_cache.items() if k == ""}
        return chart

    async def event_svg(self, event_id: str) -> str | None:
        """The delivery chart of an event in memory (None: not held); a running event's is computed from its
        samples so far, in a worker thread (up to 50 000 samples: the loop must not wait for it)."""
        event = self.app.events.events.get(event_id)
        if event is None:
            return None
        version: object = (event.state, len(event.samples))
        cached = self._event_cache.get(event_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        report: Any = event.report
        if delivery.is_live(event) and event.baseline_w is not None:
            manager, samples = self.app.events, list(event.samples)
            report = await asyncio.to_thread(
                delivery.live_report, event, samples, manager.settings.interval_s, manager.max_hold_s, self.app.now()
            )
        try:
            chart = delivery.event_chart(event, report, self.zone)
        except delivery.NoDelivery as exc:
            chart = svg.empty_chart(f"{event_id}: baseline vs delivered", str(exc))
        self._event_cache[event_id] = (version, chart)
        if len(self._event_cache) > 4 * RECENT_EVENTS:
            self._event_cache.clear()
        return chart


def _capacity(state: AssetState | None) -> float:
    capacity = state.usable_capacity_wh() if state is not None else None
    return float(capacity) if capacity else 0.0


def _report_line(report: dict[str, object]) -> str:
    """A completed event's M&V result in one line."""
    if "delivered_kwh" in report:
        fraction = report.get("delivered_fraction")
        share = f" ({fmt.percent(float(fraction))})" if isinstance(fraction, int | float) else ""
        delivered, requested = float(report["delivered_kwh"]), float(report["requested_kwh"])  # type: ignore[arg-type]
        return f"delivered {fmt.kwh(delivered)} of {fmt.kwh(requested)}{share}"
    parts = []
    if isinstance(report.get("score"), int | float):
        parts.append(f"score {float(report['score']):.2f}")  # type: ignore[arg-type]
    for key in ("up_kwh", "down_kwh"):
        if isinstance(report.get(key), int | float):
            parts.append(f"{key.removesuffix('_kwh')} {fmt.kwh(float(report[key]))}")  # type: ignore[arg-type]
    if report.get("note"):
        parts.append(str(report["note"]))
    return ", ".join(parts)
