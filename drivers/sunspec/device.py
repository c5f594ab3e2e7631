"""What discovery learned about one device, compiled into a read plan and a decoder of domain values.

Built once per discovery: the model chain, the layout of each model (from pysunspec2's definitions, at the length
the device declares), the source chosen for each field, and the address ranges one poll reads. Contiguous or
nearly contiguous ranges are merged (the whole SunSpec map is readable, so reading through a gap costs less than
another request): a range joins the request before it while both fit one 125-register read, or across a gap of
fewer than 24 registers (such a request is split at 125 when read).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from drivers.sunspec.discovery import ModelEntry
from drivers.sunspec.models import ModelLayout, SunSpecModelError, layout
from drivers.sunspec.points import scaled
from drivers.sunspec.profile import PERCENT_FIELDS, Source, Term

MERGE_GAP = 24  # registers read through rather than starting a new request
MAX_READ = 125  # registers in one read request

# Points read every poll besides the field sources: status, EV port, control read-back and write limits.
STATUS_POINTS: dict[int, tuple[str, ...]] = {
    701: ("InvSt", "Alrm"),
    101: ("St",), 102: ("St",), 103: ("St",), 111: ("St",), 112: ("St",), 113: ("St",),
    713: ("Sta",),
    802: ("State",),
    702: ("WMax", "WChaRteMax", "WDisChaRteMax"),
    704: ("WSetEna", "WSet", "WSetRvrtTms"),
    124: ("WChaMax", "StorCtl_Mod", "InWRte", "OutWRte", "InOutWRte_RvrtTms"),
}
EV_PORT = 2  # 714 PrtTyp EV


@dataclass
class DeviceMap:
    """One discovered device: its chain, layouts, chosen sources and read plan."""

    base: int
    chain: list[ModelEntry]
    entries: dict[int, ModelEntry] = field(default_factory=dict)
    layouts: dict[int, ModelLayout] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    reads: list[tuple[int, int]] = field(default_factory=list)  # (address, count)
    watched: dict[int, list[str]] = field(default_factory=dict)  # model -> points read besides the sources

    @classmethod
    def build(cls, base: int, chain: list[ModelEntry], alternatives: dict[str, list[Source]]) -> DeviceMap:
        device = cls(base, chain)
        for entry in chain:
            if entry.model_id in device.entries:
                continue  # a second instance of a model (two batteries): the first one is the device's
            try:
                device.layouts[entry.model_id] = layout(entry.model_id, entry.length)
            except SunSpecModelError:
                continue  # a vendor model pysunspec2 does not define: skipped, as its clients do
            device.entries[entry.model_id] = entry
        for name, options in alternatives.items():
            for option in options:
                if all(device._has(term) for term in option):
                    device.sources[name] = option
                    break
        for model_id, names in STATUS_POINTS.items():
            if model_id in device.layouts:
                device.watched[model_id] = [n for n in names if n in device.layouts[model_id].points]
        if 714 in device.layouts:
            ports = [n for n in device.layouts[714].points if n.endswith((".PrtTyp", ".DCSta"))]
            device.watched[714] = ports
        device.reads = device._plan()
        return device

    def _has(self, term: Term) -> bool:
        model = self.layouts.get(term.model_id)
        return model is not None and term.point in model.points

    def points(self) -> Iterable[tuple[int, str]]:
        for src in self.sources.values():
            for term in src:
                yield term.model_id, term.point
        for model_id, names in self.watched.items():
            for name in names:
                yield model_id, name

    def _plan(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        for model_id, name in self.points():
            model = self.layouts[model_id]
            point = model.point(name)
            start = self.entries[model_id].address
            ranges.append((start + point.offset, start + point.offset + point.size))
            if isinstance(point.sf, str):
                sf = model.point(point.sf)
                ranges.append((start + sf.offset, start + sf.offset + 1))
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges):
            # join the current request while it still fits one read, or across a small gap (split when read)
            if merged and (max(hi, merged[-1][1]) - merged[-1][0] <= MAX_READ or lo <= merged[-1][1] + MERGE_GAP):
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return [(lo, hi - lo) for lo, hi in merged]

    def model_words(self, chunks: list[tuple[int, list[int]]], model_id: int) -> list[int]:
        """The words of one model from a poll's chunks, index 0 at its ID register; unread words are 0 (no point
        that was not planned is looked at)."""
        entry = self.entries[model_id]
        words = [0] * (entry.length + 2)
        end = entry.address + len(words)
        for start, data in chunks:
            lo, hi = max(start, entry.address), min(start + len(data), end)
            if lo < hi:
                words[lo - entry.address : hi - entry.address] = data[lo - start : hi - start]
        return words

    def value(self, words: dict[int, list[int]], term: Term) -> float | None:
        result = scaled(self.layouts[term.model_id], term.point, words[term.model_id])
        return None if result is None or isinstance(result, str) else float(result) * term.sign

    def field_values(self, words: dict[int, list[int]]) -> dict[str, float]:
        """Domain values (SI) of every field whose every term is implemented."""
        values: dict[str, float] = {}
        for name, src in self.sources.items():
            parts = [self.value(words, term) for term in src]
            if any(p is None for p in parts):
                continue
            total = sum(p for p in parts if p is not None)
            values[name] = total / 100.0 if name in PERCENT_FIELDS else total
        return values

    def point(self, words: dict[int, list[int]], model_id: int, name: str) -> float | None:
        if model_id not in self.layouts or name not in self.layouts[model_id].points:
            return None
        result = scaled(self.layouts[model_id], name, words[model_id])
        return None if result is None or isinstance(result, str) else float(result)
