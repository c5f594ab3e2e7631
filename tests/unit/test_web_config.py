"""`[web]` settings: who may reach the page and how its secrets are read (the one secret rule `[mqtt]` uses too)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from agent.config import ConfigError, MqttSettings, WebSettings, parse_config, read_secret
from agent.web import fmt


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('enabled = true\nhost = "0.0.0.0"', "beyond this host"),
        ('enabled = true\nhost = "0.0.0.0"\nusername = "op"\npassword_env = "X"', "beyond this host"),
        ('username = "op"', "go together"),
        ('password_env = "X"', "go together"),
        ('cert_file = "a.pem"', "cert_file and key_file go together"),
        ('username = "a:b"\npassword_env = "X"', "web.username"),
        ('username = "op"\npassword_env = "X"\npassword_file = "f"', "not both"),
    ],
)
def test_refused_settings_name_the_key(table: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_config(f"[web]\n{table}\n")


def test_beyond_loopback_with_tls_and_login_is_taken() -> None:
    config = parse_config(
        '[web]\nenabled = true\nhost = "0.0.0.0"\ncert_file = "c.pem"\nkey_file = "k.pem"\nusername = "op"\n'
        'password_file = "/run/credentials/web"\n'
    )
    assert config.web.host == "0.0.0.0"
    assert WebSettings().host == "127.0.0.1" and not WebSettings().enabled


def test_password_from_env_or_file_with_the_mqtt_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPP_WEB_PW", "from env")
    assert WebSettings(username="op", password_env="VPP_WEB_PW").password() == "from env"
    secret = tmp_path / "pw"
    secret.write_text("from file\n")
    assert WebSettings(username="op", password_file=str(secret)).password() == "from file"
    # the same rule and the same words for both tables, each naming its own key
    monkeypatch.delenv("VPP_WEB_PW")
    for table, settings in (("web", WebSettings(username="op", password_env="VPP_WEB_PW")),
                            ("mqtt", MqttSettings(password_env="VPP_WEB_PW"))):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"^{table}\.password_env: environment variable VPP_WEB_PW is not set$"):
            settings.password()
    with pytest.raises(ConfigError, match=r"web\.password_file: cannot read"):
        WebSettings(username="op", password_file=str(tmp_path / "missing")).password()
    assert read_secret("x", None, None) is None


def test_an_empty_password_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPP_WEB_PW", "")
    with pytest.raises(ConfigError, match=r"web\.password_env: VPP_WEB_PW is empty"):
        WebSettings(username="op", password_env="VPP_WEB_PW").password()
    empty = tmp_path / "pw"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match=r"web\.password_file: .* is empty"):
        WebSettings(username="op", password_file=str(empty)).password()


def test_tls_context_is_a_server_context_or_none(tmp_path: Path) -> None:
    assert WebSettings().tls_context() is None
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        WebSettings(cert_file=str(bad), key_file=str(bad)).tls_context()


def test_figures_a_person_reads() -> None:
    assert fmt.power(-2500) == "-2.5 kW" and fmt.power(20) == "0.0 kW" and fmt.power(None) == fmt.DASH
    assert fmt.limit(float("inf")) == "no limit" and fmt.limit(60000) == "60.0 kW"
    assert fmt.duration(float("inf")) == "unlimited" and fmt.duration(5400) == "1.5 h"
