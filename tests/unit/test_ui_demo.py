"""agent.demo: which config the demo runs, where its log goes, the status page address, the opening event."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import defaults
from agent.config import AppConfig, load_config, parse_config
from agent.demo import (
    EVENT_INCREASE_W,
    EVENT_LEAD_WALL_S,
    EVENT_LENGTH_S,
    WarningTap,
    choose_config,
    log_path,
    opening_event_payload,
    status_url,
)
from agent.signals.models import UpDrEvent


def test_config_is_the_given_one_then_the_local_one_then_the_packaged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path, origin = choose_config(None)
    assert path == defaults.config_path() and path.is_file() and "packaged" in origin
    assert load_config(path).simulation is not None  # the packaged file is the demo site, [simulation] included
    (tmp_path / "config.toml").write_text(defaults.config_text())
    assert choose_config(None) == (Path("config.toml"), "./config.toml")
    assert choose_config("other.toml") == (Path("other.toml"), "--config")


def test_repository_config_is_the_packaged_file() -> None:
    """One copy of the demo config: the repository's config.toml is a link to the packaged one."""
    root = Path(__file__).resolve().parents[2] / "config.toml"
    assert root.resolve() == defaults.config_path().resolve()


def test_log_goes_beside_the_state_file_unless_given(tmp_path: Path) -> None:
    config = load_config(defaults.config_path())
    assert log_path(config, None) == Path("vpp-demo.log")  # the shipped state file is relative: the cwd
    state = config.agent.model_copy(update={"state_file": str(tmp_path / "s" / "state.db")})
    assert log_path(config.model_copy(update={"agent": state}), None) == tmp_path / "s" / "vpp-demo.log"
    assert log_path(config, "x.log") == Path("x.log")


def test_status_url_only_when_the_page_is_on() -> None:
    assert status_url(load_config(defaults.config_path())) == "http://127.0.0.1:8088/"
    assert status_url(parse_config("[web]\nenabled = false\n", "t.toml")) is None
    assert status_url(parse_config('[web]\nenabled = true\nhost = "::1"\nport = 9000\n', "t.toml")) == (
        "http://[::1]:9000/"
    )


def test_opening_event_is_a_valid_up_dr_signal_starting_soon_at_any_speed() -> None:
    config: AppConfig = load_config(defaults.config_path())
    now = datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC)
    for speed in (1.0, 60.0):
        event = UpDrEvent.model_validate(opening_event_payload(now, config, speed))
        assert event.start == now + timedelta(seconds=EVENT_LEAD_WALL_S * speed)
        assert event.end - event.start == timedelta(seconds=EVENT_LENGTH_S)
        assert event.requested_increase_w == EVENT_INCREASE_W
        assert event.price_per_kwh == max(config.dispatch.price_profile_per_kwh or [])
        assert event.baseline_method == "pre_event_average"  # a fresh demo has no history for High 4 of 5
    later = opening_event_payload(now + timedelta(seconds=1), config, 1.0)
    assert later["id"] != opening_event_payload(now, config, 1.0)["id"]  # a second run's event is a new one


def test_warning_tap_counts_warnings_and_keeps_the_last_event_name() -> None:
    """structlog hands the standard library its event dict as the record's message (wrap_for_formatter); other
    libraries log strings. Both are counted from WARNING up."""
    logger = logging.getLogger("test.demo.tap")
    logger.propagate = False
    tap = WarningTap()
    logger.addHandler(tap)
    logger.setLevel(logging.INFO)
    try:
        logger.info({"event": "not.counted"})
        logger.warning({"event": "asset.unavailable", "asset_id": "ev2"})
        assert (tap.count, tap.last) == (1, "asset.unavailable ev2")
        logger.error("socket %s", "closed")
        assert (tap.count, tap.last) == (2, "test.demo.tap: socket closed")
    finally:
        logger.removeHandler(tap)
