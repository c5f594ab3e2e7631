"""The aggregated path's per-product booking (`aggregate._by_product`) books a symmetric product as one band.

A Plan keeps each asset's reserve summed over products; with several products the aggregated path cuts it back into
them to price it (`_priced` → pricing.reserve_cost). The cut went side by side (awards, then the cheapest product on
that side), so a symmetric product (RegD: the full LP holds r_up == r_down) could be booked with an up band and a
different down band: revenue the market does not pay (200 instead of the 300 any allowed booking earns, its
activations unpriced) or an award's shortfall half hidden (10 kWh instead of 20). These tests failed before the fix.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.dispatch.aggregate import _by_product
from agent.dispatch.inputs import SYMMETRIC_PRODUCTS, AssetPlan, PlanInputs, Reserve, SiteForecast
from agent.dispatch.pricing import reserve_cost

T, STEP_S = 2, 900.0
ZERO = np.zeros(T)
HELD = np.array([[60_000.0, 60_000.0], [40_000.0, 40_000.0]])  # two assets' band, W per step: 100 kW fleet-wide


def plan_inputs(reserves: list[Reserve], steps: int = T, assets: int = 2) -> PlanInputs:
    fleet = [
        AssetPlan(id=f"b{i}", energy_wh=50_000.0, min_wh=0.0, max_wh=100_000.0, charge_w=100_000.0,
                  discharge_w=100_000.0, wear_prices=np.array([1.0, 2.0]))
        for i in range(assets)
    ]  # fmt: skip
    zeros = np.zeros(steps)
    return PlanInputs(steps, STEP_S, fleet, SiteForecast(zeros, zeros, zeros), reserves=reserves)


def offer(product: str, up: float, down: float, activation: float = 0.0) -> Reserve:
    return Reserve(product, np.full(T, up), np.full(T, down), ZERO, ZERO, activation)


def award(product: str, up_w: float, down_w: float, price: float = 5.0) -> Reserve:
    """An award with prices of its own: build.py gives awards 0 and that product's offers 0 where an award covers
    them, which would make every award the cheapest product for the rest of the band."""
    return Reserve(product, np.full(T, price), np.full(T, price), np.full(T, up_w), np.full(T, down_w))


def fleet_w(booked: list[np.ndarray]) -> list[np.ndarray]:
    return [b.sum(axis=0) for b in booked]


def test_a_symmetric_product_is_booked_as_one_band_at_the_least_pay() -> None:
    """FCR pays 1 up / 6 down, RegD 3 each side: side by side, FCR took the up band and RegD the down band alone."""
    inputs = plan_inputs([offer("FCR", 1.0, 6.0), offer("RegD", 3.0, 3.0, activation=0.171)])
    up, down = _by_product(inputs, HELD, HELD.copy())
    (fcr_up, regd_up), (fcr_down, regd_down) = fleet_w(up), fleet_w(down)
    np.testing.assert_allclose(regd_up, regd_down)
    # allowed bookings (RegD b on both sides, FCR the rest) pay 6b + 7(100 - b) per kW·h: the least is RegD's
    np.testing.assert_allclose(regd_up, 100_000.0)
    np.testing.assert_allclose(fcr_up + fcr_down, 0.0, atol=1e-9)
    terms, _ = reserve_cost(inputs, up, down)
    assert terms["reserve_revenue"] == pytest.approx(6.0 * 100 * 0.25 * T)  # 300 (200 booked side by side)
    assert terms["reserve_activation"] > 0.0  # RegD's band is followed (its up side was booked to FCR, unpriced)


def test_a_symmetric_award_is_booked_within_both_sides_and_its_shortfall_shows() -> None:
    """RegD awarded 50 kW each way, the fleet holds 100 kW up and 30 down: RegD holds 30/30, each side 20 kW short."""
    inputs = plan_inputs([award("RegD", 50_000.0, 50_000.0), offer("FCR", 2.0, 2.0)])
    up, down = _by_product(inputs, HELD, HELD * 0.3)
    (regd_up, fcr_up), (regd_down, fcr_down) = fleet_w(up), fleet_w(down)
    np.testing.assert_allclose(regd_up, 30_000.0)
    np.testing.assert_allclose(regd_down, 30_000.0)
    np.testing.assert_allclose(fcr_up, 70_000.0)  # the rest of the up band, to the one-sided product
    np.testing.assert_allclose(fcr_down, 0.0, atol=1e-9)
    terms, violations = reserve_cost(inputs, up, down)
    assert violations["reserve_short_kwh"] == pytest.approx(2 * 20.0 * 0.25 * T)  # 20 kWh (10 side by side)
    assert terms["reserve_shortfall_penalty"] == pytest.approx(20.0 * inputs.penalties.reserve_short_per_kwh)


def test_a_symmetric_award_held_in_full_is_honoured() -> None:
    """An award the band covers is booked in full, a symmetric one at the larger of its sides (the band meeting
    both, as the full LP holds it); the rest goes to the offers."""
    inputs = plan_inputs([award("RegD", 40_000.0, 25_000.0), award("FCR", 10_000.0, 0.0), offer("S-FRR", 1.0, 1.0)])
    up, down = _by_product(inputs, HELD, HELD * 0.8)
    np.testing.assert_allclose(fleet_w(up), [[40_000.0] * T, [10_000.0] * T, [50_000.0] * T])
    np.testing.assert_allclose(fleet_w(down), [[40_000.0] * T, [0.0] * T, [40_000.0] * T])
    assert reserve_cost(inputs, up, down)[1]["reserve_short_kwh"] == 0.0


def test_only_symmetric_products_book_one_sides_excess_to_none() -> None:
    """No product pays for a band held on one side only: the up band beyond the down band is not booked."""
    inputs = plan_inputs([offer("RegD", 3.0, 3.0), offer("RegD", 2.0, 2.0)])
    up, down = _by_product(inputs, HELD, HELD * 0.5)
    np.testing.assert_allclose(fleet_w(up), [[0.0] * T, [50_000.0] * T], atol=1e-9)
    np.testing.assert_allclose(fleet_w(down), [[0.0] * T, [50_000.0] * T], atol=1e-9)


def test_one_sided_products_keep_the_side_by_side_rule() -> None:
    """Without a symmetric product nothing changes: awards first, the rest to the cheapest product on each side,
    every asset cut in the same proportions."""
    inputs = plan_inputs([offer("FCR", 1.0, 4.0), award("S-FRR", 20_000.0, 10_000.0), offer("RR", 2.0, 3.0)])
    up, down = _by_product(inputs, HELD, HELD * 0.5)
    np.testing.assert_allclose(fleet_w(up), [[80_000.0] * T, [20_000.0] * T, [0.0] * T], atol=1e-9)
    np.testing.assert_allclose(fleet_w(down), [[0.0] * T, [10_000.0] * T, [40_000.0] * T], atol=1e-9)
    np.testing.assert_allclose(up[0], HELD * 0.8)


def test_one_product_is_the_band_itself() -> None:
    up, down = HELD, HELD * 0.3  # a symmetric product's band as the plan holds it, not cut to a booking
    booked_up, booked_down = _by_product(plan_inputs([offer("RegD", 3.0, 3.0)]), up, down)
    assert booked_up[0] is up and booked_down[0] is down


@pytest.mark.parametrize("seed", range(12))
def test_random_mixes_book_symmetric_bands_within_what_is_held(seed: int) -> None:
    """Any mix of products, prices, awards and bands: every symmetric product books as much down as up at every
    step, no side and no asset books more than it holds, a held band goes to some product whenever a one-sided
    product can take it, and awards the band covers are honoured."""
    rng = np.random.default_rng(seed)
    steps, assets = 8, 3
    names = list(rng.choice(["RegD", "FCR", "S-FRR", "RegD"], size=int(rng.integers(2, 5))))
    reserves = []
    for name in names:
        prices = rng.uniform(0.0, 10.0, (2, steps))
        if name in SYMMETRIC_PRODUCTS:
            prices[1] = prices[0]  # one band, offered "up_down" at one price (signals.models.AsOffer)
        awards = rng.uniform(0.0, 20_000.0, (2, steps)) * (rng.random((2, steps)) < 0.4)
        reserves.append(Reserve(str(name), prices[0], prices[1], awards[0], awards[1]))
    inputs = plan_inputs(reserves, steps, assets)
    up = rng.uniform(0.0, 40_000.0, (assets, steps)) * (rng.random((assets, steps)) < 0.8)
    down = rng.uniform(0.0, 40_000.0, (assets, steps)) * (rng.random((assets, steps)) < 0.8)
    booked_up, booked_down = _by_product(inputs, up, down)
    tol = 1e-6
    for k, reserve in enumerate(reserves):
        assert (booked_up[k] >= -tol).all() and (booked_down[k] >= -tol).all()
        if reserve.product in SYMMETRIC_PRODUCTS:
            np.testing.assert_allclose(booked_up[k].sum(axis=0), booked_down[k].sum(axis=0), atol=tol)
    for booked, held in ((booked_up, up), (booked_down, down)):
        assert (sum(booked) <= held + tol).all()
        if any(r.product not in SYMMETRIC_PRODUCTS for r in reserves):
            np.testing.assert_allclose(sum(booked).sum(axis=0), held.sum(axis=0), atol=tol)
    awarded = sum(np.maximum(r.awarded_up_w, r.awarded_down_w) for r in reserves)
    covered = np.minimum(up.sum(axis=0), down.sum(axis=0)) >= awarded  # steps whose band covers every award
    for k, reserve in enumerate(reserves):
        for booked, side in ((booked_up[k], reserve.awarded_up_w), (booked_down[k], reserve.awarded_down_w)):
            assert (booked.sum(axis=0)[covered] >= side[covered] - tol).all()
