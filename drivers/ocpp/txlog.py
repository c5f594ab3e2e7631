"""One transaction's energy-register history, in `seqNo` order, with the time each value was measured.

A station that loses the CSMS queues its TransactionEvents (`offline: true`) and sends them, in order, once it is
back. Their meter values describe the time they were measured (their `timestamp`), not the time they arrive, so they
are kept here by `seqNo` and settled by their timestamps (agent.events.mv.intervals.register_energy_by_interval
books the register's increases to the settlement intervals they happened in). OCPP 2.x: seqNo is "incremental ...
helps with determining if all messages of a transaction have been received": a jump is a gap, logged with the
missing numbers; an event that fills a gap later is put in its place; a repeated seqNo (a station that resends an
event whose answer it did not get) is kept once.

The events lifecycle (agent/events/lifecycle.py) books each log into the Store's per-asset interval energy: it
takes `take_change()` (the earliest time whose booking a reading added since the last take may have moved) and
rebooks the intervals from there with `registers(field, from_ts)`, so a day-long log is not rebooked in full at
every meter value. Its rows are keyed by `source`, unique to this log.

Across an agent restart the log continues (`snapshot` / `restore`, kept by the EVSE driver in the agent's memory):
the same `source`, the seqNo high-water mark and the gaps, and the readings of the last `tail_s` (at least one
settlement interval) with the one before them. A rebooking after the restart starts at the interval of the last
restored reading, so it recomputes that interval from the same readings the agent before it had (replacing its
rows, same source): the step across the restart is booked once, no interval is booked from half its readings, and
an event resent across the restart (seqNo at or below the mark, not a gap) is kept once. An event older than the
restored readings (a gap filled only after the restart) is ignored: the step across it was already booked from the
registers on both sides (cumulative registers lose no energy, only that detail of when).
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("drivers.ocpp")

MAX_READINGS = 20_000  # per transaction: a day of 5 s meter values; the oldest go first
MAX_TAIL = 4_000  # readings a snapshot carries at most (an hour of 1 s meter values)


@dataclass(frozen=True, order=True)
class EnergyReading:
    seq_no: int
    ts: float  # UNIX s: when the station measured it
    import_wh: float | None
    export_wh: float | None
    offline: bool  # queued while the station was offline


class TransactionLog:
    """The readings of one transaction (`transaction_id` at `station` EVSE `evse`), ordered by seqNo."""

    def __init__(self, station: str, evse: int, transaction_id: str) -> None:
        self.station = station
        self.evse = evse
        self.transaction_id = transaction_id
        self.readings: list[EnergyReading] = []
        self.seen: set[int] = set()
        self.missing: set[int] = set()  # seqNos skipped and not (yet) received
        self.highest: int | None = None
        self.source = f"{station}/{evse}/{transaction_id}/{uuid.uuid4().hex[:8]}"
        self._changed_ts: float | None = None
        # after a restore: seqNos below `floor` are history already booked; up to `restored_through` (but for the
        # gaps in `missing`) they were received by the agent before the restart
        self.floor: int | None = None
        self.restored_through: int | None = None

    def is_known(self, seq_no: int) -> bool:
        """True when the event `seq_no` was kept already (here or, before a restart, by the log restored)."""
        if seq_no in self.seen:
            return True
        if self.floor is None or self.restored_through is None:
            return False
        return seq_no < self.floor or (seq_no <= self.restored_through and seq_no not in self.missing)

    def add(self, seq_no: int, offline: bool, values: list[tuple[float, dict[str, float]]]) -> None:
        """One TransactionEvent: its seqNo, offline flag and (timestamp, domain fields) of each of its meter values."""
        if self.is_known(seq_no):
            return
        self.seen.add(seq_no)
        if self.highest is not None and seq_no > self.highest + 1:
            gap = set(range(self.highest + 1, seq_no))
            self.missing |= gap
            log.warning("ocpp.seq_gap", station=self.station, evse=self.evse, transaction=self.transaction_id,
                        missing=f"{min(gap)}..{max(gap)}", got=seq_no, offline=offline)
        elif seq_no in self.missing:
            self.missing.discard(seq_no)
            log.info("ocpp.seq_late", station=self.station, evse=self.evse, transaction=self.transaction_id,
                     seq_no=seq_no, still_missing=len(self.missing))
        self.highest = seq_no if self.highest is None else max(self.highest, seq_no)
        for ts, fields in values:
            if "energy_import_wh" in fields or "energy_export_wh" in fields:
                reading = EnergyReading(seq_no, ts, fields.get("energy_import_wh"), fields.get("energy_export_wh"),
                                        offline)
                index = bisect.bisect(self.readings, reading)
                self.readings.insert(index, reading)
                # its booking starts at the reading before it (the step into it), or at itself when first
                changed = min(ts, self.readings[index - 1].ts) if index else ts
                self._changed_ts = changed if self._changed_ts is None else min(self._changed_ts, changed)
        if len(self.readings) > MAX_READINGS:
            del self.readings[: len(self.readings) - MAX_READINGS]

    def take_change(self, before_ts: float | None = None) -> float | None:
        """The earliest measuring time whose booking readings added since the last take may have changed, and
        reset it; None when nothing was added, or (with `before_ts`) when that time is not before `before_ts`
        (the change then waits for a later take)."""
        changed = self._changed_ts
        if changed is None or (before_ts is not None and changed >= before_ts):
            return None
        self._changed_ts = None
        return changed

    def registers(self, field: str = "import_wh", from_ts: float | None = None) -> list[tuple[float, float]]:
        """(measured at, register Wh) in seqNo order, the input of register_energy_by_interval: all of them, or
        from the last reading measured at or before `from_ts` on (what books every interval from `from_ts`)."""
        first = 0
        if from_ts is not None:  # from the end: a rebooking usually concerns the last few readings
            first = len(self.readings) - 1
            while first > 0 and (self.readings[first].ts > from_ts or getattr(self.readings[first], field) is None):
                first -= 1
        return [(r.ts, value) for r in self.readings[max(first, 0):] if (value := getattr(r, field)) is not None]

    def snapshot(self, tail_s: float) -> dict[str, Any]:
        """What `restore` needs to continue this log after an agent restart (JSON-able): the source, the seqNo mark
        and gaps, and the readings (seqNo order) from the last one measured at or before `tail_s` before the last
        one on (`tail_s` >= the settlement interval: a rebooking after the restart starts at most that far back)."""
        tail: list[EnergyReading] = []
        if self.readings:  # the last in seqNo order: a rebooking after the restart starts from its interval
            cut = self.readings[-1].ts - tail_s
            first = len(self.readings) - 1
            while first > 0 and self.readings[first].ts > cut:
                first -= 1
            tail = self.readings[max(first, len(self.readings) - MAX_TAIL):]
        return {
            "source": self.source,
            "highest": self.highest,
            "missing": sorted(self.missing),
            "readings": [[r.seq_no, r.ts, r.import_wh, r.export_wh, r.offline] for r in tail],
        }

    @classmethod
    def restore(cls, station: str, evse: int, transaction_id: str, saved: dict[str, Any]) -> TransactionLog:
        """The log `snapshot` described, continued: same source, the received seqNos known, the tail's readings.
        Raises ValueError (naming the field) when `saved` is not a snapshot."""
        restored = cls(station, evse, transaction_id)
        try:
            restored.source = str(saved["source"])
            highest = saved["highest"]
            restored.highest = None if highest is None else int(highest)
            restored.missing = {int(n) for n in saved["missing"]}
            restored.readings = sorted(
                EnergyReading(int(seq), float(ts), None if imp is None else float(imp),
                              None if exp is None else float(exp), bool(offline))
                for seq, ts, imp, exp, offline in saved["readings"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"transaction {transaction_id} at {station}/{evse}: saved log unusable: {exc!r}") from exc
        restored.restored_through = restored.highest
        if restored.highest is not None:
            restored.floor = restored.readings[0].seq_no if restored.readings else restored.highest + 1
        return restored
