"""Setpoint leases (DESIGN.md §7 rule 2).

A real charger reverts to 0 W when its communication-timeout register expires without a new setpoint; the
simulator must do exactly the same so the agent's refresh logic is tested against the behaviour it relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class SetpointLease:
    """The last setpoint written, when it was written, and when it lapses.

    `setpoint_w` is what the device reports back (the requested value, unclamped, as real devices echo it);
    the device clamps to its live limits when it acts on it. `timeout_s` = 0 disables the lease.
    """

    timeout_s: float = 30.0
    setpoint_w: float = 0.0
    written_at_s: float = 0.0
    writes: int = 0
    last_written_w: float | None = None
    expiries: int = 0
    # Extremes of every value ever written: lets a test prove no controller wrote beyond the device's limits.
    max_written_w: float = -math.inf
    min_written_w: float = math.inf

    def write(self, setpoint_w: float, now_s: float) -> None:
        """Record a setpoint write; every write renews the lease, even one with the same value."""
        if not math.isfinite(setpoint_w):
            raise ValueError(f"setpoint {setpoint_w!r} is not a finite number")
        self.setpoint_w = float(setpoint_w)
        self.last_written_w = float(setpoint_w)
        self.max_written_w = max(self.max_written_w, self.last_written_w)
        self.min_written_w = min(self.min_written_w, self.last_written_w)
        self.written_at_s = now_s
        self.writes += 1

    def set_timeout(self, timeout_s: float, now_s: float) -> None:
        """Change the timeout; the running lease is measured from its write with the new timeout."""
        if timeout_s < 0 or not math.isfinite(timeout_s):
            raise ValueError(f"lease timeout {timeout_s!r} must be a finite number >= 0")
        self.timeout_s = float(timeout_s)

    def expires_at_s(self) -> float | None:
        """Sim time at which the current non-zero setpoint lapses, or None if nothing can lapse."""
        if self.timeout_s <= 0 or self.setpoint_w == 0.0:
            return None
        return self.written_at_s + self.timeout_s

    def expire_if_due(self, now_s: float) -> bool:
        """Revert to 0 W when the lease has run out; return True when it just lapsed."""
        due = self.expires_at_s()
        if due is not None and now_s >= due:
            self.setpoint_w = 0.0
            self.expiries += 1
            return True
        return False
