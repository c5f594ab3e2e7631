"""`vpp-agent probe`: read one live device once through a register map and show what the agent would see.

An integrator writing a map from a vendor's PDF checks it here against the real device before deploying it: each row
with its address, the raw value the device holds and the value in SI units and the agent's sign, then the Measurement
the control loop would get (or the error it would count). With `--sunspec` it walks the device's SunSpec model chain
instead and prints each model and what the SunSpec driver makes of them. Nothing is written to the device.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from agent.model import AssetKind, Measurement
from agent.ports import DriverError
from drivers.modbus import GatewayPool, ModbusDriver
from drivers.registermap import RegisterMap, load_map


@dataclass(frozen=True)
class RowSeen:
    """One map row as read: where it lives, what the device holds there, and what the agent makes of it."""

    label: str
    address: int  # as the map (and the vendor's document) numbers it, before address_base
    function: int
    raw: Any
    value: Any


@dataclass(frozen=True)
class ModelSeen:
    """One model of a SunSpec chain: its id, pysunspec2's name for it (None for a vendor model it does not define),
    the address of its ID register and its declared length."""

    model_id: int
    name: str | None
    address: int
    length: int


@dataclass(frozen=True)
class ProbeResult:
    target: str
    map_id: str
    requests: int  # read requests one poll takes
    rows: list[RowSeen]
    measurement: Measurement | None
    error: str | None
    models: list[ModelSeen] = dataclasses.field(default_factory=list)  # --sunspec: the chain in device order
    control: str | None = None  # --sunspec: the control model the driver chose


async def probe(host: str, port: int, unit_id: int, map_name: str, timeout_s: float) -> ProbeResult:
    """One poll of the device at host:port/unit through `map_name` (an id in drivers/maps or a path). A failed read
    is part of the result, not an exception: the integrator wants to see which request the device refused."""
    register_map = load_map(map_name)
    pool = GatewayPool(timeout_s=timeout_s)
    driver = ModbusDriver("probe", register_map, pool.get(host, port), unit_id)
    target = f"{host}:{port} unit {unit_id}"
    try:
        measurement: Measurement | None = await driver.read()
        error = None
    except DriverError as exc:
        measurement, error = None, str(exc)
    finally:
        pool.close()
    rows = _rows(register_map, driver) if driver.last_reading is not None else []
    return ProbeResult(target, register_map.id, len(register_map.spans), rows, measurement, error)


async def probe_sunspec(
    host: str, port: int, unit_id: int, timeout_s: float, kind: str, product: str | None
) -> ProbeResult:
    """Walk the SunSpec chain of the device at host:port/unit and poll it once through the SunSpec driver (as a
    `kind` device, or as the product map `product` says)."""
    from drivers.sunspec.driver import SunSpecDriver
    from drivers.sunspec.models import SunSpecModelError, layout
    from drivers.sunspec.profile import load_product

    loaded = load_product(product) if product is not None else None
    pool = GatewayPool(timeout_s=timeout_s)
    driver = SunSpecDriver("probe", pool.get(host, port), unit_id, AssetKind(kind), product=loaded)
    target = f"{host}:{port} unit {unit_id}"
    measurement: Measurement | None = None
    error: str | None = None
    try:
        await driver.discover()
        measurement = await driver.read()
    except DriverError as exc:
        error = str(exc)
    finally:
        pool.close()
    models: list[ModelSeen] = []
    if driver.device is not None:
        for entry in driver.device.chain:
            try:
                name: str | None = layout(entry.model_id, entry.length).name
            except SunSpecModelError:
                name = None
            models.append(ModelSeen(entry.model_id, name, entry.address, entry.length))
    device = driver.device
    return ProbeResult(
        target, f"SunSpec at {device.base}" if device is not None else "SunSpec", len(device.reads) if device else 0,
        [], measurement, error, models, None if driver.control is None else str(driver.control.model_id),
    )


def _rows(register_map: RegisterMap, driver: ModbusDriver) -> list[RowSeen]:
    reading = driver.last_reading
    assert reading is not None
    seen = []
    for label, raw in reading.raw.items():
        codec = register_map.codec(label)
        value = reading.values.get(label, reading.extras.get(label))
        seen.append(RowSeen(label, codec.row.address, register_map.spans[codec.span].function, raw, value))
    return sorted(seen, key=lambda r: (r.function, r.address))


def render(result: ProbeResult) -> str:
    """The plain-text report: rows, then the Measurement's fields that have a value, then the verdict."""
    lines = [f"{result.target} through map {result.map_id} ({result.requests} read requests per poll)"]
    if result.models:
        lines.append(f"  {'model':>5}  {'name':<24} {'address':>7} {'length':>6}")
        for model in result.models:
            name = model.name or "(not defined by pysunspec2: skipped)"
            lines.append(f"  {model.model_id:>5}  {name:<24} {model.address:>7} {model.length:>6}")
        lines.append(f"  control through model {result.control}" if result.control else "  no control model used")
    if result.rows:
        lines.append(f"  {'row':<24} {'fn':>2} {'address':>7}  {'raw':>14}  value (SI, agent sign)")
        for row in result.rows:
            raw = _fmt(row.raw)
            lines.append(f"  {row.label:<24} {row.function:>2} {row.address:>7}  {raw:>14}  {_fmt(row.value)}")
    if result.measurement is not None:
        lines.append("  measurement:")
        for name, value in _fields(result.measurement).items():
            lines.append(f"    {name:<22} {_fmt(value)}")
        if result.measurement.unmapped_status is not None:
            lines.append(
                f"  warning: status code {result.measurement.unmapped_status} is not in the map's status codes: the "
                "agent would treat the device as faulted (add the code to the map)"
            )
    if result.error is not None:
        lines.append(f"  error: {result.error}")
    return "\n".join(lines)


def as_json(result: ProbeResult) -> str:
    payload = {
        "target": result.target,
        "map": result.map_id,
        "requests": result.requests,
        "rows": [dataclasses.asdict(r) for r in result.rows],
        "models": [dataclasses.asdict(m) for m in result.models],
        "control": result.control,
        "measurement": _fields(result.measurement) if result.measurement is not None else None,
        "error": result.error,
    }
    return json.dumps(payload, default=str, indent=2)


def _fields(measurement: Measurement) -> dict[str, Any]:
    """The Measurement's fields that carry a value (the poll time and the probe's own asset id left out)."""
    skip = {"asset_id", "at"}
    return {
        f.name: getattr(measurement, f.name)
        for f in dataclasses.fields(measurement)
        if f.name not in skip and getattr(measurement, f.name) is not None
    }


def _fmt(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name.lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
