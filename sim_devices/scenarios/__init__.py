"""Seeded synthetic scenarios: JEPX prices, up-DR events, a RegD-like regulation signal and EV sessions.

No market or EV data set is vendored (no licence, REFERENCE.md "Data"); these generators produce series in the same
formats with documented assumptions (see each module). Same seed, same data: scenarios and tests are reproducible.
"""

from sim_devices.scenarios.ev_sessions import SessionSpec, generate_sessions, sessions_by_charger, to_sim_params
from sim_devices.scenarios.prices import (
    AREAS,
    JEPX_COLUMNS,
    JST,
    PriceSet,
    generate_prices,
    read_jepx_csv,
)
from sim_devices.scenarios.regulation import (
    generate_regulation,
    regulation_capacity_prices,
    regulation_values,
    swing_h,
    turning_points,
)
from sim_devices.scenarios.updr import UpDrEventSpec, generate_updr_events

__all__ = [
    "AREAS",
    "JEPX_COLUMNS",
    "JST",
    "PriceSet",
    "SessionSpec",
    "UpDrEventSpec",
    "generate_prices",
    "generate_regulation",
    "generate_sessions",
    "generate_updr_events",
    "read_jepx_csv",
    "regulation_capacity_prices",
    "regulation_values",
    "sessions_by_charger",
    "swing_h",
    "to_sim_params",
    "turning_points",
]
