"""`vpp-agent demo` as a person sees it (issue 16, item 5): in an 80×24 terminal the log goes to a file, never
through the table; the first frame waits for the first poll; within the first minute the opening up-DR event
moves the site; every money figure names its currency and direction; each asset says why it does what it does.
Also `vpp-agent init`, and the screen after the first plan of the shipped site."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rich.console import Console
from sitekit import eventually, shipped_config_on_free_ports

from agent import defaults
from agent.app import AgentApp
from agent.config import load_config
from agent.demo import plan_context, status_url
from agent.ui import Screen, render
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
MONEY = re.compile(r"(earns|costs) [\d,]+ JPY|breaks even")


def _read_until(fd: int, text: str, seen: bytearray, timeout_s: float) -> str:
    """Read the terminal until `text` shows (ANSI codes stripped) or the child closes it; the deadline only bounds
    a failing test."""
    deadline = time.monotonic() + timeout_s
    while text not in ANSI.sub("", seen.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return ANSI.sub("", seen.decode(errors="replace"))


@pytest.mark.timeout(240)
def test_demo_in_an_80x24_terminal(tmp_path: Path) -> None:
    config = shipped_config_on_free_ports(tmp_path)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--config", str(config), "--speed", "60"],
        stdin=follower, stdout=follower, stderr=follower, cwd=tmp_path,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "80", "LINES": "24"},
    )  # fmt: skip
    os.close(follower)
    raw = bytearray()
    try:
        # the opening event is settled: it started, moved the site and got its M&V report
        text = _read_until(leader, "done:", raw, 150)
        assert "done:" in text, text[-3000:]
        proc.send_signal(signal.SIGINT)
        text = _read_until(leader, "demo stopped after", raw, 30)
        assert proc.wait(timeout=30) == 0, text[-3000:]
        _read_until(leader, "\x00", raw, 2)  # the rest, up to EOF
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    text = ANSI.sub("", raw.decode(errors="replace"))
    # the first frame waits for the first poll instead of calling every asset unavailable
    assert "waiting for the first poll of 8 assets" in text
    assert "unavailable" not in text.lower()
    # no log line went through the table: stderr, pymodbus and the solver process write to the log file
    assert '"event"' not in text and "[info" not in text and "Traceback" not in text
    log_file = tmp_path / "vpp-demo.log"  # beside the state file sitekit put in tmp_path
    events = {json.loads(line)["event"] for line in log_file.read_text().splitlines() if line.startswith("{")}
    assert {"agent.start", "dispatch.planned", "event.active", "agent.stop"} <= events
    assert f"log: {log_file}" in text
    # what a person reads: the site's clock, local time and speed; the opening event's effect and money
    assert re.search(r"simulated site time \w{3} \d\d \w{3} \d\d:\d\d:\d\d JST · speed ×60", text)
    assert "kW vs baseline" in text
    done = re.search(r"done: [\d.]+ of [\d.]+ kWh, (.*)", text)
    assert done is not None and MONEY.match(done.group(1)), text[-2000:]
    assert re.search(r"plan for the next 24 h: the site (earns|costs) [\d,]+ JPY net|breaks even", text)
    assert "net cost" not in text
    assert re.search(r"status page http://127\.0\.0\.1:\d+/", text)
    # every frame fits: no line past 80 columns, no frame past 23 lines (the config line is above it); rich moves
    # the cursor up one line per line of the frame it redraws
    assert max(len(line) for line in re.split(r"[\r\n]", text)) <= 80
    redraws = [len(m) // len("\x1b[1A\x1b[2K") for m in re.findall(rb"(?:\x1b\[1A\x1b\[2K)+", bytes(raw))]
    assert redraws and max(redraws) + 1 <= 23, max(redraws)


async def test_screen_after_the_first_plan_says_why_in_80_columns(tmp_path: Path) -> None:
    """The shipped site, its first plan: every asset with a car says why (from the plan, not the fallback rule),
    the plan's figure names JPY and its direction, the totals line is whole."""
    config = load_config(shipped_config_on_free_ports(tmp_path))
    async with SimSite.from_config(parse_simulation(config.simulation or {})) as site:
        app = AgentApp(config, site.clock.now)
        assert app.dispatcher is not None
        screen = Screen(app, site.clock.now, 1.0, url=status_url(config))
        app.dispatcher.adopted.append(lambda plan, start, _: setattr(screen, "plan", plan_context(app, plan, start)))
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            await eventually(lambda: screen.plan is not None and app.loop.cycles > 0, 60, "first plan")
            console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
            console.print(render(screen))
            lines = console.export_text().rstrip("\n").splitlines()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    text = "\n".join(lines)
    assert len(lines) <= 23 and max(map(len, lines)) <= 80, text
    assert re.search(r"plan for the next 24 h: the site ((earns|costs) [\d,]+ JPY|breaks even) net", text), text
    assert re.search(r"energy: ((earns|costs) [\d,]+ JPY|breaks even) · wear: ", text), text
    assert re.search(r"why \(prices JPY/kWh, now [\d.]+\)", text), text
    controllable = [a for a, s in app.loop.fleet.assets.items() if s.controllable]
    for asset in controllable:
        row = next(line for line in lines if line.startswith(f"{asset} "))
        if " no car " in row:
            continue
        assert "rule:" not in row and len(row.split()) > 5, row  # a reason follows the five figures
    assert any(line.startswith("can absorb") and line.endswith("available 8/8") for line in lines), text
    assert "-0.0" not in text


def test_init_writes_the_packaged_config_once(tmp_path: Path) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", *argv], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)  # fmt: skip

    made = cli("init")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "config.toml").read_text() == defaults.config_text()
    again = cli("init")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    (tmp_path / "site").mkdir()
    assert cli("init", "site").returncode == 0 and (tmp_path / "site" / "config.toml").is_file()
    checked = cli("check-config", "config.toml")
    assert checked.returncode == 0, checked.stderr


def test_demo_log_option_off_a_terminal(tmp_path: Path) -> None:
    """Piped (as tests and logs see it): one summary line per period on stdout, the log in --log, not stderr."""
    config = shipped_config_on_free_ports(tmp_path)
    log_file = tmp_path / "demo.log"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--config", str(config), "--duration", "3", "--log", str(log_file),
         "--no-event"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert '"agent.start"' in log_file.read_text()
    summaries = [line for line in result.stdout.splitlines() if re.match(r"\d\d:\d\d:\d\d JST ×1 · site ", line)]
    assert summaries and all("available" in line for line in summaries), result.stdout
    assert "up-DR" not in result.stdout  # --no-event
