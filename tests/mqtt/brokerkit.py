"""A real Mosquitto broker for tests: free loopback port, optional password file and throw-away TLS CA, restartable.

Imported as `brokerkit` (the conftest puts this folder on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sim_devices.ports import free_port_block

HOST = "127.0.0.1"


def free_port() -> int:
    """A port for the broker, outside the ephemeral range so no client socket can take it before Mosquitto binds."""
    return free_port_block(1)


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost; returns (ca, cert, key) paths."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=vpp-test-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    return ca_crt, crt, key


@dataclass
class Broker:
    """One mosquitto process; `restart()` keeps port, users and persisted sessions (like a real broker reboot)."""

    directory: Path
    port: int = field(default_factory=free_port)
    users: dict[str, str] | None = None
    tls: bool = False
    ca_file: Path | None = None
    persistence: list[str] | None = None  # persistence lines instead of the default (e.g. deploy/mosquitto.conf's)
    process: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        persistence = self.persistence if self.persistence is not None else ["persistence true", "autosave_interval 1"]
        lines = [
            f"listener {self.port} {HOST}",
            *persistence,
            f"persistence_location {self.directory}/",
            f"log_dest file {self.directory / 'mosquitto.log'}",
            "log_type all",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:  # as root mosquitto drops to user 'mosquitto', who cannot write our temp dir
            lines.append("user root")
        if self.users:
            passwd = self.directory / "passwd"
            passwd.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            lines += [f"password_file {passwd}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            ca, crt, key = make_ca(self.directory)
            self.ca_file = ca
            lines += [f"cafile {ca}", f"certfile {crt}", f"keyfile {key}", "tls_version tlsv1.2"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        conf = self.directory / "mosquitto.conf"
        if not conf.exists():
            conf.write_text(self.config_text())
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            with socket.socket() as s:
                if s.connect_ex((HOST, self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: what a power cut or the OOM killer does; only what mosquitto had saved survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)


@contextlib.contextmanager
def running_broker(directory: Path, **options: object):  # type: ignore[no-untyped-def]
    broker = Broker(directory, **options)  # type: ignore[arg-type]
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
