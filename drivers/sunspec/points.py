"""Decoding and encoding SunSpec points: types, "not implemented" values, shared scale factors.

SunSpec words are big-endian, multi-register values high word first. Every type has a value meaning "not
implemented" (0x8000 for int16, 0xFFFF for uint16/enum16/bitfield16, 0 for accumulators, NaN for floats, all-zero
strings): such a point reads as None, never as data. A scale factor is a sunssf point (int16, −10..10) shared by
several points; a point whose scale factor is not implemented reads as None as well.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

from drivers.sunspec.models import ModelLayout, Point

MAX_SF = 10
CODES = {"int16": "h", "sunssf": "h", "int32": "i", "int64": "q", "float32": "f", "float64": "d"}
UNSET: dict[str, int | None] = {
    "int16": -0x8000, "sunssf": -0x8000, "int32": -0x8000_0000, "int64": -0x8000_0000_0000_0000,
    "uint16": 0xFFFF, "enum16": 0xFFFF, "bitfield16": 0xFFFF, "count": 0xFFFF,
    "uint32": 0xFFFF_FFFF, "enum32": 0xFFFF_FFFF, "bitfield32": 0xFFFF_FFFF,
    "uint64": 0xFFFF_FFFF_FFFF_FFFF,
    "acc16": 0, "acc32": 0, "acc64": 0, "ipaddr": 0,
}


class PointError(ValueError):
    """A value cannot be written into a point (out of its type's range, or its scale factor is unknown)."""


def raw_value(point: Point, words: Sequence[int]) -> int | float | str | None:
    """The raw value of `point` from the model's words (index 0 = its ID register); None if not implemented."""
    return decode_words(point, words[point.offset : point.offset + point.size])


def decode_words(point: Point, chunk: Sequence[int]) -> int | float | str | None:
    """The raw value of `point` from its own words; None if not implemented (or short)."""
    if len(chunk) < point.size:
        return None
    if point.type == "string":
        text = b"".join(w.to_bytes(2, "big") for w in chunk).split(b"\0", 1)[0].decode("latin-1").strip()
        return text or None
    if point.type == "pad":
        return None
    data = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in chunk)
    code = CODES.get(point.type)
    if code is not None:
        value: int | float = struct.unpack(">" + code, data)[0]
    else:
        value = int.from_bytes(data, "big")
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return None if value == UNSET.get(point.type) else value


def scaled(layout: ModelLayout, name: str, words: Sequence[int]) -> float | int | str | None:
    """The value of point `name` in device units (raw × 10^sf), None when it or its scale factor is unset."""
    point = layout.point(name)
    value = raw_value(point, words)
    if value is None or isinstance(value, str) or point.sf is None:
        return value
    exponent = scale_exponent(layout, point, words)
    return None if exponent is None else value * 10.0**exponent


def scale_exponent(layout: ModelLayout, point: Point, words: Sequence[int]) -> int | None:
    """The power of ten of `point` (its sunssf point's value, or a fixed exponent)."""
    if point.sf is None:
        return 0
    if isinstance(point.sf, int):
        return point.sf
    sf = raw_value(layout.point(point.sf), words)
    if sf is None:
        return None
    if not -MAX_SF <= int(sf) <= MAX_SF:
        raise PointError(f"model {layout.model_id} {point.sf} = {sf} is outside ±{MAX_SF}")
    return int(sf)


def encode(point: Point, value: float, exponent: int, toward_zero: bool = False) -> list[int]:
    """Words holding `value` (device units) in `point` at scale 10^exponent; PointError if it does not fit.

    `toward_zero` truncates instead of rounding (setpoints: never round past a limit the envelope clamped to).
    """
    if not math.isfinite(value):
        raise PointError(f"{point.name}={value!r} is not a finite number")
    raw = value / 10.0**exponent
    if point.type in ("float32", "float64"):
        data = struct.pack(">" + CODES[point.type], raw)
    else:
        whole = math.trunc(raw) if toward_zero else round(raw)
        bits = 16 * point.size
        signed = point.type.startswith("int") or point.type == "sunssf"
        lo, hi = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 2)  # not the unset value
        if not lo <= whole <= hi:
            raise PointError(f"{point.name}={value} needs raw {whole}, outside {point.type} {lo}..{hi}")
        data = whole.to_bytes(2 * point.size, "big", signed=signed)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def encode_fields(layout: ModelLayout, values: Mapping[str, float], exponents: Mapping[str, int]) -> list[int]:
    """A whole model image (ID, L and body) with `values` (device units) filled in; every other point reads as not
    implemented. `exponents` gives each sunssf point's value. Used by the simulator and by hand-written tests."""
    words = [0] * (layout.length + 2)
    for point in layout.points.values():
        unset = UNSET.get(point.type)
        if unset is not None and point.type not in ("acc16", "acc32", "acc64", "ipaddr"):
            width = 2 * point.size
            raw = unset & ((1 << (8 * width)) - 1)
            words[point.offset : point.offset + point.size] = [
                (raw >> (16 * (point.size - 1 - i))) & 0xFFFF for i in range(point.size)
            ]
        elif point.type in ("float32", "float64"):
            words[point.offset : point.offset + point.size] = (
                [0x7FC0, 0] if point.type == "float32" else [0x7FF8, 0, 0, 0]  # quiet NaN
            )
    words[0], words[1] = layout.model_id, layout.length
    for name, exponent in exponents.items():
        point = layout.point(name)
        words[point.offset : point.offset + 1] = encode(point, exponent, 0)
    for name, value in values.items():
        point = layout.point(name)
        exponent = scale_exponent(layout, point, words) if point.sf is not None else 0
        words[point.offset : point.offset + point.size] = encode(point, value, exponent or 0)
    return words
