"""Local frequency response (FCR / 一次調整力, Dynamic Containment-style): frequency in, activation −1..1 out.

Japan's FCR (REFERENCE.md): droop 5 %, deadband ±0.2 Hz (0.3 Hz in Hokkaido), full response within 10 s, sustained
≥ 5 min. With droop d the fleet's output moves by rated × (|Δf| − deadband) / (d · f_nominal) — beyond the deadband,
measured from its edge — and the activation is that move as a fraction of the awarded capacity, capped at ±1.
Low frequency asks for more power into the grid: activation > 0 (up).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Droop:
    rated_w: float  # the fleet's rated power the droop refers to
    capacity_w: float  # awarded capacity (activation 1 = this much)
    nominal_hz: float = 50.0
    deadband_hz: float = 0.2
    droop: float = 0.05

    def activation(self, frequency_hz: float) -> float:
        deviation = frequency_hz - self.nominal_hz
        beyond = abs(deviation) - self.deadband_hz
        if beyond <= 0 or self.capacity_w <= 0:
            return 0.0
        move_w = self.rated_w * beyond / (self.droop * self.nominal_hz)
        value = min(1.0, move_w / self.capacity_w)
        return value if deviation < 0 else -value
