"""Domain model shared by the agent and the drivers.

Everything here is in SI units (W, Wh, V, A, s) with SoC/SoH as fractions 0..1 and the one sign convention of
DESIGN.md §4: power > 0 flows from the grid into the device (charging, consumption), < 0 flows out. Drivers convert
device units and signs at the boundary; nothing past a driver ever sees kW, percent or a flipped sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum


class AssetKind(StrEnum):
    """What an asset is; decides which fields a measurement must carry and whether it takes setpoints."""

    EV_CHARGER = "ev_charger"
    BATTERY = "battery"
    METER = "meter"

    @property
    def controllable(self) -> bool:
        return self is not AssetKind.METER


class DeviceStatus(IntEnum):
    """Operating state codes shared by every register map (maps carry these codes as-is)."""

    STANDBY = 0
    CHARGING = 1
    DISCHARGING = 2
    FAULT = 3
    NO_EV = 4


# Domain fields a register map may feed, with the unit each is held in. A map row naming any other field is
# rejected when the map loads, so a typo cannot silently drop a value.
MEASUREMENT_FIELDS: dict[str, str] = {
    "status": "code",
    "fault_code": "code",
    "power_w": "W",
    "setpoint_w": "W",
    "lease_timeout_s": "s",
    "rated_charge_w": "W",
    "rated_discharge_w": "W",
    "max_charge_w": "W",
    "max_discharge_w": "W",
    "soc": "fraction",
    "soh": "fraction",
    "capacity_wh": "Wh",
    "ev_connected": "bool",
    "ev_target_soc": "fraction",
    "ev_min_soc": "fraction",
    "ev_departure": "unix_s",
    "voltage_v": "V",
    "current_a": "A",
    "energy_import_wh": "Wh",
    "energy_export_wh": "Wh",
}

# Fields a driver may write. Everything else is read-only from the agent's point of view.
WRITABLE_FIELDS = frozenset({"setpoint_w", "lease_timeout_s"})


@dataclass(frozen=True, slots=True)
class Measurement:
    """One poll of one device, already converted to SI and the agent's sign convention.

    Optional fields are None when the device model does not report them (a meter has no SoC) or, for EV fields,
    when no EV is plugged in.

    `at` is when the device measured its power, as the agent's clock tells it: the poll for a device that is read,
    the arrival for one that pushes (OCPP meter values, MQTT telemetry), so a pushed value keeps its age across the
    polls that hand it out again. The controller needs that age: a reading older than the site meter's may describe
    the asset before its last setpoint (control/assets_now.py).
    """

    asset_id: str
    at: datetime
    power_w: float
    status: DeviceStatus = DeviceStatus.STANDBY
    fault_code: int = 0
    setpoint_w: float | None = None
    lease_timeout_s: float | None = None
    rated_charge_w: float | None = None
    rated_discharge_w: float | None = None
    max_charge_w: float | None = None
    max_discharge_w: float | None = None
    soc: float | None = None
    soh: float | None = None
    capacity_wh: float | None = None
    ev_connected: bool | None = None
    ev_target_soc: float | None = None
    ev_min_soc: float | None = None
    ev_departure: datetime | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    energy_import_wh: float | None = None
    energy_export_wh: float | None = None
    # The device's own state code when its map does not know it: status is then FAULT (not operable: no setpoints,
    # still polled, not a failed poll), and this says which code to add to the map.
    unmapped_status: int | None = None


@dataclass(frozen=True, slots=True)
class Setpoint:
    """A power request for one asset after the SafetyEnvelope; `reasons` names every limit that cut it."""

    asset_id: str
    power_w: float
    requested_w: float
    reasons: tuple[str, ...] = ()

    @property
    def clamped(self) -> bool:
        return bool(self.reasons)
