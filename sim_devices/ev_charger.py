"""Bidirectional DC charger (V2G) with EV sessions.

The store is whichever EV is plugged in. Its BMS sets the live limits: charging tapers linearly from rated at
SoC 0.8 to 0 at 1.0 (constant-voltage phase); discharging is 0 at or below the owner's minimum SoC and reaches
rated 0.05 above it, so the device itself never breaks the owner's floor whatever the agent asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sim_devices.controllable import ControllableDevice
from sim_devices.ev_sessions import EVSession

CHARGE_TAPER_START_SOC = 0.8
DISCHARGE_TAPER_WIDTH = 0.05


class EVCharger(ControllableDevice):
    """V2G charger physics. `sessions` must be in time order; `start_unix_s` dates the sim-time origin."""

    kind = "ev_charger"

    def __init__(
        self,
        sessions: Iterable[EVSession],
        *,
        rated_charge_w: float = 11_000.0,
        rated_discharge_w: float = 11_000.0,
        ramp_w_per_s: float = 5_000.0,
        efficiency: float = 0.95,
        lease_timeout_s: float = 30.0,
        start_unix_s: float = 0.0,
    ) -> None:
        super().__init__(
            rated_charge_w=rated_charge_w,
            rated_discharge_w=rated_discharge_w,
            ramp_w_per_s=ramp_w_per_s,
            efficiency=efficiency,
            lease_timeout_s=lease_timeout_s,
        )
        self.start_unix_s = start_unix_s
        self._upcoming: Iterator[EVSession] = iter(sessions)
        self._next: EVSession | None = next(self._upcoming, None)
        self.session: EVSession | None = None
        self.soc = 0.0
        self.sessions_completed = 0
        self.on_time()

    # ---- sessions --------------------------------------------------------------------------------------
    def on_time(self) -> None:
        """Unplug a departed EV and plug in the next one whose arrival is due."""
        if self.session is not None and self.t_s >= self.session.departure_s:
            self.session = None
            self.power_w = 0.0  # the plug is pulled: power stops at once
            self.sessions_completed += 1
        while self.session is None and self._next is not None and self._next.arrival_s <= self.t_s:
            candidate, self._next = self._next, next(self._upcoming, None)
            if self._next is not None and self._next.arrival_s < candidate.departure_s:
                raise ValueError(f"EV sessions overlap: {candidate} and {self._next}")
            if candidate.departure_s > self.t_s:
                self.session = candidate
                self.soc = candidate.soc
            else:
                self.sessions_completed += 1  # whole session fell inside one step; it never saw power

    def next_event_s(self) -> float | None:
        if self.session is not None:
            return self.session.departure_s
        return self._next.arrival_s if self._next is not None else None

    def available(self) -> bool:
        return self.session is not None

    # ---- store -----------------------------------------------------------------------------------------
    def store_limits(self) -> tuple[float, float]:
        assert self.session is not None
        soc = self.soc
        if soc >= 1.0:
            max_ch = 0.0
        elif soc <= CHARGE_TAPER_START_SOC:
            max_ch = self.rated_charge_w
        else:
            max_ch = self.rated_charge_w * (1.0 - soc) / (1.0 - CHARGE_TAPER_START_SOC)
        floor = self.session.min_soc
        if soc <= floor:
            max_dis = 0.0
        elif soc >= floor + DISCHARGE_TAPER_WIDTH:
            max_dis = self.rated_discharge_w
        else:
            max_dis = self.rated_discharge_w * (soc - floor) / DISCHARGE_TAPER_WIDTH
        return max_ch, max_dis

    def apply_store_energy(self, store_wh: float, dt_s: float) -> None:
        if self.session is None:
            return
        self.soc = min(max(self.soc + store_wh / self.session.capacity_wh, 0.0), 1.0)

    # ---- measurement -----------------------------------------------------------------------------------
    def extra_fields(self) -> dict[str, float]:
        s = self.session
        if s is None:
            return {
                "ev_connected": 0,
                "soc": 0.0,
                "capacity_wh": 0.0,
                "ev_target_soc": 0.0,
                "ev_min_soc": 0.0,
                "ev_departure": 0,
            }
        return {
            "ev_connected": 1,
            "soc": self.soc,
            "capacity_wh": s.capacity_wh,
            "ev_target_soc": s.target_soc,
            "ev_min_soc": s.min_soc,
            "ev_departure": self.start_unix_s + s.departure_s,
        }
