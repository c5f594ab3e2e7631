"""Frozen-register detection: a device that answers every poll, but with values the physics says must have moved.

A stuck gateway cache or a hung device controller keeps answering with the same registers. Each answer is
well-formed, so the failed-polls rule (DESIGN.md §8 rule 3) never fires and the agent would go on steering a device
it cannot see. Energy is the witness: while a device reports power, its energy counters and its SoC must move. For
each watched value this module integrates a lower bound of the change the reported power implies since the value
last moved, over device time (Measurement.at, the agent's injected clock), and calls the device frozen once that
change is several register resolutions AND the device has had ample time and polls to show it.

The thresholds, and why (README "Availability" repeats them for users):
- Lower bound of the implied change: the smaller of the powers reported at the two ends of each poll interval
  (power may have moved in between), less POWER_FLOOR_W (meter offset, a pack's own auxiliaries), times
  EFFICIENCY_FLOOR (a counter may sit on the other side of a converter; a charging pack keeps only part of the
  energy); for SoC divided by the nominal capacity (the usable one is smaller, so the real SoC change is larger).
- "Several register resolutions": RESOLUTIONS x the value's step, the smallest change seen from it so far (every
  change of a register is a whole number of its resolution, so this is never finer than the truth), capped at the
  coarsest register in common use (integer percent SoC, whole-kWh counters) before any change is seen.
- MIN_STILL_S of device time with power above the floor and MIN_STILL_POLLS polls: a device may refresh a register
  less often than we poll (a meter's counter every few seconds, a BMS's SoC every ten), and the simulator at high
  speed refreshes between physics ticks; a stuck cache stands still for ever, so waiting costs little.
- A value is evidence only once it has been seen to move: some chargers report an EV's SoC once at plug-in, and a
  register that never moved may be static by design. (A device frozen before the agent first saw it move is
  therefore not detected; its failed setpoint readbacks are the remaining clue.)
- No SoC evidence at the ends (charging above 1 - SOC_END_MARGIN, discharging below SOC_END_MARGIN): a BMS holds
  the displayed SoC there while it balances or tapers.
Devices with neither counters nor SoC (a plain power meter) are not judged: a steady load gives bit-identical
integer registers for minutes on a healthy meter, so "nothing changed" alone is no evidence.

Frozen ends when any field of the reading differs from the one held when the device was called frozen (its
registers refresh again); the watches then start over, so a device whose power refreshes but whose counter stays
stuck is called frozen again only on new evidence, not at once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Literal

from agent.model import Measurement

WATCHED = ("energy_import_wh", "energy_export_wh", "soc")
# The coarsest resolution in common use per watched field (integer percent SoC; whole-kWh counters of inverters and
# older meters): the step assumed until finer changes are seen.
COARSEST_STEP: dict[str, float] = {"energy_import_wh": 1000.0, "energy_export_wh": 1000.0, "soc": 0.01}
RESOLUTIONS = 3.0
MIN_STILL_S = 60.0
MIN_STILL_POLLS = 5
EFFICIENCY_FLOOR = 0.8
POWER_FLOOR_W = 250.0
SOC_END_MARGIN = 0.02

Change = Literal["froze", "thawed"]


@dataclass(frozen=True, slots=True)
class FrozenEvidence:
    """Why a device was called frozen: the value that stood still and what the physics says it should have done."""

    field: str
    value: float
    since: datetime  # device time the value last moved
    still_s: float  # device seconds with power above the floor since then
    polls: int  # polls with power above the floor since then
    expected: float  # lower bound of the change the reported power implies, in the field's unit
    threshold: float  # RESOLUTIONS x the field's step
    power_w: float  # the power reported at the last poll

    def describe(self) -> str:
        return (
            f"frozen: {self.field} stood at {self.value:g} for {self.still_s:.0f} s of device time and {self.polls} "
            f"polls while the device reported {self.power_w:.0f} W, which implies a change of at least "
            f"{self.expected:.4g} (threshold {self.threshold:.4g}); not operable until its readings move again"
        )


@dataclass(slots=True)
class _Watch:
    """One watched value: where it stands, since when, and the evidence gathered while it stood."""

    value: float
    since: datetime
    step: float
    moved: bool = False
    still_s: float = 0.0
    polls: int = 0
    expected: float = 0.0

    def moved_to(self, value: float, at: datetime) -> None:
        self.step = min(self.step, abs(value - self.value))
        self.moved = True
        self.restart(value, at)

    def restart(self, value: float, at: datetime) -> None:
        self.value, self.since = value, at
        self.still_s = self.expected = 0.0
        self.polls = 0


def implied_rate(field: str, before: Measurement, after: Measurement) -> float:
    """Lower bound of how fast `field` must have moved over the interval before → after, in its unit per second.

    Power > 0 flows into the device (DESIGN.md §4): it feeds the import counter and raises SoC; power < 0 feeds the
    export counter and lowers SoC. Only power of one sign at both ends counts.
    """
    low, high = min(before.power_w, after.power_w), max(before.power_w, after.power_w)
    charging_w = max(0.0, low - POWER_FLOOR_W)
    discharging_w = max(0.0, -high - POWER_FLOOR_W)
    if field == "energy_import_wh":
        return charging_w * EFFICIENCY_FLOOR / 3600.0
    if field == "energy_export_wh":
        return discharging_w * EFFICIENCY_FLOOR / 3600.0
    if field != "soc":
        raise ValueError(f"{field!r} is not a watched field ({', '.join(WATCHED)})")
    capacity_wh, soc = after.capacity_wh, after.soc
    if not capacity_wh or soc is None:
        return 0.0
    if (charging_w and soc >= 1.0 - SOC_END_MARGIN) or (discharging_w and soc <= SOC_END_MARGIN):
        return 0.0
    return (charging_w + discharging_w) * EFFICIENCY_FLOOR / capacity_wh / 3600.0


def same_reading(a: Measurement, b: Measurement) -> bool:
    """Every field equal except the time it was taken: what a stuck register cache returns."""
    return all(getattr(a, f.name) == getattr(b, f.name) for f in fields(Measurement) if f.name != "at")


class FrozenDetector:
    """Watches one asset's readings; `observe` each good poll, `interrupt` on a failed one."""

    def __init__(self) -> None:
        self._last: Measurement | None = None  # the previous reading, None after a failed poll (no interval)
        self._watches: dict[str, _Watch] = {}
        self._held: Measurement | None = None  # the reading when the device was called frozen
        self.evidence: FrozenEvidence | None = None

    @property
    def frozen(self) -> bool:
        return self.evidence is not None

    def interrupt(self) -> None:
        """A poll failed: the next interval has no reading at its start, so it is not integrated."""
        self._last = None

    def observe(self, m: Measurement) -> Change | None:
        """Judge one good reading; returns "froze" or "thawed" when the verdict changes, else None."""
        last = self._last
        if last is not None and m.at == last.at:
            return None  # the same snapshot handed out again (a pushed device polled between two messages)
        self._last = m
        if self.evidence is not None:
            assert self._held is not None
            if same_reading(self._held, m):
                return None
            self.evidence = self._held = None
            for name, watch in list(self._watches.items()):
                value = getattr(m, name)
                if value is None:
                    del self._watches[name]
                else:
                    watch.restart(value, m.at)
            return "thawed"
        dt = 0.0 if last is None else (m.at - last.at).total_seconds()  # < 0: the clock was set back; no interval
        for name in WATCHED:
            value = getattr(m, name)
            watch = self._watches.get(name)
            if value is None:
                self._watches.pop(name, None)  # an EV left: its next session's SoC starts a new watch
            elif watch is None:
                self._watches[name] = _Watch(value, m.at, COARSEST_STEP[name])
            elif value != watch.value:
                watch.moved_to(value, m.at)
            elif last is not None and dt > 0 and self._gather(name, watch, last, m, dt):
                self._held = m
                return "froze"
        return None

    def _gather(self, name: str, watch: _Watch, last: Measurement, m: Measurement, dt: float) -> bool:
        """Add one still interval's evidence; True when it makes the device frozen (evidence set)."""
        rate = implied_rate(name, last, m)
        if rate <= 0:
            return False
        watch.still_s += dt
        watch.polls += 1
        watch.expected += rate * dt
        threshold = RESOLUTIONS * watch.step
        if not (
            watch.moved
            and watch.polls >= MIN_STILL_POLLS
            and watch.still_s >= MIN_STILL_S
            and watch.expected >= threshold
        ):
            return False
        self.evidence = FrozenEvidence(
            name, watch.value, watch.since, watch.still_s, watch.polls, watch.expected, threshold, m.power_w
        )
        return True
