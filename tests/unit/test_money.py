"""agent.money: every money figure shown names its currency and which way it flows (issue 16: "net cost -5,812"
had neither)."""

from __future__ import annotations

import math

import pytest

from agent.money import amount, flow, price


@pytest.mark.parametrize(
    ("net_cost", "currency", "hours", "shown"),
    [
        (-5812.4, "JPY", 24, "earns 5,812 JPY over 24 h"),
        (1558.0, "JPY", 24, "costs 1,558 JPY over 24 h"),
        (12.5, "EUR", None, "costs 12.50 EUR"),
        (-0.004, "EUR", 0.5, "breaks even over 0.5 h"),  # rounds to 0.00: no "earns 0.00" or "costs -0.00"
        (0.4, "JPY", 24, "breaks even over 24 h"),
        (-0.6, "JPY", None, "earns 1 JPY"),
        (math.nan, "JPY", 24, "unknown over 24 h"),
    ],
)
def test_flow_names_currency_and_direction(net_cost: float, currency: str, hours: float | None, shown: str) -> None:
    assert flow(net_cost, currency, hours) == shown


def test_amount_is_a_magnitude_in_the_currency_minor_unit() -> None:
    assert amount(-1234567.891, "JPY") == "1,234,568 JPY"
    assert amount(-1234567.891, "USD") == "1,234,567.89 USD"
    assert amount(3.0, "krw") == "3 krw"


@pytest.mark.parametrize(
    ("value", "shown"), [(8, "8"), (8.5, "8.5"), (8.25, "8.25"), (8.256, "8.26"), (-3.0, "-3"), (-0.001, "0"),
                         (1000, "1,000"), (0.0, "0")],
)  # fmt: skip
def test_price_is_short_and_says_its_unit_when_asked(value: float, shown: str) -> None:
    assert price(value) == shown
    assert price(value, "JPY") == f"{shown} JPY/kWh"
