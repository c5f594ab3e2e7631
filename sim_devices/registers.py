"""Encoding device state into registers and decoding written registers, from a map's rows, as the device would.

Written with `struct` only (no driver code, DESIGN.md §2). A field's SI value (agent sign) becomes the device's raw
value by inverting the map: SI = ((raw · scale · 10^sf) + offset) · unit_factor · (−1 if invert) [· the SI value of
`percent_of`] [· −1 while the `negate_if` flag is set]. A status row with an `enum` serves the device's own code for
the domain status (the lowest code that agrees with `ev_connected_codes` too), a field the device does not report
serves its "not implemented" value, and a command sequence written by a client ([control] setpoint: direction
codes, magnitudes, split charge/discharge rows) is turned back into the one setpoint the physics takes.
Integers are rounded and saturated to their type's range (logged once per model and field).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import structlog

from sim_devices.maps import SUNSPEC_SENTINELS, TYPES, UNIT_FACTORS, MapRow, RegisterMap

log = structlog.get_logger(__name__)

INT_RANGES: dict[str, tuple[int, int]] = {
    "u16": (0, 0xFFFF),
    "s16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "s32": (-0x8000_0000, 0x7FFF_FFFF),
    "u64": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "s64": (-0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
    "bit": (0, 1),
}
# Scale factors are chosen from this range: no finer than 0.01 units (finer is noise for a power meter).
SF_MIN, SF_MAX = -2, 9
_saturation_logged: set[tuple[str, str]] = set()
_unknown_status_logged: set[tuple[str, int]] = set()


def _multiplier(row: MapRow, sf: int) -> float:
    m = row.scale * UNIT_FACTORS[row.unit] * (10.0**sf)
    return -m if row.invert else m


def _reorder(data: bytes, row: MapRow) -> bytes:
    """Big-endian bytes <-> the row's byte and word order (both are their own inverse)."""
    out = bytearray(data)
    if row.byte_order == "little":
        out[0::2], out[1::2] = data[1::2], data[0::2]
    if row.word_order == "little" and len(out) > 2 and row.type != "string":
        out = bytearray(b"".join(reversed([out[i : i + 2] for i in range(0, len(out), 2)])))
    return bytes(out)


def pack_raw(row: MapRow, raw: float | str) -> list[int]:
    """Raw (already scaled) value → register words, in the row's byte and word order."""
    if row.type == "string":
        data = str(raw).encode("ascii", errors="replace")[: 2 * row.length].ljust(2 * row.length, b"\x00")
    elif row.type == "bit":
        return [1 if raw else 0]
    else:
        data = struct.pack(">" + TYPES[row.type][1], raw)
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    if row.byte_order == "little":
        words = [((w >> 8) | (w << 8)) & 0xFFFF for w in words]
    if row.word_order == "little" and len(words) > 1 and row.type != "string":
        words.reverse()
    return words


def unpack_raw(row: MapRow, words: list[int]) -> Any:
    """Register words → raw value (int for integer types, float for f32, str for strings)."""
    if row.type == "bit":
        return 1 if words[0] else 0
    data = _reorder(b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in words), row)
    if row.type == "string":
        return data.decode("ascii", errors="replace").rstrip("\x00")
    value = struct.unpack(">" + TYPES[row.type][1], data)[0]
    if row.bits is not None:
        low, high = row.bits
        value = (value >> low) & ((1 << (high - low + 1)) - 1)
    return value


def _fit(row: MapRow, raw: float, value: float, model_id: str) -> float:
    """Round and saturate an integer raw value (f32 passes through); non-finite becomes 0 (integers have no NaN)."""
    if row.type == "f32":
        return raw
    lo, hi = INT_RANGES[row.type]
    if row.bits is not None:
        lo, hi = 0, (1 << (row.bits[1] - row.bits[0] + 1)) - 1
    if not math.isfinite(raw):
        raw = 0
    clipped = min(max(round(raw), lo), hi)
    if clipped != round(raw) and (model_id, row.label) not in _saturation_logged:
        _saturation_logged.add((model_id, row.label))
        log.warning("register_saturated", model=model_id, field=row.label, value=value, raw=raw, type=row.type)
    return clipped


def to_raw(row: MapRow, value: float, sf: int = 0, reference: float | None = None) -> float:
    """SI value (agent sign) → the raw value the device holds, before rounding (`reference`: SI of percent_of)."""
    if row.unit == "bool":
        return 1 if value else 0
    if row.negate_if is not None:
        value = abs(value)  # the sign lives in the flag row
    if row.percent_of is not None:
        if not reference:
            return math.nan
        return (value / (reference * 0.01 * (-1 if row.invert else 1)) - row.offset) / (row.scale * 10.0**sf)
    return (value / (UNIT_FACTORS[row.unit] * (-1 if row.invert else 1)) - row.offset) / (row.scale * 10.0**sf)


def from_raw(row: MapRow, raw: float, sf: int = 0, reference: float | None = None) -> float:
    """Raw value → SI value (agent sign); the negate_if flag is the caller's."""
    if row.unit == "bool":
        return 1.0 if raw else 0.0
    device = raw * row.scale * 10.0**sf + row.offset
    if row.percent_of is not None:
        return device * 0.01 * (-1 if row.invert else 1) * (reference or 0.0)
    return device * UNIT_FACTORS[row.unit] * (-1 if row.invert else 1)


def encode(row: MapRow, value: float, sf: int = 0, *, model_id: str = "") -> list[int]:
    """SI value → register words. Non-finite values become 0 for integer types (they have no NaN)."""
    return pack_raw(row, _fit(row, to_raw(row, value, sf), value, model_id))


def decode(row: MapRow, words: list[int], sf: int = 0) -> float:
    """Register words → SI value."""
    return from_raw(row, unpack_raw(row, words), sf)


def choose_scale_factor(row: MapRow, max_abs_si: float) -> int:
    """Finest power of ten (>= SF_MIN) at which `max_abs_si` still fits the row's type."""
    lo, hi = INT_RANGES.get(row.type, (-(2**31), 2**31 - 1))
    limit = hi if row.type.startswith("u") else min(hi, -lo)
    for sf in range(SF_MIN, SF_MAX + 1):
        if abs(max_abs_si / _multiplier(row, sf)) <= limit:
            return sf
    return SF_MAX


def sentinel(row: MapRow, sunspec: bool) -> float | None:
    """The raw value meaning "not implemented" for a row, or None when the map declares none."""
    if row.missing:
        return row.missing[0]
    if sunspec and row.type in SUNSPEC_SENTINELS and row.bits is None:
        return SUNSPEC_SENTINELS[row.type]
    if row.type == "f32":
        return math.nan
    return None


class DeviceCodec:
    """The register image of one device, with scale factors fixed for its rating, and the state of its command
    registers (a direction code, a held magnitude) between a client's writes.

    Scale factors are chosen once (from `maxima`, the largest magnitude each scaled field may take) because a
    SunSpec-style client may cache them; they never change while the device runs.
    """

    def __init__(self, regmap: RegisterMap, maxima: Mapping[str, float] | None = None) -> None:
        self.map = regmap
        by_address = {r.address: r for r in regmap.rows}
        self.sf_of_field: dict[str, int] = {}
        self.sf_values: dict[int, int] = {}  # helper-row address -> sf value
        for row in regmap.rows:
            if row.scale_factor is not None and row.field is not None:
                sf = choose_scale_factor(row, (maxima or {}).get(row.field, 0.0))
                self.sf_of_field[row.field] = sf
                self.sf_values[row.scale_factor] = sf
        self._sf_rows = {by_address[a].label: v for a, v in self.sf_values.items()}
        self._flags = {r.negate_if: r.field for r in regmap.rows if r.negate_if and r.field}  # flag -> signed field
        self.writable = [r for r in regmap.rows if r.writable]
        self.held: dict[str, Any] = {}  # raw value last written to each writable helper row
        self.roles = self._roles()

    def _roles(self) -> dict[str, Any]:
        """What a write to each row means: a setpoint (or part of one), a direction code, the lease."""
        roles: dict[str, Any] = {}
        for step in self.map.setpoint_steps:
            roles[step.row] = step.value if isinstance(step.value, str | dict) else "constant"
        if not self.map.setpoint_steps and self.map.row_for("setpoint_w") is not None:
            roles["setpoint_w"] = "setpoint"
        lease = self.map.row_for("lease_timeout_s")
        if lease is not None and lease.writable:
            roles["lease_timeout_s"] = "lease"
        return roles

    def sf_for(self, row: MapRow) -> int:
        return self.sf_of_field.get(row.field or "", 0)

    # ---- reading ---------------------------------------------------------------------------------------
    def row_raw(self, row: MapRow, values: Mapping[str, float]) -> Any:
        """The raw value a row holds for the device state `values` (SI, agent sign)."""
        sunspec = self.map.sentinels == "sunspec"
        if row.field is None:
            if row.label in self._sf_rows:
                return self._sf_rows[row.label]
            if row.label in self._flags:
                signed = values.get(self._flags[row.label])
                return 1 if signed is not None and signed < 0 else 0
            if row.label in self.held:
                return self.held[row.label]
            missing = sentinel(row, sunspec)
            return "" if row.type == "string" else 0 if missing is None or row.writable else missing
        if row.field == "status" and row.enum is not None:
            return self.native_status(row, values)
        value = values.get(row.field)
        if value is None or not math.isfinite(value):
            missing = sentinel(row, sunspec)
            return 0 if missing is None else missing
        reference = values.get(row.percent_of) if row.percent_of else None
        return _fit(row, to_raw(row, value, self.sf_for(row), reference), value, self.map.id)

    def native_status(self, row: MapRow, values: Mapping[str, float]) -> int:
        """The device's own code for the domain status (and plug state): the inverse of the map's enum."""
        assert row.enum is not None
        status = int(values.get("status", 0))
        codes = [code for code, s in sorted(row.enum.items()) if s == status]
        connected = values.get("ev_connected")
        if row.ev_connected_codes is not None and connected is not None:
            agreeing = [c for c in codes if (c in row.ev_connected_codes) == bool(connected)]
            codes = agreeing or codes
        if codes:
            return codes[0]
        unknown = max(row.enum) + 1  # a state the documentation lists no code for: what a real device would send
        if (self.map.id, status) not in _unknown_status_logged:
            _unknown_status_logged.add((self.map.id, status))
            log.warning("sim.status_without_code", model=self.map.id, status=status, served=unknown)
        return unknown

    def row_words(self, row: MapRow, values: Mapping[str, float]) -> list[int]:
        return pack_raw(row, self.row_raw(row, values))

    def images(self, values: Mapping[str, float]) -> dict[tuple[int | None, int], dict[int, list[int]]]:
        """Words of every row by (unit id or None for the device's own, function table) and address; bitfield rows
        sharing a register are merged into it."""
        out: dict[tuple[int | None, int], dict[int, list[int]]] = {}
        for row in self.map.rows:
            table = out.setdefault((row.unit_id, row.space), {})
            if row.bits is None:
                words = self.row_words(row, values)
            else:  # packing is a permutation of bits, so fields OR together in the device's byte and word order
                low, high = row.bits
                raw = int(self.row_raw(row, values)) & ((1 << (high - low + 1)) - 1)
                previous = table.get(row.address, [0] * row.width)
                words = [p | w for p, w in zip(previous, pack_raw(row, raw << low), strict=True)]
            table[row.address] = words
        return out

    def image(self, values: Mapping[str, float]) -> dict[int, list[int]]:
        """Register words of the device's own unit, holding and input tables merged (address → words)."""
        merged: dict[int, list[int]] = {}
        for (unit, space), table in self.images(values).items():
            if unit is None and space in (3, 4):
                merged.update(table)
        return merged

    def fill(self, registers: list[int], start_address: int, values: Mapping[str, float], space: int = 3,
             unit_id: int | None = None) -> None:
        """Write one table's image into a flat register list whose index 0 is `start_address` (for the coil and
        discrete-input tables: 16 bits a register, bit address // 16)."""
        table = self.images(values).get((unit_id, space), {})
        for address, words in table.items():
            if space in (1, 2):
                i, bit = divmod(address, 16)
                i -= start_address
                if 0 <= i < len(registers):
                    registers[i] = registers[i] | (1 << bit) if words[0] else registers[i] & ~(1 << bit)
                continue
            i = address - start_address
            if i >= 0 and i + len(words) <= len(registers):
                registers[i : i + len(words)] = words

    # ---- writing ---------------------------------------------------------------------------------------
    def partial_rows(self, address: int, count: int, space: int = 3, unit_id: int | None = None) -> list[str]:
        """Multi-register rows a write of `count` registers at `address` covers only in part."""
        end = address + count
        return [
            r.label for r in self.writable
            if r.space == space and r.unit_id == unit_id and r.width > 1
            and r.address < end and address < r.address + r.width
            and not (address <= r.address and r.address + r.width <= end)
        ]

    def decode_write(
        self, registers: list[int], start_address: int, address: int, new_values: list[int], space: int = 3,
        unit_id: int | None = None, values: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """The physics commands (`setpoint_w`, `lease_timeout_s`) a write of `new_values` at `address` makes, after
        the map's command sequence; written helper rows are held (other words of a wide row keep their value)."""
        commands: dict[str, float] = {}
        end = address + len(new_values)
        for row in self.writable:
            if row.space != space or row.unit_id != unit_id or row.address >= end or row.address + row.width <= address:
                continue
            if space in (1, 2):
                raw: Any = 1 if new_values[row.address - address] else 0
            else:
                words = [new_values[a - address] if address <= a < end else registers[a - start_address]
                         for a in range(row.address, row.address + row.width)]
                raw = unpack_raw(row, words)
            reference = (values or {}).get(row.percent_of) if row.percent_of else None
            si = from_raw(row, raw, self.sf_for(row), reference) if row.type != "string" else math.nan
            self.held[row.label] = raw
            self.held[f"{row.label}:si"] = si
            commands.update(self._command(row.label, si))
        return commands

    def _command(self, label: str, si: float) -> dict[str, float]:
        role = self.roles.get(label)
        if role == "lease":
            return {"lease_timeout_s": si}
        if role == "setpoint":
            return {"setpoint_w": si}
        if role in ("magnitude", "charge", "discharge") or isinstance(role, dict):
            return {"setpoint_w": self._composed()}
        return {}

    def _composed(self) -> float:
        """The setpoint the held command registers say now (Sungrow: 0xBB + 3000 W = -3000 W)."""
        sign = 1.0
        for label, role in self.roles.items():
            if isinstance(role, dict) and label in self.held:
                code = self.held[label]
                if code == role.get("idle"):
                    return 0.0
                sign = -1.0 if code == role.get("discharge") and code != role.get("charge") else 1.0
        total = 0.0
        for label, role in self.roles.items():
            si = self.held.get(f"{label}:si")
            if si is None or not math.isfinite(si):
                continue
            if role == "magnitude":
                total += sign * abs(si)
            elif role == "setpoint":
                total += si
            elif role == "charge":
                total += abs(si)
            elif role == "discharge":
                total -= abs(si)
        return total

