"""Loading register maps (drivers/maps/*.toml) as data.

DESIGN.md §2: sim_devices shares only data with drivers, never code paths, so a wrong map cannot look right on both
ends. This module therefore parses the TOML itself and locates the folder without importing the drivers package.
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from agent.model import MEASUREMENT_FIELDS, WRITABLE_FIELDS

# type -> (registers, struct code)
TYPES: dict[str, tuple[int, str]] = {
    "u16": (1, "H"),
    "s16": (1, "h"),
    "u32": (2, "I"),
    "s32": (2, "i"),
    "f32": (2, "f"),
}
UNIT_FACTORS: dict[str, float] = {
    "W": 1.0,
    "kW": 1000.0,
    "Wh": 1.0,
    "kWh": 1000.0,
    "V": 1.0,
    "A": 1.0,
    "%": 0.01,
    "fraction": 1.0,
    "s": 1.0,
    "unix_s": 1.0,
    "code": 1.0,
    "bool": 1.0,
}
KINDS = frozenset({"ev_charger", "battery", "meter"})


class MapError(ValueError):
    """A register map file is malformed; the message names the file, the row and the bad value."""


@dataclass(frozen=True, slots=True)
class MapRow:
    """One `[[registers]]` row. `field` is None for helper rows (scale-factor registers), which carry `name`."""

    address: int
    type: str
    access: str
    field: str | None = None
    name: str | None = None
    unit: str = "code"
    scale: float = 1.0
    scale_factor: int | None = None
    invert: bool = False
    word_order: str = "big"

    @property
    def width(self) -> int:
        return TYPES[self.type][0]

    @property
    def label(self) -> str:
        return self.field or self.name or f"@{self.address}"


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A parsed map: model id, device kind and its rows in address order."""

    id: str
    kind: str
    word_order: str
    rows: tuple[MapRow, ...]
    path: Path

    def row_for(self, field: str) -> MapRow | None:
        return next((r for r in self.rows if r.field == field), None)


def maps_dir() -> Path:
    """The `maps` folder next to drivers/__init__.py, found without executing the drivers package."""
    spec = importlib.util.find_spec("drivers")
    if spec is None or not spec.submodule_search_locations:
        raise MapError("package 'drivers' (which holds the register maps) is not importable")
    return Path(next(iter(spec.submodule_search_locations))) / "maps"


def available_models() -> list[str]:
    return sorted(p.stem for p in maps_dir().glob("*.toml"))


def unservable(model_id: str) -> str | None:
    """Why the simulator cannot serve a map (a format-v2 construct it does not decode yet, issue 12), or None."""
    try:
        load_map(model_id)
    except MapError as exc:
        return str(exc)
    return None


def _row(raw: dict[str, Any], index: int, default_order: str, where: str) -> MapRow:
    ctx = f"{where} registers[{index}]"
    allowed = {"field", "name", "address", "type", "unit", "scale", "scale_factor", "invert", "access",
               "word_order", "description"}
    unknown = set(raw) - allowed
    if unknown:
        raise MapError(f"{ctx}: unknown keys {sorted(unknown)}")
    field, name = raw.get("field"), raw.get("name")
    if (field is None) == (name is None):
        raise MapError(f"{ctx}: needs exactly one of 'field' or 'name' (got field={field!r}, name={name!r})")
    if field is not None and field not in MEASUREMENT_FIELDS:
        raise MapError(f"{ctx}.field = {field!r} is not a domain field")
    rtype = raw.get("type")
    if rtype not in TYPES:
        raise MapError(f"{ctx}.type = {rtype!r} is not one of {sorted(TYPES)}")
    address = raw.get("address")
    if not isinstance(address, int) or not 0 <= address <= 65535 - TYPES[rtype][0] + 1:
        raise MapError(f"{ctx}.address = {address!r} is not a register address")
    unit = raw.get("unit", "code")
    if unit not in UNIT_FACTORS:
        raise MapError(f"{ctx}.unit = {unit!r} is not one of {sorted(UNIT_FACTORS)}")
    access = raw.get("access", "r")
    if access not in ("r", "rw"):
        raise MapError(f"{ctx}.access = {access!r} must be 'r' or 'rw'")
    if access == "rw" and field not in WRITABLE_FIELDS:
        raise MapError(f"{ctx}: field {field!r} cannot be writable")
    order = raw.get("word_order", default_order)
    if order not in ("big", "little"):
        raise MapError(f"{ctx}.word_order = {order!r} must be 'big' or 'little'")
    scale = raw.get("scale", 1.0)
    if not isinstance(scale, int | float) or scale == 0:
        raise MapError(f"{ctx}.scale = {scale!r} must be a non-zero number")
    sf = raw.get("scale_factor")
    if sf is not None and not isinstance(sf, int):
        raise MapError(f"{ctx}.scale_factor = {sf!r} must be a register address")
    return MapRow(
        address=address,
        type=rtype,
        access=access,
        field=field,
        name=name,
        unit=unit,
        scale=float(scale),
        scale_factor=sf,
        invert=bool(raw.get("invert", False)),
        word_order=order,
    )


def read_map_file(path: Path) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """Read a device-map file (register or MQTT) and check its header: (data, [model] table, model id, kind)."""
    where = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MapError(f"{where}: {exc}") from exc
    model = data.get("model", {})
    model_id, kind = model.get("id"), model.get("kind")
    if model_id != path.stem:
        raise MapError(f"{where}: [model].id = {model_id!r} must equal the file name {path.stem!r}")
    if kind not in KINDS:
        raise MapError(f"{where}: [model].kind = {kind!r} is not one of {sorted(KINDS)}")
    return data, model, model_id, kind


def parse_map(path: Path) -> RegisterMap:
    """Parse and check one map file (overlaps, scale-factor references, model id = file name)."""
    where = path.name
    data, model, model_id, kind = read_map_file(path)
    if model.get("address_base", 0) != 0 or model.get("byte_order", "big") != "big":
        raise MapError(f"{where}: [model] address_base / byte_order other than 0 / big is not served yet")
    order = model.get("word_order", "big")
    rows = sorted(
        (_row(r, i, order, where) for i, r in enumerate(data.get("registers", []))), key=lambda r: r.address
    )
    used: dict[int, str] = {}
    for row in rows:
        for a in range(row.address, row.address + row.width):
            if a in used:
                raise MapError(f"{where}: {row.label} overlaps {used[a]} at address {a}")
            used[a] = row.label
    by_address = {r.address: r for r in rows}
    for row in rows:
        if row.scale_factor is not None:
            target = by_address.get(row.scale_factor)
            if target is None or target.type != "s16" or target.field is not None:
                raise MapError(f"{where}: {row.label}.scale_factor = {row.scale_factor} is not an s16 helper row")
    return RegisterMap(id=model_id, kind=kind, word_order=order, rows=tuple(rows), path=path)


@cache
def load_map(model_id: str) -> RegisterMap:
    """Load a map by model id (= file name without .toml) from the drivers' maps folder."""
    path = maps_dir() / f"{model_id}.toml"
    if not path.is_file():
        raise MapError(f"no register map {model_id!r} (known: {', '.join(available_models())})")
    return parse_map(path)
