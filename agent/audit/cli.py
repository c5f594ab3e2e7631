"""`vpp-agent audit verify` and `vpp-agent audit show`: check and read the audit trail without disturbing the agent.

verify recomputes the chain from its anchor (agent/audit/chain.py), which must be the genesis or explained by a
`pruned` row, and, for each signed head a reader kept, checks that the row of that number still has that hash (or,
for a row older than the anchor, that a prune recorded in the chain removed it): someone who can write the state
file but not sign can rewrite the rows and even recompute every hash, or delete the start of the chain, but cannot
make a head the agent signed earlier match. Exit 0 when everything
checks, 1 when the chain is broken or a head does not match, 2 on bad input (one line on stderr, no traceback).

The state file is opened read-only and never written (`open_read_only`), so verify works beside a running agent and
sees its newest rows, and leaves no file behind when the agent is stopped.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

from agent.audit.chain import GENESIS, HEAD_EVERY_S, MIN_KEEP_DAYS, Head, check_heads, check_rows
from agent.store import read_audit
from agent.trust.keys import key_arguments

EXIT_OK, EXIT_BROKEN, EXIT_INPUT = 0, 1, 2


class InputError(ValueError):
    """Bad input to an audit command; the message is the one line printed."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `audit verify` and `audit show` to the `vpp-agent` command line."""
    audit = sub.add_parser("audit", help="check or show the audit trail in the agent's state file (docs/audit.md)")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser(
        "verify", help="recompute the audit chain and check it against signed heads (exit 1 if broken)"
    )
    _source_arguments(verify)
    verify.add_argument(
        "--head", action="append", default=[], metavar="FILE",
        help="signed heads a reader kept: lines 'topic token' (mosquitto_sub -v) or bare tokens; may repeat",
    )  # fmt: skip
    verify.add_argument(
        "--public-key", default=None,
        help="the agent's public key (vpp-agent keys public); default: from the config's trust.agent_key_file",
    )  # fmt: skip
    verify.set_defaults(func=cmd_verify)
    show = commands.add_parser("show", help="print the newest audit rows")
    _source_arguments(show)
    show.add_argument("-n", "--last", type=int, default=20, help="how many rows (default 20)")
    show.add_argument("--json", action="store_true", help="one JSON object per row")
    show.set_defaults(func=cmd_show)


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.toml")
    parser.add_argument("--state-file", default=None, help="the state file (default: the config's agent.state_file)")


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        return _verify(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT


def cmd_show(args: argparse.Namespace) -> int:
    try:
        if args.last < 1:
            raise InputError("--last must be at least 1")
        db, _ = open_read_only(_state_file(args))
        try:
            rows = list(read_audit(db, args.last))
        finally:
            db.close()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except sqlite3.Error as exc:
        print(f"error: cannot read the audit rows: {exc}", file=sys.stderr)
        return EXIT_INPUT
    for row in rows:
        if args.json:
            print(json.dumps({"n": row.n, "at": row.at, "kind": row.kind, "data": json.loads(row.data),
                              "prev_hash": row.prev_hash, "hash": row.hash}))  # fmt: skip
        else:
            print(f"{row.n:>8}  {row.at}  {row.kind:<9} {row.hash[:12]}  {_shown(row.data)}")
    if not rows:
        print("no audit rows", file=sys.stderr)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    config = None
    if args.state_file is None or (args.head and args.public_key is None):
        config = _config(args.config)
    heads = _heads(args, config) if args.head else []
    path = args.state_file or config.agent.state_file  # type: ignore[union-attr]
    db, complete = open_read_only(path)
    try:
        chain = check_rows(read_audit(db), {h.n for h in heads})
    except sqlite3.Error as exc:
        raise InputError(f"{path}: cannot read the audit rows: {exc}") from None
    finally:
        db.close()
    if not complete:
        print("note: opened as an immutable snapshot: rows still in the write-ahead log are not seen")
    if chain.first_n is None:
        print(f"{path}: no audit rows")
    else:
        if chain.anchor == GENESIS and chain.first_n == 1:
            anchor = "the genesis"
        else:
            anchor = f"row {chain.first_n - 1}'s hash {chain.anchor}"
            if chain.explained_by is not None:
                p = chain.explained_by
                anchor += f" (rows {p.since_n}..{p.last_n} pruned, as row {p.n} records)"
        end = chain.last_n if chain.broken is None or chain.start_missing else chain.broken_n
        print(f"chain: rows {chain.first_n}..{end} kept, anchored on {anchor}")
    failed = chain.broken is not None
    if failed:
        print(f"BROKEN: {chain.broken}")
    matched = 0
    # a prune record not yet under a matching head excuses only heads older than the retention: the config's, or
    # the least the config allows when verify was not given one
    keep_days = config.trust.audit_keep_days if config is not None else MIN_KEEP_DAYS
    every_s = config.trust.audit_head_every_s if config is not None else HEAD_EVERY_S
    for head, verdict, why in check_heads(chain, heads, keep_days, every_s):
        matched += verdict == "ok"
        failed = failed or verdict == "mismatch"
        print(f"{'MISMATCH' if verdict == 'mismatch' else verdict}: {why} (signed head of {head.at})")
    if failed:
        return EXIT_BROKEN
    heads_note = f"; {matched} of {len(heads)} signed head(s) match" if heads else " (no signed head to compare)"
    print(f"ok: {chain.rows} row(s) chain from the anchor{heads_note}")
    return EXIT_OK


def _config(path: str):  # type: ignore[no-untyped-def]
    from agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise InputError("; ".join(line.strip() for line in str(exc).splitlines() if line.strip())) from None


def _state_file(args: argparse.Namespace) -> str:
    return args.state_file or _config(args.config).agent.state_file


def _public_key(args: argparse.Namespace, config) -> str:  # type: ignore[no-untyped-def]
    if args.public_key is not None:
        return str(args.public_key)
    from agent.trust.keys import KeyFileError, load_private_key, public_key_text

    key_file = config.trust.agent_key_file
    if key_file is None:
        raise InputError(f"{args.config} has no trust.agent_key_file: give --public-key (vpp-agent keys public)")
    try:
        return public_key_text(load_private_key(key_file))
    except KeyFileError as exc:
        raise InputError(f"{exc}; give --public-key instead") from None


def _heads(args: argparse.Namespace, config) -> list[Head]:  # type: ignore[no-untyped-def]
    """The distinct heads in the --head files that the agent's key signed; lines that do not verify are listed and
    left out (anyone who can publish on the topic can plant one), and no verifying head at all is bad input."""
    from agent.trust.keys import KeyFileError
    from agent.trust.seal import NotSealed, open_sealed

    public = _public_key(args, config)
    site = (config.trust.site_id or config.mqtt.topic_prefix) if config is not None else None
    found: dict[tuple[int, str], Head] = {}
    for name in args.head:
        for number, line in _lines(name):
            topic, _, token = line.rpartition(" ")
            try:
                sealed = open_sealed(token, public, topic or None)
                if not sealed.topic.endswith("/audit/head"):
                    raise NotSealed(f"signed for topic {sealed.topic!r}, not an audit head")
                if site is not None and sealed.site != site:
                    raise NotSealed(f"signed for site {sealed.site!r}, this config is {site!r}")
                head = Head.from_body(sealed.body)
            except (NotSealed, KeyFileError, ValueError) as exc:
                print(f"ignored {name}:{number}: {exc}")
                continue
            found.setdefault((head.n, head.hash), head)
    if not found:
        raise InputError(f"no line of {', '.join(args.head)} is an audit head signed by the agent's key")
    return sorted(found.values(), key=lambda h: h.n)


def _lines(name: str) -> Iterator[tuple[int, str]]:
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def open_read_only(path: str | Path) -> tuple[sqlite3.Connection, bool]:
    """The state file opened read-only, and whether the view is complete (False: a snapshot that does not see rows
    still in the write-ahead log).

    Without a -wal file beside it (no agent has it open) everything is in the main file: it is opened `immutable`,
    which creates nothing (a `mode=ro` open would create -wal and -shm files owned by whoever runs verify, which an
    agent running as another user could then not open). With a -wal file (a live agent) `mode=ro` reads the log too,
    through the agent's own -shm; if SQLite cannot do that, the immutable snapshot is the fallback."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{path}: no such file (the agent has not run with this state file)")
    base = file.resolve().as_uri()
    live = Path(f"{file}-wal").exists()
    attempts = [("?mode=ro", True), ("?mode=ro&immutable=1", False)] if live else [("?mode=ro&immutable=1", True)]
    for query, complete in attempts:
        try:
            db = sqlite3.connect(base + query, uri=True)
        except sqlite3.Error:
            continue
        try:
            db.execute("SELECT n FROM audit LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            db.close()
            if "no such table" in str(exc):
                raise InputError(f"{path}: no audit table (written by an agent older than the audit trail)") from None
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise InputError(f"{path}: not an SQLite state file ({exc})") from None
            continue
        return db, complete
    raise InputError(f"{path}: cannot open read-only")


def _shown(data: str, limit: int = 160) -> str:
    return data if len(data) <= limit else data[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.audit.cli verify|show ...`: the same commands without the rest of `vpp-agent`."""
    parser = argparse.ArgumentParser(prog="vpp-agent")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *key_arguments(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
