"""The audit chain detects edits, deletions, truncation, rows deleted from its start and (through a kept signed head) a
consistent rewrite; refusals are sampled and counted per reason and hour; pruning is recorded in the chain and keeps it
checkable from its anchor."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from auditkit import append, delete_start, rewrite

from agent.audit.chain import (
    GENESIS,
    Head,
    NotCanonical,
    check_head,
    check_heads,
    check_rows,
    encode_data,
    row_hash,
    timestamp,
)
from agent.audit.cli import main as audit_main
from agent.audit.trail import AuditTrail
from agent.store import Store
from agent.trust.keys import Signer, key_arguments, new_private_key
from agent.trust.seal import Sealer

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


def heads_of(store: Store) -> dict[int, Head]:
    """A head for every row, as a reader who kept one per flush would have."""
    return {r.n: Head(r.n, r.hash, r.at) for r in store.audit_rows()}


def verdicts(chain_rows: list, heads: list[Head], keep_days: float = 1.0) -> dict[int, str]:  # type: ignore[type-arg]
    chain = check_rows(chain_rows, {h.n for h in heads})
    return {head.n: verdict for head, verdict, _ in check_heads(chain, heads, keep_days)}


def test_prune_is_recorded_in_the_chain_and_keeps_it_verifiable(tmp_path: Path) -> None:
    store, trail, clock = filled(tmp_path)
    heads = heads_of(store)
    before = timestamp(T0 + timedelta(seconds=4, milliseconds=500))
    assert store.prune_audit(before, timestamp(clock.now)) == 4
    rows = store.audit_rows()
    assert [r.n for r in rows] == list(range(5, 12)) and rows[-1].kind == "pruned"
    assert json.loads(rows[-1].data) == {"since_n": 1, "first_n": 1, "last_n": 4, "last_hash": heads[4].hash,
                                         "before": before, "rows": 4}  # fmt: skip
    chain = check_rows(rows, set(heads))
    assert chain.broken is None and chain.anchor == heads[4].hash
    assert chain.explained_by is not None and chain.explained_by.n == 11  # the anchor is the recorded last hash
    assert check_head(chain, heads[4])[0] == "ok"  # the anchor is row 4's hash
    assert check_head(chain, heads[9])[0] == "ok"
    clock.now += timedelta(seconds=1)
    trail.record("command", {"signal_kind": "prices", "signal_id": "later"})
    asyncio.run(trail.flush())  # the next signed head (row 12) vouches for the prune recorded in row 11
    assert trail.head is not None and trail.head.n == 12
    kept = [*heads.values(), trail.head]
    assert verdicts(store.audit_rows(), kept) == {**dict.fromkeys(range(1, 4), "unchecked"),
                                                  **dict.fromkeys(range(4, 11), "ok"), 12: "ok"}  # fmt: skip
    # again: all but the newest, the first prune's own record too; the new record still accounts for rows from 1
    assert store.prune_audit(timestamp(T0 + timedelta(days=1)), timestamp(clock.now)) == 7
    clock.now += timedelta(seconds=1)
    trail.record("stop", {})
    asyncio.run(trail.flush())
    rows = store.audit_rows()
    assert [(r.n, r.kind) for r in rows] == [(12, "command"), (13, "pruned"), (14, "stop")]
    assert json.loads(rows[1].data)["since_n"] == 1 and json.loads(rows[1].data)["first_n"] == 5
    chain = check_rows(rows)
    assert chain.broken is None and chain.explained_by is not None and chain.explained_by.n == 13
    assert verdicts(rows, [*kept, trail.head]) == {**dict.fromkeys(range(1, 11), "unchecked"), 12: "ok", 14: "ok"}
    store.close()
    assert audit_main(["verify", "--state-file", str(tmp_path / "s.db")]) == 0


def test_nothing_to_prune_adds_no_row(tmp_path: Path) -> None:
    store, _, _ = filled(tmp_path, 3)
    assert store.prune_audit(timestamp(T0)) == 0
    assert [r.kind for r in store.audit_rows()] == ["command"] * 3


def test_rows_deleted_from_the_start_are_found_with_or_without_heads(tmp_path: Path) -> None:
    store, _, _ = filled(tmp_path)
    heads = heads_of(store)
    store.close()
    delete_start(tmp_path / "s.db", 8)  # no hash to recompute: the kept rows still chain from their anchor
    rows = Store(tmp_path / "s.db").audit_rows()
    chain = check_rows(rows)
    assert chain.broken_n == 9 and "deleted from the start" in (chain.broken or "")  # no heads needed
    assert verdicts(rows, list(heads.values())) == {**dict.fromkeys(range(1, 8), "mismatch"), 8: "ok", 9: "ok",
                                                    10: "ok"}  # fmt: skip
    delete_start(tmp_path / "s.db", 9)  # down to the newest row alone
    assert check_rows(Store(tmp_path / "s.db").audit_rows()).broken_n == 10


def test_a_first_row_not_on_the_genesis_is_broken(tmp_path: Path) -> None:
    store, _, _ = filled(tmp_path, 2)
    store.close()
    rewrite(tmp_path / "s.db", 1, {})
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    db.execute("UPDATE audit SET prev_hash = ? WHERE n = 1", ("1" * 64,))  # the row's hash recomputed below
    row = json.loads(db.execute("SELECT data FROM audit WHERE n = 1").fetchone()[0])
    db.close()
    rewrite(tmp_path / "s.db", 1, row)  # rewrite() starts from row 1's prev_hash as stored
    chain = check_rows(Store(tmp_path / "s.db").audit_rows())
    assert chain.broken_n == 1 and "genesis" in (chain.broken or "")


def test_a_forged_prune_record_does_not_excuse_recent_heads(tmp_path: Path) -> None:
    store, _, _ = filled(tmp_path)
    heads = heads_of(store)
    store.close()
    path = tmp_path / "s.db"
    delete_start(path, 9)
    # the attacker appends the record a prune would have written; it lies past every head the agent signed
    append(path, timestamp(T0 + timedelta(days=400)), "pruned", {
        "since_n": 1, "first_n": 1, "last_n": 9, "last_hash": heads[9].hash,
        "before": timestamp(T0 + timedelta(days=1)), "rows": 9})  # fmt: skip
    rows = Store(path).audit_rows()
    assert check_rows(rows).broken is None  # the rows alone cannot tell
    for keep_days in (1.0, 400.0):
        assert verdicts(rows, list(heads.values()), keep_days) == {**dict.fromkeys(range(1, 9), "mismatch"),
                                                                   9: "ok", 10: "ok"}  # fmt: skip
    chain = check_rows(rows, set(heads))
    assert "passed off as a prune" in check_heads(chain, list(heads.values()))[0][2]


def test_a_recent_prune_not_yet_under_a_head_excuses_heads_older_than_the_retention(tmp_path: Path) -> None:
    store, clock = Store(tmp_path / "s.db"), Clock()
    trail = AuditTrail(store, clock, refusal_samples=3)
    for day in range(10):  # a row a day, each under a signed head
        clock.now = T0 + timedelta(days=day)
        trail.record("command", {"signal_kind": "prices", "signal_id": f"d{day}"})
        asyncio.run(trail.flush())
    heads = heads_of(store)
    # the agent keeps 4 days: the prune row comes after the newest head, which has not vouched for it yet
    assert store.prune_audit(timestamp(clock.now - timedelta(days=4)), timestamp(clock.now)) == 5  # days 0..4
    rows = store.audit_rows()
    assert verdicts(rows, list(heads.values()), 4) == {**dict.fromkeys(range(1, 5), "unchecked"),
                                                       **dict.fromkeys(range(5, 11), "ok")}  # fmt: skip
    # a reader told a longer retention takes it for what it would be then: rows deleted, passed off as a prune
    assert verdicts(rows, list(heads.values()), 400)[4] == "mismatch"


def test_a_prune_does_not_vouch_for_rows_deleted_before_it(tmp_path: Path) -> None:
    store, trail, clock = filled(tmp_path)
    heads = heads_of(store)
    store.close()
    delete_start(tmp_path / "s.db", 3)
    store = Store(tmp_path / "s.db")
    assert store.prune_audit(timestamp(T0 + timedelta(seconds=6, milliseconds=500)), timestamp(clock.now)) == 3
    rows = store.audit_rows()
    assert json.loads(rows[-1].data)["since_n"] == 4  # the agent found rows 1..3 gone unrecorded: not its prune
    clock.now += timedelta(seconds=1)
    trail.store = store
    trail.record("command", {"signal_kind": "prices", "signal_id": "later"})
    asyncio.run(trail.flush())
    assert trail.head is not None
    got = verdicts(store.audit_rows(), [*heads.values(), trail.head])
    assert got == {**dict.fromkeys(range(1, 4), "mismatch"), 4: "unchecked", 5: "unchecked",
                   **dict.fromkeys(range(6, 11), "ok"), 12: "ok"}  # fmt: skip


def test_verify_cli_with_signed_heads_finds_the_start_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _, clock = filled(tmp_path)
    agent = Signer("agent", new_private_key())
    sealer = Sealer(agent, "site1", clock)
    heads = tmp_path / "heads.txt"
    heads.write_text("".join(f"vpp/site1/audit/head {sealer.seal('vpp/site1/audit/head', h.body()).decode()}\n"
                             for h in heads_of(store).values()))  # fmt: skip
    path = str(tmp_path / "s.db")
    verify = ["verify", "--state-file", path, "--head", str(heads), "--public-key", agent.public_key]
    store.close()
    assert audit_main(verify) == 0
    capsys.readouterr()
    delete_start(tmp_path / "s.db", 9)
    assert audit_main(verify) == 1
    out = capsys.readouterr().out
    assert "BROKEN: rows before 10 are gone" in out and out.count("MISMATCH") == 8


def dash_signer() -> Signer:
    """An agent key whose public text begins with '-': argparse took `--public-key -h6b…` for two options."""
    while True:
        signer = Signer("agent", new_private_key())
        if signer.public_key.startswith("-"):
            return signer


def test_a_key_option_keeps_a_value_that_starts_with_a_dash() -> None:
    assert key_arguments(["verify", "--public-key", "-h6bb", "--site", "s1"]) == [
        "verify", "--public-key=-h6bb", "--site", "s1"
    ]
    assert key_arguments(["verify", "--public-key"]) == ["verify", "--public-key"]  # argparse names what is missing


def test_verify_cli_passes_a_pruned_chain_under_a_later_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, trail, clock = filled(tmp_path)
    assert store.prune_audit(timestamp(T0 + timedelta(seconds=3, milliseconds=500)), timestamp(clock.now)) == 3
    clock.now += timedelta(seconds=1)
    trail.record("stop", {})
    asyncio.run(trail.flush())
    agent = dash_signer()  # a key whose text starts with '-' (one in 64) is still read as the option's value
    sealer = Sealer(agent, "site1", clock)
    heads = tmp_path / "heads.txt"
    kept = [*heads_of(store).values(), Head(1, "0" * 64, "x")]  # (row 1 was gone before this list was made)
    heads.write_text("".join(f"{sealer.seal('vpp/site1/audit/head', h.body()).decode()}\n" for h in kept))
    store.close()
    assert audit_main(["verify", "--state-file", str(tmp_path / "s.db"), "--head", str(heads),
                       "--public-key", agent.public_key]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "(rows 1..3 pruned, as row 11 records)" in out and "unchecked: head row 1 was pruned" in out


def test_a_row_not_stored_as_its_canonical_text_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, _, _ = filled(tmp_path, 3)
    text = store.audit_rows()[1].data
    assert text == encode_data(json.loads(text))
    store.close()
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    db.execute("DROP TRIGGER audit_append_only")
    # a duplicate key first: json.loads (and so the hash) takes the last value, SQLite and `audit show` the first
    forged = '{"signal_id":"p-forged",' + text[1:]
    db.execute("UPDATE audit SET data = ? WHERE n = 2", (forged,))
    assert db.execute("SELECT json_extract(data, '$.signal_id') FROM audit WHERE n = 2").fetchone()[0] == "p-forged"
    db.close()
    chain = check_rows(Store(tmp_path / "s.db").audit_rows())
    assert chain.broken_n == 2 and "canonical" in (chain.broken or "")
    assert audit_main(["verify", "--state-file", str(tmp_path / "s.db")]) == 1
    assert "BROKEN: row 2" in capsys.readouterr().out
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    db.execute("DROP TRIGGER audit_append_only")  # opening the Store made it again
    db.execute("UPDATE audit SET data = ? WHERE n = 2", (json.dumps(json.loads(text)),))  # same data, spaced
    db.close()
    assert check_rows(Store(tmp_path / "s.db").audit_rows()).broken_n == 2


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
