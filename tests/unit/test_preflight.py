"""Start-up checks (agent/preflight.py) through the real CLI: what `run` would fail on at start-up, `check-config`
reports too, with exit code 2 and the key path and value, never a traceback; and `check-config` creates nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cli import main
from sim_devices.ports import free_port_block

PEM_GARBAGE = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
UNSET = "VPP_TEST_PREFLIGHT_UNSET_PASSWORD"


def site(tmp_path: Path, state_file: str | Path | None = None, mqtt: str = "") -> Path:
    """A small valid config (one battery on a free loopback port nobody serves) with the given state file and
    [mqtt] lines; MQTT points at a port with no broker, which `run` survives (it retries)."""
    state = tmp_path / "state.db" if state_file is None else state_file
    text = (
        f'[agent]\nstate_file = "{state}"\n[control]\nmode = "idle"\n[mqtt]\n{mqtt}\n'
        "[trust]\nrequire_signatures = false\n"  # a lab: these cases are about other mistakes
        f'[[assets]]\nid = "bess"\nmap = "vppsim_battery"\nhost = "127.0.0.1"\nport = {free_port_block(1)}\n'
    )
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_refused_by_check_and_run(capsys: pytest.CaptureFixture[str], config: Path, *expected: str) -> str:
    """check-config and run agree: both exit 2 with one message naming `expected` (key path, value), no traceback."""
    messages = []
    for argv in (["check-config", str(config)], ["run", "--config", str(config), "--duration", "1"]):
        code, err = cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and "Traceback" not in err
        for part in expected:
            assert part in err, (argv, part, err)
        messages.append(err)
    assert messages[0] == messages[1]
    return messages[0]


def mqtt_on(extra: str) -> str:
    return f'enabled = true\nhost = "127.0.0.1"\nport = {free_port_block(1)}\n{extra}'


CaseBuilder = Callable[[Path], tuple[Path, tuple[str, ...]]]


def _ca(tmp_path: Path, content: str | bytes | None) -> tuple[Path, tuple[str, ...]]:
    ca = tmp_path / "ca.pem"
    if isinstance(content, str):
        ca.write_text(content)
    elif isinstance(content, bytes):
        ca.write_bytes(content)
    return site(tmp_path, mqtt=mqtt_on(f'ca_file = "{ca}"')), ("mqtt.ca_file", str(ca))


CA_CASES: dict[str, CaseBuilder] = {
    "missing": lambda p: _ca(p, None),
    "not a certificate": lambda p: _ca(p, "hello, I am not a certificate\n"),
    "PEM armour around garbage": lambda p: _ca(p, PEM_GARBAGE),
    "binary": lambda p: _ca(p, bytes(range(256))),
    "a directory": lambda p: (site(p, mqtt=mqtt_on(f'ca_file = "{p}"')), ("mqtt.ca_file", str(p))),
}


@pytest.mark.parametrize("case", list(CA_CASES))
def test_ca_file_that_ssl_cannot_load(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, expected = CA_CASES[case](tmp_path)
    assert_refused_by_check_and_run(capsys, config, *expected)


def test_a_real_ca_certificate_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The check must not refuse what ssl loads: a self-signed CA made by openssl (Debian's, always present)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test CA")
    ca = tmp_path / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(ca), "-days", "2", "-subj", "/CN=vpp-test-ca"],
        check=True, capture_output=True,
    )  # fmt: skip
    config = site(tmp_path, mqtt=mqtt_on(f'ca_file = "{ca}"'))
    assert cli(capsys, "check-config", str(config))[0] == 0


def test_unset_password_env_fails_check_config_as_it_fails_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    config = site(tmp_path, mqtt=mqtt_on(f'password_env = "{UNSET}"'))
    assert_refused_by_check_and_run(capsys, config, "mqtt.password_env", UNSET, "not set")
    monkeypatch.setenv(UNSET, "s3cret")
    assert cli(capsys, "check-config", str(config))[0] == 0


@pytest.mark.parametrize("content", [b"\xff\xfepassword\n", None], ids=["binary", "a directory"])
def test_unreadable_password_file(content: bytes | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    if content is None:
        secret.mkdir()
    else:
        secret.write_bytes(content)
    config = site(tmp_path, mqtt=mqtt_on(f'password_file = "{secret}"'))
    assert_refused_by_check_and_run(capsys, config, "mqtt.password_file", str(secret))


def _corrupt(tmp_path: Path) -> Path:
    state = tmp_path / "state.db"
    state.write_bytes(b"this is not an SQLite database\n" * 100)
    return state


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "plain").write_text("x")
    return tmp_path / "plain" / "state.db"


def _broken_link(tmp_path: Path) -> Path:
    (tmp_path / "state.db").symlink_to(tmp_path / "gone" / "state.db")
    return tmp_path / "state.db"


STATE_CASES: dict[str, Callable[[Path], Path]] = {
    "in a missing directory": lambda p: p / "no" / "such" / "state.db",
    "a directory": lambda p: p,
    "not a database": _corrupt,
    "under a plain file": _under_a_file,
    "a dangling symlink": _broken_link,
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_state_file_that_sqlite_cannot_open(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = STATE_CASES[case](tmp_path)
    assert_refused_by_check_and_run(capsys, site(tmp_path, state), "agent.state_file", str(state))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` read-only for this process: file modes for a normal user; root ignores those, so the
    immutable attribute (chattr +i, which binds root too) there."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.fail(f"cannot make {path} read-only as root (chattr +i): {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _database(tmp_path: Path) -> Path:
    state = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute("CREATE TABLE t (x)")
        db.commit()
    return state


def test_read_only_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _database(tmp_path)
    config = site(tmp_path, state)
    with read_only(state):
        assert_refused_by_check_and_run(capsys, config, "agent.state_file", str(state), "writable")
    assert cli(capsys, "check-config", str(config))[0] == 0


def test_new_state_file_in_a_read_only_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    config = site(tmp_path, folder / "state.db")
    with read_only(folder):
        assert_refused_by_check_and_run(capsys, config, "agent.state_file", str(folder), "not writable")


def test_check_config_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only probe: no new state file, and no -wal/-shm next to an existing WAL database (a live agent's)."""
    config = site(tmp_path, tmp_path / "new" / "state.db")
    (tmp_path / "new").mkdir()
    assert cli(capsys, "check-config", str(config))[0] == 0
    assert list((tmp_path / "new").iterdir()) == []
    state = _database(tmp_path)
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli(capsys, "check-config", str(site(tmp_path, state)))[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_every_start_up_problem_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    config = site(tmp_path, tmp_path, mqtt=mqtt_on(f'password_env = "{UNSET}"\nca_file = "{tmp_path / "no.pem"}"'))
    config.write_text(config.read_text().replace('map = "vppsim_battery"', 'map = "no_such_model"'))
    message = assert_refused_by_check_and_run(
        capsys, config, "assets[0].map", "mqtt.password_env", "mqtt.ca_file", "agent.state_file"
    )
    assert f"{config}: 4 problem(s):" in message


def test_the_servers_secrets_and_certificates_are_checked_before_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The status page's and the CSMS's passwords and TLS files fail check-config (and run) with their key paths,
    all at once, instead of leaving a server that never listens behind a running agent."""
    empty, garbage, stations = tmp_path / "web-password", tmp_path / "cert.pem", tmp_path / "stations.json"
    empty.write_text("")
    garbage.write_text(PEM_GARBAGE)
    stations.write_text("not json")
    config = site(tmp_path)
    config.write_text(
        config.read_text()
        + f'[web]\nenabled = true\nport = {free_port_block(1)}\nusername = "op"\npassword_file = "{empty}"\n'
        + f'cert_file = "{garbage}"\nkey_file = "{garbage}"\n'
        + f'[ocpp]\nenabled = true\nport = {free_port_block(1)}\npassword_file = "{stations}"\n'
        + f'cert_file = "{garbage}"\nkey_file = "{garbage}"\n'
    )
    message = assert_refused_by_check_and_run(
        capsys, config, "web.password_file", "is empty", "web.cert_file/key_file", "ocpp.password_file",
        "ocpp.cert_file/key_file",
    )  # fmt: skip
    assert "4 problem(s)" in message
