"""Issue 13 item 3 in the large-fleet path: regulation's expected round-trip loss is taken from each member's energy.

The full LP takes α·r·h·(1/η − η) Wh per step from a store holding an up band r (inputs.activation_loss_wh). The
aggregated path must do the same for every member: in the split of the group plan (agent.dispatch.aggregate) and in
the exact member LP of the refinement (agent.dispatch.member_lp), so that a member's energies are what following its
power and its band leaves, and its departure need is still met. Each test failed before the fix (member energies
followed their power alone, and members ended short by the band's loss).
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.dispatch.aggregate import solve_aggregated_detail
from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast, activation_loss_wh
from agent.dispatch.planner import solve

T, STEP_S, H = 16, 900.0, 0.25
ETA, ALPHA = 0.9, 0.2


def v2g_ev(i: int, energy: float, need: float, depart: int) -> AssetPlan:
    return AssetPlan(
        id=f"ev{i}", energy_wh=energy, min_wh=10_000.0, max_wh=60_000.0, charge_w=7_000.0, discharge_w=7_000.0,
        efficiency=ETA, available=np.arange(T) < depart, target_wh=energy + need, target_step=depart,
        wear_prices=np.array([1.0, 2.0]), is_ev=True, activation_wear_per_kwh=0.0,
    )  # fmt: skip


def fleet() -> PlanInputs:
    evs = [v2g_ev(0, 30_000, 6_000, 12), v2g_ev(1, 40_000, 4_000, T), v2g_ev(2, 25_000, 8_000, 14)]
    evs.append(v2g_ev(3, 50_000, 0.0, T))
    # a battery, passed through the aggregate and re-planned by the refinement holding its share of the band
    bess = AssetPlan("bess", 60_000.0, 10_000.0, 120_000.0, 30_000.0, 30_000.0, ETA, wear_prices=np.array([1.0]))
    prices = np.array([20.0] * 8 + [30.0] * 8)
    site = SiteForecast(prices, np.full(T, 5_000.0), np.zeros(T))
    band = np.full(T, 6.0)  # per kW·h: regulation pays well, so every member holds a band
    zeros = np.zeros(T)
    return PlanInputs(T, STEP_S, [*evs, bess], site, reserves=[Reserve("RegD", band, band, zeros, zeros, ALPHA)])


def balance_error(inputs: PlanInputs, power: np.ndarray, energy: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Per asset (members and the battery) and step, Wh the stored energy differs from what its power and band leave."""
    eta = np.array([a.efficiency for a in inputs.assets])[:, None]
    moved = np.where(power > 0, power * eta * H, power * H / eta)
    loss = activation_loss_wh(ALPHA, eta, H) * up
    return np.diff(energy, axis=1) - (moved - loss)


def shortfall_wh(inputs: PlanInputs, energy: np.ndarray) -> float:
    return sum(max(0.0, a.target_wh - energy[i, a.target_step]) for i, a in enumerate(inputs.assets) if a.is_ev)


@pytest.mark.parametrize("refined", [False, True], ids=["split", "member_lp"])
def test_members_lose_the_bands_round_trip_like_the_full_lp(refined: bool) -> None:
    inputs = fleet()
    full = solve(inputs)
    assert full.reserve_up_w.sum() > 0 and shortfall_wh(inputs, full.energy_wh) < 1.0  # the reference holds bands
    solved = solve_aggregated_detail(inputs, groups=2, refined=refined)
    if refined:
        assert {"v2g", "batteries"} <= set(solved.refined), solved.refined
    plan = solved.plan
    assert plan.reserve_up_w.sum() > 0, "the members hold the group's band"
    assert activation_loss_wh(ALPHA, ETA, H) * plan.reserve_up_w.sum() > 100.0, "the band loses energy worth checking"
    err = balance_error(inputs, plan.power_w, plan.energy_wh, plan.reserve_up_w)
    assert np.abs(err).max() < 1e-3, f"member energy ignores the band's loss by up to {np.abs(err).max():.1f} Wh"
    assert shortfall_wh(inputs, plan.energy_wh) < 1.0, "members still reach their departure need"
