"""What the control process imports: a library an option needs is loaded only when that option is on.

A gateway's RAM is the budget (docs/deploy.md, Sizing): numpy, joserfc with cryptography, prometheus_client, aiomqtt
with paho cost from 1 to 10 MB of RSS each, and an agent in `site_target` mode with MQTT, metrics and signed
commands off uses none of them, status page (on in the shipped config) included. The modules that need them import
them inside the function that uses them, with a `# deferred` comment saying why; these tests keep it so. Each
starts the shipped CLI (`vpp-agent run`) in its own process against `vpp-sim` in another, waits for READY=1 on
$NOTIFY_SOCKET (sent once the first control cycle has polled the devices), stops it with SIGTERM and reads which
modules it had loaded.

Not asserted: holidays (agent/config.py checks `[events] holiday_country` against its registry of calendars when it
loads the config; the calendars themselves are imported on first use) and rich (structlog imports it whenever it is
installed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sitekit import ROOT, shipped_config_on_free_ports

from agent.trust.keys import new_private_key, write_private_key
from sim_devices.ports import free_port_block

# the libraries an option brings in (top-level package names) and the solver stack, which only the solver process
# may load
OPTIONAL = ("numpy", "joserfc", "cryptography", "prometheus_client", "aiomqtt", "paho")
SOLVER = ("cvxpy", "highspy", "scipy")
OCPP = ("ocpp", "websockets")  # only with OCPP stations (the `ocpp` extra), which neither test configures
SUNSPEC = ("sunspec2",)  # only with SunSpec assets, which neither test configures

# `vpp-agent run` as its console script runs it (agent.cli:main), writing sys.modules to argv[1] as it exits
RUN_AND_LIST = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["vpp-agent", "run", "--config", sys.argv[2]]
from agent.cli import main
main()
"""


def split_site(tmp_path: Path, mode: str) -> tuple[str, str]:
    """(agent config, vpp-sim config) of the shipped site on free ports. The agent's has no [simulation] table, as
    a gateway's has none (checking one would import the simulator's code into the agent)."""
    text = shipped_config_on_free_ports(tmp_path).read_text()
    agent, simulation = text.split("\n[simulation]", 1)
    assert 'mode = "dispatch"' in agent and "[mqtt]\nenabled = false" in agent, "the shipped config changed"
    agent = agent.replace('mode = "dispatch"', f'mode = "{mode}"', 1)
    return agent, "[simulation]" + simulation


@contextlib.contextmanager
def simulator(text: str, folder: Path) -> Iterator[None]:
    """`vpp-sim` serving `text` until the block ends; entered once its `sim.ready` line says every port listens."""
    (folder / "sim.toml").write_text(text)
    log_path = folder / "sim.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sim_devices.cli", "--config", str(folder / "sim.toml")],
            stdout=subprocess.DEVNULL, stderr=log_file, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # bounds a failing test only
        while b'"sim.ready"' not in log_path.read_bytes():
            assert proc.poll() is None, f"vpp-sim exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"vpp-sim not ready: {log_path.read_text()}"
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def modules_of_a_run(agent_text: str, sim_text: str, folder: Path) -> set[str]:
    """The top-level packages `vpp-agent run` had imported by the time it stopped, after its first cycle."""
    (folder / "agent.toml").write_text(agent_text)
    listing = folder / "modules.json"
    name = f"vpp-imports-{uuid.uuid4().hex}"
    with simulator(sim_text, folder), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + name)  # an abstract socket: no path-length limit, nothing to clean up
        notify.settimeout(60)  # bounds a failing test only
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_AND_LIST, str(listing), str(folder / "agent.toml")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=folder, env={**env, "NOTIFY_SOCKET": "@" + name},
        )  # fmt: skip
        try:
            while b"READY=1" not in notify.recv(4096).split(b"\n"):
                pass
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"no READY=1 from the agent: {proc.communicate()[1].decode()[-3000:]}") from None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    return {module.split(".")[0] for module in json.loads(listing.read_text())}


def test_a_site_target_agent_with_its_options_off_loads_none_of_their_libraries(tmp_path: Path) -> None:
    """The shipped site in `site_target` mode with its status page, MQTT, metrics and signed commands off: neither
    numpy nor the solver stack, joserfc, cryptography, prometheus_client, aiomqtt, paho nor OCPP's is loaded."""
    agent, sim = split_site(tmp_path, "site_target")
    loaded = modules_of_a_run(agent, sim, tmp_path)
    assert "agent" in loaded and "pymodbus" in loaded  # the listing is of a process that ran the agent
    assert "microdot" in loaded  # the status page served, without numpy
    assert sorted(loaded.intersection(OPTIONAL + SOLVER + OCPP + SUNSPEC)) == []


def test_each_option_on_loads_its_library_and_the_solver_stack_stays_out(tmp_path: Path) -> None:
    """The same site with every option on (dispatch mode, an MQTT broker that is not there, the metrics endpoint,
    the agent's own signing key): each library is loaded, so the deferred imports are reached, and the solver
    stack still is not (it lives in the solver process)."""
    agent, sim = split_site(tmp_path, "dispatch")
    key = tmp_path / "agent.pem"
    write_private_key(key, new_private_key())
    ports = free_port_block(2)
    agent = re.sub(r"^\[mqtt\]\nenabled = false.*$", "[mqtt]\nenabled = true", agent, count=1, flags=re.M)
    agent = re.sub(r"^port = 1883$", f"port = {ports}", agent, count=1, flags=re.M)  # nothing listens there
    agent += f"\n[metrics]\nenabled = true\nport = {ports + 1}\n"
    agent += f'\n[trust]\nrequire_signatures = false\nagent_key_file = "{key}"\nagent_kid = "agent-test"\n'
    loaded = modules_of_a_run(agent, sim, tmp_path)
    assert sorted(loaded.intersection(OPTIONAL)) == sorted(OPTIONAL), sorted(loaded)
    assert sorted(loaded.intersection(SOLVER + OCPP)) == []
