"""Register maps: the data file of a device model, validated and compiled into a decoder and a write planner.

A map row says where a value lives and how to turn raw registers into the agent's SI units and sign. The file is
data (drivers/maps/*.toml) so an integrator adds a device model without code; this module is the one place that
understands the format on the agent's side. The simulator reads the same files with its own code on purpose
(DESIGN.md §2), and golden tests check each real product's map against words worked by hand from its documentation,
so a wrong map cannot pass on both ends.

Format v1 (`schema = 1`) is holding registers, 16-bit big-endian words, u16..f32 types, scale / scale-factor register
/ invert, one `setpoint_w` row. Format v2 (`schema = 2`) adds what real products need (docs/devices.md lists every
key with an example): function 04 reads, 06/16 writes per row or map, 1-based addresses, u64/s64, strings,
bitfields, byte order, enum maps from device codes to DeviceStatus with a derived `ev_connected`, "not implemented"
sentinels, percent-of and offsets, scale factors on writable rows, command sequences (writes at connect, an ordered
setpoint sequence with delays, split charge/discharge registers, a minimum power, the device's longest lease),
request planning (registers per request, device blocks that a request may not cross, gaps inside a block read
through), coils and discrete inputs (`type = "bit"`, functions 01/02, writes 05/15), rows on other unit ids of the
same device, and one object per connector (`[model.connector]`, chosen by the asset's `connector` key).

Decoding packs each span's words into bytes once and unpacks every row with a precompiled `struct.Struct`: one poll
of a 1000-device site decodes ~15 000 values a second and a per-value library call dominated that cost.
"""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from agent.model import MEASUREMENT_FIELDS, WRITABLE_FIELDS, AssetKind, DeviceStatus

RegisterType = Literal["u16", "s16", "u32", "s32", "f32", "u64", "s64", "string", "bit"]
WordOrder = Literal["big", "little"]
ByteOrder = Literal["big", "little"]

# How many 16-bit registers each type occupies and its struct code (a string's width is its row's `length`).
# A `bit` is one coil or discrete input (functions 01/02), carried as a 0/1 word so it decodes like a register.
TYPE_WIDTH: dict[str, int] = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "u64": 4, "s64": 4, "bit": 1}
TYPE_CODE: dict[str, str] = {
    "u16": "H", "s16": "h", "u32": "I", "s32": "i", "f32": "f", "u64": "Q", "s64": "q", "bit": "H"
}
# SunSpec's "not implemented" values per type (`sentinels = "sunspec"`); f32 NaN is always missing in schema 2.
SUNSPEC_SENTINELS: dict[str, int] = {
    "u16": 0xFFFF,
    "s16": -0x8000,
    "u32": 0xFFFF_FFFF,
    "s32": -0x8000_0000,
    "u64": 0xFFFF_FFFF_FFFF_FFFF,
    "s64": -0x8000_0000_0000_0000,
}

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
MAX_READ_REGISTERS = 125  # Modbus limit for one read-registers request
MAX_READ_BITS = 2000  # Modbus limit for one read-coils / read-discrete-inputs request
MAX_SCALE_FACTOR = 10  # SunSpec allows -10..10; anything else is a broken device, not a value
MAX_STEP_DELAY_S = 30.0  # a longer pause would hold the gateway's other devices for a whole lease
STATUS_NAMES = {s.name.lower(): s for s in DeviceStatus}
# Keys a schema-1 file may use; anything else needs `schema = 2`, so a v1 reader is never handed a file it misreads.
V1_ROW_KEYS = frozenset(
    {"field", "name", "address", "type", "unit", "scale", "scale_factor", "invert", "access", "word_order",
     "description"}
)
V1_MODEL_KEYS = frozenset({"id", "manufacturer", "name", "kind", "word_order"})


class MapError(ValueError):
    """A register map file is malformed; the message names the file, the row and the key."""


# Device-map files (register and MQTT maps) are validated like config.toml: unknown keys are errors, types are strict
# ("2" is not a scale, 2.0 is not an address; TOML integers still fill float keys) and nan/inf are refused, since a
# NaN scale turns every reading into NaN and every setpoint write into an error.
MAP_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
# the device kind is spelt as its value in the file ("battery"); strict mode would want the enum object
KindField = Annotated[AssetKind, Strict(False)]
# TOML has arrays, not tuples: lists fill these
Pair = Annotated[tuple[int, int], Strict(False)]
Codes = Annotated[tuple[int, ...], Strict(False)]


class RegisterRow(BaseModel):
    """One `[[registers]]` row: a domain `field` or a helper `name` (scale factor, control register, car id ...)."""

    model_config = MAP_MODEL_CONFIG

    field: str | None = None
    name: str | None = None
    address: int = Field(ge=0, le=65535)
    type: RegisterType
    length: int | None = Field(default=None, ge=1, le=MAX_READ_REGISTERS)  # registers of a string
    bits: Pair | None = None  # lowest and highest bit (inclusive) of a bitfield, bit 0 = LSB
    unit: str = "code"
    scale: float = 1.0
    offset: float = 0.0  # added after scaling, in the device unit
    scale_factor: int | None = Field(default=None, ge=0, le=65535)
    percent_of: str | None = None  # value is a percentage of this row's (SI) value
    negate_if: str | None = None  # sign from a flag row: negated while that row reads non-zero
    minimum: float | None = None  # SI floor after conversion (a device's "-1 W = not offered" reads as 0)
    invert: bool = False
    access: Literal["r", "rw", "w"] = "r"
    function: Literal[1, 2, 3, 4] | None = None  # read function; default [model].read_function (bits: 1 or 2)
    write_function: Literal[5, 6, 15, 16] | None = None  # default [model].write_function (coils: 5)
    unit_id: int | None = Field(default=None, ge=1, le=247)  # another unit id of the same device (SMA, Victron)
    word_order: WordOrder | None = None
    byte_order: ByteOrder | None = None
    missing: Codes = ()  # raw values meaning "not implemented / no value"
    enum: dict[str, str] | None = None  # status rows: device code -> DeviceStatus name
    ev_connected_codes: Codes | None = None  # status rows: codes with an EV plugged in
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> RegisterRow:
        if (self.field is None) == (self.name is None):
            raise ValueError("a row needs exactly one of 'field' (domain value) or 'name' (helper register)")
        if self.type == "string":
            if self.length is None:
                raise ValueError("a string row needs 'length' (registers, two characters each)")
            if self.field is not None:
                raise ValueError("no domain field is a string; give the row a 'name'")
        elif self.length is not None:
            raise ValueError("'length' is only for type = \"string\"")
        if self.field is not None:
            if self.field not in MEASUREMENT_FIELDS:
                raise ValueError(f"field {self.field!r} is not a domain field ({', '.join(MEASUREMENT_FIELDS)})")
            domain_unit = MEASUREMENT_FIELDS[self.field]
            if self.percent_of is None and self.unit not in UNIT_FAMILY[domain_unit]:
                raise ValueError(
                    f"unit {self.unit!r} cannot feed {self.field} (held in {domain_unit}); "
                    f"use one of {sorted(UNIT_FAMILY[domain_unit])}"
                )
            if self.access != "r" and self.field not in WRITABLE_FIELDS:
                raise ValueError(f"field {self.field} cannot be writable; writable: {sorted(WRITABLE_FIELDS)}")
        elif self.unit not in UNIT_FACTOR:
            raise ValueError(f"unit {self.unit!r} is not one of {sorted(UNIT_FACTOR)}")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.bits is not None:
            low, high = self.bits
            if self.type not in ("u16", "u32") or not 0 <= low <= high < 16 * TYPE_WIDTH[self.type]:
                raise ValueError(f"bits {list(self.bits)} must lie inside a u16 or u32 register (bit 0 = LSB)")
        if (self.enum is not None or self.ev_connected_codes is not None) and self.field != "status":
            raise ValueError("'enum' and 'ev_connected_codes' belong on the status row")
        for code, status in (self.enum or {}).items():
            if not code.lstrip("-").isdigit():
                raise ValueError(f"enum key {code!r} is not an integer device code")
            if status not in STATUS_NAMES:
                raise ValueError(f"enum {code} = {status!r} is not a status ({', '.join(STATUS_NAMES)})")
        if self.missing and self.type in ("f32", "string"):
            raise ValueError("'missing' lists raw integers; f32 NaN is always missing")
        if self.write_function == 6 and self.width != 1:
            raise ValueError(f"write_function 6 writes one register; a {self.type} needs 16")
        self._check_bit()
        return self

    def _check_bit(self) -> None:
        """Coils (01, written by 05/15) and discrete inputs (02, read-only) hold one bit each: type "bit"."""
        is_bit = self.type == "bit"
        if is_bit != (self.function in (1, 2)):
            raise ValueError("a coil or discrete input is `type = \"bit\"` with `function = 1` (coil) or `2` "
                             "(discrete input); registers are read with 3 or 4")
        if (self.write_function in (5, 15)) != (is_bit and self.write_function is not None):
            raise ValueError("write_function 5/15 writes coils; registers are written with 6/16")
        if not is_bit:
            return
        if self.unit not in ("bool", "code") or self.bits or self.missing or self.scale != 1.0 or self.offset:
            raise ValueError("a bit row is 0/1: unit \"bool\" or \"code\", no bits, missing, scale or offset")
        if self.access != "r" and self.function != 1:
            raise ValueError("only a coil (function 1) is writable; a discrete input (function 2) is read-only")

    @property
    def width(self) -> int:
        return self.length if self.type == "string" and self.length else TYPE_WIDTH.get(self.type, 1)

    @property
    def label(self) -> str:
        return self.field or self.name or "?"


class ConnectorLayout(BaseModel):
    """`[model.connector]`: the rows inside `rows` (as written, for connector 1) repeat every `stride` registers
    for connectors 2..`count`; an asset picks its connector with `connector = N` (default 1)."""

    model_config = MAP_MODEL_CONFIG

    rows: Pair  # [first, last] address of connector 1's object
    stride: int = Field(ge=1, le=65535)
    count: int = Field(ge=1, le=255)


class ModelInfo(BaseModel):
    model_config = MAP_MODEL_CONFIG

    id: str
    manufacturer: str
    name: str
    kind: KindField
    word_order: WordOrder = "big"
    byte_order: ByteOrder = "big"
    address_base: Literal[0, 1] = 0  # 1: addresses are the documentation's 1-based register numbers
    read_function: Literal[3, 4] = 3
    write_function: Literal[6, 16] = 16
    max_registers: int = Field(default=MAX_READ_REGISTERS, ge=1, le=MAX_READ_REGISTERS)
    blocks: Annotated[tuple[Pair, ...], Strict(False)] = ()  # [first, last] address ranges; requests stay inside one
    sentinels: Literal["none", "sunspec"] = "none"
    # The device answers a write to part of a multi-register value with an exception (many SunSpec devices do);
    # the driver always writes a whole value with 16, so this is for the simulator's fidelity and the docs.
    refuses_partial_writes: bool = False
    connector: ConnectorLayout | None = None  # one object per connector (EVtec: connector X at X x 100)
    source: str = ""  # the document the map was written from, with its version or commit
    product: str = ""  # products and firmware the map was checked against


StepValue = int | Literal["setpoint", "magnitude", "charge", "discharge", "lease"]


class ByDirection(BaseModel):
    """A raw value chosen by the setpoint's direction (Sungrow 0xAA/0xBB/0xCC, Quasar start/stop)."""

    model_config = MAP_MODEL_CONFIG

    charge: int
    discharge: int
    idle: int


class Step(BaseModel):
    """One write of a command sequence: a raw constant, or the setpoint (or a part of it) through the row's codec."""

    model_config = MAP_MODEL_CONFIG

    row: str
    value: StepValue | ByDirection
    delay_s: float = Field(default=0.0, ge=0.0, le=MAX_STEP_DELAY_S)  # pause after this write


class Control(BaseModel):
    """How a setpoint reaches the device beyond one `setpoint_w` register."""

    model_config = MAP_MODEL_CONFIG

    # written before the first setpoint and again after the device comes back
    on_connect: Annotated[tuple[Step, ...], Strict(False)] = ()
    # in order, every setpoint write; default: the setpoint_w row alone
    setpoint: Annotated[tuple[Step, ...], Strict(False)] = ()
    min_charge_w: float = Field(default=0.0, ge=0.0)  # below this a request is written as 0 (the device refuses it)
    min_discharge_w: float = Field(default=0.0, ge=0.0)
    min_charge_row: str | None = None  # a live minimum read from the device, in W
    # Why the device cannot be given a lease (DESIGN.md §8 rule 2: a device that hears nothing returns to its safe
    # default by itself). A map that takes setpoints must have a lease row or step, or say here why it has none:
    # such an asset keeps its last setpoint if the agent stops, and the driver warns of it at every connect.
    no_lease: str | None = Field(default=None, min_length=10)
    # The longest lease the device takes (EVtec: 600 s). A longer agent lease is written as this (the device then
    # reverts sooner: the safe side) and check-config warns; shorter than the agent's refresh it is an error.
    lease_max_s: float | None = Field(default=None, gt=0)


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
    control: Control = Control()

    @model_validator(mode="after")
    def _check_schema(self) -> RegisterMapFile:  # overrides the header's: register maps read schema 1 and 2
        if self.schema_ not in (1, 2):
            raise ValueError(f"schema {self.schema_} is not supported (this agent reads register maps of schema 1, 2)")
        if self.schema_ == 1:
            extra = sorted(self.model.model_fields_set - V1_MODEL_KEYS)
            if extra:
                raise ValueError(f"[model] keys {extra} need schema = 2")
            for row in self.registers:
                extra = sorted(row.model_fields_set - V1_ROW_KEYS)
                if extra:
                    raise ValueError(f"row {row.label}: keys {extra} need schema = 2")
            if "control" in self.model_fields_set:
                raise ValueError("[control] needs schema = 2")
        return self

    @model_validator(mode="after")
    def _check_layout(self) -> RegisterMapFile:
        base = self.model.address_base
        taken: dict[tuple[int | None, int, int], str] = {}  # (unit, table, address): coils, inputs, registers
        bit_rows: dict[int, list[RegisterRow]] = {}
        labels: dict[str, RegisterRow] = {}
        for row in self.registers:
            where = f"row {row.label}"
            if row.address - base < 0 or row.address - base + row.width > 65536:
                raise ValueError(f"{where}: address {row.address} is outside the register space (address_base {base})")
            if row.label in labels:
                raise ValueError(f"{where}: {'field' if row.field else 'name'} {row.label} is mapped twice")
            labels[row.label] = row
            shared = bit_rows.get(row.address, [])
            if row.bits is not None and shared and all(o.type == row.type for o in shared):
                for other in shared:
                    if other.bits and not (row.bits[1] < other.bits[0] or other.bits[1] < row.bits[0]):
                        raise ValueError(f"{where}: bits {list(row.bits)} overlap {other.label}")
                shared.append(row)
                continue
            table = row.function if row.type == "bit" else 3
            for addr in range(row.address, row.address + row.width):
                if (row.unit_id, table, addr) in taken:
                    raise ValueError(f"{row.label} at {row.address} overlaps {taken[row.unit_id, table, addr]}")
                taken[row.unit_id, table, addr] = row.label
            if row.bits is not None:
                bit_rows[row.address] = [row]
        by_address = {row.address: row for row in self.registers}
        for row in self.registers:
            where = f"row {row.label}"
            if row.scale_factor is not None:
                sf_row = by_address.get(row.scale_factor)
                if sf_row is None or sf_row.type != "s16":
                    raise ValueError(f"{row.label}: scale_factor {row.scale_factor} is not an s16 register of the map")
            for key, ref in (("percent_of", row.percent_of), ("negate_if", row.negate_if)):
                if ref is not None and ref not in labels:
                    raise ValueError(f"{where}: {key} {ref!r} is no field or name of the map")
            if row.percent_of is not None:
                target = labels[row.percent_of]
                if row.unit != "%" or target.percent_of is not None or target.type == "string":
                    raise ValueError(f"{where}: percent_of needs unit \"%\" and a numeric row that is no percentage")
            if row.access == "rw" and (row.function or self.model.read_function) == 4:
                raise ValueError(f"{where}: an input register (function 4) is read-only; a writable row is a holding "
                                 "register: give it function = 3")
            if row.access != "r" and (row.type == "string" or row.bits or row.negate_if or row.minimum is not None):
                raise ValueError(f"{where}: a writable row cannot be a string, bitfield, negate_if or minimum row")
        fields = {row.field for row in self.registers if row.field}
        status = next((r for r in self.registers if r.field == "status"), None)
        if status is not None and status.ev_connected_codes is not None and "ev_connected" in fields:
            raise ValueError("row status: ev_connected_codes and an ev_connected row both feed ev_connected")
        self._check_blocks(base)
        self._check_connector(base)
        self._check_control(labels)
        if "power_w" not in fields:
            raise ValueError("every map must feed power_w")
        setpoint = labels.get("setpoint_w")
        if self.model.kind.controllable and (setpoint is None or setpoint.access == "r") and not self.control.setpoint:
            raise ValueError(f"a {self.model.kind} map must have a writable setpoint_w or a [control] setpoint")
        if self.model.kind.controllable and not self.leased and self.control.no_lease is None:
            raise ValueError(
                "the map takes setpoints but gives the device no lease (a writable lease_timeout_s row or a "
                "[control] step with value \"lease\"): a stopped agent would leave its last setpoint running. "
                "Add the device's timeout register, or say why it has none in [control] no_lease"
            )
        return self

    def _check_blocks(self, base: int) -> None:
        blocks = self.model.blocks
        for first, last in blocks:
            if not base <= first <= last or last - first >= 65536:
                raise ValueError(f"[model] blocks: [{first}, {last}] is not an address range")
        if not blocks:
            return
        for row in self.registers:
            if row.access == "w" or row.type == "bit":  # blocks are register ranges
                continue
            if not any(first <= row.address and row.address + row.width - 1 <= last for first, last in blocks):
                raise ValueError(f"row {row.label}: address {row.address} (+{row.width}) lies in no [model] block")

    def _check_connector(self, base: int) -> None:
        layout = self.model.connector
        if layout is None:
            return
        first, last = layout.rows
        if not base <= first <= last:
            raise ValueError(f"[model.connector] rows: [{first}, {last}] is not an address range")
        if layout.stride <= last - first:
            raise ValueError(f"[model.connector] stride {layout.stride} is shorter than connector 1's object "
                             f"[{first}, {last}]: the connectors' objects would overlap")
        if last + (layout.count - 1) * layout.stride - base > 65535:
            raise ValueError(f"[model.connector] count {layout.count}: connector {layout.count}'s object ends past "
                             "the register space")
        if not any(first <= row.address <= last for row in self.registers):
            raise ValueError(f"[model.connector] rows [{first}, {last}] hold no row of the map")

    def _check_control(self, labels: dict[str, RegisterRow]) -> None:
        control = self.control
        if control.lease_max_s is not None and not self.leased:
            raise ValueError("[control] lease_max_s bounds a lease, but the map writes none")
        for part, steps in (("on_connect", control.on_connect), ("setpoint", control.setpoint)):
            for i, step in enumerate(steps):
                where = f"[control] {part}[{i}]"
                row = labels.get(step.row)
                if row is None or row.access == "r":
                    raise ValueError(f"{where}: row {step.row!r} is no writable row of the map")
                if isinstance(step.value, str):
                    if part == "on_connect" and step.value != "lease":
                        raise ValueError(f"{where}: value {step.value!r} needs a setpoint; on_connect writes constants")
                    want = "s" if step.value == "lease" else "W"
                    if row.unit not in UNIT_FAMILY[want] and row.percent_of is None:
                        raise ValueError(f"{where}: value {step.value!r} needs a row in {want}, not {row.unit!r}")
        if control.min_charge_row is not None and control.min_charge_row not in labels:
            raise ValueError(f"[control] min_charge_row {control.min_charge_row!r} is no field or name of the map")

    @property
    def leased(self) -> bool:
        """Whether the agent can give the device a lease: a timeout after which it returns to its safe default."""
        lease_row = next((r for r in self.registers if r.field == "lease_timeout_s"), None)
        steps = (*self.control.on_connect, *self.control.setpoint)
        return (lease_row is not None and lease_row.access != "r") or any(s.value == "lease" for s in steps)


@dataclass(frozen=True, slots=True)
class Span:
    """A run of registers read with one request (gaps inside a device block are read through and ignored)."""

    address: int  # PDU address
    count: int
    function: int = 3  # 1 coils, 2 discrete inputs (count in bits), 3 holding, 4 input registers
    unit_id: int | None = None  # None: the asset's unit id


@dataclass(frozen=True, slots=True)
class RowCodec:
    """How to cut one row's raw value out of its span and turn it into its SI value, and back."""

    row: RegisterRow
    label: str
    address: int  # PDU address
    span: int  # index into RegisterMap.spans; -1 for write-only rows
    start: int  # byte offset in the span
    unpacker: struct.Struct | None  # None for strings
    byte_swap: bool
    word_reverse: bool
    mask: int | None
    shift: int
    missing: frozenset[int]
    nan_missing: bool
    factor: float  # SI = ((raw * scale * 10**sf) + offset) * factor [* SI of percent_of]
    sf_label: str | None
    write_function: int

    @property
    def field(self) -> str:  # kept for callers of the v1 API
        return self.label

    def raw(self, data: bytes) -> int | float | str | None:
        chunk = data[self.start : self.start + 2 * self.row.width]
        if self.byte_swap or self.word_reverse:
            chunk = _reorder(chunk, self.byte_swap, self.word_reverse)
        if self.unpacker is None:
            text = chunk.decode("ascii", errors="replace").replace("\x00", " ").strip()
            return text or None
        value = self.unpacker.unpack(chunk)[0]
        if self.mask is not None:
            value = (value >> self.shift) & self.mask
        if value in self.missing or (self.nan_missing and value != value):
            return None
        return value

    def pack(self, raw: int | float) -> list[int]:
        data = self.unpacker.pack(raw) if self.unpacker is not None else b""
        if self.byte_swap or self.word_reverse:
            data = _reorder(data, self.byte_swap, self.word_reverse)
        return list(struct.unpack(f">{len(data) // 2}H", data))


def _reorder(data: bytes, byte_swap: bool, word_reverse: bool) -> bytes:
    out = bytearray(data)
    if byte_swap:
        out[0::2], out[1::2] = data[1::2], data[0::2]
    if word_reverse:
        words = [out[i : i + 2] for i in range(0, len(out), 2)]
        out = bytearray(b"".join(reversed(words)))
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded poll: domain values (SI, agent sign; a missing value is absent), helper values by name, and the
    status code the map does not know (None when it knows it)."""

    values: dict[str, Any]
    extras: dict[str, Any]
    unmapped_status: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # raw register values by label (scale factors for writes)


@dataclass(frozen=True, slots=True)
class Write:
    """One write request of a command: PDU address, words, function code, and the pause the device needs after."""

    label: str
    address: int
    registers: list[int]
    function: int
    delay_s: float = 0.0
    unit_id: int | None = None  # None: the asset's unit id


@dataclass
class _Packers:
    cache: dict[int, struct.Struct] = field(default_factory=dict)

    def get(self, count: int) -> struct.Struct:
        packer = self.cache.get(count)
        if packer is None:
            packer = self.cache[count] = struct.Struct(f">{count}H")
        return packer


class RegisterMap:
    """A validated, compiled register map: the requests that read it, a decoder, and the writes a setpoint needs."""

    def __init__(self, spec: RegisterMapFile, source: str) -> None:
        self.spec = spec
        self.source = source
        self.model = spec.model
        self.control = spec.control
        self.leased = spec.leased  # False: the device keeps its last setpoint if the agent stops ([control] no_lease)
        self.base = spec.model.address_base
        readable = sorted((r for r in spec.registers if r.access != "w"),
                          key=lambda r: (r.unit_id or 0, self._function(r), r.address))
        self.spans, placement = _plan(readable, self)
        self._codecs: dict[str, RowCodec] = {}
        by_address = {r.address: r for r in spec.registers}
        for row in spec.registers:
            span_index, start = placement.get(id(row), (-1, 0))
            self._codecs[row.label] = self._codec(row, span_index, start, by_address)
        self._by_span: list[list[RowCodec]] = [[] for _ in self.spans]
        for codec in self._codecs.values():
            if codec.span >= 0:
                self._by_span[codec.span].append(codec)
        # percentages need the SI value of their reference first
        self._order = sorted(self._codecs.values(), key=lambda c: c.row.percent_of is not None)
        self._status_enum: dict[int, DeviceStatus] | None = None
        status = self._codecs.get("status")
        if status is not None and status.row.enum is not None:
            self._status_enum = {int(k): STATUS_NAMES[v] for k, v in status.row.enum.items()}
        self._packers = _Packers()

    def _function(self, row: RegisterRow) -> int:
        return row.function or self.model.read_function

    def _codec(self, row: RegisterRow, span: int, start: int, by_address: dict[int, RegisterRow]) -> RowCodec:
        model = self.model
        v2 = self.spec.schema_ == 2
        missing = set(row.missing)
        if model.sentinels == "sunspec" and row.type in SUNSPEC_SENTINELS and row.bits is None:
            missing.add(SUNSPEC_SENTINELS[row.type])
        unit = 1.0 if row.percent_of is not None else UNIT_FACTOR[row.unit]
        sign = -1.0 if row.invert else 1.0
        factor = unit * sign * (0.01 if row.percent_of is not None else 1.0)
        bits = row.bits
        return RowCodec(
            row=row,
            label=row.label,
            address=row.address - self.base,
            span=span,
            start=start,
            unpacker=None if row.type == "string" else struct.Struct(">" + TYPE_CODE[row.type]),
            byte_swap=(row.byte_order or model.byte_order) == "little",
            word_reverse=row.width > 1 and row.type != "string" and (row.word_order or model.word_order) == "little",
            mask=None if bits is None else (1 << (bits[1] - bits[0] + 1)) - 1,
            shift=0 if bits is None else bits[0],
            missing=frozenset(missing),
            nan_missing=v2 and row.type == "f32",
            factor=factor,
            sf_label=None if row.scale_factor is None else by_address[row.scale_factor].label,
            write_function=row.write_function or (5 if row.type == "bit" else model.write_function),
        )

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def kind(self) -> AssetKind:
        return self.model.kind

    def codec(self, label: str) -> RowCodec:
        return self._codecs[label]

    def has(self, field: str) -> bool:
        return field in self._codecs and self._codecs[field].row.field is not None

    def pdu_address(self, label: str) -> int:
        return self._codecs[label].address

    # -- reading -------------------------------------------------------------------------------------------------
    def read(self, span_registers: list[list[int]]) -> Reading:
        """Decode the registers of every span (in span order) into SI domain values, helper values and status."""
        raw: dict[str, Any] = {}
        for codecs, registers in zip(self._by_span, span_registers, strict=True):
            data = self._packers.get(len(registers)).pack(*registers)
            for codec in codecs:
                raw[codec.label] = codec.raw(data)
        si: dict[str, Any] = {}
        for codec in self._order:
            if codec.span >= 0:
                si[codec.label] = self._to_si(codec, raw, si)
        values: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        unmapped: int | None = None
        for label, value in si.items():
            codec = self._codecs[label]
            if codec.row.field is None:
                extras[label] = value
                continue
            if label == "status":
                code = raw[label]
                status = self._status(code)
                if status is None:
                    unmapped = int(code) if code is not None else -1
                    status = DeviceStatus.FAULT  # not operable: no setpoints, still polled, no failed poll
                values["status"] = status.value
                if codec.row.ev_connected_codes is not None and code is not None:
                    values["ev_connected"] = 1 if code in codec.row.ev_connected_codes else 0
            elif value is not None:
                values[label] = value
        return Reading(values, extras, unmapped, raw)

    def decode(self, span_registers: list[list[int]]) -> dict[str, Any]:
        """The domain values of one poll (see `read` for helper values and the unmapped status)."""
        return self.read(span_registers).values

    def _status(self, code: Any) -> DeviceStatus | None:
        if code is None or isinstance(code, str):
            return None
        if self._status_enum is not None:
            return self._status_enum.get(int(code))
        try:
            return DeviceStatus(int(code))  # v1: the map carries the agent's codes as-is
        except ValueError:
            return None

    def _to_si(self, codec: RowCodec, raw: Mapping[str, Any], si: Mapping[str, Any]) -> Any:
        value = raw[codec.label]
        row = codec.row
        if value is None or isinstance(value, str) or row.field == "status":
            return value
        if row.unit == "bool":
            return 1 if value else 0
        exact = (
            isinstance(value, int) and codec.factor == 1.0 and row.scale == 1.0 and row.offset == 0.0
            and codec.sf_label is None and row.percent_of is None and row.negate_if is None
        )
        if exact:  # keep integers whole: a u64 error bitmask does not fit a float
            return value if row.minimum is None else max(value, row.minimum)
        device = value * row.scale
        if codec.sf_label is not None:
            sf = raw[codec.sf_label]
            if sf is None:
                return None
            if not -MAX_SCALE_FACTOR <= sf <= MAX_SCALE_FACTOR:
                raise ValueError(f"scale factor at {self._codecs[codec.sf_label].row.address} is {sf}, "
                                 f"outside ±{MAX_SCALE_FACTOR}")
            device *= 10.0**sf
        result = (device + row.offset) * codec.factor
        if row.percent_of is not None:
            reference = si.get(row.percent_of)
            if reference is None:
                return None
            result *= reference
        if row.negate_if is not None and raw.get(row.negate_if):
            result = -result
        if row.minimum is not None:
            result = max(result, row.minimum)
        return result

    # -- writing -------------------------------------------------------------------------------------------------
    def encode(self, label: str, value: float, toward_zero: bool = False, context: Reading | None = None) -> list[int]:
        """Registers that write `value` (SI, agent sign) into a row; raises ValueError when it does not fit.

        `toward_zero` truncates instead of rounding, for setpoints: a value the envelope clamped to a limit must not
        be rounded past it by a coarse register (10.6 kW into a whole-kW register is 10, never 11). Rows scaled by a
        scale-factor register or a percentage of another row need the last reading (`context`).
        """
        if not math.isfinite(value):
            raise ValueError(f"{label}={value!r} is not a finite number")
        codec = self._codecs[label]
        row = codec.row
        k = codec.factor
        power_of_ten = 1.0
        if codec.sf_label is not None:
            sf = None if context is None else context.raw.get(codec.sf_label)
            if sf is None:
                raise ValueError(f"{label}: scale factor {codec.sf_label} not read yet")
            power_of_ten = 10.0**sf
        if row.percent_of is not None:
            reference = None if context is None else {**context.values, **context.extras}.get(row.percent_of)
            if not reference:
                raise ValueError(f"{label}: {row.percent_of} (the 100 % of this row) is not known or 0")
            k *= reference
        raw = (value / k - row.offset) / (row.scale * power_of_ten)
        return self.encode_raw(label, raw, toward_zero)

    def encode_raw(self, label: str, raw: float, toward_zero: bool = False) -> list[int]:
        """Registers holding the raw device value `raw` (a constant of a command, or a converted setpoint)."""
        codec = self._codecs[label]
        kind = codec.row.type
        if kind != "f32":
            raw = math.trunc(raw) if toward_zero else round(raw)
            lo, hi = _int_range(kind)
            if not lo <= raw <= hi:
                raise ValueError(f"{label}={raw} needs raw {raw}, outside {kind} range {lo}..{hi}")
        return codec.pack(raw)

    def write(self, label: str, registers: list[int], delay_s: float = 0.0) -> Write:
        codec = self._codecs[label]
        return Write(label, codec.address, registers, codec.write_function, delay_s, codec.row.unit_id)

    def connect_writes(self, lease_s: float | None) -> list[Write]:
        """The writes that put the device under remote control, in order (Quasar: 81, 82, 83)."""
        return [self._step(step, 0.0, lease_s, None) for step in self.control.on_connect]

    def setpoint_writes(
        self, power_w: float, lease_s: float | None, context: Reading | None
    ) -> tuple[float, list[Write]]:
        """The power actually commanded (after the device's minimum power) and the writes that command it."""
        power_w = self.apply_minimum(power_w, context)
        steps = self.control.setpoint or (Step(row="setpoint_w", value="setpoint"),)
        return power_w, [self._step(step, power_w, lease_s, context) for step in steps]

    def apply_minimum(self, power_w: float, context: Reading | None) -> float:
        """A request below the device's minimum charge or discharge power is written as 0 (the device would refuse
        it or run at its minimum, more than was asked): toward zero is always inside the envelope."""
        control = self.control
        min_charge = control.min_charge_w
        if control.min_charge_row is not None and context is not None:
            live = {**context.values, **context.extras}.get(control.min_charge_row)
            if isinstance(live, int | float) and math.isfinite(live):
                min_charge = max(min_charge, live)
        if 0 < power_w < min_charge or 0 < -power_w < control.min_discharge_w:
            return 0.0
        return power_w

    def _step(self, step: Step, power_w: float, lease_s: float | None, context: Reading | None) -> Write:
        value = step.value
        if isinstance(value, ByDirection):
            raw = value.charge if power_w > 0 else value.discharge if power_w < 0 else value.idle
            return self.write(step.row, self.encode_raw(step.row, raw), step.delay_s)
        if isinstance(value, int):
            return self.write(step.row, self.encode_raw(step.row, value), step.delay_s)
        if value == "lease":
            if lease_s is None:
                raise ValueError(f"{step.row}: the lease has not been set yet")
            si = lease_s
        else:
            si = {"setpoint": power_w, "magnitude": abs(power_w), "charge": max(power_w, 0.0),
                  "discharge": max(-power_w, 0.0)}[value]
        registers = self.encode(step.row, si, toward_zero=value != "lease", context=context)
        return self.write(step.row, registers, step.delay_s)


def _int_range(kind: str) -> tuple[int, int]:
    if kind == "bit":
        return 0, 1
    bits = 16 * TYPE_WIDTH[kind]
    if kind.startswith("u"):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _plan(rows: list[RegisterRow], register_map: RegisterMap) -> tuple[list[Span], dict[int, tuple[int, int]]]:
    """Group readable rows into as few requests as the device allows: one unit id and function code per request,
    at most `max_registers` registers (2000 bits), never across a device block; gaps are read through only inside a
    declared block (a device without declared blocks may refuse an unmapped register, so there a gap starts a new
    request)."""
    model = register_map.model
    base = register_map.base
    blocks = [(first - base, last - base) for first, last in model.blocks]

    def block_of(pdu: int) -> int:
        return next((i for i, (first, last) in enumerate(blocks) if first <= pdu <= last), -1)

    spans: list[Span] = []
    placement: dict[int, tuple[int, int]] = {}
    members: list[RegisterRow] = []
    start = end = function = block = -1
    unit: int | None = None
    for row in rows:
        pdu = row.address - base
        fn = register_map._function(row)
        bits = fn in (1, 2)
        blk = -1 if bits else block_of(pdu)
        joins = (
            members
            and fn == function
            and row.unit_id == unit
            and pdu + row.width - start <= (MAX_READ_BITS if bits else model.max_registers)
            and (blk == block if blocks and not bits else pdu <= end)
        )
        if not joins:
            if members:
                spans.append(Span(start, end - start, function, unit))
            members, start, end, function, block, unit = [], pdu, pdu, fn, blk, row.unit_id
        members.append(row)
        end = max(end, pdu + row.width)
        placement[id(row)] = (len(spans), 2 * (pdu - start))
    if members:
        spans.append(Span(start, end - start, function, unit))
    return spans, placement


def maps_dir() -> Path:
    return Path(str(resources.files("drivers") / "maps"))


def available_maps() -> list[str]:
    return sorted(p.stem for p in maps_dir().glob("*.toml"))


def find_map_file(name_or_path: str | Path, folder: Path, label: str) -> Path:
    """The file of a map given by path (ends in .toml) or by id: `<id>.toml` in the built-in `folder` or in the
    directory of an installed `vpp_agent.maps` plugin (drivers/entrypoints.py). An id two sources provide is an
    error naming both: which one the agent loaded would otherwise depend on install order."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise MapError(f"{label} {str(name_or_path)!r} not found (looked for {path})")
        return path
    from drivers.entrypoints import BUILT_IN, PluginError, map_directories  # entry points read at the first lookup

    try:
        plugins = map_directories()
    except PluginError as exc:
        raise MapError(f"{label} {str(name_or_path)!r}: {exc}") from exc
    sources = [(f"{BUILT_IN} {folder}", folder), *((f"{p.describe()} {d}", d) for p, d in plugins)]
    hits = [(source, folder / f"{name_or_path}.toml") for source, folder in sources]
    hits = [(source, file) for source, file in hits if file.is_file()]
    if len(hits) > 1:
        raise MapError(f"{label} {str(name_or_path)!r} is provided by {len(hits)} sources: "
                       + "; ".join(str(file) for _, file in hits) + " (rename one, or give the asset's map as a path)")
    if not hits:
        known = sorted({p.stem for _, d in sources for p in d.glob("*.toml")})
        where = ", ".join(str(d) for _, d in sources)
        raise MapError(f"{label} {str(name_or_path)!r} not found (looked in {where}; known: {known})")
    return hits[0][1]


def read_map_file(name_or_path: str | Path, folder: Path, label: str, schema: type[M]) -> tuple[M, Path]:
    """Find (by id in `folder` or a plugin's map directory, or by path: find_map_file), parse and validate one
    device-map file; errors name file, row, key.

    Shared by the register maps and the MQTT maps, so both report problems the same way.
    """
    path = find_map_file(name_or_path, folder, label)
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


def load_map(name_or_path: str | Path, connector: int | None = None) -> RegisterMap:
    """Load a map by id (a file in drivers/maps or in a plugin's maps) or by path; errors name the file, row and key.
    `connector` (an asset's `connector` key) moves the rows of the map's `[model.connector]` object to that
    connector's."""
    spec, path = read_map_file(name_or_path, maps_dir(), "register map", RegisterMapFile)
    if connector is not None:
        spec = _for_connector(spec, connector, path)
    return RegisterMap(spec, str(path))


def _for_connector(spec: RegisterMapFile, number: int, path: Path) -> RegisterMapFile:
    """The map of connector `number`: rows and blocks inside connector 1's object shifted by (number - 1) x stride,
    validated again (so a shifted row that lands on another is refused like any overlap)."""
    layout = spec.model.connector
    if layout is None:
        raise MapError(f"{path}: connector = {number}, but the map has no [model.connector] table (one object per "
                       "connector); leave the asset's connector key out")
    if not 1 <= number <= layout.count:
        raise MapError(f"{path}: connector = {number} is not one of 1..{layout.count} ([model.connector] count)")
    shift = (number - 1) * layout.stride
    first, last = layout.rows

    def moved(address: int) -> int:
        return address + shift if first <= address <= last else address

    data = spec.model_dump(by_alias=True, exclude_unset=True)
    for row in data["registers"]:
        row["address"] = moved(row["address"])
        if row.get("scale_factor") is not None:
            row["scale_factor"] = moved(row["scale_factor"])
    data["model"].pop("connector")  # the result is one connector's map
    data["model"]["blocks"] = [
        (moved(a), moved(b)) if first <= a and b <= last else (a, b) for a, b in spec.model.blocks
    ]
    try:
        return RegisterMapFile.model_validate(data)
    except ValidationError as exc:
        raise MapError(f"{path}: connector = {number}: {exc.errors()[0]['msg']}") from exc


def check_asset_map(name_or_path: str | Path, connector: int | None, lease_s: float,
                    least_s: float) -> tuple[list[str], list[str]]:
    """(errors, warnings) of one Modbus asset's map as `check-config` reports them: the map itself (file, row,
    key), the asset's `connector`, and the agent's lease against the device's `lease_max_s` (see lease_check)."""
    try:
        register_map = load_map(name_or_path, connector)
    except MapError as exc:
        return [str(exc)], []
    return lease_check(register_map, lease_s, least_s)


def lease_check(register_map: RegisterMap, lease_s: float, least_s: float) -> tuple[list[str], list[str]]:
    """(errors, warnings) of an agent lease against the device's `[control] lease_max_s`.

    A longer lease is written as the device's maximum: the device then reverts sooner than the agent assumes,
    which is the safe side, so it is a warning. A maximum below what the agent needs between refreshes
    (`least_s`: 2 x poll_period_s + poll_timeout_s) would let the device drop every setpoint: an error.
    """
    cap = register_map.control.lease_max_s
    where = f"{register_map.source}: [control] lease_max_s = {cap:g}" if cap is not None else ""
    if cap is None or lease_s <= cap:
        return [], []
    if cap < least_s:
        return [f"{where} s is shorter than the {least_s:g} s the agent needs between refreshes "
                "(2 x poll_period_s + poll_timeout_s): the device would drop every setpoint"], []
    return [], [f"{where} s: agent lease_timeout_s = {lease_s:g} s is written as {cap:g} s (the device reverts "
                "sooner than the agent assumes)"]
