"""Helpers for the simulator tests: free loopback ports, an independent register decoder, polling.

Imported as `simhelpers` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sim_devices.ports import free_port_block

MAPS = Path(__file__).resolve().parents[2] / "drivers" / "maps"
HOST = "127.0.0.1"
__all__ = ["HOST", "free_port_block"]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll `check` until it returns True or the deadline passes (the deadline only bounds a failing test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if await check():
                return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


# ---- an independent decoder: reads the TOML itself and decodes with struct --------------------------------
UNIT = {"W": 1, "kW": 1000, "Wh": 1, "kWh": 1000, "V": 1, "A": 1, "%": 0.01, "s": 1, "unix_s": 1, "code": 1, "bool": 1}
FMT = {"u16": "H", "s16": "h", "u32": "I", "s32": "i", "f32": "f"}


def load_rows(model: str) -> tuple[str, list[dict[str, Any]]]:
    data = tomllib.loads((MAPS / f"{model}.toml").read_text())
    return data["model"].get("word_order", "big"), data["registers"]


def span(model: str) -> tuple[int, int]:
    """(first address, count) covering every row of a map."""
    _, rows = load_rows(model)
    first = min(r["address"] for r in rows)
    last = max(r["address"] + (2 if r["type"] in ("u32", "s32", "f32") else 1) for r in rows)
    return first, last - first


def decode_all(model: str, first: int, regs: list[int]) -> dict[str, float]:
    """Decode every field of a map from a register dump starting at `first`."""
    order, rows = load_rows(model)
    raw_at: dict[int, int | float] = {}
    out: dict[str, float] = {}
    for r in rows:
        width = 2 if r["type"] in ("u32", "s32", "f32") else 1
        words = regs[r["address"] - first : r["address"] - first + width]
        if width == 2 and r.get("word_order", order) == "little":
            words = words[::-1]
        raw = struct.unpack(">" + FMT[r["type"]], b"".join(struct.pack(">H", w) for w in words))[0]
        raw_at[r["address"]] = raw
    for r in rows:
        if "field" not in r:
            continue
        raw = raw_at[r["address"]]
        sf = raw_at[r["scale_factor"]] if "scale_factor" in r else 0
        value = raw * r.get("scale", 1) * 10**sf * UNIT[r.get("unit", "code")] * (-1 if r.get("invert") else 1)
        out[r["field"]] = (1.0 if raw else 0.0) if r.get("unit") == "bool" else value
    return out


def resolution(model: str, field: str, sf: int = 0) -> float:
    """Smallest SI step of an integer field (0 for f32)."""
    _, rows = load_rows(model)
    r = next(r for r in rows if r.get("field") == field)
    if r["type"] == "f32":
        return 0.0
    return abs(r.get("scale", 1) * 10**sf * UNIT[r.get("unit", "code")])


def encode_field(model: str, field: str, value_si: float) -> tuple[int, list[int]]:
    """(address, words) to write a field; no scale-factor rows are writable so sf is 0."""
    order, rows = load_rows(model)
    r = next(r for r in rows if r.get("field") == field)
    raw: float = value_si / (r.get("scale", 1) * UNIT[r.get("unit", "code")] * (-1 if r.get("invert") else 1))
    if r["type"] != "f32":
        raw = round(raw)
    data = struct.pack(">" + FMT[r["type"]], raw)
    words = [struct.unpack(">H", data[i : i + 2])[0] for i in range(0, len(data), 2)]
    if len(words) == 2 and r.get("word_order", order) == "little":
        words = words[::-1]
    return r["address"], words
