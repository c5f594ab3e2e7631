"""How a money figure is shown to a person: with its currency and the way it flows (DESIGN.md §4).

One rule for every screen (the demo's table, the status page, reports): "earns 5,812 JPY over 24 h", never
"net cost -5,812", whose sign a reader has to guess. Amounts are rounded to the currency's minor unit (whole yen,
cents for most others); a figure that rounds to nothing "breaks even" rather than "earns 0" or "costs -0".
Importing this module pulls in nothing beyond the standard library, so any front end may use it.
"""

from __future__ import annotations

import math

# ISO 4217 currencies without a minor unit in everyday use (amounts shown as whole units)
ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND", "CLP", "ISK", "HUF", "TWD", "UGX", "XAF", "XOF", "PYG"})


def decimals(currency: str) -> int:
    """Digits after the point for amounts of `currency`: 0 for yen and the like, 2 otherwise."""
    return 0 if currency.upper() in ZERO_DECIMAL else 2


def amount(value: float, currency: str) -> str:
    """A magnitude with its currency and thousands separators: amount(-5812.4, "JPY") == "5,812 JPY".

    The sign is dropped on purpose: the words around it (`flow`) say which way the money goes."""
    if not math.isfinite(value):
        return f"— {currency}"
    return f"{abs(value):,.{decimals(currency)}f} {currency}"


def flow(net_cost: float, currency: str, hours: float | None = None) -> str:
    """A net cost (positive: paid; negative: earned) as words: "earns 5,812 JPY over 24 h", "costs 12.50 EUR",
    "breaks even over 24 h". `hours` names the span the figure covers (a plan's horizon); None: no span."""
    span = "" if hours is None else f" over {hours:g} h"
    if not math.isfinite(net_cost):
        return f"unknown{span}"
    if round(abs(net_cost), decimals(currency)) == 0:
        return f"breaks even{span}"
    verb = "costs" if net_cost > 0 else "earns"
    return f"{verb} {amount(net_cost, currency)}{span}"


def price(per_kwh: float, currency: str | None = None) -> str:
    """A price per kWh with at most 2 decimals and no trailing zeros: "8", "8.5", "-3.25"; with `currency`,
    "8 JPY/kWh". Where a column or line already names the currency, leave it out of each figure."""
    text = f"{per_kwh:,.2f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text if currency is None else f"{text} {currency}/kWh"
