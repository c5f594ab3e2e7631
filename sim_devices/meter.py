"""DC power meter on a simulated bus.

A meter does not simulate anything itself: the Site hands it the energy that crossed its measuring point in each
step (so its counters agree with the devices by construction) and the power at the end of the step. It derives
voltage and current from a simple bus model: a stiff source of `nominal_voltage_v` behind `bus_resistance_ohm`, so
voltage sags with import and rises with export as a real DC bus does.
"""

from __future__ import annotations

import math
from typing import Literal

MeterScope = Literal["site", "pv"]
STATUS_OK = 0
STATUS_FAULT = 3


class DCMeter:
    """Meter physics. `measures` = "site" measures the whole bus (+ import); "pv" only the PV string (export, < 0)."""

    kind = "meter"

    def __init__(
        self,
        *,
        measures: MeterScope = "site",
        rated_power_w: float = 200_000.0,
        nominal_voltage_v: float = 750.0,
        bus_resistance_ohm: float = 0.01,
    ) -> None:
        if rated_power_w <= 0 or nominal_voltage_v <= 0 or bus_resistance_ohm < 0:
            raise ValueError("meter rating, voltage must be > 0 and resistance >= 0")
        self.measures: MeterScope = measures
        self.rated_power_w = float(rated_power_w)
        self.nominal_voltage_v = float(nominal_voltage_v)
        self.bus_resistance_ohm = float(bus_resistance_ohm)
        self.power_w = 0.0
        self.import_wh = 0.0
        self.export_wh = 0.0
        self.fault_code = 0

    def record(self, energy_wh: float, power_w: float) -> None:
        """Book one step: its net energy goes to the import counter if > 0, else to export."""
        if energy_wh > 0:
            self.import_wh += energy_wh
        else:
            self.export_wh -= energy_wh
        self.power_w = power_w

    @property
    def net_wh(self) -> float:
        return self.import_wh - self.export_wh

    def set_fault(self, code: int) -> None:
        self.fault_code = int(code)

    def clear_fault(self) -> None:
        self.fault_code = 0

    @property
    def voltage_v(self) -> float:
        """Bus voltage at the meter: V solves V = V0 − R·P/V (V0 behind R); capped at 20 % sag (overload)."""
        v0, r, p = self.nominal_voltage_v, self.bus_resistance_ohm, self.power_w
        if r == 0:
            return v0
        disc = v0 * v0 - 4.0 * r * p
        if disc <= 0:
            return 0.8 * v0
        return max((v0 + math.sqrt(disc)) / 2, 0.8 * v0)

    def field_maxima(self) -> dict[str, float]:
        """Largest magnitude each scaled field may take, used to choose scale factors that never overflow."""
        v_max = self.nominal_voltage_v * 1.25
        return {
            "voltage_v": v_max,
            "current_a": 2.0 * self.rated_power_w / (0.8 * self.nominal_voltage_v),
            "power_w": 2.0 * self.rated_power_w,
        }

    def fields(self) -> dict[str, float]:
        """Measurements; a faulted meter reports status 3 and 0 W/0 A while its counters keep counting."""
        v = self.voltage_v
        p = 0.0 if self.fault_code else self.power_w
        return {
            "status": STATUS_FAULT if self.fault_code else STATUS_OK,
            "fault_code": self.fault_code,
            "power_w": p,
            "voltage_v": v,
            "current_a": p / v,
            "energy_import_wh": self.import_wh,
            "energy_export_wh": self.export_wh,
        }
