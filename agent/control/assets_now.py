"""The controlled assets' power at the site meter's moment, from readings of different ages.

The controller steers by what the rest of the site draws, `meter − Σ asset power` (control/meter.py), which holds only
when each asset's power is taken at the moment the meter was read. An asset read in the same poll is. One that pushes
(an OCPP station meters every `[ocpp] meter_interval_s`, 5 s by default; MQTT telemetry between messages) is known
at its last reading, and may have moved since towards the setpoint it was last told. Taking that reading as the
present made the controller chase its own ramps: an EV told −5000 W reached it within a second while its last meter
value still said 0 W, the rest of the site seemed to export 5 kW, and the rule took the setpoint back towards 0 (at
the shipped defaults it hunted between −2.2 and −4.7 kW for more than 20 s).

So an asset counts at its reading when the reading describes the present:
- it was measured since the poll began (read with the meter);
- it shows the asset at the setpoint it was last told (within `tolerance_w`);
- or it was measured at least `[agent] response_s` after that setpoint was told (changed, or written again after a
  reboot, a lapsed lease or a read-back mismatch): what it shows then (a full EV, a BMS limit, a taper) is taken as
  the asset's answer to the setpoint. That is an assumption: a device slower than `response_s` is still on its way,
  and the estimate is off by what it moves until its next reading.
Otherwise the asset lies anywhere between its reading and that setpoint, and the sum is an interval. The site limits
are kept for all of it (meter.py), so near a binding limit a ramp is cut back until the asset's reading catches up,
as it was before.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.fleet import AssetState


def assets_power(states: Iterable[AssetState], polled_at: datetime, response_s: float,
                 tolerance_w: float) -> tuple[float, float]:  # fmt: skip
    """The interval (low, high) the assets' summed power lies in at the meter's reading, W; `polled_at`: when the
    poll that read the meter began."""
    response = timedelta(seconds=response_s)
    low = high = 0.0
    for state in states:
        m = state.measurement
        if m is None:
            continue
        told, told_at = state.told_w, state.told_at
        if (told is None or m.at >= polled_at or abs(m.power_w - told) <= tolerance_w
                or (told_at is not None and m.at >= told_at + response)):  # fmt: skip
            low, high = low + m.power_w, high + m.power_w
        else:
            low, high = low + min(m.power_w, told), high + max(m.power_w, told)
    return low, high
