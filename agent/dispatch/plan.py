"""What a solve returns: the Plan, the error when there is none, and the rule that nets its cost breakdown.

Kept free of cvxpy and HiGHS on purpose: the control process receives Plans from the solver process
(agent.dispatch.worker) and reads them, and importing the solver stack there alone costs ~80 MB of its RSS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a Plan holds arrays, but reading this module must not import numpy (tests/deploy/test_imports.py)
    import numpy as np

# breakdown terms that are earned, not paid (terminal_value: the worth of energy left at the horizon end, not cash)
REVENUE_TERMS = frozenset({"updr_revenue", "reserve_revenue", "terminal_value"})


def net_of(terms: Mapping[str, Any]) -> Any:
    """Costs minus revenues of a breakdown: cvxpy terms for the objective, or the floats of a Plan's breakdown."""
    return sum(-v if k in REVENUE_TERMS else v for k, v in terms.items())


class PlanError(RuntimeError):
    """The solver failed or returned no usable solution; the caller keeps its last plan or the safe rule."""


@dataclass(frozen=True)
class Plan:
    asset_ids: list[str]
    step_s: float
    power_w: np.ndarray  # (N, T): + charging, − discharging, grid side
    energy_wh: np.ndarray  # (N, T+1) pack energy
    reserve_up_w: np.ndarray  # (N, T) summed over products
    reserve_down_w: np.ndarray
    breakdown: dict[str, float]  # currency; revenues positive, costs positive, see `net_cost`
    violations: dict[str, float] = field(default_factory=dict)  # kWh short of each soft preference
    solve_s: float = 0.0
    status: str = ""
    # (N, T) fraction of each step an asset is plugged in (an EV leaving mid-step), None: whole steps. power_w is a
    # step's average; the setpoint that delivers it while plugged in is that average over the fraction
    presence: np.ndarray | None = None

    def setpoints_w(self, index: int) -> dict[str, float]:
        """Step `index`'s setpoint per asset: the planned average power over the part of the step each asset is
        plugged in, so an EV leaving mid-step gets the step's planned energy in the minutes it is still there
        (the plan's limits were scaled by the same fraction, so the setpoint stays within the rating)."""
        power = [float(p) for p in self.power_w[:, index]]
        if self.presence is not None:
            power = [float(p / f) if f > 0 else p for p, f in zip(power, self.presence[:, index], strict=True)]
        return dict(zip(self.asset_ids, power, strict=True))

    @property
    def net_cost(self) -> float:
        """Energy cost + wear + penalties − revenues (what the optimiser minimised, plus fixed parts)."""
        return float(net_of(self.breakdown))
