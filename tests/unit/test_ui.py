"""The demo's screen before anything answered, and its layout: 80 columns, the site's local time, no red alarm
for assets that simply have not been polled yet (issue 16, item 5)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from agent import defaults
from agent.app import AgentApp
from agent.config import load_config
from agent.ui import Screen, render, summary

NOW = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo, the shipped site's zone


def shipped_app() -> AgentApp:
    """The packaged demo site's agent, built but not started (nothing is polled, no state file is written)."""
    config = load_config(defaults.config_path())
    config = config.model_copy(update={"agent": config.agent.model_copy(update={"state_file": ":memory:"})})
    return AgentApp(config, lambda: NOW)


def shown(screen: Screen, width: int = 80) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(render(screen))
    return console.export_text().rstrip("\n").splitlines()


def test_first_frame_waits_for_the_first_poll_and_fits_80x24() -> None:
    app = shipped_app()
    lines = shown(Screen(app, lambda: NOW, 60.0, url="http://127.0.0.1:8088/"))
    text = "\n".join(lines)
    assert len(lines) <= 23 and max(map(len, lines)) <= 80, text  # 23: the demo prints its config line above
    assert "waiting for the first poll of 8 assets" in text
    assert "unavailable" not in text.lower()
    rows = [line for line in lines if line.split(" ", 1)[0] in app.loop.fleet.assets]
    assert len(rows) == 8 and all(" waiting " in f"{row} " for row in rows), text
    assert "simulated site time Thu 03 Dec 12:00:00 JST · speed ×60" in lines[0]
    assert lines[-1] == "status page http://127.0.0.1:8088/ · Ctrl-C stops"


def test_an_asset_that_never_answers_turns_unavailable_with_its_error() -> None:
    app = shipped_app()
    fleet = app.loop.fleet
    for _ in range(fleet.unavailable_after):
        fleet.record_failure("bess2", "connection refused", 0.0, 1.0)
    lines = shown(Screen(app, lambda: NOW, 1.0))
    row = next(line for line in lines if line.startswith("bess2 "))
    assert "unavailable" in row and "connection refused" in row
    assert next(line for line in lines if line.startswith("bess1 ")).split()[1] == "waiting"


def test_summary_is_one_line_with_clock_and_availability() -> None:
    app = shipped_app()
    line = summary(Screen(app, lambda: NOW, 1.0)).plain
    assert "\n" not in line
    assert line.startswith("12:00:00 JST ×1 · site — kW · waiting for the first poll")
    assert "available 0/8" in line
