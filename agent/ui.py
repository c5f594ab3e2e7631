"""The demo's screen: what the site is doing, why, and what it earns, in 80 columns and 24 lines.

Layout, top to bottom: the simulated site clock (local time of `[events] timezone`) and speed; the plan's money
figure (agent.money: currency and direction named) or what steers until there is a plan; the grid event; one row
per asset with the reason the plan gives it (agent.reasons); two lines of VPP totals; where the status page and
the log are. `summary` is the one line per period printed when stdout is not a terminal.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent import money
from agent.fleet import AssetState
from agent.model import AssetKind, DeviceStatus
from agent.reasons import EvNeed, PlanContext, reason

if TYPE_CHECKING:
    from agent.app import AgentApp
    from agent.demo import OpeningEvent, WarningTap

STATUS_WORDS = {
    DeviceStatus.STANDBY: "standby",
    DeviceStatus.CHARGING: "charging",
    DeviceStatus.DISCHARGING: "discharging",
    DeviceStatus.FAULT: "fault",
    DeviceStatus.NO_EV: "no car",
}


@dataclass
class Screen:
    """What the demo shows beyond the agent's own state: the site clock, the plan's context, the opening event,
    where the log and the status page are."""

    app: AgentApp
    now: Callable[[], datetime]  # the simulated site's clock (UTC)
    speed: float
    log_file: Path | None = None
    url: str | None = None
    plan: PlanContext | None = None
    event: OpeningEvent | None = None
    warnings: WarningTap | None = None
    zone: ZoneInfo = field(init=False)
    currency: str = field(init=False)

    def __post_init__(self) -> None:
        self.zone = ZoneInfo(self.app.config.events.timezone)
        self.currency = self.app.config.site.currency


def _kw(watts: float | None) -> str:
    """kW with a sign (+ into the device, or import at a meter); never "-0.0"."""
    if watts is None:
        return "—"
    kw = watts / 1000
    return f"{0.0 if abs(kw) < 0.05 else kw:+.1f}"


def _hours(seconds: float) -> str:
    return "∞" if seconds == float("inf") else f"{seconds / 3600:.1f} h"


def _span(seconds: float) -> str:
    """Site time until something: 0:45 (m:ss) or 2:05 h."""
    seconds = max(0, round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d} h"


def _waiting(state: AssetState, unavailable_after: int) -> bool:
    """Not polled successfully yet and not yet given up on: the first frame, before the first answers."""
    return not state.available and state.polls_ok == 0 and state.consecutive_failures < unavailable_after


def _status(state: AssetState, unavailable_after: int) -> Text:
    if _waiting(state, unavailable_after):
        return Text("waiting", style="dim")
    if not state.available:
        return Text("frozen" if state.frozen else "unavailable", style="bold red")
    m = state.measurement
    if m is None:
        return Text("…")
    if state.kind is AssetKind.METER:
        return Text("fault", style="red") if m.status is DeviceStatus.FAULT else Text("ok")
    fault = m.status is DeviceStatus.FAULT
    return Text(STATUS_WORDS.get(m.status, m.status.name.lower()), style="red" if fault else "")


def _rule_text(screen: Screen) -> str:
    return f"site meter to {_kw(screen.app.loop.site_target_w)} kW"


def _why(screen: Screen, state: AssetState, now: datetime, event_target_w: float | None) -> Text:
    """The reason shown for one asset: its fault, the cut the safety envelope made, what steers it and why."""
    loop = screen.app.loop
    if _waiting(state, loop.fleet.unavailable_after):
        return Text("")
    if not state.available:
        return Text(state.last_error or "", style="red")
    m = state.measurement
    if state.kind is AssetKind.METER:
        return Text("grid connection, + = import" if state.id == screen.app.config.site.meter else "")
    if m is not None and m.status is DeviceStatus.NO_EV:
        return Text("")
    if loop.mode == "idle":
        why: str | None = "control.mode = idle"
    elif event_target_w is not None:
        why = f"grid event: site to {_kw(event_target_w)} kW"
    else:
        why = None
        if loop.mode == "dispatch" and screen.plan is not None:
            ev = None
            if m is not None and m.ev_departure is not None and m.ev_target_soc is not None:
                ev = EvNeed(m.ev_target_soc, m.ev_departure)
            why = reason(screen.plan, state.id, now, screen.zone, ev)
    text = Text(why or f"rule: {_rule_text(screen)}")
    if state.clamp_reasons:  # after the reason: a ramp cut lasts a cycle or two, the reason is what to read
        text.append(f" · cut: {', '.join(state.clamp_reasons)}", style="yellow")
    return text


def _table(screen: Screen, now: datetime, fill: bool) -> Table:
    loop = screen.app.loop
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, expand=fill)
    table.add_column("asset", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("kW", justify="right", no_wrap=True)
    table.add_column("set kW", justify="right", no_wrap=True)
    table.add_column("SoC", justify="right", no_wrap=True)
    table.add_column(_why_header(screen, now), no_wrap=True, overflow="ellipsis", ratio=1)
    event_target = _event_target(screen, now)
    for state in loop.fleet.assets.values():
        m = state.measurement if state.available else None
        setpoint = loop.last_setpoints.get(state.id)
        table.add_row(
            state.id,
            _status(state, loop.fleet.unavailable_after),
            _kw(m.power_w if m else None),
            _kw(setpoint.power_w if setpoint else None) if state.controllable else "",
            "" if m is None or m.soc is None else f"{m.soc * 100:.0f}%",
            _why(screen, state, now, event_target),
        )
    return table


def _price_now(screen: Screen, now: datetime) -> float | None:
    """The price the plan has for this step, None without a plan covering now."""
    context = screen.plan
    k = None if context is None else context.step(now)
    return None if context is None or k is None else float(context.prices[k])


def _why_header(screen: Screen, now: datetime) -> str:
    """The reasons quote prices bare: the header names their unit, and the price now."""
    price_now = _price_now(screen, now)
    return f"why (prices {screen.currency}/kWh{'' if price_now is None else f', now {money.price(price_now)}'})"


def _event_target(screen: Screen, now: datetime) -> float | None:
    """The site meter target an active grid event imposes (it then owns the site), else None."""
    app = screen.app
    if app.loop.mode == "idle":
        return None
    return app.events.site_target_w(now, app.loop.site_target_w)


def _plan_line(screen: Screen, now: datetime) -> Text:
    app, loop = screen.app, screen.app.loop
    if loop.cycles == 0:
        return Text(f"waiting for the first poll of {len(loop.fleet.assets)} assets…", style="yellow")
    if loop.mode == "idle":
        return Text("control.mode = idle: every asset held at 0 kW")
    if loop.mode == "site_target" or app.dispatcher is None:
        return Text(f"rule: {_rule_text(screen)} (control.mode = {loop.mode})")
    context = screen.plan
    k = None if context is None else context.step(now)
    if context is None or k is None:
        failed = app.dispatcher.last_failure
        head = f"plan failed ({failed[:30]})" if failed else "planning…"
        return Text(f"{head} meanwhile the rule steers the {_rule_text(screen)}", style="yellow")
    cur, terms = screen.currency, context.plan.breakdown
    wear = sum(value for name, value in terms.items() if name.startswith("wear"))
    services = terms.get("updr_revenue", 0.0) + terms.get("reserve_revenue", 0.0)
    parts = [f"energy: {money.flow(terms.get('energy', 0.0), cur)}", f"wear: {money.flow(wear, cur)}"]
    if services:
        parts.append(f"grid services: {money.flow(-services, cur)}")
    return Text.assemble(
        (f"plan for the next {context.hours:g} h: ", "bold"), f"the site {money.flow(context.plan.net_cost, cur)} net",
        "\n", " · ".join(parts),
    )  # fmt: skip


def _event_line(screen: Screen, now: datetime) -> Text | None:
    opening = screen.event
    if opening is None:
        return None
    cur = screen.currency
    if opening.refused is not None:
        return Text(f"opening up-DR event refused: {opening.refused}", style="yellow")
    zone = screen.zone
    head = (
        f"up-DR {opening.start.astimezone(zone):%H:%M}–{opening.end.astimezone(zone):%H:%M}: "
        f"+{opening.increase_w / 1000:.0f} kW, paid {money.price(opening.price_per_kwh, cur)} · "
    )
    event = screen.app.events.get(opening.id)
    state = "scheduled" if event is None else event.state.value
    if state in ("received", "accepted", "scheduled"):
        wait_s = (opening.start - now).total_seconds()
        return Text(head + (f"starts in {_span(wait_s)}" if wait_s > 0 else "starting"))
    if state == "active":
        meter = screen.app.loop.site_meter_w()
        base = None if event is None else event.baseline_w
        if meter is None or base is None:
            return Text(head + "active")
        return Text(head + f"site {_kw(meter - base)} kW vs baseline", style="bold")
    if state == "completed" and event is not None and isinstance(event.report, dict):
        delivered = float(event.report.get("delivered_kwh", 0.0))
        requested = float(event.report.get("requested_kwh", 0.0))
        earned = money.flow(-delivered * opening.price_per_kwh, cur)
        return Text(head + f"done: {delivered:.1f} of {requested:.1f} kWh, {earned}")
    reason = "" if event is None or not event.reason else f": {event.reason}"
    return Text(head + state + reason, style="yellow" if state == "failed" else "")


def _totals(screen: Screen) -> list[Text]:
    loop = screen.app.loop
    env = loop.fleet.envelope()
    meter = loop.site_meter_w()
    flow = "" if meter is None or abs(meter) < 50 else (" import" if meter > 0 else " export")
    return [
        Text.assemble(
            ("site ", "bold"), f"{_kw(meter)} kW{flow} · assets {_kw(env.power_w)} kW · ",
            f"stored {env.stored_wh / 1000:.0f} kWh · EVs need {env.ev_energy_needed_wh / 1000:.0f} kWh",
        ),
        Text(
            f"can absorb {env.absorb_w / 1000:.0f} kW for {_hours(env.absorb_for_s)} · "
            f"deliver {env.deliver_w / 1000:.0f} kW for {_hours(env.deliver_for_s)} · "
            f"available {env.assets_available}/{env.assets_total}"
        ),
    ]  # fmt: skip


def _shown_path(path: Path) -> str:
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path.resolve())


def _footer(screen: Screen, live: bool) -> list[Text]:
    parts = []
    if screen.url:
        parts.append(f"status page {screen.url}")
    if screen.log_file is not None:
        parts.append(f"log {_shown_path(screen.log_file)}")
    if live:
        parts.append("Ctrl-C stops")
    lines = [Text(" · ".join(parts), style="dim")] if parts else []
    tap = screen.warnings
    if tap is not None and tap.count:
        lines.append(Text(f"{tap.count} warning(s) in the log, last: {tap.last}", style="yellow"))
    return lines


def _clock(screen: Screen, now: datetime) -> str:
    return f"{now.astimezone(screen.zone):%a %d %b %H:%M:%S %Z}"


def render(screen: Screen, live: bool = True) -> Group:
    """The whole screen (fits 80×24 for up to ten assets). `live`: redrawn on a terminal (the table fills its
    width, the footer says how to stop); otherwise printed once, at the end of a run."""
    now = screen.now()
    header = Text.assemble(
        ("vpp-agent demo", "bold"), f" · simulated site time {_clock(screen, now)} · speed ×{screen.speed:g}"
    )
    parts: list[Text | Table] = [header, _plan_line(screen, now)]
    event = _event_line(screen, now)
    if event is not None:
        parts.append(event)
    parts += [_table(screen, now, live), *_totals(screen), *_footer(screen, live)]
    for part in parts:
        if isinstance(part, Text):
            part.no_wrap, part.overflow = True, "ellipsis"
    return Group(*parts)


def summary(screen: Screen) -> Text:
    """One line per period for logs and pipes: clock, site meter, plan figure, event state, availability."""
    now = screen.now()
    loop = screen.app.loop
    env = loop.fleet.envelope()
    cycle_ms = [t.total_s * 1000 for t in loop.timings]
    p50 = statistics.median(cycle_ms) if cycle_ms else 0.0
    event = _event_line(screen, now)
    price_now = _price_now(screen, now)
    parts = [
        f"{now.astimezone(screen.zone):%H:%M:%S %Z} ×{screen.speed:g}",
        f"site {_kw(loop.site_meter_w())} kW",
        _plan_line(screen, now).plain.replace("\n", " · "),
        *([] if price_now is None else [f"price now {money.price(price_now, screen.currency)}"]),
        *([event.plain] if event is not None else []),
        f"available {env.assets_available}/{env.assets_total}",
        f"cycle p50 {p50:.1f} ms",
    ]
    return Text(" · ".join(parts))
