"""Expansion of device groups into individual network addresses.

A site of hundreds of devices is written as a few groups (`count = 500`); the agent's asset list and the
simulator's device list expand them with this one rule so the two always agree on who sits where.
"""

from __future__ import annotations

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
        placements.append(Placement(id_pattern.format(i=n + 1), port + offset_port, unit_id + offset_unit))
    if placements[-1].port > 65535:
        raise ValueError(f"group {id_pattern!r} runs past port 65535")
    return placements
