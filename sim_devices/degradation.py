"""Lithium-ion capacity fade after Xu et al. 2018.

Source: B. Xu, A. Oudalov, A. Ulbig, G. Andersson, D. S. Kirschen, "Modeling of Lithium-Ion Battery Degradation
for Cell Life Assessment", IEEE Transactions on Smart Grid 9(2), 1131–1140, 2018 (fitted to LMO cells).

The model sums a linearised damage f_d from cycling and calendar ageing, then maps it to capacity loss with a
non-linear SEI term:

    L(f_d) = 1 − α_sei·e^(−k_sei·f_d) − (1 − α_sei)·e^(−f_d),   α_sei = 0.0575, k_sei = 121
    f_d    = f_cyc + f_cal
    f_cyc  = Σ_i n_i · S_δ(δ_i) · S_σ(σ_i) · S_T(T)     (n_i = 0.5 per half cycle of depth δ_i, mean SoC σ_i)
    f_cal  = k_t · t · S_σ(σ̄) · S_T(T)                  (σ̄ the time-averaged SoC)
    S_δ(δ) = 1 / (1.40e5 · δ^−0.501 − 1.23e5)           cycle-depth stress, per full cycle
    S_σ(σ) = exp(1.04 · (σ − 0.5))                        SoC stress
    S_T(T) = exp(0.0693 · (T − T_ref) · T_ref / T)        temperature stress, T in kelvin, T_ref = 25 °C
    k_t    = 4.14e−10 per second                          calendar ageing

With these numbers about 2,800 full cycles at 25 °C fade a cell to 80 % (REFERENCE.md). Half cycles are counted
at SoC direction reversals (a streaming simplification of rainflow counting: it does not pair nested sub-cycles
with their parents, which slightly under-counts depth for ragged profiles). The half cycle still open is included
in the damage, so SoH moves smoothly instead of jumping at each reversal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA_SEI = 0.0575
K_SEI = 121.0
K_DELTA1 = 1.40e5
K_DELTA2 = -0.501
K_DELTA3 = -1.23e5
K_SIGMA = 1.04
SIGMA_REF = 0.5
K_TEMP = 0.0693
T_REF_K = 298.15  # 25 °C; the paper rounds it to 298 K
K_CAL_PER_S = 4.14e-10
# An SoC move smaller than this back from the running extreme is noise, not a reversal (keeps float jitter and
# tiny regulation wiggles from closing thousands of micro half-cycles).
REVERSAL_HYSTERESIS = 1e-3


def depth_stress(depth: float) -> float:
    """S_δ: damage of one full cycle of depth δ (0..1); 0 for a zero-depth cycle."""
    if depth <= 0:
        return 0.0
    return 1.0 / (K_DELTA1 * min(depth, 1.0) ** K_DELTA2 + K_DELTA3)


def soc_stress(soc: float) -> float:
    """S_σ: higher mean SoC ages the cell faster."""
    return math.exp(K_SIGMA * (soc - SIGMA_REF))


def temperature_stress(temperature_c: float) -> float:
    """S_T: Arrhenius-like stress, 1 at 25 °C. The paper's T is in kelvin."""
    t_k = temperature_c + 273.15
    return math.exp(K_TEMP * (t_k - T_REF_K) * T_REF_K / t_k)


def capacity_loss(damage: float) -> float:
    """L(f_d): fraction of nominal capacity lost for a total damage f_d."""
    return 1.0 - ALPHA_SEI * math.exp(-K_SEI * damage) - (1.0 - ALPHA_SEI) * math.exp(-damage)


@dataclass(slots=True)
class XuDegradation:
    """Streaming damage accumulator: feed it the SoC after each time step; read `soh`."""

    soc: float
    temperature_c: float = 25.0
    anchor_soc: float = 0.0
    extreme_soc: float = 0.0
    direction: int = 0
    closed_cycle_damage: float = 0.0
    half_cycles: int = 0
    elapsed_s: float = 0.0
    soc_time_integral: float = 0.0

    def __post_init__(self) -> None:
        self.anchor_soc = self.soc
        self.extreme_soc = self.soc

    @staticmethod
    def _half_cycle(a: float, b: float) -> float:
        return 0.5 * depth_stress(abs(b - a)) * soc_stress((a + b) / 2)

    def update(self, soc: float, dt_s: float) -> None:
        """Record that SoC is `soc` after dt seconds (trapezoid SoC average for the calendar term)."""
        self.soc_time_integral += (self.soc + soc) / 2 * dt_s
        self.elapsed_s += dt_s
        self.soc = soc
        if self.direction == 0:
            if abs(soc - self.anchor_soc) > REVERSAL_HYSTERESIS:
                self.direction = 1 if soc > self.anchor_soc else -1
                self.extreme_soc = soc
        elif (soc - self.extreme_soc) * self.direction >= 0:
            self.extreme_soc = soc
        elif abs(soc - self.extreme_soc) > REVERSAL_HYSTERESIS:
            self.closed_cycle_damage += self._half_cycle(self.anchor_soc, self.extreme_soc)
            self.half_cycles += 1
            self.anchor_soc, self.extreme_soc = self.extreme_soc, soc
            self.direction = -self.direction

    def mean_soc(self) -> float:
        return self.soc_time_integral / self.elapsed_s if self.elapsed_s > 0 else self.soc

    def cycle_damage(self) -> float:
        open_half = self._half_cycle(self.anchor_soc, self.extreme_soc) if self.direction else 0.0
        return (self.closed_cycle_damage + open_half) * temperature_stress(self.temperature_c)

    def calendar_damage(self) -> float:
        return K_CAL_PER_S * self.elapsed_s * soc_stress(self.mean_soc()) * temperature_stress(self.temperature_c)

    def damage(self) -> float:
        return self.cycle_damage() + self.calendar_damage()

    @property
    def soh(self) -> float:
        """State of health: usable capacity over nominal."""
        return 1.0 - capacity_loss(self.damage())
