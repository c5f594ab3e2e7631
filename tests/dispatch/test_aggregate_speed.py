"""The 100 000-EV speed work on the aggregated path (issue 13) changes how things are computed, never what: each
rewritten piece is checked against the straightforward form it replaced, on seeded fleets."""

from __future__ import annotations

import numpy as np
import pytest

from agent.dispatch import costs, refine
from agent.dispatch.aggregate import Split, solve_aggregated_detail
from agent.dispatch.inputs import AssetPlan, PlanInputs, SiteForecast
from agent.dispatch.member_lp import EvMembers
from agent.dispatch.pricing import _cycle_wear

T = 96
H = 0.25


def seeded_fleet(n: int = 200, seed: int = 3) -> PlanInputs:
    """Mixed fleet: charge-only and V2G EVs with different windows, rates, packs and wear prices."""
    rng = np.random.default_rng(seed)
    steps = np.arange(T)
    assets = []
    for i in range(n):
        cap = float(rng.choice([40_000.0, 60_000.0, 80_000.0]))
        rate = float(rng.choice([6_000.0, 11_000.0]))
        arrive = int(rng.integers(0, 40))
        depart = int(rng.integers(arrive + 4, T + 20))
        energy = cap * float(rng.uniform(0.2, 0.8))
        assets.append(
            AssetPlan(
                id=f"ev{i}", energy_wh=energy, min_wh=0.1 * cap, max_wh=cap, charge_w=rate,
                discharge_w=rate if rng.random() < 0.4 else 0.0, efficiency=float(rng.choice([0.92, 0.95])),
                available=(steps >= arrive) & (steps < depart), target_wh=min(cap, energy + 20_000.0),
                target_step=depart, wear_prices=np.array([2.0, 4.0, 8.0, 16.0]) * float(rng.choice([0.9, 1.1])),
                is_ev=True,
            )
        )  # fmt: skip
    prices = 20.0 + 15.0 * np.sin(np.arange(T) / 8.0) + rng.normal(0, 3, T)
    site = SiteForecast(prices, np.full(T, 50_000.0), np.zeros(T))
    return PlanInputs(T, H * 3600.0, assets, site)


def cycle_wear_per_step(inputs: PlanInputs, power: np.ndarray) -> float:
    """The loop `pricing._cycle_wear` ran before it was vectorised: asset by segment count, step by step, each
    step's discharge priced as it happens."""
    h = inputs.step_h
    total = 0.0
    discharging = np.flatnonzero((power < 0).any(axis=1))
    by_segments: dict[int, list[int]] = {}
    for i in discharging:
        by_segments.setdefault(len(inputs.assets[i].wear_prices), []).append(int(i))
    for j, idx in by_segments.items():
        assets = [inputs.assets[i] for i in idx]
        prices = np.stack([costs.wear_per_w(a, h) for a in assets])
        room = np.array([max(0.0, a.max_wh - a.min_wh) for a in assets])
        cap = room / j
        left = np.minimum(np.maximum(0.0, np.array([a.energy_wh - a.min_wh for a in assets])), room)
        seg = np.zeros((len(idx), j))
        for k in range(j):
            seg[:, k] = np.minimum(left, cap)
            left -= seg[:, k]
        eff = np.array([a.efficiency for a in assets])
        p = power[idx]
        for step in range(inputs.steps):
            gain = np.maximum(p[:, step], 0.0) * eff * h
            loss = np.maximum(-p[:, step], 0.0) * h / eff
            for k in range(j):
                add = np.minimum(gain, cap - seg[:, k])
                seg[:, k] += add
                gain -= add
                take = np.minimum(loss, seg[:, k])
                seg[:, k] -= take
                loss -= take
                total += float(np.dot(prices[:, k], take * eff / h))
    return total


def test_vectorised_cycle_wear_equals_the_step_by_step_loop() -> None:
    inputs = seeded_fleet()
    rng = np.random.default_rng(11)
    v2g = np.array([a.discharge_w > 0 for a in inputs.assets])
    plugged = np.array([a.available for a in inputs.assets])
    rates = np.array([a.charge_w for a in inputs.assets])[:, None]
    power = rng.uniform(-1.0, 1.0, (len(inputs.assets), T)) * rates * plugged
    power[~v2g] = np.maximum(power[~v2g], 0.0)
    power[:, 30:34] = 0.0  # steps where nobody moves are skipped by the vectorised loop
    expected = cycle_wear_per_step(inputs, power)
    assert expected > 0
    assert _cycle_wear(inputs, power) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_the_rest_of_the_site_is_the_other_assets_summed() -> None:
    rng = np.random.default_rng(5)
    power = rng.normal(0, 5_000, (200, T))
    split = Split(power, np.zeros((200, T + 1)), np.zeros((200, T)), np.zeros((200, T)), 0.0)
    rows = rng.choice(200, 37, replace=False)
    others = np.setdiff1d(np.arange(200), rows)
    np.testing.assert_allclose(refine._rest_w(split, rows), power[others].sum(axis=0), rtol=0, atol=1e-6)


def test_blocks_hold_about_equal_columns_and_cover_every_member(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks are cut by columns, not members: a block of long stays would otherwise hold several times the
    columns of one of short stays, and HiGHS' time grows faster than its LP."""
    inputs = seeded_fleet()
    seen: list[tuple[np.ndarray, int]] = []
    solve = refine.plan_members

    def recording(inputs: PlanInputs, block: EvMembers, *args: object, **kwargs: object) -> object:  # the real solve
        columns = int((block.plugged.sum(axis=1) * np.where(block.v2g, 3 * block.segments, 1)).sum())
        seen.append((block.index.copy(), columns))
        return solve(inputs, block, *args, **kwargs)

    monkeypatch.setattr(refine, "plan_members", recording)
    monkeypatch.setattr(refine, "_filled", lambda *args: None)  # every block to its LP (the fill skips it)
    monkeypatch.setattr(refine, "V2G_MAX_COLUMNS", 0)  # charge-only members alone, as at 100 000 EVs
    monkeypatch.setattr(refine, "EV_BLOCK_COLUMNS", 600)
    result = solve_aggregated_detail(inputs, 16)
    assert "charge_only" in result.refined
    charge_only = [i for i, a in enumerate(inputs.assets) if a.discharge_w <= 0 and np.any(a.available)]
    assert len(seen) >= 4
    covered = np.concatenate([index for index, _ in seen])
    assert sorted(covered.tolist()) == charge_only  # every member once
    columns = [c for _, c in seen]
    assert max(columns) <= 1.5 * min(columns) + 96  # a member's columns are the rounding
