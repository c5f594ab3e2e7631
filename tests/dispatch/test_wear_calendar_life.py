"""Calendar life per hour at an SoC (`WearFit.calendar_life_per_h`): one curve that the planner's calendar price is
the slope of (agent.dispatch.degradation) and the opportunity book counts life by (agent.dispatch.wear_book), and
the evaluation's `aware-value` feeding the book the SoCs it needs."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from agent.dispatch.degradation import calendar_bends
from agent.dispatch.wear_fits import fit
from evaluation.evaluate import EvalConfig, scenario_of
from evaluation.plant import Plant, fast_substeps
from evaluation.policies import AWARE_VALUE, make_policy

R = 3_000_000.0
USABLE_WH = 95_000.0  # a pack of 100 kWh at SoH 0.95


def _price_between(lo: float, hi: float, base: float, bends: tuple[tuple[float, float], ...]) -> float:
    """The calendar price per Wh·h the planner charges for energy held between SoCs lo and hi (one band)."""
    return base + sum(extra for at_wh, extra in bends if at_wh <= lo * USABLE_WH + 1e-9)


@pytest.mark.parametrize(("chemistry", "source"), [("lfp", "blast"), ("nmc", "blast"), ("nca", "blast"), ("lfp", "xu")])
def test_the_calendar_price_is_the_slope_of_the_life_the_book_counts(chemistry: str, source: str) -> None:
    """Per band of the SoC grid, and beyond it, the price per Wh·h held is R × d(life per hour)/dSoC / usable."""
    model = fit(chemistry, 25.0, source)
    base, bends = calendar_bends(R, USABLE_WH, model)
    edges = [0.03, *model.calendar_socs, 0.97]  # outside the grid: its end slopes go on
    for lo, hi in itertools.pairwise(edges):
        rate = model.calendar_life_per_h(np.array([lo, hi]))
        if min(rate) <= 0:
            continue  # where the curve is clamped at 0 (NMC near SoC 0), no slope to compare
        slope = float(rate[1] - rate[0]) / (hi - lo)
        assert _price_between(lo, hi, base, bends) == pytest.approx(R * slope / USABLE_WH, rel=1e-3), (lo, hi)


def test_without_a_convex_curve_the_life_is_the_line_the_price_is_the_slope_of() -> None:
    model = replace(fit("nmc", 25.0), calendar_socs=np.zeros(0), calendar_convex_per_h=np.zeros(0))
    base, bends = calendar_bends(R, USABLE_WH, model)
    assert bends == ()
    rate = model.calendar_life_per_h(np.array([0.3, 0.7]))
    assert base == pytest.approx(R * float(rate[1] - rate[0]) / 0.4 / USABLE_WH, rel=1e-9)
    assert float(model.calendar_life_per_h(0.5)) == pytest.approx(
        model.calendar_base_per_h + 0.5 * model.calendar_slope_per_h, rel=1e-12
    )


def test_the_calendar_life_is_never_negative() -> None:
    """BLAST-Lite's NMC curve continued below SoC 0.1 with its first slope crosses 0 before SoC 0."""
    model = fit("nmc", 25.0)
    assert float(model.calendar_life_per_h(0.0)) == 0.0
    assert float(model.calendar_life_per_h(0.1)) == pytest.approx(float(model.calendar_convex_per_h[0]))


def test_the_evaluations_book_is_given_each_steps_soc_at_its_start_and_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """`aware-value` settles step k at the next decide: the SoCs it passes are the pack's before and after step k."""
    config = EvalConfig(days=1, fleet="tiny", strategies=(AWARE_VALUE,), use_blast=False, step_s=3600)
    scenario = scenario_of(config)
    policy = make_policy(AWARE_VALUE, scenario, config.horizon_h, config.full_info_horizon_h, config.wear_segments)
    book = policy.wear_book  # type: ignore[union-attr]
    assert book is not None
    calls: list[tuple[str, float, object, object]] = []
    settle = book.settle

    def spy(state, start_s, end_s, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((state.id, start_s, kwargs.get("soc_start"), kwargs.get("soc_end")))
        return settle(state, start_s, end_s, **kwargs)

    monkeypatch.setattr(book, "settle", spy)
    plant = Plant(scenario)
    packs = [b.id for b in scenario.fleet.batteries]
    socs: list[dict[str, float]] = []
    with fast_substeps():
        for _ in range(4):
            socs.append({i: float(plant.devices[i].fields()["soc"]) for i in packs})
            safe = policy.decide(plant)
            plant.step(safe.power_w, safe.reserve_up_w, safe.reserve_down_w)
    t0 = scenario.start.timestamp()
    assert len(calls) == 3 * len(packs)  # steps 0..2, settled at decides 1..3
    for asset_id, start_s, soc_start, soc_end in calls:
        k = round((start_s - t0) / scenario.step_s)
        assert soc_start == pytest.approx(socs[k][asset_id])
        assert soc_end == pytest.approx(socs[k + 1][asset_id])
    assert any(socs[k][i] != socs[k + 1][i] for k in range(3) for i in packs), "the packs moved: a real check"
