"""Sharing power over assets: by headroom (the rule) and within the plan's reserves (activations in dispatch mode)."""

from __future__ import annotations

import pytest

from agent.control.rule import share_by_headroom, share_within_reserves
from agent.control.safety import Bounds


def bounds(low: float, high: float) -> Bounds:
    return Bounds(low, high, "rated", "rated")


FLEET = {"a": bounds(-50_000, 50_000), "b": bounds(-50_000, 50_000), "ev": bounds(-7_000, 7_000)}


def test_headroom_sharing_is_exact_when_the_fleet_can_deliver() -> None:
    requests = share_by_headroom(-53_500, FLEET)
    assert sum(requests.values()) == pytest.approx(-53_500)
    assert requests["a"] == pytest.approx(requests["b"]) and requests["ev"] == pytest.approx(-53_500 * 7 / 107)


def test_activation_lands_on_the_assets_the_plan_reserved() -> None:
    planned = {"a": 10_000, "b": 0.0, "ev": 5_000}
    up = {"a": 30_000, "b": 0.0, "ev": 0.0}  # the plan held 30 kW of up on battery a only
    requests = share_within_reserves(15_000 - 30_000, planned, FLEET, up, {})
    assert requests == pytest.approx({"a": -20_000, "b": 0.0, "ev": 5_000})  # the EV keeps charging as planned


def test_a_dropped_reserved_asset_is_covered_by_the_others_by_headroom() -> None:
    planned = {"b": 0.0, "ev": 5_000}
    fleet = {k: v for k, v in FLEET.items() if k != "a"}  # a is out: not in the bounds any more
    requests = share_within_reserves(5_000 - 30_000, planned, fleet, {"a": 30_000, "b": 10_000}, {})
    assert sum(requests.values()) == pytest.approx(-25_000)
    # b first takes its own 10 kW of reserve; of the other 20 kW the EV first stops charging (5 kW: no battery
    # discharges to feed a charging EV), and the last 15 kW go by room: b 40 kW left, the EV 7 kW
    assert requests["b"] == pytest.approx(-10_000 - 15_000 * 40 / 47)
    assert requests["ev"] == pytest.approx(0.0 - 15_000 * 7 / 47)
    assert all(fleet[k].low_w <= v <= fleet[k].high_w for k, v in requests.items())


def test_reserve_split_is_proportional_and_never_past_bounds() -> None:
    planned = {"a": 0.0, "b": 0.0, "ev": 0.0}
    down = {"a": 20_000, "b": 10_000, "ev": 0.0}
    requests = share_within_reserves(15_000, planned, FLEET, {}, down)
    assert requests == pytest.approx({"a": 10_000, "b": 5_000, "ev": 0.0})
    assert share_within_reserves(500_000, planned, FLEET, {}, down) == pytest.approx(
        {"a": 50_000, "b": 50_000, "ev": 7_000}
    )


def test_a_change_never_charges_one_asset_from_another() -> None:
    """The plan has both batteries discharging; an up-DR event asks the site for 70 kW more. Shared by room alone
    (90 and 70 kW) battery a would still discharge 0.6 kW while b charges 10.6 kW: 0.6 kW going round through two
    converters for nothing. Both are brought to 0 W first, and only the last 10 kW charge them, by room."""
    planned = {"a": -40_000, "b": -20_000}
    fleet = {"a": bounds(-50_000, 50_000), "b": bounds(-50_000, 50_000)}
    requests = share_within_reserves(10_000, planned, fleet, {}, {})
    assert requests == pytest.approx({"a": 5_000, "b": 5_000})
    smaller = share_within_reserves(-30_000, planned, fleet, {}, {})  # less than the discharge: nobody crosses 0
    assert sum(smaller.values()) == pytest.approx(-30_000) and all(v <= 0 for v in smaller.values())
