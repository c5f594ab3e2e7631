"""Expansion of device groups into individual network addresses.

A site of hundreds of devices is written as a few groups (`count = 500`); the agent's asset list and the
simulator's device list expand them with this one rule so the two always agree on who sits where.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one device of a group lives: its id, TCP port and Modbus unit id."""

    id: str
    port: int
    unit_id: int


def expand_group(
    id_pattern: str, count: int | None, port: int, unit_id: int = 1, units_per_port: int = 1
) -> list[Placement]:
    """Expand a group into placements.

    `id_pattern` is used as-is when `count` is None; otherwise it is a str.format pattern with `{i}` (1-based),
    e.g. "ev{i:03d}". Devices fill unit ids `unit_id .. unit_id+units_per_port-1` on one port (a Modbus gateway),
    then move on to the next port. `units_per_port = 1` gives one port per device.
    """
    if count is None:
        return [Placement(id_pattern, port, unit_id)]
    if "{i" not in id_pattern:
        raise ValueError(f"id pattern {id_pattern!r} needs an {{i}} placeholder when count is set")
    if units_per_port < 1 or unit_id + units_per_port - 1 > 247:
        raise ValueError(f"unit ids {unit_id}..{unit_id + units_per_port - 1} exceed the Modbus range 1..247")
    placements = []
    for n in range(count):
        offset_port, offset_unit = divmod(n, units_per_port)
        try:
            device_id = id_pattern.format(i=n + 1)
        except (LookupError, AttributeError, TypeError, ValueError) as exc:  # str.format on a bad pattern
            raise ValueError(
                f"id pattern {id_pattern!r} is not a str.format pattern of {{i}} ({type(exc).__name__}: {exc})"
            ) from exc
        placements.append(Placement(device_id, port + offset_port, unit_id + offset_unit))
    if placements[-1].port > 65535:
        raise ValueError(f"group {id_pattern!r} runs past port 65535")
    return placements


def index_placements(
    table: str, expansions: Sequence[Callable[[], list[Placement]]], hosts: Sequence[str | None] | None = None
) -> dict[str, int]:
    """Expand every group of a config table and map each device id to the index of its group.

    Raises ValueError naming `table[index]` for a group that cannot expand, an id used twice, or two devices on
    the same host, port and unit id (they would silently read each other's registers). A group whose host is None
    has no Modbus address (an MQTT device) and takes part in the id check only.
    """
    seen_ids: dict[str, int] = {}
    seen_units: dict[tuple[str, int, int], str] = {}
    for index, expand in enumerate(expansions):
        host = hosts[index] if hosts is not None else ""
        try:
            placements = expand()
        except ValueError as exc:
            raise ValueError(f"{table}[{index}]: {exc}") from exc
        for p in placements:
            if p.id in seen_ids:
                raise ValueError(f"{table}[{index}]: id {p.id!r} already used by {table}[{seen_ids[p.id]}]")
            seen_ids[p.id] = index
            if host is None:
                continue
            where = (host, p.port, p.unit_id)
            if where in seen_units:
                raise ValueError(
                    f"{table}[{index}]: port {p.port} unit {p.unit_id} already taken by {seen_units[where]!r}"
                )
            seen_units[where] = p.id
    return seen_ids
