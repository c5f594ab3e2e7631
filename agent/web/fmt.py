"""How the status page and its charts show a figure to a person: units and the site's local time.

Values arrive in SI (W, Wh, s, SoC 0..1) and UTC; a person reads kW, kWh, percent and the site's local time
(`[events] timezone`, DESIGN.md §4). Money is not formatted here: agent/money.py is the one rule for every screen
(its currency and which way it flows).
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

DASH = "–"  # shown where there is no value (an asset that never answered, a meter that reports no SoC)


def power(watts: float | None) -> str:
    """kW with one decimal (+ into the device or imported at a meter, − out of it)."""
    if watts is None or not math.isfinite(watts):
        return DASH
    return f"{watts / 1000:+.1f} kW" if abs(watts) >= 50 else "0.0 kW"  # no "+0.0" / "-0.0" for what rounds to 0


def magnitude(watts: float | None) -> str:
    """A power that has no direction (a limit, a capacity): kW without a sign."""
    if watts is None or not math.isfinite(watts):
        return DASH
    return f"{abs(watts) / 1000:.1f} kW"


def limit(watts: float) -> str:
    """A site limit: kW, or "no limit" where the config sets none (infinite)."""
    return "no limit" if math.isinf(watts) else magnitude(watts)


def energy(wh: float | None) -> str:
    if wh is None or not math.isfinite(wh):
        return DASH
    return f"{wh / 1000:.1f} kWh"


def kwh(value: float | None) -> str:
    """An energy already in kWh (M&V reports keep kWh)."""
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:.2f} kWh"


def percent(fraction: float | None) -> str:
    if fraction is None or not math.isfinite(fraction):
        return DASH
    return f"{fraction * 100:.0f} %"


def duration(seconds: float | None) -> str:
    """A span a person reads at a glance: 45 s, 12 min, 3.5 h; "unlimited" for inf (nothing to run out)."""
    if seconds is None or math.isnan(seconds):
        return DASH
    if math.isinf(seconds):
        return "unlimited"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def local_time(at: datetime | None, zone: ZoneInfo, with_date: bool = True) -> str:
    """The site's wall clock with its zone name, e.g. "2026-12-03 14:05:09 JST"."""
    if at is None:
        return DASH
    local = at.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if with_date else "%H:%M:%S %Z")


def clock(at: datetime, zone: ZoneInfo) -> str:
    """Hours and minutes of the site's wall clock (chart axes)."""
    return at.astimezone(zone).strftime("%H:%M")
