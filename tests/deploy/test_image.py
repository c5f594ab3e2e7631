"""The container image, built and run for real: deploy/build-image.sh, deploy/Dockerfile, deploy/container-init.py.

The image is built here as a user builds it where no registry is reachable (`deploy/build-image.sh --debootstrap`:
a Debian bookworm base made with debootstrap, wheels of the tree as it is now), then run as deploy/compose.yaml runs
it: host network (everything on 127.0.0.1), a read-only root file system, the state in a named volume, the config
and a secret mounted read-only, against `vpp-sim` serving the shipped site on the host. What it must show:
- the agent in the container polls the simulated devices (its metrics endpoint, scraped from the host, counts the
  polls of every asset) as an unprivileged user, and the health check turns healthy;
- its state file lands in the volume and outlives the container: a second container on the same volume knows the
  signal the first one took (a duplicate), although the root file system of both was read-only;
- `docker stop` (SIGTERM) stops it cleanly: exit code 0, not the SIGKILL that follows a stop timeout;
- a control cycle that stops completing (the agent frozen with SIGSTOP) is aborted by the watchdog of
  container-init, with the tracebacks in the log, and the restart policy brings the agent back.

A docker engine that answers is used as it is; otherwise the test starts `dockerd` itself as root, on a private
socket and data root under /tmp, with no bridge and no iptables rules (the containers use the host network), and
stops it at the end. In CI (CI=true) a missing docker or debootstrap fails the test; elsewhere it skips.
The debootstrap base is kept between runs in $TMPDIR/vpp-agent-image-cache, named by a hash of its recipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sitekit import ROOT
from test_systemd import simulator, site_config

from sim_devices.ports import free_port_block

BUILD = ROOT / "deploy" / "build-image.sh"
COMPOSE = ROOT / "deploy" / "compose.yaml"
CI = os.environ.get("CI") == "true"
CI_PACKAGES = "apt-get install -y docker.io debootstrap docker-compose"
BASE_CACHE = Path(tempfile.gettempdir()) / "vpp-agent-image-cache"
AGENT_UID = 10001
SIGNAL_ID = "image-test-dr"
INIT = ["/opt/vpp-agent/.venv/bin/python", "-I", "/usr/local/lib/vpp-agent/container-init.py"]


def unavailable(reason: str) -> None:
    """CI must run these tests: there a missing tool is a failure naming what to install; elsewhere a skip."""
    if CI:
        pytest.fail(f"{reason}; the CI test command must install it ({CI_PACKAGES})", pytrace=False)
    pytest.skip(reason)


def eventually(check: Callable[[], Any], timeout_s: float, what: str, log: Callable[[], str] = str) -> Any:
    """Poll until `check` returns something true; the deadline only bounds a failing test."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}\n{log()}")
        time.sleep(0.2)


# -- the engine ----------------------------------------------------------------------------------------------------
@dataclass
class Docker:
    client: str
    env: dict[str, str]
    cleanup: list[list[str]] = field(default_factory=list)  # `docker ...` commands to run at the end

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        proc = subprocess.run([self.client, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip()

    def answers(self) -> bool:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self("version", "--format", "{{.Server.Version}}", check=False, timeout=20) != ""
        return False

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self("inspect", name))[0]

    def logs(self, name: str) -> str:
        proc = subprocess.run([self.client, "logs", name], env=self.env, capture_output=True, text=True, timeout=60)
        return proc.stdout + proc.stderr

    def events(self, name: str) -> list[dict[str, Any]]:
        """The container's JSON log lines (the agent's and container-init's)."""
        lines = []
        for line in self.logs(name).splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines


def _mounts_under(folder: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line.split()[4] for line in text.splitlines() if line.split()[4].startswith(str(folder))]


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    # the client that came with the engine: a newer stray client may not speak an old engine's API
    client = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    if client is None:
        unavailable("no docker client (Debian: apt-get install docker.io)")
    assert client is not None
    engine = Docker(client, dict(os.environ))
    if engine.answers():
        yield engine
        for command in engine.cleanup:
            engine(*command, check=False)
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        unavailable("no docker engine answers and dockerd is not installed (Debian: apt-get install docker.io)")
    if os.geteuid() != 0:
        unavailable("no docker engine answers, and starting dockerd needs root")
    assert dockerd is not None
    folder = Path(tempfile.mkdtemp(prefix="vpp-dockerd-", dir="/tmp"))
    engine.env["DOCKER_HOST"] = f"unix://{folder / 'docker.sock'}"
    log_path = folder / "dockerd.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [dockerd, "--host", engine.env["DOCKER_HOST"], "--data-root", str(folder / "data"),
             "--exec-root", str(folder / "exec"), "--pidfile", str(folder / "dockerd.pid"),
             # containers use the host network: no docker0 bridge, no NAT, no iptables rules on this machine
             "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        eventually(lambda: proc.poll() is not None or engine.answers(), 60, "dockerd answers", log_path.read_text)
        assert proc.poll() is None, f"dockerd exited: {log_path.read_text()[-3000:]}"
        yield engine
    finally:
        proc.terminate()  # dockerd stops its containers and containerd, and unmounts their file systems
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for mount in sorted(_mounts_under(folder), reverse=True):  # dockerd leaves exec-root/netns/default behind
            subprocess.run(["umount", mount], capture_output=True, timeout=30)
        left = _mounts_under(folder)
        if left:  # never delete through a mount still in place (a bind mount reaches into the host)
            pytest.fail(f"dockerd left mounts under {folder}: {left}")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def image(docker: Docker) -> str:
    """The image, built from this tree on a debootstrap base (as where no registry is reachable), with the OCPP
    extra (the optional dependencies go in the same way as the others)."""
    if shutil.which("debootstrap") is None:
        unavailable("debootstrap is not installed (Debian: apt-get install debootstrap)")
    tag = f"vpp-agent:test-{uuid.uuid4().hex[:8]}"
    env = {**docker.env, "DOCKER": docker.client, "PYTHON": sys.executable, "VPP_BASE_CACHE": str(BASE_CACHE)}
    proc = subprocess.run(
        [str(BUILD), "--debootstrap", "--extras", "ocpp", "--tag", tag],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    docker.cleanup.append(["image", "rm", "--force", tag])
    return tag


# -- a site, and the agent's container against it -------------------------------------------------------------------
@dataclass
class Site:
    folder: Path
    config: Path
    signals: Path
    agent_key: Path
    metrics_port: int


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """The shipped site on free ports served by vpp-sim on the host; the config as a container reads it."""
    # relative, as shipped: it must resolve in the image's working directory, the state volume
    config = site_config(tmp_path, mode="site_target", state_file="vpp-state.sqlite3")
    metrics_port = free_port_block(1)
    # a secret the agent must read at start, where compose.yaml (and systemd's LoadCredential) puts it
    subprocess.run(
        [sys.executable, "-m", "agent.cli", "keys", "new", "--kid", "agent-image", "--out", str(tmp_path)],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    agent_key = tmp_path / "agent-image.pem"
    if os.geteuid() == 0:
        os.chown(agent_key, 0, AGENT_UID)  # as docs/deploy.md says: root's, readable by the agent's group only
        agent_key.chmod(0o640)
    else:  # an engine run by another user: the file must still be readable in the container
        agent_key.chmod(0o644)
    with config.open("a") as file:
        file.write(
            f'\n[metrics]\nenabled = true\nhost = "127.0.0.1"\nport = {metrics_port}\n'
            '\n[trust]\nagent_key_file = "/run/credentials/vpp-agent.service/agent-key"\nagent_kid = "agent-image"\n'
        )
    now = datetime.now(UTC)
    start, end = now + timedelta(hours=2), now + timedelta(hours=3)
    event = {"id": SIGNAL_ID, "start": start.isoformat(), "end": end.isoformat()}
    event |= {"requested_increase_w": 5000, "price_per_kwh": 4}
    signals = tmp_path / "signals.jsonl"
    signals.write_text(json.dumps({"kind": "up_dr", "payload": event}) + "\n")
    for path in (config, signals):
        path.chmod(0o644)
    with simulator(config, tmp_path):
        yield Site(tmp_path, config, signals, agent_key, metrics_port)


@contextlib.contextmanager
def agent_container(docker: Docker, image: str, site: Site, volume: str, *options: str) -> Iterator[str]:
    """`docker run` of the image as deploy/compose.yaml runs it, with the site's config and signals file."""
    name = f"vpp-agent-test-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "--detach", "--name", name, "--network", "host", "--read-only",
        "--tmpfs", f"/run/vpp-agent:uid={AGENT_UID},gid={AGENT_UID},mode=0700", "--tmpfs", "/tmp:mode=1777",
        "--volume", f"{volume}:/var/lib/vpp-agent",
        "--volume", f"{site.config}:/etc/vpp-agent/config.toml:ro",
        "--volume", f"{site.signals}:/etc/vpp-agent/signals.jsonl:ro",
        "--volume", f"{site.agent_key}:/run/credentials/vpp-agent.service/agent-key:ro",
        *options, image,
        "vpp-agent", "run", "--config", "/etc/vpp-agent/config.toml", "--signals", "/etc/vpp-agent/signals.jsonl",
    )  # fmt: skip
    try:
        yield name
    finally:
        docker("rm", "--force", name, check=False)


@pytest.fixture
def volume(docker: Docker) -> Iterator[str]:
    name = f"vpp-agent-test-state-{uuid.uuid4().hex[:8]}"
    docker("volume", "create", name)
    try:
        yield name
    finally:
        docker("volume", "rm", "--force", name, check=False)


def polls_ok(port: int) -> dict[str, float]:
    """vpp_asset_polls_total{result="ok"} per asset, from the agent's metrics endpoint (empty if it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vpp_asset_polls_total" and sample.labels["result"] == "ok":
                counts[sample.labels["asset_id"]] = sample.value
    return counts


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` on this host (IPv4), as dotted quads."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def health(docker: Docker, name: str) -> dict[str, Any]:
    return docker.inspect(name)["State"].get("Health") or {}


def logged(docker: Docker, name: str, event: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in docker.events(name) if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]


def backup_state(docker: Docker, image: str, volume: str, folder: Path) -> Path:
    """Run the backup command docs/deploy.md gives (its `python -c "..."`) on the state volume; the copy's path."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    found = re.search(r'python -c "(import sqlite3;[^"]+)"', docs)
    assert found is not None, 'docs/deploy.md: no backup command (python -c "import sqlite3; ...")'
    folder.mkdir()
    if os.geteuid() == 0:
        os.chown(folder, AGENT_UID, AGENT_UID)  # as the docs say: the backup folder is the agent user's
    else:
        folder.chmod(0o777)
    docker(
        "run", "--rm", "--network", "none", "--volume", f"{volume}:/var/lib/vpp-agent",
        "--volume", f"{folder}:/backup", image, "python", "-c", found.group(1),
    )  # fmt: skip
    return folder / "vpp-state.sqlite3"


def agent_pid(docker: Docker, name: str) -> int:
    """The agent's host pid: the `vpp-agent run` process, child of container-init."""
    for line in docker("top", name, "-o", "pid,args").splitlines()[1:]:
        pid, args = line.split(None, 1)
        if "bin/vpp-agent run" in args and "container-init" not in args:
            return int(pid)
    raise AssertionError(f"no vpp-agent process in {name}: {docker('top', name)}")


# -- the tests ------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(1500)
def test_the_image_runs_an_unprivileged_user_with_state_in_a_volume(docker: Docker, image: str) -> None:
    config = docker.inspect(image)["Config"]
    assert config["User"] == f"{AGENT_UID}:{AGENT_UID}"
    assert config["WorkingDir"] == "/var/lib/vpp-agent" and "/var/lib/vpp-agent" in config["Volumes"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Healthcheck"]["Test"] == ["CMD", *INIT, "--check"]
    assert config["Entrypoint"] == INIT
    out = docker("run", "--rm", "--network", "none", image, "sh", "-c", "id -u; id -g; stat -c '%u %a' .")
    assert out.splitlines() == [str(AGENT_UID), str(AGENT_UID), f"{AGENT_UID} 700"]
    docker("run", "--rm", "--network", "none", image, "python", "-c", "import ocpp.v21, websockets")
    # one-off commands go through container-init too, and keep their exit code
    assert docker("run", "--rm", "--network", "none", image, "vpp-agent", "--version").startswith("vpp-agent ")
    proc = subprocess.run(
        [docker.client, "run", "--rm", "--network", "none", image, "vpp-agent", "check-config", "/no/such.toml"],
        env=docker.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "/no/such.toml" in proc.stdout + proc.stderr
    # a read-only root without the tmpfs for the notify socket: one line that says what to mount
    proc = subprocess.run(
        [docker.client, "run", "--rm", "--network", "none", "--read-only", image, "vpp-agent", "--version"],
        env=docker.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "--tmpfs /run/vpp-agent:uid=10001,gid=10001,mode=0700" in proc.stderr, proc.stderr


@pytest.mark.timeout(1500)
def test_the_agent_polls_the_site_turns_healthy_keeps_its_state_in_the_volume_and_stops_cleanly(
    docker: Docker, image: str, site: Site, volume: str
) -> None:
    with agent_container(docker, image, site, volume) as name:
        logs = lambda: docker.logs(name)[-4000:]  # noqa: E731
        # every asset of the site answered the agent's polls, from inside the container
        assets = eventually(lambda: polls_ok(site.metrics_port), 120, "the metrics endpoint answers", logs)
        eventually(
            lambda: (counts := polls_ok(site.metrics_port)) and min(counts.values()) >= 3,
            60, "three good polls of every asset", logs,
        )  # fmt: skip
        assert len(assets) == 8, assets
        assert listening_addresses(site.metrics_port) == {"127.0.0.1"}
        # the health check: the control cycle completes (READY=1, then WATCHDOG=1 within VPP_WATCHDOG_S)
        state = eventually(lambda: (h := health(docker, name)).get("Status") == "healthy" and h, 90, "healthy", logs)
        output = state["Log"][-1]["Output"].strip()  # what the check printed: the agent's own STATUS=
        assert output == "online", state
        users = [line.split()[1] for line in docker("top", name, "-o", "pid,user").splitlines()[1:]]
        assert users == [str(AGENT_UID)] * 2, users  # container-init and the agent
        eventually(lambda: logged(docker, name, "signal.accepted", signal_id=SIGNAL_ID), 60, "signal taken", logs)
        # the state file is in the volume, the agent's
        out = docker(
            "run", "--rm", "--network", "none", "--volume", f"{volume}:/state", "--entrypoint", "stat", image,
            "-c", "%u %s", "/state/vpp-state.sqlite3",
        )  # fmt: skip
        owner, size = out.split()
        assert int(owner) == AGENT_UID and int(size) > 0
        # the backup recipe of docs/deploy.md, while the agent runs: a consistent copy that holds the signal
        backup = backup_state(docker, image, volume, site.folder / "backup")
        with contextlib.closing(sqlite3.connect(backup)) as db:
            assert (SIGNAL_ID,) in db.execute("SELECT id FROM signals WHERE kind = 'up_dr'").fetchall()
        # docker stop: SIGTERM, passed on by container-init; a clean stop exits 0 (SIGKILL after 20 s: 137)
        docker("stop", "--time", "20", name, timeout=60)
        exited = docker.inspect(name)["State"]
        assert exited["ExitCode"] == 0 and not exited["OOMKilled"], docker.logs(name)[-3000:]
        assert logged(docker, name, "agent.stop") and logged(docker, name, "init.exited", code=0)
    # a new container on the same volume: the signal is known, so the state outlived the first container
    with agent_container(docker, image, site, volume) as name:
        eventually(
            lambda: logged(docker, name, "signal.duplicate", signal_id=SIGNAL_ID), 120, "the signal known again",
            lambda: docker.logs(name)[-4000:],
        )  # fmt: skip
        assert not logged(docker, name, "signal.accepted")
        docker("stop", "--time", "20", name, timeout=60)
        assert docker.inspect(name)["State"]["ExitCode"] == 0


@pytest.mark.timeout(1500)
def test_a_stuck_control_cycle_is_aborted_and_the_restart_policy_brings_the_agent_back(
    docker: Docker, image: str, site: Site, volume: str
) -> None:
    # a watchdog of 4 s (4 periods of the site's 1 s cycle) keeps the test short; the image's is 30 s
    with agent_container(docker, image, site, volume, "--restart", "on-failure", "--env", "VPP_WATCHDOG_S=4") as name:
        logs = lambda: docker.logs(name)[-4000:]  # noqa: E731
        eventually(lambda: logged(docker, name, "init.ready"), 120, "the first cycle polled the fleet", logs)
        frozen = agent_pid(docker, name)
        os.kill(frozen, signal.SIGSTOP)  # alive, holding its sockets, completing no cycle
        try:
            eventually(lambda: docker.inspect(name)["RestartCount"] >= 1, 60, "a restart", logs)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        text = docker.logs(name)
        assert logged(docker, name, "init.watchdog_timeout", action="SIGABRT"), text[-3000:]
        assert "Fatal Python error: Aborted" in text  # PYTHONFAULTHANDLER: where each thread was
        assert re.search(r'"event": "init.exited".*"code": 134', text), text[-3000:]  # 128 + SIGABRT
        # the agent is back and controlling: it polled the fleet again
        eventually(lambda: len(logged(docker, name, "init.ready")) >= 2, 120, "ready again after the restart", logs)
        assert agent_pid(docker, name) != frozen


def test_the_compose_file_is_valid_and_mounts_the_shipped_broker_files() -> None:
    """`docker-compose config` checks deploy/compose.yaml against the Compose schema and resolves its paths; every
    file it mounts from this repository exists, the shipped Mosquitto config and ACL included."""
    compose = shutil.which("docker-compose")
    if compose is None:
        unavailable("docker-compose is not installed (Debian: apt-get install docker-compose)")
    assert compose is not None
    proc = subprocess.run(
        [compose, "--file", str(COMPOSE), "config"], capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("VPP_")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sources = re.findall(r"^\s+- ([^:\s]+):(/[^:\s]+)", proc.stdout, flags=re.MULTILINE)  # host path or volume
    mounted = {Path(src).relative_to(ROOT).as_posix(): dst for src, dst in sources if src.startswith(str(ROOT))}
    assert mounted == {
        "deploy/compose/mosquitto.conf": "/mosquitto/config/mosquitto.conf",
        "deploy/mosquitto.conf": "/etc/mosquitto/conf.d/vpp.conf",
        "deploy/mosquitto.acl": "/etc/mosquitto/vpp.acl",
    }
    assert all((ROOT / path).is_file() for path in mounted)
    # the paths the shipped config names are where the compose file puts the broker's files
    shipped = (ROOT / "deploy" / "mosquitto.conf").read_text()
    targets = {dst for _src, dst in sources}
    for option in ("password_file", "acl_file"):
        path = re.search(rf"^{option} (\S+)$", shipped, flags=re.MULTILINE)
        assert path is not None and path.group(1) in targets, option
    for option in ("cafile", "certfile", "keyfile"):
        path = re.search(rf"^{option} (\S+)$", shipped, flags=re.MULTILINE)
        assert path is not None and str(Path(path.group(1)).parent) in targets, option
    main = (ROOT / "deploy" / "compose" / "mosquitto.conf").read_text()
    assert "include_dir /etc/mosquitto/conf.d" in main and "persistence_location /mosquitto/data/" in main
    assert ("mosquitto-data", "/mosquitto/data") in sources and ("agent-state", "/var/lib/vpp-agent") in sources
