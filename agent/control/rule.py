"""Rule-based controller: steer the site meter to a target by sharing power over assets by headroom.

It stands in until the optimiser (agent/dispatch) lands and stays as the safe fallback rule afterwards. It is a
pure function of the fleet picture, so it is tested without any device.
"""

from __future__ import annotations

from agent.control.safety import Bounds


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
    return _spread(base, remaining, room)


def plan_within_bounds(planned: dict[str, float], bounds: dict[str, Bounds]) -> dict[str, float]:
    """The plan's power for each asset with bounds, moved into them (an asset the plan does not cover: 0 W)."""
    return {k: min(max(planned.get(k, 0.0), b.low_w), b.high_w) for k, b in bounds.items()}


def share_within_reserves(
    total_w: float,
    planned: dict[str, float],
    bounds: dict[str, Bounds],
    reserved_up: dict[str, float],
    reserved_down: dict[str, float],
) -> dict[str, float]:
    """The plan's power plus a grid service's activation, placed first where the plan reserved headroom for it.

    The optimiser held capacity (and the energy to sustain it) on particular assets; an activation should land
    there, not wherever physical headroom happens to be, or it drains an EV the plan meant to leave alone. What the
    reserved assets cannot take — one dropped out, or the meter shows more is needed — first brings assets working
    against the change toward 0 W, then goes to all by headroom, so the fleet still covers an asset failure where it
    can without charging one asset from another. Up (delivery) is negative power: `reserved_up` serves a
    negative change, `reserved_down` a positive one.
    """
    base = plan_within_bounds(planned, bounds)
    change = total_w - sum(base.values())
    if change == 0:
        return base
    reserved = reserved_down if change > 0 else reserved_up
    sign = 1.0 if change > 0 else -1.0

    def room_of(k: str, b: Bounds, request: float) -> float:
        return max(0.0, (b.high_w - request) if sign > 0 else (request - b.low_w))

    first = {k: min(max(0.0, reserved.get(k, 0.0)), room_of(k, b, base[k])) for k, b in bounds.items()}
    requests = _spread(base, change, first)
    rest = total_w - sum(requests.values())
    if abs(rest) > 1e-9:
        # first from the assets working against the change, down to 0 W: a battery charged while another
        # discharges for the same site power only burns conversion losses (seen in the demo's up-DR event:
        # -2.8 kW on one battery, +3.7 kW on the other); then the rest by headroom
        toward_zero = {k: min(max(0.0, -sign * requests[k]), room_of(k, b, requests[k])) for k, b in bounds.items()}
        requests = _spread(requests, rest, toward_zero)
        rest = total_w - sum(requests.values())
    if abs(rest) > 1e-9:
        requests = _spread(requests, rest, {k: room_of(k, b, requests[k]) for k, b in bounds.items()})
    return requests


def _spread(base: dict[str, float], change: float, room: dict[str, float]) -> dict[str, float]:
    """Add `change` over the assets in proportion to their room in its direction, never past it."""
    total_room = sum(room.values())
    if total_room <= 0:
        return dict(base)
    fraction = min(1.0, abs(change) / total_room)
    sign = 1.0 if change >= 0 else -1.0
    return {k: base[k] + sign * room.get(k, 0.0) * fraction for k in base}


def site_target_requests(target_w: float, uncontrolled_w: float, bounds: dict[str, Bounds]) -> dict[str, float]:
    """Requests that bring the site meter to `target_w`.

    `uncontrolled_w` is what the meter shows beyond the assets' own measured power (base load, PV, anything the
    agent does not steer); the assets together must make up the difference.
    """
    return share_by_headroom(target_w - uncontrolled_w, bounds)
