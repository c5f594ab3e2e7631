"""agent.reasons: the few words the demo shows for why an asset does what the plan says, read from the plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from agent.dispatch.plan import Plan
from agent.reasons import EvNeed, PlanContext, reason

TOKYO = ZoneInfo("Asia/Tokyo")
START = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
STEP_S = 3600.0
# 24 hourly prices from 12:00 Tokyo: the low (8) now, the high (32) at 18:00 (step 6), 10 at 00:00 (step 12)
PRICES = np.array([8, 9, 10, 12, 18, 26, 32, 34, 30, 25, 20, 18, 10, 15, 15, 15, 15, 16, 18, 20, 21, 17, 12, 10.0])


def context(power_kw: list[float], reserve_kw: float = 0.0, updr_steps: int = 0) -> PlanContext:
    """One asset "a" planned at `power_kw` for the first steps (0 after), 12 kWh stored throughout."""
    steps = len(PRICES)
    power = np.zeros((1, steps))
    power[0, : len(power_kw)] = np.array(power_kw) * 1000
    reserve = np.zeros((1, steps))
    reserve[0, 0] = reserve_kw * 1000
    plan = Plan(["a"], STEP_S, power, np.full((1, steps + 1), 12_000.0), reserve, np.zeros((1, steps)), {})
    updr = np.arange(steps) < updr_steps if updr_steps else None
    return PlanContext(plan, START, PRICES, updr, 34.0)


@pytest.mark.parametrize(
    ("power_kw", "shown"),
    [
        ([20, 0, 0, 0, 0, 0, -20], "buys at 8, sells 18:00 at 32"),  # stores the low for the evening peak
        ([20], "8 is the 24-h low"),  # charges with nothing to sell later: the low itself is the reason
        ([0, 0, 0, 0, 0, 0, -20], "keeps 12 kWh for 18:00 (32)"),  # idle now, holding for the peak
        ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5], "waits for 00:00 at 10"),
        ([0], "idle: no trade pays in 24 h"),
        ([0.05], "idle: no trade pays in 24 h"),  # 50 W is solver noise, not an intention
    ],
)
def test_reason_at_the_first_step(power_kw: list[float], shown: str) -> None:
    assert reason(context(power_kw), "a", START, TOKYO) == shown


def test_discharging_names_the_refill_or_the_high() -> None:
    at_peak = START + timedelta(hours=6, minutes=10)  # 18:10 Tokyo: step 6, price 32
    plan = context([0, 0, 0, 0, 0, 0, -20, 0, 0, 0, 0, 0, 20])
    assert reason(plan, "a", at_peak, TOKYO) == "sells at 32, rebuys 00:00 at 10"
    at_top = START + timedelta(hours=7)  # 19:00: 34, the highest price left in the plan
    assert reason(context([0, 0, 0, 0, 0, 0, 0, -20]), "a", at_top, TOKYO) == "34 is the 24-h high"
    assert reason(context([0, 0, 0, 0, 0, 0, 0, 0, -20]), "a", at_top + timedelta(hours=1), TOKYO) == "sells at 30"


def test_an_ev_charging_for_its_departure_says_so_in_local_time() -> None:
    plan = context([0, 11])
    departure = datetime(2026, 12, 3, 22, 30, tzinfo=UTC)  # 07:30 the next morning in Tokyo
    assert reason(plan, "a", START + timedelta(hours=1), TOKYO, EvNeed(0.8, departure)) == "to 80% by 07:30"


def test_up_dr_and_reserves_are_named() -> None:
    assert reason(context([15], updr_steps=1), "a", START, TOKYO) == "up-DR event pays 34 to absorb"
    assert reason(context([0], reserve_kw=20), "a", START, TOKYO) == "holds 20 kW in reserve"


def test_no_reason_outside_the_plan() -> None:
    plan = context([20])
    assert reason(plan, "other", START, TOKYO) is None
    assert reason(plan, "a", START - timedelta(seconds=1), TOKYO) is None
    assert reason(plan, "a", START + timedelta(hours=24), TOKYO) is None
