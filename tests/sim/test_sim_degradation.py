"""Xu et al. 2018 degradation model (sim_devices.degradation) and the battery's SoH."""

from __future__ import annotations

import pytest

from sim_devices.battery import Battery
from sim_devices.degradation import XuDegradation, capacity_loss, depth_stress, temperature_stress


def cycle(model: XuDegradation, low: float, high: float, cycles: int, steps: int = 20) -> None:
    """Drive SoC between low and high; time per step is proportional to SoC moved (constant power)."""
    for _ in range(cycles):
        for target in (high, low):
            start = model.soc
            for k in range(1, steps + 1):
                soc = start + (target - start) * k / steps
                model.update(soc, abs(target - start) / steps * 3600)


def test_full_cycles_to_twenty_percent_fade_match_the_paper() -> None:
    model = XuDegradation(soc=0.0)
    cycle(model, 0.0, 1.0, 2800, steps=2)
    assert 0.2 < capacity_loss(model.cycle_damage()) < 0.22


def test_deep_cycles_age_faster_than_shallow_for_the_same_throughput() -> None:
    deep, shallow = XuDegradation(soc=0.1), XuDegradation(soc=0.45)
    cycle(deep, 0.1, 0.9, 50)  # depth 0.8
    cycle(shallow, 0.45, 0.55, 400)  # depth 0.1, 8x the cycles: same throughput, same mean SoC
    assert deep.elapsed_s == pytest.approx(shallow.elapsed_s)
    assert deep.soh < shallow.soh
    # Xu's S_δ is only mildly convex (≈ 20 % more damage per unit depth at δ 0.8 than at 0.1).
    assert deep.cycle_damage() > 1.1 * shallow.cycle_damage()


def test_battery_soh_falls_faster_with_deep_cycles() -> None:
    def run(low: float, high: float) -> Battery:
        bat = Battery(soc=(low + high) / 2, lease_timeout_s=0, ramp_w_per_s=0)
        throughput = 0.0
        direction = 1
        while throughput < 2_000_000:  # 2 MWh each way-ish
            bat.write_setpoint(direction * 50_000)
            bat.step(10.0)
            throughput += abs(bat.power_w) * 10 / 3600
            if (direction > 0 and bat.soc >= high) or (direction < 0 and bat.soc <= low):
                direction = -direction
        return bat

    deep, shallow = run(0.1, 0.9), run(0.45, 0.55)
    assert deep.soh < shallow.soh < 1.0
    assert deep.ageing.half_cycles < shallow.ageing.half_cycles


def test_stress_factors() -> None:
    assert depth_stress(0) == 0
    assert depth_stress(1.0) == pytest.approx(1 / 17_000)
    # Damage per unit depth grows with depth: that is what makes deep cycling expensive.
    assert depth_stress(0.2) / 0.2 < depth_stress(0.8) / 0.8
    assert temperature_stress(25) == pytest.approx(1.0, abs=1e-3)
    assert temperature_stress(40) > 1 > temperature_stress(10)


def test_calendar_ageing_without_cycling() -> None:
    model = XuDegradation(soc=0.5)
    for _ in range(365):
        model.update(0.5, 86_400)
    assert model.half_cycles == 0
    assert model.cycle_damage() == 0
    assert model.calendar_damage() == pytest.approx(4.14e-10 * 365 * 86_400, rel=1e-3)
    assert 0.9 < model.soh < 1.0
