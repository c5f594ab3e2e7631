"""Start-up checks that need the file system or the environment: what `run` opens before its first cycle.

The pydantic models (agent/config.py) check what a config says; this module checks that what it names is there
and usable: the MQTT password, the CA certificate, the client certificate and its key, and the state file.
`check-config`, `run` and `demo` call the one function here, so `check-config` passes exactly when `run` gets
through start-up, and a mistake is reported with its key path and value instead of escaping from deep inside the
MQTT link or SQLite as a traceback.

Nothing is created or changed: the state file is opened read-only (SQLite's `immutable` mode, which makes no
`-wal` or `-shm` file), so `check-config` can be run against the config of a live agent.

`start_warnings` names what a config allows that is legal but unsafe (a broker reached in clear text, unsigned
commands): not errors, since a lab needs them, but said at every start so they are never forgotten in production.
"""

from __future__ import annotations

import os
import sqlite3
import ssl
from pathlib import Path

from agent.config import AppConfig, ConfigError, MqttSettings, OcppSettings, WebSettings, is_loopback

MEMORY = ":memory:"


def preflight(config: AppConfig) -> list[str]:
    """Every start-up problem of `config`, each naming its key path and value; empty when `run` can start."""
    return [
        *_mqtt_problems(config.mqtt),
        *_agent_key_problems(config),
        *_server_problems("web", config.web if config.web.enabled else None),
        *_server_problems("ocpp", config.ocpp if config.ocpp.enabled else None),
        *state_file_problems(config.agent.state_file),
    ]


def _server_problems(table: str, server: WebSettings | OcppSettings | None) -> list[str]:
    """A server the agent runs (the status page, the CSMS): its secrets and TLS files, loaded by the same calls it
    makes at start-up; nothing when it is off."""
    if server is None:
        return []
    problems = []
    try:
        server.password() if isinstance(server, WebSettings) else server.passwords()
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        server.tls_context()
    except ssl.SSLError as exc:  # an OSError too: caught first
        problems.append(f"{table}.cert_file/key_file: not a PEM certificate and key ssl can load ({exc.reason or exc})")
    except OSError as exc:
        problems.append(f"{table}.cert_file/key_file: cannot read {exc.filename or ''}: {exc.strerror}")
    return problems


def _agent_key_problems(config: AppConfig) -> list[str]:
    """The agent's own signing key: the same load the app makes at start-up (agent/app.py `_sealer`)."""
    from agent.trust.keys import KeyFileError, load_private_key

    if config.trust.agent_key_file is None:
        return []
    try:
        load_private_key(config.trust.agent_key_file)
    except KeyFileError as exc:
        return [f"trust.agent_key_file = {config.trust.agent_key_file!r}: {exc}"]
    return []


def _mqtt_problems(mqtt: MqttSettings) -> list[str]:
    """The secret and the CA certificate the link will use; nothing when MQTT is off (run never reads them)."""
    if not mqtt.enabled:
        return []
    problems = []
    try:
        mqtt.password()  # the same call the link makes at start-up, so the two cannot disagree
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        mqtt.tls_context()  # the same call the link's factory makes
    except OSError as exc:  # ssl.SSLError, FileNotFoundError, IsADirectoryError, PermissionError
        problems.append(_tls_problem(mqtt, exc))
    return problems


def _tls_problem(mqtt: MqttSettings, failure: OSError) -> str:
    """Which of ca_file, cert_file and key_file made `tls_context()` fail, and why, with its key path and value.

    ssl's own message does not say which file it was loading (a key that does not parse and a certificate that does
    not parse both read "[SSL] PEM lib"), so the files are tried one at a time, in the order tls_context loads them.
    """
    # deferred: cryptography (~7 MB of RSS); only a client certificate that ssl refused is looked at with it
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        ssl.create_default_context(cafile=mqtt.ca_file)
    except ssl.SSLError as exc:  # an OSError too: caught first
        return f"mqtt.ca_file = {mqtt.ca_file!r}: not a PEM CA certificate ssl can load ({exc.reason or exc})"
    except OSError as exc:
        return f"mqtt.ca_file = {mqtt.ca_file!r}: cannot read: {exc.strerror}"
    if mqtt.cert_file is None or mqtt.key_file is None:
        return f"mqtt.ca_file = {mqtt.ca_file!r}: cannot load ({failure})"
    files = {"cert_file": str(mqtt.cert_file), "key_file": str(mqtt.key_file)}
    data: dict[str, bytes] = {}
    for key, path in files.items():
        try:
            data[key] = Path(path).read_bytes()
        except OSError as exc:
            return f"mqtt.{key} = {path!r}: cannot read: {exc.strerror}"
    try:
        x509.load_pem_x509_certificate(data["cert_file"])
    except ValueError:
        return f"mqtt.cert_file = {files['cert_file']!r}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    try:
        serialization.load_pem_private_key(data["key_file"], password=None)
    except TypeError:  # the key is encrypted: the agent has no passphrase to give
        return f"mqtt.key_file = {files['key_file']!r}: the private key is encrypted; the agent needs it unencrypted"
    except (ValueError, UnsupportedAlgorithm):
        return f"mqtt.key_file = {files['key_file']!r}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----)"
    reason = failure.reason if isinstance(failure, ssl.SSLError) else None
    if reason == "KEY_VALUES_MISMATCH":
        return f"mqtt.key_file = {files['key_file']!r}: not the private key of mqtt.cert_file = {files['cert_file']!r}"
    both = f"mqtt.cert_file = {files['cert_file']!r}, mqtt.key_file = {files['key_file']!r}"
    return f"{both}: ssl cannot load them ({reason or failure})"


def start_warnings(config: AppConfig) -> list[str]:
    """One line for each legal but unsafe choice of `config`, to be logged at every start (issue 14): a broker beyond
    this host reached without TLS (`mqtt.insecure = true`), and signals taken without signatures while a signal
    source (MQTT) is on. Empty for a deployment that follows docs/security.md."""
    warnings = []
    mqtt = config.mqtt
    if not mqtt.enabled:
        return warnings
    if mqtt.insecure and mqtt.ca_file is None and not is_loopback(mqtt.host):
        warnings.append(
            f"mqtt.insecure = true: the broker {mqtt.host}:{mqtt.port} is beyond this host and TLS is off, so the "
            "broker password, telemetry and every command cross the network in clear text; set mqtt.ca_file"
        )
    if not config.signatures_required:
        warnings.append(
            "unsigned commands are accepted (trust.require_signatures = false): any client that may publish to "
            f"{mqtt.topic_prefix}/signals/ on the broker can move the fleet; remove it and set trust.site_id and "
            "trust.keys (docs/security.md)"
        )
    return warnings


def state_file_problems(state_file: str) -> list[str]:
    """Whether the agent can open `state_file` as its SQLite database and write to it (and its directory: WAL)."""
    if state_file == MEMORY:
        return []
    path = Path(state_file)
    key = f"agent.state_file = {state_file!r}"
    folder = path.parent
    if path.is_symlink() and not path.exists():
        return [f"{key}: is a symbolic link to a missing file"]
    if path.exists():
        if path.is_dir():
            return [f"{key}: is a directory, not a file"]
        if not path.is_file():
            return [f"{key}: is not a regular file"]
        if not os.access(path, os.R_OK | os.W_OK):
            return [f"{key}: not readable and writable by this user"]
        problem = _sqlite_problem(path)
        if problem:
            return [f"{key}: {problem}"]
    elif not folder.exists():
        return [f"{key}: directory {str(folder)!r} does not exist"]
    elif not folder.is_dir():
        return [f"{key}: {str(folder)!r} is not a directory"]
    # SQLite creates the file, and its -wal and -shm files next to it, in this directory
    if not os.access(folder, os.W_OK | os.X_OK):
        return [f"{key}: directory {str(folder)!r} is not writable by this user"]
    return []


def _sqlite_problem(path: Path) -> str | None:
    """Open read-only without side effects and read the schema: a file that is not SQLite fails here."""
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        probe = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        return f"cannot open as SQLite: {exc}"
    try:
        probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        return f"not an SQLite database the agent can use ({exc})"
    finally:
        probe.close()
    return None
