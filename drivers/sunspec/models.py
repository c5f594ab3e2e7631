"""SunSpec model layouts, built from pysunspec2's JSON model definitions (never hand-typed tables).

A layout flattens one model (id, and its length L as the device declares it) into points with their offset from the
model's first register (its `ID`), type, size, scale factor and access. Repeating groups are numbered from 1, as
evcc and the SunSpec spreadsheets do: `module[3].DCW` is the third MPPT module of model 160, `Prt[1].DCW` the first
DC port of model 714. A group with a fixed count of one keeps its bare name (`PFWInj.PF`). How many instances a
repeating group has follows from L, since a device may declare any number.

`sunspec2` is imported here only, and only when a SunSpec device is configured (DESIGN.md §9: a gateway without
SunSpec devices does not load it); its model files are read once per model id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# Registers per type; a string's width is its point's `size`.
TYPE_WIDTH: dict[str, int] = {
    "int16": 1, "uint16": 1, "count": 1, "acc16": 1, "enum16": 1, "bitfield16": 1, "pad": 1, "sunssf": 1,
    "int32": 2, "uint32": 2, "acc32": 2, "enum32": 2, "bitfield32": 2, "ipaddr": 2, "float32": 2,
    "int64": 4, "uint64": 4, "acc64": 4, "float64": 4, "ipv6addr": 8, "eui48": 4,
}


class SunSpecModelError(ValueError):
    """A model id pysunspec2 does not define, or a point name a model does not have."""


@dataclass(frozen=True, slots=True)
class Point:
    """One point of a model instance: where it is (offset from the model's ID register) and how to read it."""

    name: str  # qualified: "W", "module[3].DCW"
    offset: int
    type: str
    size: int
    sf: str | int | None  # the qualified name of its scale-factor point, or a fixed exponent
    units: str
    writable: bool


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """The points of one model as one device holds it (a given length)."""

    model_id: int
    name: str
    length: int  # L: registers after ID and L
    points: dict[str, Point]

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise SunSpecModelError(f"model {self.model_id} ({self.name}) has no point {name!r}") from None


def models_dir() -> Path:
    import sunspec2.mdef  # deferred: only gateways with SunSpec devices load pysunspec2

    return Path(sunspec2.mdef.__file__).parent / "models" / "json"


@cache
def model_definition(model_id: int) -> dict[str, Any]:
    """pysunspec2's definition of a model (its JSON file, parsed once)."""
    path = models_dir() / f"model_{model_id}.json"
    if not path.is_file():
        raise SunSpecModelError(f"SunSpec model {model_id} is not defined by pysunspec2 (no {path.name})")
    definition: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return definition


def _width(point: dict[str, Any]) -> int:
    kind = point["type"]
    return int(point["size"]) if kind == "string" else TYPE_WIDTH.get(kind, int(point.get("size", 1)))


def _group_width(group: dict[str, Any]) -> int:
    width = sum(_width(p) for p in group.get("points", []))
    for sub in group.get("groups", []):
        count = sub.get("count", 1)
        width += _group_width(sub) * (count if isinstance(count, int) and count > 0 else 1)
    return width


@cache
def layout(model_id: int, length: int | None = None) -> ModelLayout:
    """The layout of `model_id` with body length `length` (None: the definition's fixed length, one instance of
    each repeating group)."""
    group = model_definition(model_id)["group"]
    fixed = sum(_width(p) for p in group["points"]) - 2  # ID and L are not part of L
    points: dict[str, Point] = {}
    top_names = {p["name"] for p in group["points"]}
    offset = 0
    for p in group["points"]:
        points[p["name"]] = _point(p, p["name"], offset, "", top_names)
        offset += _width(p)
    subgroups = group.get("groups", [])
    for sub in subgroups:
        width = _group_width(sub)
        count = sub.get("count", 1)
        if not isinstance(count, int) or count == 0:  # repeats to fill the model (a count point, or 0)
            others = sum(_group_width(g) for g in subgroups if g is not sub)
            body = length if length is not None else fixed + others + width
            count = max(0, (body - fixed - others) // width) if width else 0
        for index in range(1, count + 1):
            prefix = sub["name"] if sub.get("count", 1) == 1 else f"{sub['name']}[{index}]"
            names = {q["name"] for q in sub["points"]}
            for q in sub["points"]:
                points[f"{prefix}.{q['name']}"] = _point(q, f"{prefix}.{q['name']}", offset, prefix, names)
                offset += _width(q)
    declared = offset - 2
    return ModelLayout(model_id, group["name"], length if length is not None else declared, points)


def _point(p: dict[str, Any], name: str, offset: int, prefix: str, siblings: set[str]) -> Point:
    sf = p.get("sf")
    if isinstance(sf, str) and prefix and sf in siblings:
        sf = f"{prefix}.{sf}"  # a scale factor inside the same group instance
    return Point(name, offset, p["type"], _width(p), sf, str(p.get("units", "")), p.get("access") == "RW")
