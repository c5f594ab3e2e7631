"""MQTT device maps: which JSON key of a device's telemetry feeds which domain field, in which unit and sign.

The MQTT twin of drivers/registermap.py: a data file per device model (drivers/mqtt_maps/*.toml), validated with
the same strictness (unknown keys are errors; an error names the file, the row and the key) and the same unit set,
so an integrator who knows one format knows the other. The simulator reads these files with its own code on purpose
(DESIGN.md §2), and a test reads the documented topic with mosquitto_sub, so a wrong map cannot pass on both ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from agent.model import MEASUREMENT_FIELDS, WRITABLE_FIELDS, AssetKind
from drivers.registermap import (
    MAP_MODEL_CONFIG,
    UNIT_FACTOR,
    UNIT_FAMILY,
    KindField,
    MapError,
    MapFileHeader,
    read_map_file,
)

__all__ = ["MapError", "MqttMap", "PayloadError", "available_mqtt_maps", "load_mqtt_map", "mqtt_maps_dir"]


class PayloadError(ValueError):
    """A telemetry payload does not fit the map (wrong type at a key); the message names the key."""


def _check_path(value: str, what: str) -> str:
    parts = value.split(".") if value else [""]
    if any(not p or p != p.strip() for p in parts):
        raise ValueError(f"{what} {value!r} must be non-empty dot-separated names without spaces at the ends")
    return value


class MqttFieldRow(BaseModel):
    model_config = MAP_MODEL_CONFIG

    field: str
    key: str
    unit: str = "code"
    scale: float = 1.0
    invert: bool = False
    access: Literal["r", "rw"] = "r"
    description: str = ""

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        return _check_path(key, "key")

    @model_validator(mode="after")
    def _check(self) -> MqttFieldRow:
        if self.field not in MEASUREMENT_FIELDS:
            raise ValueError(f"field {self.field!r} is not a domain field ({', '.join(MEASUREMENT_FIELDS)})")
        domain_unit = MEASUREMENT_FIELDS[self.field]
        if self.unit not in UNIT_FAMILY[domain_unit]:
            raise ValueError(
                f"unit {self.unit!r} cannot feed {self.field} (held in {domain_unit}); "
                f"use one of {sorted(UNIT_FAMILY[domain_unit])}"
            )
        if self.access == "rw" and self.field not in WRITABLE_FIELDS:
            raise ValueError(f"field {self.field} cannot be writable; writable: {sorted(WRITABLE_FIELDS)}")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class MqttModelInfo(BaseModel):
    model_config = MAP_MODEL_CONFIG

    id: str
    manufacturer: str
    name: str
    kind: KindField
    telemetry: str = "state"
    command: str = "set"
    stale_after_s: float = Field(default=10.0, gt=0)

    @field_validator("telemetry", "command")
    @classmethod
    def _topic(cls, value: str) -> str:
        if "+" in value or "#" in value or value.startswith("/") or value.endswith("/") or not value:
            raise ValueError(f"sub-topic {value!r} must be a plain topic level (no wildcards, no leading/trailing /)")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> MqttModelInfo:
        if self.telemetry == self.command:
            raise ValueError(f"telemetry and command must be different sub-topics (both {self.telemetry!r})")
        return self


class MqttMapFile(MapFileHeader):
    model: MqttModelInfo
    fields: list[MqttFieldRow]

    @model_validator(mode="after")
    def _check_rows(self) -> MqttMapFile:
        fields: dict[str, str] = {}
        keys: dict[str, str] = {}
        for row in self.fields:
            if row.field in fields:
                raise ValueError(f"field {row.field} is mapped twice")
            fields[row.field] = row.key
            for other, other_field in keys.items():
                if row.key == other or row.key.startswith(other + ".") or other.startswith(row.key + "."):
                    raise ValueError(f"key {row.key!r} ({row.field}) collides with key {other!r} ({other_field})")
            keys[row.key] = row.field
        if "power_w" not in fields:
            raise ValueError("every map must feed power_w")
        if self.model.kind.controllable and "setpoint_w" not in fields:
            raise ValueError(f"a {self.model.kind} map must have a writable setpoint_w")
        for row in self.fields:
            if row.field in WRITABLE_FIELDS and row.access != "rw" and self.model.kind.controllable:
                raise ValueError(f"{row.field} of a controllable device must be access = 'rw'")
        return self


@dataclass(frozen=True, slots=True)
class KeyCodec:
    """One row compiled: the key path split once and the factor device value → SI (sign included)."""

    field: str
    row: MqttFieldRow
    path: tuple[str, ...]
    factor: float


class MqttMap:
    """A validated MQTT map: decode telemetry objects, encode command values."""

    def __init__(self, spec: MqttMapFile, source: str) -> None:
        self.spec = spec
        self.source = source
        self.model = spec.model
        self._codecs: dict[str, KeyCodec] = {}
        for row in spec.fields:
            factor = row.scale * UNIT_FACTOR[row.unit] * (-1.0 if row.invert else 1.0)
            self._codecs[row.field] = KeyCodec(row.field, row, tuple(row.key.split(".")), factor)

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def kind(self) -> AssetKind:
        return self.model.kind

    @property
    def stale_after_s(self) -> float:
        return self.model.stale_after_s

    def has(self, field: str) -> bool:
        return field in self._codecs

    def key(self, field: str) -> str:
        return self._codecs[field].row.key

    def decode(self, payload: Mapping[str, Any]) -> dict[str, float]:
        """SI domain values for every mapped key present in `payload`; a missing key leaves its field out.

        Raises PayloadError naming the key when a value has the wrong JSON type (a string, an object, a bool where
        a number belongs). Range checks are not done here: drivers/measure.py owns plausibility for all transports.
        """
        values: dict[str, float] = {}
        for codec in self._codecs.values():
            node: Any = payload
            for part in codec.path:
                if not isinstance(node, Mapping) or part not in node:
                    node = _MISSING
                    break
                node = node[part]
            if node is _MISSING or node is None:
                continue
            values[codec.field] = self._number(codec, node)
        return values

    def _number(self, codec: KeyCodec, raw: object) -> float:
        unit = codec.row.unit
        if unit == "bool":
            if isinstance(raw, bool) or (isinstance(raw, int) and raw in (0, 1)):
                return 1.0 if raw else 0.0
            raise PayloadError(f"key {codec.row.key!r} ({codec.field}) must be true/false, got {raw!r}")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise PayloadError(f"key {codec.row.key!r} ({codec.field}) must be a number, got {_short(raw)}")
        if unit == "code" and isinstance(raw, float) and not raw.is_integer():
            raise PayloadError(f"key {codec.row.key!r} ({codec.field}) must be an integer code, got {raw!r}")
        return float(raw) * codec.factor

    def encode(self, field: str, value: float) -> tuple[str, float]:
        """(key path, device value) that writes `value` (SI) into `field`; ValueError for a non-finite value."""
        if field not in self._codecs:
            raise ValueError(f"map {self.id} has no {field}")
        if not math.isfinite(value):
            raise ValueError(f"{field}={value!r} is not a finite number")
        codec = self._codecs[field]
        return codec.row.key, value / codec.factor


class _Missing:
    pass


_MISSING = _Missing()


def _short(raw: object) -> str:
    text = repr(raw)
    return f"{type(raw).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def nest(key: str, value: object) -> dict[str, Any]:
    """{"a": {"b": value}} for key "a.b": the JSON object a command with a nested key is sent as."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def mqtt_maps_dir() -> Path:
    return Path(str(resources.files("drivers") / "mqtt_maps"))


def available_mqtt_maps() -> list[str]:
    return sorted(p.stem for p in mqtt_maps_dir().glob("*.toml"))


def load_mqtt_map(name_or_path: str | Path) -> MqttMap:
    """Load an MQTT map by id (a file in drivers/mqtt_maps or in a plugin's maps: find_map_file) or by path; errors
    name the file, row and key."""
    spec, path = read_map_file(name_or_path, mqtt_maps_dir(), "MQTT map", MqttMapFile)
    return MqttMap(spec, str(path))
