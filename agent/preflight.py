"""Start-up checks that need the file system or the environment: what `run` opens before its first cycle.

The pydantic models (agent/config.py) check what a config says; this module checks that what it names is there
and usable: the MQTT password, the CA certificate and the state file. `check-config`, `run` and `demo` call the one
function here, so `check-config` passes exactly when `run` gets through start-up, and a mistake is reported with
its key path and value instead of escaping from deep inside the MQTT link or SQLite as a traceback.

Nothing is created or changed: the state file is opened read-only (SQLite's `immutable` mode, which makes no
`-wal` or `-shm` file), so `check-config` can be run against the config of a live agent.
"""

from __future__ import annotations

import os
import sqlite3
import ssl
from pathlib import Path

from agent.config import AppConfig, ConfigError, MqttSettings

MEMORY = ":memory:"


def preflight(config: AppConfig) -> list[str]:
    """Every start-up problem of `config`, each naming its key path and value; empty when `run` can start."""
    return [*_mqtt_problems(config.mqtt), *state_file_problems(config.agent.state_file)]


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
    except ssl.SSLError as exc:  # an OSError too: caught first
        problems.append(f"mqtt.ca_file = {mqtt.ca_file!r}: not a PEM CA certificate ssl can load ({exc.reason or exc})")
    except OSError as exc:  # FileNotFoundError, IsADirectoryError, PermissionError
        problems.append(f"mqtt.ca_file = {mqtt.ca_file!r}: cannot read: {exc.strerror}")
    return problems


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
