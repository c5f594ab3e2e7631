"""Encoding device state into holding registers and decoding written registers, from a map's rows.

Written with `struct` only (no driver code, DESIGN.md §2). value_SI = raw · scale · 10^sf · unit_factor · (−1 if
invert); integers are rounded and saturated to their type's range (logged once per model and field); 32-bit values
use the row's word order; bytes within a register are big-endian.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import structlog

from sim_devices.maps import TYPES, UNIT_FACTORS, MapRow, RegisterMap

log = structlog.get_logger(__name__)

INT_RANGES: dict[str, tuple[int, int]] = {
    "u16": (0, 0xFFFF),
    "s16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "s32": (-0x8000_0000, 0x7FFF_FFFF),
}
# Scale factors are chosen from this range: no finer than 0.01 units (finer is noise for a power meter).
SF_MIN, SF_MAX = -2, 9
_saturation_logged: set[tuple[str, str]] = set()


def _multiplier(row: MapRow, sf: int) -> float:
    m = row.scale * UNIT_FACTORS[row.unit] * (10.0**sf)
    return -m if row.invert else m


def pack_raw(row: MapRow, raw: float) -> list[int]:
    """Raw (already scaled) value → register words, in the row's word order."""
    data = struct.pack(">" + TYPES[row.type][1], raw)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if row.word_order == "little" and len(words) == 2 else words


def unpack_raw(row: MapRow, words: list[int]) -> float:
    """Register words → raw value (int for integer types, float for f32)."""
    ordered = words[::-1] if row.word_order == "little" and len(words) == 2 else words
    data = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in ordered)
    return struct.unpack(">" + TYPES[row.type][1], data)[0]


def encode(row: MapRow, value: float, sf: int = 0, *, model_id: str = "") -> list[int]:
    """SI value → register words. Non-finite values become 0 for integer types (they have no NaN)."""
    if row.unit == "bool":
        raw: float = 1 if value else 0
    else:
        raw = value / _multiplier(row, sf)
    if row.type == "f32":
        return pack_raw(row, raw)
    lo, hi = INT_RANGES[row.type]
    if not math.isfinite(raw):
        raw = 0
    clipped = min(max(round(raw), lo), hi)
    if clipped != round(raw) and (model_id, row.label) not in _saturation_logged:
        _saturation_logged.add((model_id, row.label))
        log.warning("register_saturated", model=model_id, field=row.label, value=value, raw=raw, type=row.type)
    return pack_raw(row, clipped)


def decode(row: MapRow, words: list[int], sf: int = 0) -> float:
    """Register words → SI value."""
    raw = unpack_raw(row, words)
    if row.unit == "bool":
        return 1.0 if raw else 0.0
    return raw * _multiplier(row, sf)


def choose_scale_factor(row: MapRow, max_abs_si: float) -> int:
    """Finest power of ten (>= SF_MIN) at which `max_abs_si` still fits the row's type."""
    lo, hi = INT_RANGES.get(row.type, (-(2**31), 2**31 - 1))
    limit = hi if row.type.startswith("u") else min(hi, -lo)
    for sf in range(SF_MIN, SF_MAX + 1):
        if abs(max_abs_si / _multiplier(row, sf)) <= limit:
            return sf
    return SF_MAX


class DeviceCodec:
    """The register image of one device model, with scale factors fixed for one device's rating.

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
        self._sf_rows = [(by_address[a], v) for a, v in self.sf_values.items()]
        self._field_rows = [r for r in regmap.rows if r.field is not None]
        self.writable = [r for r in regmap.rows if r.access == "rw"]

    def sf_for(self, row: MapRow) -> int:
        return self.sf_of_field.get(row.field or "", 0)

    def image(self, values: Mapping[str, float]) -> dict[int, list[int]]:
        """Register words for every row (address → words); a field the device does not report reads 0."""
        out: dict[int, list[int]] = {}
        for row in self._field_rows:
            field = row.field or ""
            out[row.address] = encode(row, values.get(field, 0.0), self.sf_for(row), model_id=self.map.id)
        for row, sf in self._sf_rows:
            out[row.address] = encode(row, sf, 0, model_id=self.map.id)
        return out

    def fill(self, registers: list[int], start_address: int, values: Mapping[str, float]) -> None:
        """Write the image into a flat register list whose index 0 is `start_address`."""
        for address, words in self.image(values).items():
            i = address - start_address
            registers[i : i + len(words)] = words

    def decode_write(
        self, registers: list[int], start_address: int, address: int, new_values: list[int]
    ) -> dict[str, float]:
        """Fields changed by a write of `new_values` at `address` (other words of a 32-bit row keep their value)."""
        changed: dict[str, float] = {}
        end = address + len(new_values)
        for row in self.writable:
            if row.address >= end or row.address + row.width <= address:
                continue
            words = []
            for a in range(row.address, row.address + row.width):
                words.append(new_values[a - address] if address <= a < end else registers[a - start_address])
            changed[row.field or ""] = decode(row, words, self.sf_for(row))
        return changed
