"""Register maps: the data file of a device model, validated and compiled into a fast decoder.

A map row says where a value lives and how to turn raw registers into the agent's SI units and sign. The file is
data (drivers/maps/*.toml) so an integrator adds a device model without code; this module is the one place that
understands the format on the agent's side. The simulator reads the same files with its own code on purpose
(DESIGN.md §2), and an independent client checks documented addresses, so a wrong map cannot pass on both ends.

Decoding uses precompiled `struct` formats over whole register spans rather than one pymodbus conversion call per
value: one poll of a 1000-device site decodes ~15 000 values a second and the per-call overhead dominated.
"""

from __future__ import annotations

import math
import struct
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from agent.model import MEASUREMENT_FIELDS, WRITABLE_FIELDS, AssetKind

RegisterType = Literal["u16", "s16", "u32", "s32", "f32"]
WordOrder = Literal["big", "little"]

# How many 16-bit registers each type occupies and its struct code (big-endian bytes within each register).
TYPE_WIDTH: dict[str, int] = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2}
TYPE_CODE: dict[str, str] = {"u16": "H", "s16": "h", "u32": "I", "s32": "i", "f32": "f"}

# Device unit -> factor to the SI unit the domain field is held in (DESIGN.md §4: convert once, at the boundary).
UNIT_FACTOR: dict[str, float] = {
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
# Which device units may feed a domain field held in a given SI unit.
UNIT_FAMILY: dict[str, set[str]] = {
    "W": {"W", "kW"},
    "Wh": {"Wh", "kWh"},
    "V": {"V"},
    "A": {"A"},
    "fraction": {"%", "fraction"},
    "s": {"s"},
    "unix_s": {"unix_s"},
    "code": {"code"},
    "bool": {"bool", "code"},
}
M = TypeVar("M", bound=BaseModel)
MAX_READ_REGISTERS = 125  # Modbus limit for one read-holding-registers request
MAX_SCALE_FACTOR = 10  # SunSpec allows -10..10; anything else is a broken device, not a value


class MapError(ValueError):
    """A register map file is malformed; the message names the file, the row and the key."""


# Device-map files (register and MQTT maps) are validated like config.toml: unknown keys are errors, types are strict
# ("2" is not a scale, 2.0 is not an address; TOML integers still fill float keys) and nan/inf are refused, since a
# NaN scale turns every reading into NaN and every setpoint write into an error.
MAP_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
# the device kind is spelt as its value in the file ("battery"); strict mode would want the enum object
KindField = Annotated[AssetKind, Strict(False)]


class RegisterRow(BaseModel):
    model_config = MAP_MODEL_CONFIG

    field: str | None = None
    name: str | None = None
    address: int = Field(ge=0, le=65535)
    type: RegisterType
    unit: str = "code"
    scale: float = 1.0
    scale_factor: int | None = Field(default=None, ge=0, le=65535)
    invert: bool = False
    access: Literal["r", "rw"] = "r"
    word_order: WordOrder | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> RegisterRow:
        if self.field is None and self.name is None:
            raise ValueError("a row needs a 'field' (domain value) or a 'name' (helper register)")
        if self.field is not None:
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
            if self.access == "rw" and self.scale_factor is not None:
                raise ValueError("writable rows with a scale_factor register are not supported yet; use scale")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self

    @property
    def width(self) -> int:
        return TYPE_WIDTH[self.type]

    @property
    def label(self) -> str:
        return self.field or self.name or "?"


class ModelInfo(BaseModel):
    model_config = MAP_MODEL_CONFIG

    id: str
    manufacturer: str
    name: str
    kind: KindField
    word_order: WordOrder = "big"


class MapFileHeader(BaseModel):
    """What every device-map file (register maps, MQTT maps) shares: strict keys and the schema version."""

    model_config = MAP_MODEL_CONFIG

    schema_: int = Field(alias="schema")

    @model_validator(mode="after")
    def _check_schema(self) -> MapFileHeader:
        if self.schema_ != 1:
            raise ValueError(f"schema {self.schema_} is not supported (this agent reads schema 1)")
        return self


class RegisterMapFile(MapFileHeader):
    model: ModelInfo
    registers: list[RegisterRow]

    @model_validator(mode="after")
    def _check_layout(self) -> RegisterMapFile:
        taken: dict[int, str] = {}
        fields: set[str] = set()
        for row in self.registers:
            for addr in range(row.address, row.address + row.width):
                if addr in taken:
                    raise ValueError(f"{row.label} at {row.address} overlaps {taken[addr]}")
                taken[addr] = row.label
            if row.field:
                if row.field in fields:
                    raise ValueError(f"field {row.field} is mapped twice")
                fields.add(row.field)
        by_address = {row.address: row for row in self.registers}
        for row in self.registers:
            if row.scale_factor is not None:
                sf_row = by_address.get(row.scale_factor)
                if sf_row is None or sf_row.type != "s16":
                    raise ValueError(f"{row.label}: scale_factor {row.scale_factor} is not an s16 register of the map")
        if "power_w" not in fields:
            raise ValueError("every map must feed power_w")
        if self.model.kind.controllable and "setpoint_w" not in fields:
            raise ValueError(f"a {self.model.kind} map must have a writable setpoint_w")
        return self


@dataclass(frozen=True, slots=True)
class Span:
    """A contiguous run of registers read with one request."""

    address: int
    count: int


@dataclass(frozen=True, slots=True)
class FieldCodec:
    """How to turn one row's raw value into its domain value and back."""

    field: str
    row: RegisterRow
    swap_words: bool
    factor: float  # raw * factor (* 10**sf) = SI value, sign included
    sf_address: int | None


@dataclass(frozen=True, slots=True)
class SpanLayout:
    """One precompiled struct per span: a single unpack yields every raw value in it, by address."""

    pack_format: str
    unpacker: struct.Struct
    addresses: tuple[int, ...]
    swap_offsets: tuple[int, ...]  # register offsets of 32-bit values sent low word first


class RegisterMap:
    """A validated, compiled register map."""

    def __init__(self, spec: RegisterMapFile, source: str) -> None:
        self.spec = spec
        self.source = source
        self.model = spec.model
        rows = sorted(spec.registers, key=lambda r: r.address)
        self.spans = _spans(rows)
        self._codecs: dict[str, FieldCodec] = {}
        for row in rows:
            if row.field is not None:
                order = row.word_order or spec.model.word_order
                factor = row.scale * UNIT_FACTOR[row.unit] * (-1.0 if row.invert else 1.0)
                swap = row.width == 2 and order == "little"
                self._codecs[row.field] = FieldCodec(row.field, row, swap, factor, row.scale_factor)
        self._layouts = [self._layout(span, rows) for span in self.spans]

    def _layout(self, span: Span, rows: list[RegisterRow]) -> SpanLayout:
        inside = [r for r in rows if span.address <= r.address < span.address + span.count]
        order = self.model.word_order
        swaps = tuple(r.address - span.address for r in inside if r.width == 2 and (r.word_order or order) == "little")
        codes = ">" + "".join(TYPE_CODE[r.type] for r in inside)  # spans are contiguous: no padding needed
        return SpanLayout(f">{span.count}H", struct.Struct(codes), tuple(r.address for r in inside), swaps)

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def kind(self) -> AssetKind:
        return self.model.kind

    def codec(self, field: str) -> FieldCodec:
        return self._codecs[field]

    def has(self, field: str) -> bool:
        return field in self._codecs

    def decode(self, span_registers: list[list[int]]) -> dict[str, float]:
        """Turn the registers of every span (in span order) into SI domain values."""
        raw: dict[int, float] = {}
        for layout, registers in zip(self._layouts, span_registers, strict=True):
            if layout.swap_offsets:
                registers = list(registers)
                for i in layout.swap_offsets:
                    registers[i], registers[i + 1] = registers[i + 1], registers[i]
            unpacked = layout.unpacker.unpack(struct.pack(layout.pack_format, *registers))
            raw.update(zip(layout.addresses, unpacked, strict=True))
        values: dict[str, float] = {}
        for codec in self._codecs.values():
            value = raw[codec.row.address] * codec.factor
            if codec.sf_address is not None:
                sf = raw[codec.sf_address]
                if not -MAX_SCALE_FACTOR <= sf <= MAX_SCALE_FACTOR:
                    raise ValueError(f"scale factor at {codec.sf_address} is {sf}, outside ±{MAX_SCALE_FACTOR}")
                value *= 10.0**sf
            values[codec.field] = value
        return values

    def encode(self, field: str, value: float, toward_zero: bool = False) -> list[int]:
        """Registers that write `value` (SI) into `field`; raises ValueError when the raw value does not fit.

        `toward_zero` truncates instead of rounding, for setpoints: a value the envelope clamped to a limit must not
        be rounded past it by a coarse register (10.6 kW into a whole-kW register is 10, never 11).
        """
        if not math.isfinite(value):
            raise ValueError(f"{field}={value!r} is not a finite number")
        codec = self._codecs[field]
        raw = value / codec.factor
        kind = codec.row.type
        if kind != "f32":
            raw = math.trunc(raw) if toward_zero else round(raw)
            lo, hi = _int_range(kind)
            if not lo <= raw <= hi:
                raise ValueError(f"{field}={value} needs raw {raw}, outside {kind} range {lo}..{hi}")
        data = struct.pack(">" + TYPE_CODE[kind], raw)
        if codec.swap_words:
            data = data[2:4] + data[0:2]
        return list(struct.unpack(f">{len(data) // 2}H", data))


def _int_range(kind: str) -> tuple[int, int]:
    bits = 16 if kind.endswith("16") else 32
    if kind.startswith("u"):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _spans(rows: list[RegisterRow]) -> list[Span]:
    """Group rows into contiguous spans of at most 125 registers; gaps start a new span (devices reject them)."""
    spans: list[Span] = []
    start = end = None
    for row in rows:
        if (
            start is not None
            and end is not None
            and row.address == end
            and row.address + row.width - start <= (MAX_READ_REGISTERS)
        ):
            end = row.address + row.width
            continue
        if start is not None and end is not None:
            spans.append(Span(start, end - start))
        start, end = row.address, row.address + row.width
    if start is not None and end is not None:
        spans.append(Span(start, end - start))
    return spans


def maps_dir() -> Path:
    return Path(str(resources.files("drivers") / "maps"))


def available_maps() -> list[str]:
    return sorted(p.stem for p in maps_dir().glob("*.toml"))


def read_map_file(name_or_path: str | Path, folder: Path, label: str, schema: type[M]) -> tuple[M, Path]:
    """Find (by id in `folder`, or by path), parse and validate one device-map file; errors name file, row, key.

    Shared by the register maps and the MQTT maps, so both report problems the same way.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = folder / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.toml"))
        raise MapError(f"{label} {name_or_path!r} not found (looked for {path}; known: {known})")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MapError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
        raise MapError(f"{path}: line {line}: not UTF-8 text (byte 0x{byte:02x}); a map file is UTF-8 TOML") from exc
    except tomllib.TOMLDecodeError as exc:
        raise MapError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return schema.model_validate(data), path
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(file)"
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"  # a whole row is noise
            row = _row_label(data, err["loc"])
            problems.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}{shown}{row}")
        raise MapError(f"{path}: " + "; ".join(problems)) from exc


def _row_label(data: Any, loc: tuple[int | str, ...]) -> str:
    """' [row power_w]' for an error inside a row, so the row can be found in the file by its field (or name)."""
    if len(loc) < 2 or not isinstance(loc[1], int) or not isinstance(data.get(loc[0]), list):
        return ""
    rows = data[loc[0]]
    row = rows[loc[1]] if loc[1] < len(rows) else None
    label = (row.get("field") or row.get("name")) if isinstance(row, dict) else None
    return f" [row {label}]" if isinstance(label, str) else ""


def load_map(name_or_path: str | Path) -> RegisterMap:
    """Load a map by id (a file in drivers/maps) or by path; errors name the file, row and key."""
    spec, path = read_map_file(name_or_path, maps_dir(), "register map", RegisterMapFile)
    return RegisterMap(spec, str(path))
