"""Config errors in the user's words, all at once (issue 16 item 6): an unknown key names its table as the file
writes it and the nearest known key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, parse_config

TYPOS = """
[agent]
poll_perod_s = 1.0
[site]
import_limt_w = 3000.0
[agnet]
log_level = "info"
[trust]
require_signatures = false
[[trust.keys]]
kid = "desk"
public_key = "x"
kinds = ["prices"]
issuer = "desk"
experies = 1
[[assets]]
id = "b1"
map = "vppsim_battery"
[[assets]]
id = "b2"
map = "vppsim_battery"
hots = "10.0.0.2"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "site.toml")
    first, *rest = str(err.value).splitlines()
    assert first == f"site.toml: {len(rest)} error(s)"
    return [line.strip() for line in rest]


def test_every_unknown_key_at_once_with_its_table_and_a_suggestion() -> None:
    errors = errors_of(TYPOS)
    assert "unknown key `poll_perod_s` in [agent]; did you mean `poll_period_s`?" in errors
    assert "unknown key `import_limt_w` in [site]; did you mean `import_limit_w`?" in errors
    assert "unknown table `agnet` at the top level; did you mean `agent`?" in errors
    assert "unknown key `hots` in [[assets]] #2; did you mean `host`?" in errors
    assert any(e.startswith("unknown key `experies` in [[trust.keys]] #1") for e in errors), errors
    assert not any("Extra inputs" in e for e in errors)


def test_an_unknown_key_with_no_near_one_lists_the_known_keys() -> None:
    (error,) = errors_of("[metrics]\nzzzz = 1\n")
    assert error.startswith("unknown key `zzzz` in [metrics]; known: ")
    assert "`listen`" in error or "`enabled`" in error, error


def test_a_missing_key_says_where() -> None:
    (error,) = errors_of('[[assets]]\nmap = "vppsim_battery"\n')
    assert error == "assets[0].id: required key missing in [[assets]] #1"


def test_check_config_prints_them_all_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "site.toml"
    path.write_text(TYPOS)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for key in ("poll_perod_s", "import_limt_w", "agnet", "hots", "experies"):
        assert f"`{key}`" in err
