"""Rule-based controller: steer the site meter to a target by sharing power over assets by headroom.

It stands in until the optimiser (agent/dispatch) lands and stays as the safe fallback rule afterwards. It is a
pure function of the fleet picture, so it is tested without any device.
"""

from __future__ import annotations

from agent.safety import Bounds


def share_by_headroom(total_w: float, bounds: dict[str, Bounds]) -> dict[str, float]:
    """Split `total_w` over assets in proportion to the headroom each has in that direction.

    Every asset first gets the point of its bounds nearest 0 (an EV that must charge keeps charging); the rest of
    the request is shared by each asset's remaining room, so no asset is asked beyond its bounds and the split
    is exact whenever the fleet can deliver the total.
    """
    base = {k: min(max(0.0, b.low_w), b.high_w) for k, b in bounds.items()}  # the point nearest 0
    remaining = total_w - sum(base.values())
    if remaining >= 0:
        room = {k: max(0.0, b.high_w - base[k]) for k, b in bounds.items()}
    else:
        room = {k: max(0.0, base[k] - b.low_w) for k, b in bounds.items()}
    total_room = sum(room.values())
    if total_room <= 0:
        return base
    fraction = min(1.0, abs(remaining) / total_room)
    sign = 1.0 if remaining >= 0 else -1.0
    return {k: base[k] + sign * room[k] * fraction for k in bounds}


def site_target_requests(target_w: float, uncontrolled_w: float, bounds: dict[str, Bounds]) -> dict[str, float]:
    """Requests that bring the site meter to `target_w`.

    `uncontrolled_w` is what the meter shows beyond the assets' own measured power (base load, PV, anything the
    agent does not steer); the assets together must make up the difference.
    """
    return share_by_headroom(target_w - uncontrolled_w, bounds)
