"""Loading register maps (drivers/maps/*.toml, or a map file given by path) as data, for the simulator.

DESIGN.md §2: sim_devices shares only data with drivers, never code paths, so a wrong map cannot look right on both
ends. This module therefore parses the TOML itself and locates the folder without importing the drivers package.
It reads format v1 and v2 (issue 12): the simulator serves a product's map with the device's own codes and sign
(enum maps inverted, `negate_if` flags, offsets, percentages, sentinels, function 01/02/04 spaces, byte order,
strings, 64-bit values, several unit ids), so the agent's translation is exercised as a real device needs it.
The checks here are the ones serving needs; `vpp-agent check-config` validates a map fully (drivers/registermap.py).
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from agent.model import MEASUREMENT_FIELDS, WRITABLE_FIELDS

# type -> (registers, struct code); a string's width is its row's `length`, a bit (coil, discrete input) is one
TYPES: dict[str, tuple[int, str]] = {
    "u16": (1, "H"),
    "s16": (1, "h"),
    "u32": (2, "I"),
    "s32": (2, "i"),
    "f32": (2, "f"),
    "u64": (4, "Q"),
    "s64": (4, "q"),
    "string": (0, ""),
    "bit": (1, "H"),
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
# The domain's status names and codes (agent.model.DeviceStatus), as data: the enum maps name them
STATUS_CODES = {"standby": 0, "charging": 1, "discharging": 2, "fault": 3, "no_ev": 4}
# SunSpec's "not implemented" raw values (`sentinels = "sunspec"`)
SUNSPEC_SENTINELS: dict[str, int] = {
    "u16": 0xFFFF, "s16": -0x8000, "u32": 0xFFFF_FFFF, "s32": -0x8000_0000,
    "u64": 0xFFFF_FFFF_FFFF_FFFF, "s64": -0x8000_0000_0000_0000,
}
ROW_KEYS = frozenset({
    "field", "name", "address", "type", "unit", "scale", "scale_factor", "invert", "access", "word_order",
    "description", "length", "bits", "offset", "percent_of", "negate_if", "minimum", "function", "write_function",
    "byte_order", "missing", "enum", "ev_connected_codes", "unit_id",
})


class MapError(ValueError):
    """A register map file is malformed; the message names the file, the row and the bad value."""


@dataclass(frozen=True, slots=True)
class MapRow:
    """One `[[registers]]` row. `field` is None for helper rows (scale factors, flags, command registers), which
    carry `name`. `address` is the PDU address (the file's number minus the map's address_base); `space` is the
    function code whose table holds it (1 coils, 2 discrete inputs, 3 holding, 4 input registers)."""

    address: int
    type: str
    access: str
    field: str | None = None
    name: str | None = None
    unit: str = "code"
    scale: float = 1.0
    scale_factor: int | None = None  # PDU address of the s16 scale-factor row
    invert: bool = False
    word_order: str = "big"
    byte_order: str = "big"
    length: int = 0  # registers of a string
    bits: tuple[int, int] | None = None
    offset: float = 0.0
    percent_of: str | None = None
    negate_if: str | None = None
    space: int = 3
    unit_id: int | None = None  # None: the device's own unit id
    missing: tuple[int, ...] = ()
    enum: dict[int, int] | None = None  # device code -> domain status code
    ev_connected_codes: frozenset[int] | None = None

    @property
    def width(self) -> int:
        return self.length if self.type == "string" else TYPES[self.type][0]

    @property
    def label(self) -> str:
        return self.field or self.name or f"@{self.address}"

    @property
    def writable(self) -> bool:
        return self.access in ("rw", "w")


@dataclass(frozen=True, slots=True)
class ControlStep:
    """One write of a `[control]` sequence: the row it writes and what it writes there."""

    row: str
    value: int | str | dict[str, int]


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A parsed map: model id, device kind and its rows in address order, with what serving needs of [model] and
    [control]."""

    id: str
    kind: str
    word_order: str
    rows: tuple[MapRow, ...]
    path: Path
    sentinels: str = "none"
    schema: int = 1
    blocks: tuple[tuple[int, int], ...] = ()  # PDU ranges a request may read through
    refuses_partial_writes: bool = False  # a write to part of a multi-register row gets exception 02
    on_connect: tuple[ControlStep, ...] = ()
    setpoint_steps: tuple[ControlStep, ...] = ()
    extra_units: tuple[int, ...] = field(default=())

    def row_for(self, field: str) -> MapRow | None:
        return next((r for r in self.rows if r.field == field), None)

    def row_named(self, label: str) -> MapRow | None:
        return next((r for r in self.rows if r.label == label), None)


def maps_dir() -> Path:
    """The `maps` folder next to drivers/__init__.py, found without executing the drivers package."""
    spec = importlib.util.find_spec("drivers")
    if spec is None or not spec.submodule_search_locations:
        raise MapError("package 'drivers' (which holds the register maps) is not importable")
    return Path(next(iter(spec.submodule_search_locations))) / "maps"


def available_models() -> list[str]:
    return sorted(p.stem for p in maps_dir().glob("*.toml"))


def unservable(model_id: str) -> str | None:
    """Why the simulator cannot serve a map, or None (every shipped map is served since issue 12 §3)."""
    try:
        load_map(model_id)
    except MapError as exc:
        return str(exc)
    return None


def _pair(value: Any, ctx: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise MapError(f"{ctx} = {value!r} must be a pair of integers")
    return value[0], value[1]


def _row(raw: dict[str, Any], index: int, model: dict[str, Any], where: str) -> MapRow:
    ctx = f"{where} registers[{index}]"
    unknown = set(raw) - ROW_KEYS
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
    length = raw.get("length", 0)
    if rtype == "string" and (not isinstance(length, int) or length < 1):
        raise MapError(f"{ctx}.length = {length!r}: a string row needs a length in registers")
    base = model.get("address_base", 0)
    address = raw.get("address")
    width = length if rtype == "string" else TYPES[rtype][0]
    if not isinstance(address, int) or not 0 <= address - base <= 65536 - width:
        raise MapError(f"{ctx}.address = {address!r} is not a register address (address_base {base})")
    unit = raw.get("unit", "code")
    if unit not in UNIT_FACTORS:
        raise MapError(f"{ctx}.unit = {unit!r} is not one of {sorted(UNIT_FACTORS)}")
    access = raw.get("access", "r")
    if access not in ("r", "rw", "w"):
        raise MapError(f"{ctx}.access = {access!r} must be 'r', 'rw' or 'w'")
    if access != "r" and field is not None and field not in WRITABLE_FIELDS:
        raise MapError(f"{ctx}: field {field!r} cannot be writable")
    order = raw.get("word_order", model.get("word_order", "big"))
    byte_order = raw.get("byte_order", model.get("byte_order", "big"))
    for key, value in (("word_order", order), ("byte_order", byte_order)):
        if value not in ("big", "little"):
            raise MapError(f"{ctx}.{key} = {value!r} must be 'big' or 'little'")
    scale = raw.get("scale", 1.0)
    if not isinstance(scale, int | float) or scale == 0:
        raise MapError(f"{ctx}.scale = {scale!r} must be a non-zero number")
    sf = raw.get("scale_factor")
    if sf is not None and not isinstance(sf, int):
        raise MapError(f"{ctx}.scale_factor = {sf!r} must be a register address")
    space = raw.get("function", 1 if rtype == "bit" and access != "r" else model.get("read_function", 3))
    if space not in ((1, 2) if rtype == "bit" else (3, 4)):
        raise MapError(f"{ctx}.function = {space!r}: bits are read with 01/02, registers with 03/04")
    if access != "r" and space in (2, 4):
        space = 3 if space == 4 else 1  # written by 06/16 or 05/15: the holding or coil table
    enum = raw.get("enum")
    if enum is not None:
        try:
            enum = {int(code): STATUS_CODES[status] for code, status in enum.items()}
        except (ValueError, KeyError, AttributeError) as exc:
            raise MapError(f"{ctx}.enum = {raw['enum']!r}: device code -> one of {sorted(STATUS_CODES)}") from exc
    connected = raw.get("ev_connected_codes")
    unit_id = raw.get("unit_id")
    if unit_id is not None and (not isinstance(unit_id, int) or not 1 <= unit_id <= 247):
        raise MapError(f"{ctx}.unit_id = {unit_id!r} must be 1..247")
    return MapRow(
        address=address - base,
        type=rtype,
        access=access,
        field=field,
        name=name,
        unit=unit,
        scale=float(scale),
        scale_factor=None if sf is None else sf - base,
        invert=bool(raw.get("invert", False)),
        word_order=order,
        byte_order=byte_order,
        length=length if rtype == "string" else 0,
        bits=None if "bits" not in raw else _pair(raw["bits"], f"{ctx}.bits"),
        offset=float(raw.get("offset", 0.0)),
        percent_of=raw.get("percent_of"),
        negate_if=raw.get("negate_if"),
        space=space,
        unit_id=unit_id,
        missing=tuple(raw.get("missing", ())),
        enum=enum,
        ev_connected_codes=None if connected is None else frozenset(connected),
    )


def read_map_file(path: Path) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """Read a device-map file (register or MQTT) and check its header: (data, [model] table, model id, kind)."""
    where = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MapError(f"{where}: {exc}") from exc
    model = data.get("model", {})
    model_id, kind = model.get("id"), model.get("kind")
    if model_id != path.stem:
        raise MapError(f"{where}: [model].id = {model_id!r} must equal the file name {path.stem!r}")
    if kind not in KINDS:
        raise MapError(f"{where}: [model].kind = {kind!r} is not one of {sorted(KINDS)}")
    return data, model, model_id, kind


def _steps(control: dict[str, Any], part: str, labels: set[str], where: str) -> tuple[ControlStep, ...]:
    steps = []
    for i, step in enumerate(control.get(part, [])):
        if not isinstance(step, dict) or step.get("row") not in labels:
            raise MapError(f"{where}: [control] {part}[{i}] names no row of the map")
        steps.append(ControlStep(step["row"], step.get("value")))
    return tuple(steps)


def parse_map(path: Path) -> RegisterMap:
    """Parse and check one map file (overlaps, scale-factor references, model id = file name)."""
    where = path.name
    data, model, model_id, kind = read_map_file(path)
    base = model.get("address_base", 0)
    rows = sorted(
        (_row(r, i, model, where) for i, r in enumerate(data.get("registers", []))), key=lambda r: r.address
    )
    used: dict[tuple[int | None, int, int], MapRow] = {}
    for row in rows:
        for a in range(row.address, row.address + row.width):
            other = used.get((row.unit_id, row.space, a))
            if other is not None and not (row.bits and other.bits):
                raise MapError(f"{where}: {row.label} overlaps {other.label} at address {a + base}")
            used[(row.unit_id, row.space, a)] = row
    by_address = {r.address: r for r in rows}
    for row in rows:
        if row.scale_factor is not None:
            target = by_address.get(row.scale_factor)
            if target is None or target.type != "s16" or target.field is not None:
                raise MapError(f"{where}: {row.label}.scale_factor = {row.scale_factor + base} is not an s16 "
                               "helper row")
    labels = {r.label for r in rows}
    control = data.get("control", {})
    blocks = tuple((first - base, last - base) for first, last in
                   (_pair(b, f"{where}: [model].blocks") for b in model.get("blocks", [])))
    return RegisterMap(
        id=model_id,
        kind=kind,
        word_order=model.get("word_order", "big"),
        rows=tuple(rows),
        path=path,
        sentinels=model.get("sentinels", "none"),
        schema=int(data.get("schema", 1)),
        blocks=blocks,
        refuses_partial_writes=bool(model.get("refuses_partial_writes", False)),
        on_connect=_steps(control, "on_connect", labels, where),
        setpoint_steps=_steps(control, "setpoint", labels, where),
        extra_units=tuple(sorted({r.unit_id for r in rows if r.unit_id is not None})),
    )


def map_path(model: str) -> Path:
    """The file of a model: a path ending in .toml as given (an integrator's own map), else drivers/maps/<id>.toml."""
    path = Path(model)
    return path if path.suffix == ".toml" else maps_dir() / f"{model}.toml"


@cache
def load_map(model: str) -> RegisterMap:
    """Load a map by model id (= file name without .toml) from the drivers' maps folder, or by path (as
    `vpp-agent` takes one: `model = "site/maps/my_meter.toml"`)."""
    path = map_path(model)
    if not path.is_file():
        if path.suffix == ".toml" and Path(model).suffix == ".toml":
            raise MapError(f"register map file {model!r} not found")
        raise MapError(f"no register map {model!r} (known: {', '.join(available_models())}; or give a path to "
                       "a .toml file)")
    return parse_map(path)
