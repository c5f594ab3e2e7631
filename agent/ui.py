"""Terminal view of the running agent: one rich table of assets and a line of VPP totals."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.control.loop import ControlLoop
from agent.fleet import AssetState
from agent.model import AssetKind, DeviceStatus

if TYPE_CHECKING:
    from agent.dispatch.runner import Dispatcher


def _kw(watts: float | None) -> str:
    return "—" if watts is None else f"{watts / 1000:+.2f}"


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.1f}%"


def _hours(seconds: float) -> str:
    return "∞" if seconds == float("inf") else f"{seconds / 3600:.1f} h"


def _row(state: AssetState, loop: ControlLoop) -> list[str | Text]:
    m = state.measurement
    if not state.available:
        status = Text("UNAVAILABLE", style="bold red")
    elif m is None:
        status = Text("…")
    elif state.kind is AssetKind.METER:
        status = Text("fault", style="red") if m.status is DeviceStatus.FAULT else Text("ok")
    else:
        status = Text(m.status.name.lower(), style="red" if m.status is DeviceStatus.FAULT else "")
    setpoint = loop.last_setpoints.get(state.id)
    note = state.last_error if not state.available else ", ".join(state.clamp_reasons)
    ev = ""
    if m is not None and state.kind is AssetKind.EV_CHARGER and m.ev_departure is not None:
        ev = f"→{_pct(m.ev_target_soc)} by {m.ev_departure:%H:%M}Z"
    return [
        state.id,
        state.kind.value,
        status,
        _kw(m.power_w if m else None),
        _kw(setpoint.power_w if setpoint else None),
        _pct(m.soc if m else None),
        ev,
        Text(note or "", style="yellow"),
    ]


def _steering(loop: ControlLoop, dispatcher: Dispatcher | None) -> str:
    """What the setpoints follow: the plan (with its cost over the horizon) or the rule's site target.

    Shown because in dispatch mode the site meter is meant to move with prices, not to sit at the target; a viewer
    who sees only "target 0 kW" next to a 40 kW export would think the agent broken.
    """
    rule = f"target {_kw(loop.site_target_w)} kW"
    if loop.mode != "dispatch" or dispatcher is None:
        return rule
    plan = dispatcher.plan
    if plan is None or dispatcher.requests(loop.clock()) is None:
        return f"no plan yet, rule: {rule}"
    hours = plan.step_s * plan.power_w.shape[1] / 3600
    return f"plan: net cost {plan.net_cost:+,.0f} over {hours:g} h"


def render(loop: ControlLoop, dispatcher: Dispatcher | None = None) -> Group:
    table = Table(title="vpp-agent — assets")
    for column in ("asset", "kind", "status", "power kW", "setpoint kW", "SoC", "EV target", "note"):
        table.add_column(column, justify="right" if "kW" in column or column == "SoC" else "left")
    for state in loop.fleet.assets.values():
        table.add_row(*_row(state, loop))
    env = loop.fleet.envelope()
    meter = loop.site_meter_w()
    cycle_ms = [t.total_s * 1000 for t in loop.timings]
    p50 = statistics.median(cycle_ms) if cycle_ms else 0.0
    totals = Text.assemble(
        ("VPP ", "bold"),
        f"site meter {_kw(meter)} kW ({_steering(loop, dispatcher)}) · assets {_kw(env.power_w)} kW · ",
        f"absorb {env.absorb_w / 1000:.1f} kW for {_hours(env.absorb_for_s)} · ",
        f"deliver {env.deliver_w / 1000:.1f} kW for {_hours(env.deliver_for_s)} · ",
        f"stored {env.stored_wh / 1000:.1f} kWh · EV need {env.ev_energy_needed_wh / 1000:.1f} kWh · ",
        f"available {env.assets_available}/{env.assets_total} · cycle p50 {p50:.1f} ms",
    )
    return Group(table, totals)
