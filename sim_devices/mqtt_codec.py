"""Reading MQTT device maps (drivers/mqtt_maps/*.toml) as data, and turning device state into JSON and back.

DESIGN.md §2: the simulator shares only data with drivers, never code, so a wrong map cannot look right on both
ends. This is the simulator's own reading of the format (tomllib + plain checks), independent of drivers/mqtt_map.py.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from agent.model import MEASUREMENT_FIELDS, WRITABLE_FIELDS
from sim_devices.maps import UNIT_FACTORS, MapError, read_map_file

ROW_KEYS = frozenset({"field", "key", "unit", "scale", "invert", "access", "description"})


class CommandError(ValueError):
    """A command payload the device refuses; the message says why."""


@dataclass(frozen=True, slots=True)
class MqttRow:
    field: str
    path: tuple[str, ...]
    unit: str
    factor: float  # device value * factor = SI value
    writable: bool

    @property
    def key(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True, slots=True)
class MqttModel:
    """A parsed MQTT map: what the simulated device publishes and which command keys it accepts."""

    id: str
    kind: str
    telemetry: str
    command: str
    rows: tuple[MqttRow, ...]

    def telemetry_json(self, values: Mapping[str, float]) -> dict[str, Any]:
        """The telemetry object for SI domain `values`; fields the physics does not report are left out."""
        out: dict[str, Any] = {}
        for row in self.rows:
            if row.field not in values:
                continue
            value = values[row.field]
            device: Any
            if row.unit == "bool":
                device = bool(value)
            elif row.unit in ("code", "unix_s"):
                device = round(value)
            else:
                device = value / row.factor + 0.0  # + 0.0 turns -0.0 into 0.0
            node = out
            for part in row.path[:-1]:
                node = node.setdefault(part, {})
            node[row.path[-1]] = device
        return out

    def decode_command(self, data: object) -> dict[str, float]:
        """SI changes from a command object; CommandError for anything but known writable keys with numbers."""
        if not isinstance(data, dict):
            raise CommandError(f"command is a {type(data).__name__}, not a JSON object")
        flat = dict(_flatten(data))
        writable = {row.key: row for row in self.rows if row.writable}
        unknown = sorted(set(flat) - set(writable))
        if unknown:
            raise CommandError(f"unknown or read-only keys {unknown} (writable: {sorted(writable)})")
        if not flat:
            raise CommandError("empty command")
        changes: dict[str, float] = {}
        for key, value in flat.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise CommandError(f"{key} = {value!r} is not a finite number")
            row = writable[key]
            si = float(value) * row.factor
            if row.field == "lease_timeout_s" and si < 0:
                raise CommandError(f"{key} = {value!r} must be >= 0")
            changes[row.field] = si
        return changes


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += _flatten(value, path + ".")
        else:
            out.append((path, value))
    return out


def mqtt_maps_dir() -> Path:
    """The `mqtt_maps` folder next to drivers/__init__.py, found without executing the drivers package."""
    spec = importlib.util.find_spec("drivers")
    if spec is None or not spec.submodule_search_locations:
        raise MapError("package 'drivers' (which holds the MQTT maps) is not importable")
    return Path(next(iter(spec.submodule_search_locations))) / "mqtt_maps"


def available_mqtt_models() -> list[str]:
    return sorted(p.stem for p in mqtt_maps_dir().glob("*.toml"))


def _row(raw: dict[str, Any], index: int, where: str) -> MqttRow:
    ctx = f"{where} fields[{index}]"
    unknown = set(raw) - ROW_KEYS
    if unknown:
        raise MapError(f"{ctx}: unknown keys {sorted(unknown)}")
    field = raw.get("field")
    if field not in MEASUREMENT_FIELDS:
        raise MapError(f"{ctx}.field = {field!r} is not a domain field")
    key = raw.get("key")
    if not isinstance(key, str) or not all(key.split(".")):
        raise MapError(f"{ctx}.key = {key!r} is not a dotted key path")
    unit = raw.get("unit", "code")
    if unit not in UNIT_FACTORS:
        raise MapError(f"{ctx}.unit = {unit!r} is not one of {sorted(UNIT_FACTORS)}")
    scale = raw.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or scale == 0:
        raise MapError(f"{ctx}.scale = {scale!r} must be a non-zero number")
    access = raw.get("access", "r")
    if access not in ("r", "rw"):
        raise MapError(f"{ctx}.access = {access!r} must be 'r' or 'rw'")
    if access == "rw" and field not in WRITABLE_FIELDS:
        raise MapError(f"{ctx}: field {field!r} cannot be writable")
    factor = float(scale) * UNIT_FACTORS[unit] * (-1.0 if raw.get("invert", False) else 1.0)
    return MqttRow(field=field, path=tuple(key.split(".")), unit=unit, factor=factor, writable=access == "rw")


def parse_mqtt_map(path: Path) -> MqttModel:
    """Parse and check one MQTT map file (model id = file name, each field and key once)."""
    where = path.name
    data, model, model_id, kind = read_map_file(path)
    telemetry, command = model.get("telemetry", "state"), model.get("command", "set")
    for name, value in (("telemetry", telemetry), ("command", command)):
        if not isinstance(value, str) or not value or any(c in value for c in "+#"):
            raise MapError(f"{where}: [model].{name} = {value!r} is not a plain sub-topic")
    rows = tuple(_row(r, i, where) for i, r in enumerate(data.get("fields", [])))
    for name, values in (("field", [r.field for r in rows]), ("key", [r.key for r in rows])):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise MapError(f"{where}: {name}s mapped twice: {dupes}")
    return MqttModel(id=model_id, kind=kind, telemetry=telemetry, command=command, rows=rows)


@cache
def load_mqtt_model(model_id: str) -> MqttModel:
    """Load an MQTT map by model id (= file name without .toml) from the drivers' mqtt_maps folder."""
    path = mqtt_maps_dir() / f"{model_id}.toml"
    if not path.is_file():
        raise MapError(f"no MQTT map {model_id!r} (known: {', '.join(available_mqtt_models())})")
    return parse_mqtt_map(path)
