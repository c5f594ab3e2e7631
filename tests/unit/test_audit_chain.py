"""The audit chain detects edits, deletions, truncation and (through a kept signed head) a consistent rewrite; refusals
are sampled and counted per reason and hour; pruning keeps the chain checkable from its anchor."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from auditkit import rewrite

from agent.audit.chain import GENESIS, Head, NotCanonical, check_head, check_rows, row_hash, timestamp
from agent.audit.cli import main as audit_main
from agent.audit.trail import AuditTrail
from agent.store import Store

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class Clock:
    """The agent's injectable clock, moved by the test."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def filled(tmp_path: Path, rows: int = 10) -> tuple[Store, AuditTrail, Clock]:
    store, clock = Store(tmp_path / "s.db"), Clock()
    trail = AuditTrail(store, clock, refusal_samples=3)
    for i in range(rows):
        clock.now += timedelta(seconds=1)
        trail.record("command", {"signal_kind": "prices", "signal_id": f"p{i}", "seq": i, "note": "ü"})
    asyncio.run(trail.flush())
    return store, trail, clock


def test_the_documented_encoding_is_the_hash(tmp_path: Path) -> None:
    store, trail, _ = filled(tmp_path, 3)
    rows = store.audit_rows()
    prev = GENESIS
    for row in rows:  # recomputed from the formula in agent/audit/chain.py's docstring, not through its code
        line = json.dumps([row.n, row.at, row.kind, json.loads(row.data)], sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode("ascii")  # fmt: skip
        assert row.prev_hash == prev
        assert row.hash == hashlib.sha256(bytes.fromhex(prev) + line).hexdigest()
        prev = row.hash
    assert [r.n for r in rows] == [1, 2, 3] and rows[0].at == "2026-12-02T12:00:01.000Z"
    assert trail.head == Head(3, rows[-1].hash, rows[-1].at)
    with pytest.raises(NotCanonical):  # a float has no one text in every language: fractions are decimal strings
        row_hash(GENESIS, 1, "t", "plan", {"cost": 1.5})


def test_the_chain_verifies_and_an_edited_row_is_found(tmp_path: Path) -> None:
    store, _, _ = filled(tmp_path)
    assert check_rows(store.audit_rows()).broken is None
    with pytest.raises(Exception, match="append-only"):  # the agent's own connection cannot update a row
        store._run("edit", lambda db: db.execute("UPDATE audit SET kind = 'x' WHERE n = 4"))
    store.close()
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    db.execute("DROP TRIGGER audit_append_only")
    db.execute("""UPDATE audit SET data = replace(data, '"p4"', '"forged"') WHERE n = 5""")
    db.close()
    check = check_rows(Store(tmp_path / "s.db").audit_rows())
    assert check.broken_n == 5 and "hash does not match" in (check.broken or "")


def test_a_deleted_row_is_found(tmp_path: Path) -> None:
    store, _, _ = filled(tmp_path)
    store._run("delete", lambda db: db.execute("DELETE FROM audit WHERE n = 6"))
    check = check_rows(store.audit_rows())
    assert check.broken_n == 6 and "missing" in (check.broken or "")


def test_a_consistent_rewrite_passes_alone_and_fails_against_a_kept_head(tmp_path: Path) -> None:
    store, trail, _ = filled(tmp_path)
    kept = trail.head
    assert kept is not None and kept.n == 10
    store.close()
    rewrite(tmp_path / "s.db", 4, {"signal_id": "forged"})
    rows = Store(tmp_path / "s.db").audit_rows()
    assert json.loads(rows[3].data)["signal_id"] == "forged"
    chain = check_rows(rows, {kept.n})
    assert chain.broken is None  # the rows alone cannot tell: they were recomputed consistently
    assert check_head(chain, kept)[0] == "mismatch"  # the head the agent signed before the rewrite can
    # an older head, of a row before the edit, still matches
    assert check_head(check_rows(rows, {3}), Head(3, rows[2].hash, rows[2].at))[0] == "ok"


def test_rows_cut_from_the_end_are_found_by_a_later_head(tmp_path: Path) -> None:
    store, trail, _ = filled(tmp_path)
    kept = trail.head
    assert kept is not None
    store._run("cut", lambda db: db.execute("DELETE FROM audit WHERE n > 7"))
    chain = check_rows(store.audit_rows(), {kept.n})
    assert chain.broken is None and check_head(chain, kept)[0] == "mismatch"


def test_refusals_are_sampled_and_counted_per_reason_and_hour(tmp_path: Path) -> None:
    store, clock = Store(tmp_path / "s.db"), Clock(T0 + timedelta(minutes=10))
    trail = AuditTrail(store, clock, refusal_samples=3)
    for i in range(500):
        trail.refused("bad_signature" if i % 2 else "unknown_key", "as_activation", None, "refused " * 100,
                      b"x" * 10, clock())  # fmt: skip
    asyncio.run(trail.flush())
    rows = store.audit_rows()
    assert [r.kind for r in rows] == ["refused"] * 6  # the counts wait for the hour to end: they are append-only too
    assert all(len(json.loads(r.data)["detail"]) <= 200 for r in rows)
    clock.now = T0 + timedelta(hours=1, seconds=1)
    trail.roll(clock())
    trail.refused("bad_signature", "as_activation", None, "again", b"y", clock())  # the next hour samples anew
    asyncio.run(trail.flush())
    counts = {json.loads(r.data)["reason"]: json.loads(r.data) for r in store.audit_rows() if r.kind == "refusals"}
    assert counts["bad_signature"]["count"] == 250 and counts["unknown_key"]["count"] == 250
    assert counts["bad_signature"]["sampled"] == 3
    assert counts["bad_signature"]["from"] == "2026-12-02T12:00:00.000Z"
    assert counts["bad_signature"]["to"] == "2026-12-02T13:00:00.000Z"
    assert store.audit_rows()[-1].kind == "refused" and len(store.audit_rows()) == 9
    asyncio.run(trail.close(None))  # at a clean stop the open hour's count is written, then a `stop` row
    tail = [(r.kind, json.loads(r.data).get("count")) for r in store.audit_rows()[-2:]]
    assert tail == [("refusals", 1), ("stop", None)]
    assert check_rows(store.audit_rows()).broken is None


def test_prune_keeps_a_verifiable_suffix_and_the_newest_row(tmp_path: Path) -> None:
    store, trail, clock = filled(tmp_path)
    heads = {r.n: Head(r.n, r.hash, r.at) for r in store.audit_rows()}
    assert store.prune_audit(timestamp(T0 + timedelta(seconds=4, milliseconds=500))) == 4
    rows = store.audit_rows()
    chain = check_rows(rows, set(heads))
    assert rows[0].n == 5 and chain.broken is None and chain.anchor == heads[4].hash
    assert check_head(chain, heads[4])[0] == "ok"  # the anchor is row 4's hash
    assert check_head(chain, heads[2])[0] == "unchecked"  # older than the anchor
    assert check_head(chain, heads[9])[0] == "ok"
    assert store.prune_audit(timestamp(T0 + timedelta(days=1))) == 5  # all but the newest, which carries the chain
    clock.now += timedelta(seconds=1)
    trail.record("stop", {})
    asyncio.run(trail.flush())
    rows = store.audit_rows()
    assert [r.n for r in rows] == [10, 11] and check_rows(rows).broken is None


def test_verify_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, _, _ = filled(tmp_path)
    store.close()
    path = str(tmp_path / "s.db")
    assert audit_main(["verify", "--state-file", path]) == 0
    assert audit_main(["show", "--state-file", path, "-n", "3"]) == 0
    assert "p9" in capsys.readouterr().out
    assert audit_main(["verify", "--state-file", str(tmp_path / "nope.db")]) == 2
    assert "no such file" in capsys.readouterr().err
    heads = tmp_path / "heads.txt"
    heads.write_text("vpp/a/audit/head not-a-token\n")
    assert audit_main(["verify", "--state-file", path, "--head", str(heads), "--public-key", "A" * 43]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    assert audit_main(["verify", "--state-file", str(tmp_path / "junk.db")]) == 2
    rewrite(tmp_path / "s.db", 2, {"seq": 99})
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE audit SET hash = ? WHERE n = 7", ("0" * 64,))
    db.close()
    assert audit_main(["verify", "--state-file", path]) == 1
    assert "BROKEN: row 7" in capsys.readouterr().out


def test_verify_beside_a_live_agent_sees_its_newest_rows_and_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _, _ = filled(tmp_path, 5)  # the agent's connection stays open: the rows are in its write-ahead log
    assert (tmp_path / "s.db-wal").exists()
    assert audit_main(["verify", "--state-file", str(tmp_path / "s.db")]) == 0
    assert "rows 1..5 kept" in capsys.readouterr().out
    assert audit_main(["show", "--state-file", str(tmp_path / "s.db"), "--json", "-n", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 5
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    assert audit_main(["verify", "--state-file", str(tmp_path / "s.db")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]  # no -wal or -shm owned by the reader
