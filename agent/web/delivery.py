"""An up-DR event's baseline vs delivered per M&V interval, for its chart: live while it runs, from its report after.

Both come from the one M&V rule (agent.events.mv.report.updr_report): a completed event's report already holds its
intervals; a running event's are computed from the meter samples taken so far, up to now, by the same function, so
the page never shows a second reckoning of delivery that could disagree with the settlement report. Ancillary-service
awards are scored on their response to the activation signal, not per interval: they have no delivery chart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from agent.events.lifecycle import Event, EventState
from agent.signals.models import UpDrEvent
from agent.web import svg

if TYPE_CHECKING:
    from agent.events.mv.report import Report


class NoDelivery(ValueError):
    """The event has nothing to draw per interval; str() says why in one line."""


def rows_of(report: Mapping[str, object]) -> list[svg.DeliveryRow]:
    """The intervals of an up-DR M&V report as chart rows."""
    rows = []
    for item in report.get("intervals") or []:  # type: ignore[union-attr]
        rows.append(
            svg.DeliveryRow(
                start=datetime.fromisoformat(str(item["start"])),
                baseline_w=float(item["baseline_w"]),
                measured_w=float(item["mean_site_w"]),
                delivered_kwh=float(item["delivered_kwh"]),
                requested_kwh=float(item["requested_kwh"]),
            )
        )
    return rows


def live_report(event: Event, samples: Sequence[tuple[float, float]], interval_s: float, max_hold_s: float,
                now: datetime) -> Report:  # fmt: skip
    """The report an active up-DR event would get if it ended now (`samples`: a copy of its meter samples; this
    runs in a worker thread while the loop appends to the event's own list)."""
    from agent.events.mv.report import updr_report  # deferred: it imports numpy (the page serves without it)

    signal = event.signal
    assert isinstance(signal, UpDrEvent)
    end_ts = min(now.timestamp(), signal.end.timestamp())
    return updr_report(
        samples,
        lambda ts: event.baseline_at(ts, interval_s) or 0.0,
        signal.requested_increase_w,
        interval_s,
        max_hold_s,
        signal.start.timestamp(),
        end_ts,
    )


def chart(event_id: str, kind: str, state: str, signal: Mapping[str, object], report: Mapping[str, object] | None,
          zone: ZoneInfo) -> str:  # fmt: skip
    """The delivery chart of an up-DR event from its (stored or live) report; NoDelivery says why there is none."""
    if kind != "up_dr":
        raise NoDelivery(
            f"event {event_id!r} is an ancillary-service award: its M&V report scores the response to activations "
            "and has no intervals to plot"
        )
    if report is None:
        raise NoDelivery(f"event {event_id!r} is {state}: it has no M&V report yet")
    rows = rows_of(report)
    if not rows:
        note = report.get("note") or "no meter interval was covered"
        raise NoDelivery(f"event {event_id!r} has no delivery per interval ({note})")
    requested = signal.get("requested_increase_w")
    title = f"{event_id}: baseline vs delivered per M&V interval ({state})"
    return svg.delivery_chart(title, rows, float(requested) if isinstance(requested, int | float) else 0.0, zone)


def event_chart(event: Event, report: Mapping[str, object] | None, zone: ZoneInfo) -> str:
    """The chart of an event the agent holds in memory (its report, or a live one while active)."""
    return chart(event.id, event.kind, event.state.value, event.signal.model_dump(), report, zone)


def is_live(event: Event) -> bool:
    """Whether the event's delivery changes as the site runs (an active up-DR event)."""
    return event.kind == "up_dr" and event.state is EventState.ACTIVE


def plot_to_file(
    rows: Sequence[tuple[str, str, str, Mapping[str, object]]], event_id: str, out: str | None, zone: ZoneInfo,
    source: str,
) -> str:  # fmt: skip
    """`vpp-agent events --plot`: the delivery chart of `event_id` among the Store's `rows` (id, kind, state,
    data) written to `out` (default: `<id>.svg` here); returns the path. NoDelivery, in one line naming `source`
    (the state file), when the event is not there or has nothing to plot."""
    found = next((row for row in rows if row[0] == event_id), None)
    if found is None:
        raise NoDelivery(f"no event {event_id!r} in {source}")
    _, kind, state, data = found
    signal = data.get("signal")
    report = data.get("report")
    chart_svg = chart(
        event_id,
        kind,
        state,
        signal if isinstance(signal, Mapping) else {},
        report if isinstance(report, Mapping) else None,
        zone,
    )
    path = out or f"{event_id}.svg"
    with open(path, "w", encoding="utf-8") as file:
        file.write(chart_svg)
    return path
