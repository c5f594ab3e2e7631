"""What the running agent writes to its audit trail, and when (docs/audit.md is the reader's side).

Recorded: every accepted command (`command`; a site target is an `override`), every new plan (`plan`), every trust
reload (`override`) and the keys in force at `start`, a clean `stop`, and refused commands: per reason and hour at
most `[trust] audit_refusal_samples` `refused` rows, plus one `refusals` count row per reason and hour written when
the hour has ended (or at shutdown). Frequency readings (one a second for hours) are accepted commands too, but one
row each would be 31 million rows a year: they are summarised per key and minute (`commands`: count, first and last
id and sequence number, and a SHA-256 over their token digests in order).

Why batched: the callers are on the event loop, in the path of every command. A record is an append to a list
(about a microsecond); a task flushes the list every `FLUSH_EVERY_S` in one transaction in the Store's worker thread,
where rows are encoded, hashed and chained. The guarantee that follows (docs/audit.md): a command's row is queued
before its ack is published; a clean stop flushes everything; after kill -9 the rows of at most the last flush
interval are missing (and the refusal counts of the current hour, the frequency summary of the current minute). A
flood adds O(reasons) rows, never O(messages). When the Store fails, rows wait in memory (at most `MAX_PENDING`, the
oldest dropped and counted in a `gap` row once the Store works again) and the agent reports itself degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from agent.audit.chain import Head, decimal, timestamp
from agent.signals.models import AsActivation, SignalModel, SiteTarget, bounded
from agent.store import Store, StoreError

if TYPE_CHECKING:
    from agent.config import TrustSettings
    from agent.dispatch.plan import Plan
    from agent.trust.commands import Command

log = structlog.get_logger("agent.audit")

FLUSH_EVERY_S = 1.0  # loop seconds between flushes: what kill -9 can lose at most
REFUSAL_BUCKET_S = 3600  # refusal samples and counts are per reason and hour
SUMMARY_BUCKET_S = 60  # frequency readings are summarised per key and minute
SUMMARISED_KINDS = frozenset({"frequency"})
MAX_PENDING = 100_000  # rows kept in memory while the Store fails; past this the oldest are dropped and counted
DETAIL_CHARS = 200  # a refusal's reason as kept in a sample row
HEAD_PUBLISH_TIMEOUT_S = 2.0

PublishHead = Callable[[Head], Awaitable[object]]


@dataclass
class _Summary:
    """Accepted frequency readings of one key within one minute."""

    issuer: str
    start: datetime
    count: int = 0
    first_id: str = ""
    last_id: str = ""
    first_seq: int | None = None
    last_seq: int | None = None
    digests: Any = field(default_factory=hashlib.sha256)


class AuditTrail:
    def __init__(self, store: Store, clock: Callable[[], datetime], refusal_samples: int) -> None:
        self.store = store
        self.clock = clock
        self.refusal_samples = refusal_samples
        self.head: Head | None = store.audit_head()  # the newest row on disk (after the last flush)
        self.problem: str | None = None  # the last flush failure, cleared by the next success: the agent's health
        self.dropped = 0  # rows lost to a Store that failed for too long, not yet reported in a `gap` row
        self.rows_written = 0
        self._pending: list[tuple[str, str, dict[str, Any]]] = []
        self._flush_lock = asyncio.Lock()
        self._refusal_start: datetime | None = None  # start of the hour the counters below belong to
        self._refusals: dict[str, list[int]] = {}  # reason code -> [refused, sampled] this hour
        self._summary_start: datetime | None = None
        self._summaries: dict[tuple[str, str], _Summary] = {}  # (kind, kid) -> this minute's readings
        self._last_plan: str | None = None

    # -- what is recorded (event loop; each call is O(1)) --------------------------------------------------
    def record(self, kind: str, data: dict[str, Any], at: datetime | None = None) -> None:
        """Queue one row; written by the next flush."""
        self._pending.append((timestamp(at or self.clock()), kind, data))
        if len(self._pending) > MAX_PENDING:
            overflow = len(self._pending) - MAX_PENDING
            del self._pending[:overflow]
            self.dropped += overflow

    def accepted(self, kind: str, signal: SignalModel, command: Command | None, payload: bytes, at: datetime) -> None:
        """A command the agent took (its ack says `accepted`)."""
        if command is not None:
            who: dict[str, Any] = {"issuer": command.issuer, "kid": command.kid, "seq": command.seq,
                                   "digest": command.digest}  # fmt: skip
        else:  # taken unsigned where `[trust]` allows it: the digest is of the payload as received
            who = {"issuer": "unsigned", "kid": "unsigned", "seq": None, "digest": hashlib.sha256(payload).hexdigest()}
        if kind in SUMMARISED_KINDS:
            self._summarise(kind, signal.id, who, at)
            return
        data = {"signal_kind": kind, "signal_id": signal.id, **who}
        if isinstance(signal, SiteTarget):
            self.record("override", {"what": "site_target", "site_target_w": decimal(signal.site_target_w), **data},
                        at)  # fmt: skip
        elif isinstance(signal, AsActivation):
            self.record("command", {"award_id": signal.award_id, "value": decimal(signal.value, 4), **data}, at)
        else:
            self.record("command", data, at)

    def refused(self, code: str, kind: str, signal_id: str | None, reason: str, payload: bytes, at: datetime) -> None:
        """A command refused (by the gate, validation, admission or a failing Store): counted, sampled if room."""
        self._roll_refusals(at)
        counts = self._refusals.setdefault(code, [0, 0])
        counts[0] += 1
        if counts[1] >= self.refusal_samples:
            return
        counts[1] += 1
        self.record("refused", {
            "reason": code, "signal_kind": bounded(kind, 64), "signal_id": signal_id,
            "detail": bounded(reason, DETAIL_CHARS), "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
        }, at)  # fmt: skip

    def plan(self, plan: Plan, start: datetime, method: str) -> None:
        """A plan the dispatcher adopted; recorded when its schedule differs from the last one recorded."""
        digest = schedule_digest(plan, start)
        if digest == self._last_plan:
            return
        self._last_plan = digest
        steps = int(plan.power_w.shape[1]) if plan.power_w.ndim == 2 else 0
        self.record("plan", {
            "schedule_sha256": digest, "method": method, "status": plan.status, "assets": len(plan.asset_ids),
            "start": timestamp(start), "end": timestamp(start + timedelta(seconds=plan.step_s * steps)),
            "step_s": decimal(plan.step_s), "steps": steps, "solve_s": decimal(plan.solve_s),
            "net_cost": decimal(plan.net_cost, 2), "breakdown": {k: decimal(v, 2) for k, v in plan.breakdown.items()},
            "violations": {k: decimal(v, 3) for k, v in plan.violations.items() if v > 1e-6},
        })  # fmt: skip

    def trust(
        self, what: str, settings: TrustSettings | None = None, required: bool | None = None, error: str | None = None
    ) -> None:
        """The keys in force at `start`, after a `trust_reload` (an override of who may command the site), or a
        `trust_reload_failed` (the previous keys stay); `required`: whether unsigned commands are refused."""
        data: dict[str, Any] = {"what": what}
        if required is not None:
            data["signatures_required"] = required
        if settings is not None:
            data["keys"] = {k.kid: {"issuer": k.issuer, "kinds": list(k.kinds), "public_key": k.public_key}
                            for k in settings.keys if not k.revoked}  # fmt: skip
            data["revoked"] = sorted(k.kid for k in settings.keys if k.revoked)
        if error is not None:
            data["error"] = bounded(error, DETAIL_CHARS)
        self.record("start" if what == "start" else "override", data)

    # -- buckets: count and summary rows, each written once its bucket has ended ----------------------------
    def _roll_refusals(self, now: datetime) -> None:
        start = _bucket(now, REFUSAL_BUCKET_S)
        if start != self._refusal_start:
            self._close_refusals(now)
            self._refusal_start = start

    def _close_refusals(self, now: datetime) -> None:
        if self._refusal_start is not None:
            end = min(now, self._refusal_start + timedelta(seconds=REFUSAL_BUCKET_S))
            for code, (count, sampled) in sorted(self._refusals.items()):
                self.record("refusals", {"reason": code, "from": timestamp(self._refusal_start),
                                         "to": timestamp(end), "count": count, "sampled": sampled}, now)  # fmt: skip
        self._refusals = {}
        self._refusal_start = None

    def _summarise(self, kind: str, signal_id: str, who: dict[str, Any], at: datetime) -> None:
        start = _bucket(at, SUMMARY_BUCKET_S)
        if start != self._summary_start:
            self._close_summaries(at)
            self._summary_start = start
        key = (kind, str(who["kid"]))
        summary = self._summaries.get(key)
        if summary is None:
            summary = self._summaries[key] = _Summary(str(who["issuer"]), start, first_id=signal_id,
                                                      first_seq=who["seq"])  # fmt: skip
        summary.count += 1
        summary.last_id, summary.last_seq = signal_id, who["seq"]
        summary.digests.update(str(who["digest"]).encode("ascii"))

    def _close_summaries(self, now: datetime) -> None:
        if self._summary_start is not None:
            end = min(now, self._summary_start + timedelta(seconds=SUMMARY_BUCKET_S))
            for (kind, kid), s in sorted(self._summaries.items()):
                self.record("commands", {
                    "signal_kind": kind, "kid": kid, "issuer": s.issuer, "from": timestamp(s.start),
                    "to": timestamp(end), "count": s.count, "first_id": s.first_id, "last_id": s.last_id,
                    "first_seq": s.first_seq, "last_seq": s.last_seq, "digests_sha256": s.digests.hexdigest(),
                }, now)  # fmt: skip
        self._summaries = {}
        self._summary_start = None

    def roll(self, now: datetime) -> None:
        """Write the count and summary rows of buckets that have ended (called every flush, so a quiet end of an
        hour is written within a second of it)."""
        if self._refusal_start is not None and now >= self._refusal_start + timedelta(seconds=REFUSAL_BUCKET_S):
            self._close_refusals(now)
        if self._summary_start is not None and now >= self._summary_start + timedelta(seconds=SUMMARY_BUCKET_S):
            self._close_summaries(now)

    # -- writing ------------------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Append the queued rows in one transaction in the Store's worker thread."""
        async with self._flush_lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            try:
                head = await asyncio.to_thread(self.store.append_audit, batch)
            except StoreError as exc:
                self._pending[:0] = batch  # in order, ahead of what came meanwhile
                overflow = len(self._pending) - MAX_PENDING
                if overflow > 0:
                    del self._pending[:overflow]
                    self.dropped += overflow
                if self.problem is None:
                    log.error("audit.write_failed", error=str(exc), pending=len(self._pending))
                self.problem = f"audit rows not written ({len(self._pending)} waiting): {exc}"
                return
            self.head = head
            self.rows_written += len(batch)
            if self.problem is not None:
                log.info("audit.write_recovered", rows=len(batch), lost=self.dropped)
            self.problem = None
            if self.dropped:  # the Store works again: the next batch says how many rows it missed
                self.record("gap", {"lost_rows": self.dropped})
                self.dropped = 0

    async def run(self, stop: asyncio.Event, publish_head: PublishHead | None, head_every_s: float) -> None:
        """Flush every FLUSH_EVERY_S and publish the signed head every `head_every_s` (the first soon after start),
        until `stop`; the final flush and head are `close()`'s."""
        next_head = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=FLUSH_EVERY_S)
            if stop.is_set():
                return
            try:
                self.roll(self.clock())
                await self.flush()
            except Exception as exc:  # a bug here must not end auditing for the rest of the run
                log.error("audit.flush_failed", error=bounded(repr(exc)), exc_info=True)
                self.problem = f"audit flush failed: {bounded(repr(exc))}"
            if publish_head is not None and self.head is not None and time.monotonic() >= next_head:
                next_head = time.monotonic() + head_every_s
                await self._refresh_head()
                await self._publish(publish_head)

    async def close(self, publish_head: PublishHead | None) -> None:
        """At a clean stop: the open buckets' count and summary rows, a `stop` row, a flush, and the last head."""
        now = self.clock()
        self._close_refusals(now)
        self._close_summaries(now)
        self.record("stop", {}, now)
        await self.flush()
        if publish_head is not None and self.head is not None:
            await self._publish(publish_head)

    async def _refresh_head(self) -> None:
        """The newest row on disk, which may be a `pruned` row the hourly prune appended since the last flush: the
        next signed head then vouches for that prune (docs/audit.md)."""
        async with self._flush_lock:
            try:
                head = await asyncio.to_thread(self.store.audit_head)
            except StoreError:
                return  # the head as of the last flush is still true
            if head is not None:
                self.head = head

    async def _publish(self, publish_head: PublishHead) -> None:
        assert self.head is not None
        try:
            await asyncio.wait_for(publish_head(self.head), timeout=HEAD_PUBLISH_TIMEOUT_S)
        except Exception as exc:  # the head is published again next time; the rows are on disk regardless
            log.warning("audit.head_not_published", n=self.head.n, error=bounded(repr(exc)))


def _bucket(moment: datetime, length_s: int) -> datetime:
    ts = moment.timestamp()
    return datetime.fromtimestamp(ts - ts % length_s, UTC)


def schedule_digest(plan: Plan, start: datetime) -> str:
    """A plan's identity: SHA-256 over {"assets", "start", "step_s"} (canonical JSON, one line) and then the power,
    reserve-up and reserve-down arrays as little-endian float64 in row-major order."""
    import numpy as np

    header = json.dumps({"assets": plan.asset_ids, "start": timestamp(start), "step_s": decimal(plan.step_s)},
                        sort_keys=True, separators=(",", ":"))  # fmt: skip
    digest = hashlib.sha256(header.encode() + b"\n")
    for array in (plan.power_w, plan.reserve_up_w, plan.reserve_down_w):
        digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    return digest.hexdigest()
