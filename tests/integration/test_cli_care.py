"""CLI care (issue 16, item 6): --version, defaults in every --help, one line and exit 2 for bad input, and
`simulate` with progress on stderr and nothing but its report on stdout."""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from sitekit import ROOT

from agent.cli import build_parser

SIMULATE = ["simulate", "--days", "1", "--fleet", "tiny", "--no-blast", "--regulation-price", "0"]


def cli(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *argv], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vpp-agent {version('vpp-agent')}"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def test_every_help_states_every_default() -> None:
    """Each option with a default worth saying (not None, not a flag's False) says it in --help."""
    missing = []
    for parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = action.default
            if default in (None, argparse.SUPPRESS) or isinstance(default, bool) or default == []:
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            if f"default: {default}" not in text and f"default {default}" not in text:
                missing.append(f"{parser.prog} {action.dest}={default!r}")
    assert not missing


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--duration", "0"],
        ["run", "--config", "no-such.toml"],
        ["run", "--config", "no-such.toml", "--signals", "no-such.jsonl"],
        ["events", "--config", "no-such.toml"],
        ["demo", "--speed", "0"],
        ["check-config", "no-such.toml"],
        ["no-such-command"],
        ["simulate", "--step-s", "0"],
        ["simulate", "--days", "0"],
        ["simulate", "--jobs", "0"],
        [*SIMULATE, "--strategies", "aware", "--out", "no-such-dir/figures.json"],
        ["simulate", "--strategies", "nope"],
        ["sign", "--key", "no-such.pem", "--site", "s", "/dev/null"],
        ["audit", "show", "--config", "no-such.toml"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    result = cli(*argv, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]


def test_simulate_keeps_stdout_for_the_report(tmp_path: Path) -> None:
    """HiGHS prints a banner from C++ to file descriptor 1: stdout must carry only the report (and --out the
    figures), even with strategies in worker processes."""
    out = tmp_path / "figures.json"
    result = cli(*SIMULATE, "--strategies", "aware,blind", "--jobs", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "HiGHS" not in result.stdout
    assert result.stdout.lstrip().startswith("1 days, seed 1, fleet tiny"), result.stdout[:300]
    assert set(json.loads(out.read_text())["results"]) == {"uncontrolled", "aware", "blind"}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_simulate_shows_progress_on_a_terminal(jobs: str) -> None:
    """With stderr on a terminal, live bars per strategy reach their end; stdout stays the report alone."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", *SIMULATE, "--strategies", "aware", "--jobs", jobs],
            stdout=subprocess.PIPE, stderr=follower, cwd=ROOT, text=True,
            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
        )  # fmt: skip
        os.close(follower)
        seen = b""
        while True:  # read the terminal until the process closes it
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        stdout = proc.stdout.read() if proc.stdout else ""
        assert proc.wait(timeout=300) == 0, seen.decode(errors="replace")
    finally:
        os.close(leader)
    screen = seen.decode(errors="replace")
    assert "uncontrolled" in screen and "aware" in screen
    assert "96/96" in screen  # a day of 900 s steps, finished, for each bar
    assert "HiGHS" not in stdout
    assert stdout.lstrip().startswith("1 days, seed 1, fleet tiny")
