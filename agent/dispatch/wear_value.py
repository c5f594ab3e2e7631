"""Wear priced by its opportunity cost (Kumtepeli et al. 2024), an option beside depreciation pricing.

Depreciation pricing charges a unit of the pack's life at what the pack cost (replacement cost × life fraction).
Kumtepeli et al. (arXiv 2403.10617) show that this loses 30–50 % of lifetime profit against the best case: life used
today is life the pack cannot use at the end of its service, so its true price is what that unit of life would have
earned then. A pack that earns little per unit of life should cycle more freely than its price tag says; one that
earns a lot should save its life for the better hours.

`OpportunityWearValue` estimates that value online from the agent's own settled figures: each settlement period it
is told what the pack earned (net revenue, currency) and how much life it used (fraction of its life to 20 % fade,
the same measure the fitted prices use, docs/wear.md), cycling and calendar ageing together. The value of a whole
life is

    ν = (Σ revenue + R · L₀) / (Σ life used + L₀)

over a rolling window, where R is the replacement cost and L₀ a prior of "L₀ of life at the depreciation price".
Why the TOTAL life used: the pack's service ends when its total fade reaches end of life, so a unit of life used now
shortens the service by 1 / (life used per unit time) and gives up the revenue per unit time it would earn then; to
first order (earnings then ≈ earnings now, no discount) the marginal value of a unit of life is revenue per unit
time over total life used per unit time. Cycling life alone in the denominator gives the average return per unit
of cycling life, which overstates it by the calendar share of the pack's ageing (agent.dispatch.wear_book counts
both). With no history ν = R, the fitted depreciation price; as history accumulates past L₀ the agent's own
figures win. ν is never negative (a pack that earns nothing has no use for its life later either). The estimate
replaces R in `agent.dispatch.degradation`'s price functions: `segment_prices(value.cost_basis(now), ...)`.
Optionally the value is discounted over the years until that unit of life would have been used (remaining life /
current rate of use).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

YEAR_S = 365.0 * 86400.0


@dataclass
class OpportunityWearValue:
    """Online estimate of what a unit of a pack's life earns, seeded from its replacement cost."""

    replacement_cost: float  # R, currency for a new pack: the seed (depreciation) value of a whole life
    # L₀: the seed counts as 0.2 % of life at the depreciation price, about 10 full cycles of an LFP pack (BLAST-Lite
    # fit: 2.0e-4 of life per cycle) or two weeks of daily cycling; 2 % would outweigh 90 days of daily full cycles
    # (0.018 of life), so the window's own figures would never take over. With calendar life counted too (1.4e-4 a
    # day at SoC 0.5, LFP and NMC at 25 °C) a daily cycling pack uses L₀ in about a week
    prior_life: float = 0.002
    window_s: float = 90 * 86400.0  # only the last 90 days of settlements count (prices and duties drift)
    discount_rate_per_year: float = 0.0  # 0: a unit of life is worth the same whenever it is used
    _history: deque[tuple[float, float, float, float]] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.replacement_cost) and self.replacement_cost >= 0):
            raise ValueError(f"replacement_cost must be a finite cost >= 0, got {self.replacement_cost!r}")
        if not (math.isfinite(self.prior_life) and self.prior_life > 0):
            raise ValueError(f"prior_life must be a life fraction > 0, got {self.prior_life!r}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s!r}")
        if not (math.isfinite(self.discount_rate_per_year) and self.discount_rate_per_year >= 0):
            raise ValueError(f"discount_rate_per_year must be >= 0, got {self.discount_rate_per_year!r}")

    def record(self, start_s: float, end_s: float, revenue: float, life_used: float) -> None:
        """One settled period [start_s, end_s) (unix s): what the pack earned and the life fraction it used."""
        if not end_s > start_s:
            raise ValueError(f"settlement period must end after it starts, got {start_s}..{end_s}")
        if not math.isfinite(revenue):
            raise ValueError(f"revenue must be finite, got {revenue!r}")
        if not (math.isfinite(life_used) and life_used >= 0):
            raise ValueError(f"life_used must be a life fraction >= 0, got {life_used!r}")
        if self._history and start_s < self._history[-1][1]:
            raise ValueError(f"settlement from {start_s} overlaps the last one recorded (to {self._history[-1][1]})")
        self._history.append((start_s, end_s, revenue, life_used))

    def _sums(self, now_s: float) -> tuple[float, float]:
        while self._history and self._history[0][1] <= now_s - self.window_s:
            self._history.popleft()
        return sum(h[2] for h in self._history), sum(h[3] for h in self._history)

    def history_life(self, now_s: float) -> float:
        """Life fraction the window's settlements used: how much of ν is the pack's own figures (vs the prior L₀)."""
        return self._sums(now_s)[1]

    def value_per_life(self, now_s: float) -> float:
        """ν: currency a whole life earns, from the window's settlements and the prior (R with no history)."""
        revenue, life = self._sums(now_s)
        return max(0.0, (revenue + self.replacement_cost * self.prior_life) / (life + self.prior_life))

    def cost_basis(self, now_s: float, remaining_life: float = 1.0) -> float:
        """What to price a whole life at now (the `replacement_cost` argument of the price functions): ν, but never
        more than R.

        Why the cap: a pack that earns more than R per life is replaced when its life ends, so life used now only
        brings forward a purchase of R per life (the depreciation price), whatever the pack earns; only a pack that
        earns less than R per life (not worth replacing) gives up its earnings at the end of its service, ν < R.
        With a discount rate, that value is discounted over the years until the margin of life is reached:
        remaining_life / (life used per year over the window); with no use yet, no discount.
        """
        value = min(self.value_per_life(now_s), self.replacement_cost)
        if self.discount_rate_per_year == 0 or not self._history:
            return value
        _, life = self._sums(now_s)
        span_s = min(self.window_s, max(now_s - self._history[0][0], 1.0))
        rate_per_year = life / (span_s / YEAR_S)
        if rate_per_year <= 0:
            return value
        years = max(remaining_life, 0.0) / rate_per_year
        return value / (1.0 + self.discount_rate_per_year) ** years
