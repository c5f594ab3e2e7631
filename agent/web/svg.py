"""Server-side SVG charts: the plan against price, one asset's schedule and SoC, an event's delivery per interval.

One home per chart: the status page and `vpp-agent events --plot` draw with these functions. They take plain
numbers (W, fractions, the site's local zone) and return a self-contained SVG document, so nothing is vendored and
the browser runs no chart code: a 1000-asset plan is summed to a few lines before it gets here, and every chart is a
few kB whatever the fleet's size. Colours and text use presentation attributes only (no inline CSS), so the page's
Content-Security-Policy can forbid inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from zoneinfo import ZoneInfo

from agent.web import fmt

WIDTH = 960
LEFT, RIGHT = 64, 72  # room for the left (kW) and right (price) axis labels
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22")
PRICE_COLOUR = "#d62728"
NOW_COLOUR = "#ff7f0e"
GRID = "#dddddd"
FONT = 'font-family="sans-serif" font-size="12"'


@dataclass(frozen=True)
class Series:
    """One named line: W per step (power) or fractions per step boundary (SoC)."""

    name: str
    values: Sequence[float]


@dataclass(frozen=True)
class DeliveryRow:
    """One M&V interval of an event: what the site would have drawn (baseline) and what it drew (measured)."""

    start: datetime
    baseline_w: float
    measured_w: float
    delivered_kwh: float
    requested_kwh: float


def _kw_gridlines(ticks_kw: list[float], y: _Axis) -> list[str]:
    """A horizontal grid line and its label in kW at each tick of a W axis (every chart's power axis)."""
    lines = []
    for tick in ticks_kw:
        py = y(tick * 1000)
        lines.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{WIDTH - RIGHT}" y2="{py:.1f}" stroke="{GRID}"/>')
        lines.append(_text(LEFT - 6, py + 4, f"{tick:g}", "end"))
    return lines


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^n steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-6:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 10))
    return ticks


class _Axis:
    """Maps a value range onto a pixel span (y grows downwards)."""

    def __init__(self, lo: float, hi: float, top: float, bottom: float) -> None:
        self.lo, self.hi, self.top, self.bottom = lo, hi, top, bottom

    def __call__(self, value: float) -> float:
        span = self.hi - self.lo or 1.0
        return self.bottom - (value - self.lo) / span * (self.bottom - self.top)


class _HorizontalAxis(_Axis):
    """Maps seconds into the horizon onto x pixels (left to right)."""

    def __call__(self, value: float) -> float:
        span = self.hi - self.lo or 1.0
        return self.top + (value - self.lo) / span * (self.bottom - self.top)


def _text(x: float, y: float, label: str, anchor: str = "start", colour: str = "#333333", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{colour}" {FONT}{extra}>{escape(label)}</text>'


def _frame(height: int, title: str, body: list[str], label: str) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
        f'role="img" aria-label="{escape(label)}" data-chart="{escape(label)}">'
    )
    background = f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>'
    heading = _text(LEFT, 18, title, extra=' font-weight="bold"')
    return "".join([head, f"<title>{escape(title)}</title>", background, heading, *body, "</svg>"])


def _step_path(xs: Sequence[float], ys: Sequence[float]) -> str:
    """A step line: each value holds from its x to the next (a plan step, a price period)."""
    points = [f"M{xs[0]:.1f},{ys[0]:.1f}"]
    for i in range(1, len(xs)):
        points.append(f"H{xs[i]:.1f}")
        if i < len(ys):
            points.append(f"V{ys[i]:.1f}")
    return "".join(points)


def _time_axis(start: datetime, step_s: float, steps: int, zone: ZoneInfo, x: _Axis, y: float) -> list[str]:
    """Local-time labels on whole hours, about every 3 h of a 24-h horizon."""
    hours = steps * step_s / 3600
    every_h = max(1, math.ceil(hours / 8))
    out = []
    first = start.astimezone(zone).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    t = first
    while (t - start).total_seconds() <= steps * step_s:
        if t.hour % every_h == 0:
            px = x((t - start).total_seconds())
            out.append(f'<line x1="{px:.1f}" y1="{y:.1f}" x2="{px:.1f}" y2="{y + 4:.1f}" stroke="#999999"/>')
            out.append(_text(px, y + 16, fmt.clock(t, zone), "middle"))
        t += timedelta(hours=1)
    return out


def plan_chart(
    title: str,
    start: datetime,
    step_s: float,
    power: Sequence[Series],
    price: Sequence[float] | None,
    soc: Sequence[Series],
    currency: str,
    zone: ZoneInfo,
    now: datetime | None = None,
) -> str:
    """The plan over its horizon as EMHASS shows one: power per series (W per step, + charging) with the energy
    price on the right axis, and below it SoC per series (fractions per step boundary); `now` marked."""
    steps = max((len(s.values) for s in power), default=0)
    if steps == 0:
        return empty_chart(title, "no plan yet")
    height, top, bottom, soc_top, soc_bottom = 440, 56, 250, 300, 400
    horizon_s = steps * step_s
    x = _HorizontalAxis(0.0, horizon_s, LEFT, WIDTH - RIGHT)
    values = [v for s in power for v in s.values if math.isfinite(v)] or [0.0]
    kw_ticks = nice_ticks(min(0.0, min(values)) / 1000, max(0.0, max(values)) / 1000)
    y = _Axis(kw_ticks[0] * 1000, kw_ticks[-1] * 1000, top, bottom)
    body: list[str] = []
    body += _kw_gridlines(kw_ticks, y)
    body.append(_text(12, top - 8, "kW (+ charge, − discharge)"))
    xs = [x(k * step_s) for k in range(steps + 1)]
    legend: list[tuple[str, str, str]] = []
    for i, series in enumerate(power):
        colour = PALETTE[i % len(PALETTE)]
        ys = [y(v if math.isfinite(v) else 0.0) for v in series.values]
        body.append(f'<path d="{_step_path(xs, ys)}" fill="none" stroke="{colour}" stroke-width="2" '
                    f'data-series="{escape(series.name)}"/>')  # fmt: skip
        legend.append((series.name, colour, ""))
    if price is not None and len(price):
        finite = [p for p in price if math.isfinite(p)] or [0.0]
        p_ticks = nice_ticks(min(0.0, min(finite)), max(finite))
        py_axis = _Axis(p_ticks[0], p_ticks[-1], top, bottom)
        ys = [py_axis(p if math.isfinite(p) else 0.0) for p in price]
        body.append(f'<path d="{_step_path(xs[: len(ys) + 1], ys)}" fill="none" stroke="{PRICE_COLOUR}" '
                    'stroke-width="1.5" stroke-dasharray="5,3" data-series="price"/>')  # fmt: skip
        for tick in p_ticks:
            body.append(_text(WIDTH - RIGHT + 6, py_axis(tick) + 4, f"{tick:g}", colour=PRICE_COLOUR))
        body.append(_text(WIDTH - 8, top - 8, f"energy price, {currency}/kWh", "end", PRICE_COLOUR))
        legend.append((f"price ({currency}/kWh)", PRICE_COLOUR, ' stroke-dasharray="5,3"'))
    zero = y(0.0)
    body.append(f'<line x1="{LEFT}" y1="{zero:.1f}" x2="{WIDTH - RIGHT}" y2="{zero:.1f}" stroke="#666666"/>')
    # SoC panel
    s_axis = _Axis(0.0, 1.0, soc_top, soc_bottom)
    for tick in (0.0, 0.5, 1.0):
        py = s_axis(tick)
        body.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{WIDTH - RIGHT}" y2="{py:.1f}" stroke="{GRID}"/>')
        body.append(_text(LEFT - 6, py + 4, f"{tick * 100:.0f}", "end"))
    body.append(_text(12, soc_top - 8, "SoC %"))
    for i, series in enumerate(soc):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(
            f"{x(k * step_s):.1f},{s_axis(min(1.0, max(0.0, v))):.1f}"
            for k, v in enumerate(series.values)
            if math.isfinite(v)
        )
        if points:
            body.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2" '
                        f'data-series="SoC {escape(series.name)}"/>')  # fmt: skip
    body += _time_axis(start, step_s, steps, zone, x, soc_bottom)
    if now is not None and 0 <= (now - start).total_seconds() <= horizon_s:
        px = x((now - start).total_seconds())
        body.append(f'<line x1="{px:.1f}" y1="{top:.1f}" x2="{px:.1f}" y2="{soc_bottom:.1f}" stroke="{NOW_COLOUR}" '
                    'stroke-width="1.5"/>')  # fmt: skip
        body.append(_text(px + 3, top + 10, "now", colour=NOW_COLOUR))
    body += _legend(legend, LEFT, 36)
    return _frame(height, title, body, "plan")


def _legend(items: Sequence[tuple[str, str, str]], x0: float, y: float) -> list[str]:
    out, x = [], x0
    for name, colour, dash in items:
        out.append(f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 18:.1f}" y2="{y - 4:.1f}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/>')  # fmt: skip
        out.append(_text(x + 22, y, name))
        x += 30 + 7 * len(name)
    return out


def delivery_chart(title: str, rows: Sequence[DeliveryRow], requested_w: float, zone: ZoneInfo) -> str:
    """Per M&V interval: the baseline and the measured site demand (kW), the target (baseline + requested increase)
    as a tick over them, and the energy delivered against the energy asked for under each pair of bars."""
    if not rows:
        return empty_chart(title, "no M&V interval yet")
    height, top, bottom = 340, 56, 260
    values = [v for r in rows for v in (r.baseline_w, r.measured_w, r.baseline_w + requested_w)]
    ticks = nice_ticks(min(0.0, min(values)) / 1000, max(values) / 1000)
    y = _Axis(ticks[0] * 1000, ticks[-1] * 1000, top, bottom)
    body: list[str] = []
    body += _kw_gridlines(ticks, y)
    body.append(_text(12, top - 8, "kW at the site meter"))
    slot = (WIDTH - RIGHT - LEFT) / len(rows)
    bar = min(40.0, slot * 0.35)
    zero = y(0.0)
    for i, row in enumerate(rows):
        cx = LEFT + slot * (i + 0.5)
        for offset, value, colour, name in ((-bar, row.baseline_w, "#aaaaaa", "baseline"),
                                            (0.0, row.measured_w, PALETTE[0], "measured")):  # fmt: skip
            y0, y1 = sorted((zero, y(value)))
            body.append(
                f'<rect x="{cx + offset:.1f}" y="{y0:.1f}" width="{bar:.1f}" height="{max(0.5, y1 - y0):.1f}" '
                f'fill="{colour}" data-{name}-w="{value:.0f}"><title>{escape(name)} {fmt.power(value)}</title></rect>'
            )
        target = y(row.baseline_w + requested_w)
        body.append(f'<line x1="{cx - bar - 3:.1f}" y1="{target:.1f}" x2="{cx + bar + 3:.1f}" y2="{target:.1f}" '
                    f'stroke="{NOW_COLOUR}" stroke-width="2"/>')  # fmt: skip
        body.append(_text(cx, bottom + 16, fmt.clock(row.start, zone), "middle"))
        body.append(_text(cx, bottom + 32, f"{row.delivered_kwh:.2f}", "middle", PALETTE[0],
                          f' data-delivered-kwh="{row.delivered_kwh:.4f}"'))  # fmt: skip
        body.append(_text(cx, bottom + 46, f"of {row.requested_kwh:.2f}", "middle"))
    body.append(_text(LEFT - 6, bottom + 32, "kWh", "end", PALETTE[0]))
    delivered = sum(r.delivered_kwh for r in rows)
    requested = sum(r.requested_kwh for r in rows)
    body.append(_text(LEFT, height - 8, f"delivered {fmt.kwh(delivered)} of {fmt.kwh(requested)} requested "
                                        "above the baseline"))  # fmt: skip
    body += _legend([("baseline", "#aaaaaa", ""), ("measured", PALETTE[0], ""),
                     ("target (baseline + increase)", NOW_COLOUR, "")], LEFT, 36)  # fmt: skip
    return _frame(height, title, body, "delivery")


def empty_chart(title: str, message: str) -> str:
    """A chart's frame saying why there is nothing to draw (no plan yet, no interval yet)."""
    return _frame(80, title, [_text(LEFT, 50, message, colour="#777777")], "empty")
