"""PV generation as a clear-sky half-sine between 06:00 and 18:00 local time.

Deliberately simple: the point is a daily export window the agent must handle (up-DR, export limits), not solar
forecasting. Energy over a step is the exact integral of the half-sine, so PV never breaks energy bookkeeping.
"""

from __future__ import annotations

import math

SUNRISE_H = 6.0
SUNSET_H = 18.0
_DAY_S = 86_400.0
_RISE_S = SUNRISE_H * 3600.0
_SET_S = SUNSET_H * 3600.0
_SPAN_S = _SET_S - _RISE_S


class PVProfile:
    """PV power at sim time t, where t = 0 is `start_unix_s` and local time is UTC + `utc_offset_h`."""

    def __init__(self, peak_w: float, start_unix_s: float, utc_offset_h: float) -> None:
        if peak_w < 0:
            raise ValueError(f"PV peak {peak_w!r} W must be >= 0")
        self.peak_w = float(peak_w)
        self._origin_local_s = start_unix_s + utc_offset_h * 3600.0
        # Count days from the origin's day, not from 1970, to keep float precision in the difference of two sums.
        self._origin_day = math.floor(self._origin_local_s / _DAY_S)

    def _seconds_of_day(self, t_s: float) -> float:
        return (self._origin_local_s + t_s) % _DAY_S

    def power_w(self, t_s: float) -> float:
        sod = self._seconds_of_day(t_s)
        if self.peak_w == 0 or not _RISE_S <= sod <= _SET_S:
            return 0.0
        return self.peak_w * math.sin(math.pi * (sod - _RISE_S) / _SPAN_S)

    def _cumulative_wh(self, t_s: float) -> float:
        """Energy since the local midnight before the origin, as a function continuous in t (antiderivative)."""
        absolute = self._origin_local_s + t_s
        day_index = math.floor(absolute / _DAY_S)
        sod = absolute - day_index * _DAY_S
        per_day_wh = self.peak_w * 2.0 * _SPAN_S / math.pi / 3600.0
        within = min(max(sod - _RISE_S, 0.0), _SPAN_S)
        today_wh = self.peak_w * _SPAN_S / math.pi * (1.0 - math.cos(math.pi * within / _SPAN_S)) / 3600.0
        return (day_index - self._origin_day) * per_day_wh + today_wh

    def energy_wh(self, t0_s: float, t1_s: float) -> float:
        """Exact PV energy generated between two sim times."""
        if self.peak_w == 0 or t1_s <= t0_s:
            return 0.0
        return self._cumulative_wh(t1_s) - self._cumulative_wh(t0_s)
