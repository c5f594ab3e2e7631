"""OCPP 2.1 fields <-> the agent's domain values (DESIGN.md §4): the one place units, multipliers and signs change.

Everything here works on the camelCase JSON of the messages as the OCPP 2.1 schemas define them, so a golden test
can hand it the text of the specification's field descriptions and nothing else:
- SampledValue: `value` x 10^`unitOfMeasure.multiplier`, in `unitOfMeasure.unit` ("W"/"Wh" by default for power and
  energy; "kW"/"kWh" are scaled by 1000; SoC is "Percent"). Power.Active.Import is power into the EV, .Export out of
  it; the agent's power is Import - Export (> 0 into the device), so a V2X station that reports discharge as a
  negative Import reads the same.
- ChargingSchedulePeriod.setpoint: W when chargingRateUnit is "W", negative = discharge (2.1: "Use negative values
  for discharging"), which is already the agent's sign.
- NotifyEVChargingNeeds: departureTime (RFC 3339), energies in Wh relative to the EV's state of charge when sent
  (evTargetEnergyRequest "energy to requested state of charge", evMinEnergyRequest "energy to minimum allowed state
  of charge"), targetSoC / stateOfCharge in percent, powers in W.
- OCPP 2.0.1 (charge-only): ChargingSchedulePeriod.limit in W, never negative; the profile's validTo carries the
  lease (2.0.1 has no maxOfflineDuration).
- GetCompositeSchedule: the period in force at the schedule's start is what the station will do: its `setpoint`
  when it has one (2.1 CentralSetpoint), else its `limit`, in the composite's chargingRateUnit (W asked for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

# measurand -> (domain field, sign): values of fields listed twice are summed with their sign
MEASURANDS: dict[str, tuple[str, float]] = {
    "Power.Active.Import": ("power_w", 1.0),
    "Power.Active.Export": ("power_w", -1.0),
    "Energy.Active.Import.Register": ("energy_import_wh", 1.0),
    "Energy.Active.Export.Register": ("energy_export_wh", 1.0),
    "SoC": ("soc", 1.0),
    "Power.Active.Setpoint": ("setpoint_w", 1.0),
    "Voltage": ("voltage_v", 1.0),
    "Current.Import": ("current_a", 1.0),
    "Current.Export": ("current_a", -1.0),
    "Display.BatteryEnergyCapacity": ("capacity_wh", 1.0),
}
# unit -> factor to the SI unit of the domain field ("Percent" to a fraction)
UNIT_FACTORS: dict[str, float] = {
    "W": 1.0, "kW": 1000.0, "Wh": 1.0, "kWh": 1000.0, "V": 1.0, "A": 1.0, "Percent": 0.01,
}
DEFAULT_UNITS: dict[str, str] = {"SoC": "Percent", "Voltage": "V", "Current.Import": "A", "Current.Export": "A"}

CHARGING_RATE_UNIT = "W"
OPERATION_MODE = "CentralSetpoint"
# what SetVariables at boot asks every station to sample during a transaction (SampledDataCtrlr.
# TxUpdatedMeasurands): the fields the agent steers and settles by; each one is read by MEASURANDS above
TX_MEASURANDS: tuple[str, ...] = (
    "Power.Active.Import", "Power.Active.Export", "Energy.Active.Import.Register", "Energy.Active.Export.Register",
    "SoC",
)
assert all(m in MEASURANDS for m in TX_MEASURANDS)
# a composite schedule matches the agent's request when it is this close: the setpoint is sent rounded to 0.1 W,
# a station may round to its own resolution
VERIFY_TOLERANCE_W = 1.0
VERIFY_TOLERANCE_FRACTION = 0.01


class CodecError(ValueError):
    """A field the agent needs is malformed; the message names the field and the value."""


def sampled_si(sampled: Mapping[str, Any]) -> tuple[str, float] | None:
    """(domain field, signed SI value) of one SampledValue, or None for a measurand the agent does not use or a
    per-phase value (the agent takes totals only)."""
    measurand = sampled.get("measurand", "Energy.Active.Import.Register")  # the schema's default measurand
    target = MEASURANDS.get(measurand)
    if target is None or sampled.get("phase") is not None:
        return None
    field, sign = target
    unit_of_measure = sampled.get("unitOfMeasure") or {}
    default_unit = DEFAULT_UNITS.get(measurand, "Wh" if measurand.startswith("Energy") else "W")
    unit = unit_of_measure.get("unit", default_unit)
    if unit not in UNIT_FACTORS:
        raise CodecError(f"{measurand}: unit {unit!r} is not one of {sorted(UNIT_FACTORS)}")
    multiplier = unit_of_measure.get("multiplier", 0)
    value = float(sampled["value"]) * 10.0 ** int(multiplier) * UNIT_FACTORS[unit]
    if not math.isfinite(value):
        raise CodecError(f"{measurand}: value {sampled['value']!r} x 10^{multiplier} is not finite")
    return field, sign * value


def latest_meter_value(meter_values: Sequence[Mapping[str, Any]]) -> tuple[float | None, dict[str, float]]:
    """(UNIX s it was measured, domain values) of the latest MeterValue by timestamp; (None, {}) when there is
    none. The time matters to whoever must tell a value measured before a write from one measured after it."""
    if not meter_values:
        return None, {}
    return max((meter_value_fields(mv) for mv in meter_values), key=lambda pair: pair[0])


def meter_value_fields(meter_value: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
    """(UNIX s of its timestamp: when it was measured, domain values) of one MeterValue."""
    when = _instant(meter_value.get("timestamp", ""), "meterValue.timestamp").timestamp()
    values: dict[str, float] = {}
    for sampled in meter_value.get("sampledValue", []):
        converted = sampled_si(sampled)
        if converted is not None:
            field, value = converted
            values[field] = values.get(field, 0.0) + value
    return when, values


def session_fields(needs: Mapping[str, Any], soc_now: float | None) -> dict[str, float]:
    """Domain EV-session values of a NotifyEVChargingNeeds `chargingNeeds`: ev_departure (UNIX s), capacity_wh,
    ev_target_soc, ev_min_soc, rated/max charge and discharge W. Energies (Wh, from the SoC when sent) become SoC
    fractions with the pack's capacity; `soc_now` is the latest SoC reading when the message carries none."""
    out: dict[str, float] = {}
    dc = needs.get("dcChargingParameters") or {}
    v2x = needs.get("v2xChargingParameters") or {}
    if "departureTime" in needs:
        out["ev_departure"] = _instant(needs["departureTime"], "chargingNeeds.departureTime").timestamp()
    capacity = dc.get("evEnergyCapacity")
    if capacity is not None and capacity > 0:
        out["capacity_wh"] = float(capacity)
    if dc.get("stateOfCharge") is not None:
        soc_now = dc["stateOfCharge"] / 100.0
    if v2x.get("targetSoC") is not None:
        out["ev_target_soc"] = v2x["targetSoC"] / 100.0
    elif capacity and soc_now is not None:
        energy = v2x.get("evTargetEnergyRequest", dc.get("energyAmount"))
        if energy is not None:
            out["ev_target_soc"] = _clip01(soc_now + energy / capacity)
    if capacity and soc_now is not None and v2x.get("evMinEnergyRequest") is not None:
        out["ev_min_soc"] = _clip01(soc_now + v2x["evMinEnergyRequest"] / capacity)
    charge_w = v2x.get("maxChargePower", dc.get("evMaxPower"))
    if charge_w is not None:
        out["rated_charge_w"] = out["max_charge_w"] = float(charge_w)
    if v2x.get("maxDischargePower") is not None:
        out["rated_discharge_w"] = out["max_discharge_w"] = float(v2x["maxDischargePower"])
    return out


def setpoint_value(power_w: float) -> float:
    """The `setpoint` field for `power_w` (agent sign, W): the same sign, rounded to 0.1 W."""
    if not math.isfinite(power_w):
        raise CodecError(f"setpoint {power_w!r} W is not finite")
    return round(float(power_w), 1)


def central_setpoint_request(
    evse_id: int, profile_id: int, transaction_id: str, power_w: float, lease_s: int, stack_level: int = 1
) -> dict[str, Any]:
    """SetChargingProfileRequest: a TxProfile of kind Dynamic whose one period follows `power_w` in CentralSetpoint
    mode; the station drops it after `lease_s` s offline (maxOfflineDuration + invalidAfterOfflineDuration), the
    lease of DESIGN.md §8 rule 2."""
    return {
        "evseId": evse_id,
        "chargingProfile": {
            "id": profile_id,
            "stackLevel": stack_level,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Dynamic",
            "transactionId": transaction_id,
            "maxOfflineDuration": lease_s,
            "invalidAfterOfflineDuration": True,
            "chargingSchedule": [
                {
                    "id": profile_id,
                    "chargingRateUnit": CHARGING_RATE_UNIT,
                    "chargingSchedulePeriod": [
                        {"startPeriod": 0, "operationMode": OPERATION_MODE, "setpoint": setpoint_value(power_w)}
                    ],
                }
            ],
        },
    }


def dynamic_update_request(profile_id: int, power_w: float) -> dict[str, Any]:
    """UpdateDynamicScheduleRequest: a new setpoint within the profile the station accepted."""
    return {"chargingProfileId": profile_id, "scheduleUpdate": {"setpoint": setpoint_value(power_w)}}


def charge_limit_value(power_w: float) -> float:
    """The 2.0.1 `limit` for `power_w` (W, > 0 charging): rounded to 0.1 W (the schema takes one decimal); a charge
    limit cannot be negative (2.0.1 defines no discharge), so a negative request is a caller's error."""
    value = setpoint_value(power_w)
    if value < 0:
        raise CodecError(f"charge limit {power_w!r} W is negative: an OCPP 2.0.1 station cannot discharge")
    return value


def charge_limit_request(
    evse_id: int, profile_id: int, transaction_id: str, power_w: float, lease_s: int, now: datetime,
    stack_level: int = 1,
) -> dict[str, Any]:
    """SetChargingProfileRequest for an OCPP 2.0.1 (charge-only) station: a TxProfile of kind Absolute starting now
    with one period limiting the EVSE to `power_w`, valid until now + `lease_s` (validTo: the lease; after it the
    station falls back to the TxDefaultProfile `default_limit_request` installed at boot)."""
    return {
        "evseId": evse_id,
        "chargingProfile": {
            "id": profile_id,
            "stackLevel": stack_level,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "transactionId": transaction_id,
            "validTo": stamp(now + timedelta(seconds=lease_s)),
            "chargingSchedule": [
                {
                    "id": profile_id,
                    "startSchedule": stamp(now),
                    "chargingRateUnit": CHARGING_RATE_UNIT,
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": charge_limit_value(power_w)}],
                }
            ],
        },
    }


def default_limit_request(evse_id: int, profile_id: int, power_w: float) -> dict[str, Any]:
    """SetChargingProfileRequest: the TxDefaultProfile (stack level 0, kind Relative: from each transaction's
    start) an OCPP 2.0.1 EVSE falls back to once the agent's TxProfile expires: the safe default of the lease."""
    return {
        "evseId": evse_id,
        "chargingProfile": {
            "id": profile_id,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": [
                {
                    "id": profile_id,
                    "chargingRateUnit": CHARGING_RATE_UNIT,
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": charge_limit_value(power_w)}],
                }
            ],
        },
    }


def composite_schedule_request(evse_id: int, duration_s: int) -> dict[str, Any]:
    """GetCompositeScheduleRequest: what the EVSE will do over the next `duration_s`, in W."""
    return {"duration": duration_s, "evseId": evse_id, "chargingRateUnit": CHARGING_RATE_UNIT}


def composite_power_w(answer: Mapping[str, Any]) -> float:
    """The power (agent sign, W) a GetCompositeScheduleResponse says the EVSE follows now: the period in force at
    the schedule's start, its `setpoint` when given (negative = discharge), else its `limit`."""
    if answer.get("status") != "Accepted":
        info = answer.get("statusInfo") or {}
        raise CodecError(f"GetCompositeSchedule {answer.get('status')!r} {info.get('reasonCode', '')}".rstrip())
    schedule = answer.get("schedule")
    if not schedule:
        raise CodecError("GetCompositeSchedule: Accepted without a schedule")
    unit = schedule.get("chargingRateUnit")
    if unit != CHARGING_RATE_UNIT:
        raise CodecError(f"composite schedule in {unit!r}, not W: cannot be compared with the agent's W")
    periods = [p for p in schedule.get("chargingSchedulePeriod", []) if p.get("startPeriod", 0) <= 0]
    if not periods:
        raise CodecError("composite schedule has no period in force at its start")
    period = max(periods, key=lambda p: p.get("startPeriod", 0))
    value = period.get("setpoint", period.get("limit"))
    if value is None or not math.isfinite(float(value)):
        raise CodecError(f"composite schedule period has neither setpoint nor limit: {period!r}")
    return float(value)


def schedule_matches(asked_w: float, composite_w: float) -> bool:
    """True when the station's composite power is what the agent asked (same sign, within the tolerance)."""
    return abs(composite_w - asked_w) <= max(VERIFY_TOLERANCE_W, VERIFY_TOLERANCE_FRACTION * abs(asked_w))


def measurand_variables(interval_s: int) -> list[dict[str, Any]]:
    """SetVariablesRequest.setVariableData: SampledDataCtrlr.TxUpdatedMeasurands = TX_MEASURANDS (a comma
    separated list, OCPP 2.x part 2 "MemberList") and TxUpdatedInterval = `interval_s` seconds."""
    component = {"name": "SampledDataCtrlr"}
    return [
        {"component": component, "variable": {"name": "TxUpdatedMeasurands"},
         "attributeValue": ",".join(TX_MEASURANDS)},
        {"component": component, "variable": {"name": "TxUpdatedInterval"}, "attributeValue": str(int(interval_s))},
    ]


def stamp(when: datetime) -> str:
    """An RFC 3339 UTC date-time with milliseconds, as OCPP messages carry them."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instant(text: str, where: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise CodecError(f"{where}: {text!r} is not an RFC 3339 date-time") from exc
    if when.tzinfo is None:
        raise CodecError(f"{where}: {text!r} has no UTC offset")
    return when


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))
