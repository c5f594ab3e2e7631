"""Plausibility checks and Measurement building shared by every driver.

Whatever the transport (Modbus registers, MQTT JSON), a decoded device answer is a dict of SI domain values; the
same checks decide whether it is data or a broken device / wrong map, so the agent sees one behaviour. Only the way
a bad value is described differs (a register address, a JSON key), so the caller supplies `bad`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import NoReturn

from agent.model import DeviceStatus, Measurement

# Plausibility bounds per domain field: values outside are a broken device or a wrong map, never data.
FRACTION_FIELDS = ("soc", "soh", "ev_target_soc", "ev_min_soc")
NON_NEGATIVE_FIELDS = (
    "rated_charge_w",
    "rated_discharge_w",
    "max_charge_w",
    "max_discharge_w",
    "capacity_wh",
    "energy_import_wh",
    "energy_export_wh",
    "lease_timeout_s",
)
FRACTION_SLACK = 1e-3  # rounding of percent registers
DEPARTURE_MIN_UNIX_S = 946_684_800  # 2000-01-01: earlier is an unset clock, not a departure
DEPARTURE_MAX_UNIX_S = 4_102_444_800  # 2100-01-01

# bad(field, value, problem) raises the driver's error naming where the value came from.
BadValue = Callable[[str, float, str], NoReturn]


def to_measurement(
    asset_id: str, values: Mapping[str, float], now: Callable[[], datetime], bad: BadValue
) -> Measurement:
    """Check plausibility and build the Measurement; `bad` is called (and must raise) for the first bad value."""
    for name, value in values.items():
        if not math.isfinite(value):
            bad(name, value, "is not a finite number")
    for name in FRACTION_FIELDS:
        if name in values and not -FRACTION_SLACK <= values[name] <= 1 + FRACTION_SLACK:
            bad(name, values[name], "is outside 0..1")
    for name in NON_NEGATIVE_FIELDS:
        if name in values and values[name] < 0:
            bad(name, values[name], "is negative")
    status_code = int(values.get("status", 0))
    try:
        status = DeviceStatus(status_code)
    except ValueError:
        bad("status", status_code, f"is not a known status code {[s.value for s in DeviceStatus]}")
    connected = bool(values["ev_connected"]) if "ev_connected" in values else None
    ev = connected is not False  # EV fields mean nothing while no EV is plugged in
    departure_s = values.get("ev_departure")
    return Measurement(
        asset_id=asset_id,
        at=now(),
        power_w=values["power_w"],
        status=status,
        fault_code=int(values.get("fault_code", 0)),
        setpoint_w=values.get("setpoint_w"),
        lease_timeout_s=values.get("lease_timeout_s"),
        rated_charge_w=values.get("rated_charge_w"),
        rated_discharge_w=values.get("rated_discharge_w"),
        max_charge_w=values.get("max_charge_w"),
        max_discharge_w=values.get("max_discharge_w"),
        soc=clip01(values.get("soc")) if ev else None,
        soh=clip01(values.get("soh")),
        capacity_wh=values.get("capacity_wh") if ev else None,
        ev_connected=connected,
        ev_target_soc=clip01(values.get("ev_target_soc")) if ev else None,
        ev_min_soc=clip01(values.get("ev_min_soc")) if ev else None,
        ev_departure=_departure(departure_s, bad) if ev and departure_s else None,
        voltage_v=values.get("voltage_v"),
        current_a=values.get("current_a"),
        energy_import_wh=values.get("energy_import_wh"),
        energy_export_wh=values.get("energy_export_wh"),
    )


def _departure(unix_s: float, bad: BadValue) -> datetime:
    if not DEPARTURE_MIN_UNIX_S <= unix_s <= DEPARTURE_MAX_UNIX_S:
        bad("ev_departure", unix_s, "is not a plausible UNIX time")
    return datetime.fromtimestamp(unix_s, UTC)


def clip01(value: float | None) -> float | None:
    return None if value is None else min(1.0, max(0.0, value))
