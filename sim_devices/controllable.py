"""Common physics of a controllable DC converter with an energy store behind it (V2G charger, battery).

Both kinds share the same control behaviour the agent relies on: a setpoint lease, clamping to live limits,
a ramp, conversion losses and fault trips. Only the energy store (EV sessions vs. a stationary pack with ageing)
differs, so subclasses supply limits and the store while this class owns the time stepping.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from sim_devices.lease import SetpointLease
from sim_devices.ramp import ramp

# Longest physics sub-step. Limits and SoC are held constant within a sub-step, so this bounds how far a long
# step can overshoot a derating knee (11 kW for 2 s is 6 Wh: far below any register's resolution).
MAX_SUBSTEP_S = 2.0
# Power within this band of zero reports as standby rather than charging/discharging.
STATUS_DEADBAND_W = 1.0

WRITE_LOG_LENGTH = 1000  # setpoint writes kept per device for a test or a fault run to inspect
LIMIT_SLACK_W = 1e-6  # float noise of the map's scaling, not a violation

STATUS_STANDBY = 0
STATUS_CHARGING = 1
STATUS_DISCHARGING = 2
STATUS_FAULT = 3
STATUS_NO_EV = 4


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One setpoint write as the device saw it, with the limits in force at that moment."""

    t_s: float
    setpoint_w: float
    max_charge_w: float  # live limits (0 when tripped or no EV)
    max_discharge_w: float

    @property
    def outside_live_limits(self) -> bool:
        return not -self.max_discharge_w - LIMIT_SLACK_W <= self.setpoint_w <= self.max_charge_w + LIMIT_SLACK_W


class ControllableDevice(ABC):
    """Time stepping, lease, ramp, efficiency and faults; subclasses provide the store and its limits."""

    kind: str = ""

    def __init__(
        self,
        *,
        rated_charge_w: float,
        rated_discharge_w: float,
        ramp_w_per_s: float,
        efficiency: float,
        lease_timeout_s: float,
    ) -> None:
        if not 0 < efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {efficiency!r}")
        self.rated_charge_w = float(rated_charge_w)
        self.rated_discharge_w = float(rated_discharge_w)
        self.ramp_w_per_s = float(ramp_w_per_s)
        self.efficiency = float(efficiency)
        self.lease = SetpointLease(timeout_s=float(lease_timeout_s))
        self.t_s = 0.0
        self.power_w = 0.0
        self.fault_code = 0
        # Cumulative terminal energy, both >= 0: import from the grid and export to it.
        self.import_wh = 0.0
        self.export_wh = 0.0
        # every setpoint write, judged on the device's side: what a fault run checks the agent against
        self.write_log: deque[WriteRecord] = deque(maxlen=WRITE_LOG_LENGTH)
        self.writes_total = 0
        self.writes_outside_nameplate = 0  # must stay 0 whatever happens to the agent
        self.writes_outside_live = 0  # may happen when a limit moves between the agent's poll and its write

    # ---- the store, supplied by subclasses -------------------------------------------------------------
    @abstractmethod
    def store_limits(self) -> tuple[float, float]:
        """(max charge W, max discharge W magnitude) the store accepts now, ignoring faults."""

    @abstractmethod
    def apply_store_energy(self, store_wh: float, dt_s: float) -> None:
        """Add (or remove, if negative) energy to the store over dt seconds."""

    def available(self) -> bool:
        """Whether there is a store to act on (an EV charger without an EV has none)."""
        return True

    def next_event_s(self) -> float | None:
        """Sim time of the next internal event (EV arrival/departure) so a step can split exactly there."""
        return None

    def on_time(self) -> None:  # noqa: B027 - optional hook
        """Handle internal events due at `self.t_s`."""

    def extra_fields(self) -> dict[str, float]:
        """Kind-specific measurement fields for the register map."""
        return {}

    # ---- control ---------------------------------------------------------------------------------------
    def write_setpoint(self, setpoint_w: float) -> None:
        """A setpoint write: recorded as-is (echoed back) and clamped only when acted on, like real chargers."""
        max_ch, max_dis = self.live_limits()
        record = WriteRecord(self.t_s, float(setpoint_w), max_ch, max_dis)
        self.write_log.append(record)
        self.writes_total += 1
        if not -self.rated_discharge_w - LIMIT_SLACK_W <= setpoint_w <= self.rated_charge_w + LIMIT_SLACK_W:
            self.writes_outside_nameplate += 1
        if record.outside_live_limits:
            self.writes_outside_live += 1
        self.lease.write(setpoint_w, self.t_s)

    def write_lease_timeout(self, timeout_s: float) -> None:
        self.lease.set_timeout(timeout_s, self.t_s)

    def set_fault(self, code: int) -> None:
        """Trip: status 3 with `code`, power drops to 0 at once (contactor opens, no ramp)."""
        if code <= 0:
            raise ValueError(f"a fault code must be > 0, got {code!r}")
        self.fault_code = int(code)
        self.power_w = 0.0

    def clear_fault(self) -> None:
        self.fault_code = 0

    def live_limits(self) -> tuple[float, float]:
        """(max charge W, max discharge W magnitude) now, including faults and a missing EV."""
        if self.fault_code or not self.available():
            return 0.0, 0.0
        return self.store_limits()

    def target_w(self) -> float:
        max_ch, max_dis = self.live_limits()
        return min(max(self.lease.setpoint_w, -max_dis), max_ch)

    @property
    def status(self) -> int:
        if self.fault_code:
            return STATUS_FAULT
        if not self.available():
            return STATUS_NO_EV
        if self.power_w > STATUS_DEADBAND_W:
            return STATUS_CHARGING
        if self.power_w < -STATUS_DEADBAND_W:
            return STATUS_DISCHARGING
        return STATUS_STANDBY

    # ---- time ------------------------------------------------------------------------------------------
    def step(self, dt_s: float) -> float:
        """Advance dt sim-seconds; return the net terminal energy in Wh (+ import from the grid)."""
        if dt_s < 0 or not math.isfinite(dt_s):
            raise ValueError(f"step dt must be a finite number >= 0, got {dt_s!r}")
        end = self.t_s + dt_s
        total = 0.0
        while end - self.t_s > 1e-9:
            self.on_time()
            self.lease.expire_if_due(self.t_s)
            h = min(end - self.t_s, MAX_SUBSTEP_S)
            for event in (self.next_event_s(), self.lease.expires_at_s()):
                if event is not None and self.t_s < event < self.t_s + h:
                    h = event - self.t_s
            max_ch, max_dis = self.live_limits()
            # Live limits are hard (the BMS cuts power at once); only moves toward the target are ramped.
            self.power_w = min(max(self.power_w, -max_dis), max_ch)
            result = ramp(self.power_w, self.target_w(), self.ramp_w_per_s, h)
            self.power_w = result.power_end_w
            store_wh = result.import_wh * self.efficiency + result.export_wh / self.efficiency
            self.apply_store_energy(store_wh, h)
            self.import_wh += result.import_wh
            self.export_wh -= result.export_wh
            total += result.net_wh
            self.t_s += h
        self.t_s = end
        self.on_time()
        self.lease.expire_if_due(self.t_s)
        return total

    # ---- measurement -----------------------------------------------------------------------------------
    def fields(self) -> dict[str, float]:
        """Domain values (SI, agent sign convention) for every field a register map may show."""
        max_ch, max_dis = self.live_limits()
        values: dict[str, float] = {
            "status": self.status,
            "fault_code": self.fault_code,
            "power_w": self.power_w,
            "setpoint_w": self.lease.setpoint_w,
            "lease_timeout_s": self.lease.timeout_s,
            "rated_charge_w": self.rated_charge_w,
            "rated_discharge_w": self.rated_discharge_w,
            "max_charge_w": max_ch,
            "max_discharge_w": max_dis,
        }
        values.update(self.extra_fields())
        return values
