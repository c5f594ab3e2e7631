"""The planner's burning re-solve (planner._forbid_burning) forbids the flow, not the headroom a reserve may use."""

from __future__ import annotations

import numpy as np

from agent.dispatch.inputs import AssetPlan, PlanInputs, Reserve, SiteForecast
from agent.dispatch.planner import _forbid_burning, _run, fill, model_for, solve

STEPS = 6
PACK_WH = 100_000.0
POWER_W = 50_000.0


def full_idle_pack(up_price: float = 40.0) -> PlanInputs:
    """A full 50 kW pack, energy at 10 per kWh, and an up reserve offer (S-RR, one-sided) paying `up_price` per
    kW·h in every step. The LP's up headroom is the discharge rating plus the net charge, so at full the first solve
    "charges" 50 kW while discharging what that stores (burning ~4.9 kW) to count 54.9 kW of up headroom."""
    pack = AssetPlan(
        "pack", energy_wh=PACK_WH, min_wh=0.0, max_wh=PACK_WH, charge_w=POWER_W, discharge_w=POWER_W,
        efficiency=0.95, wear_prices=np.array([0.5]),
    )  # fmt: skip
    site = SiteForecast(np.full(STEPS, 10.0), np.zeros(STEPS), np.zeros(STEPS))
    zeros = np.zeros(STEPS)
    offer = Reserve("S-RR", np.full(STEPS, up_price), zeros, zeros, zeros)
    return PlanInputs(STEPS, 3600.0, [pack], site, reserves=[offer])


def test_the_first_solve_burns_in_every_step() -> None:
    """The case is what it claims: one solve, no re-solve, charges and discharges the pack at once."""
    inputs = full_idle_pack()
    model = model_for(inputs)
    fill(model, inputs)
    _run(model, 30.0, {})
    assert _forbid_burning(model).all()


def test_an_idle_full_pack_keeps_its_up_reserve_where_the_first_solve_burnt() -> None:
    """Forbidding the burning steps' discharge must not take the pack's up headroom with it: a full idle pack can
    still discharge 50 kW if the reserve is activated, so the paying offer is held at 50 kW in every step (it was
    0 when the re-solve zeroed the discharge limit the headroom reads), and the plan no longer burns."""
    plan = solve(full_idle_pack())
    np.testing.assert_allclose(plan.power_w[0], 0.0, atol=1e-3)
    np.testing.assert_allclose(plan.reserve_up_w[0], POWER_W, rtol=1e-6)


def test_the_next_solve_of_the_same_model_starts_from_the_full_limits() -> None:
    """The flow limits the re-solve cut are Parameters of the cached model: the next plan (no reserve worth holding,
    nothing to burn for) must see the full limits again and sell flat out in a dear first step."""
    solve(full_idle_pack())
    inputs = full_idle_pack(up_price=0.0)
    price = np.array([100.0] + [10.0] * (STEPS - 1))
    site = SiteForecast(price, np.zeros(STEPS), np.zeros(STEPS))
    dear = PlanInputs(inputs.steps, inputs.step_s, inputs.assets, site, reserves=inputs.reserves)
    assert model_for(dear) is model_for(inputs)
    plan = solve(dear)
    np.testing.assert_allclose(plan.power_w[0, 0], -POWER_W, rtol=1e-6)
