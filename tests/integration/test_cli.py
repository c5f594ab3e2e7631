"""The console scripts as a user runs them: the demo starts and stops cleanly, vpp-agent run talks to vpp-sim."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from sitekit import ROOT, shipped_config_on_free_ports


async def run_until(args: list[str], ready: str, timeout_s: float = 30.0) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT
    )
    assert proc.stdout is not None
    seen = ""
    async with asyncio.timeout(timeout_s):
        while ready not in seen:
            line = await proc.stdout.readline()
            if not line:
                break
            seen += line.decode()
    assert ready in seen, f"{args} ended before printing {ready!r}: {seen}"
    return proc, seen


async def test_demo_runs_and_stops_on_sigint(tmp_path: Path) -> None:
    config = shipped_config_on_free_ports(tmp_path)
    proc, _ = await run_until([sys.executable, "-m", "agent.cli", "demo", "--config", str(config)], "available 8/8")
    proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, out.decode()
    assert "demo stopped after" in out.decode()


async def test_demo_with_duration_exits_zero(tmp_path: Path) -> None:
    config = shipped_config_on_free_ports(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.cli",
        "demo",
        "--config",
        str(config),
        "--duration",
        "2",
        "--quiet",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, out.decode()
    assert "meter-site" in out.decode()


async def test_agent_run_against_vpp_sim_process(tmp_path: Path) -> None:
    """Two processes, as deployed against real devices: vpp-sim serves, vpp-agent run controls and logs JSON."""
    config = shipped_config_on_free_ports(tmp_path)
    sim, _ = await run_until([sys.executable, "-m", "sim_devices.cli", "--config", str(config)], "meter-pv")
    try:
        agent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--config",
            str(config),
            "--duration",
            "3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        _, err = await asyncio.wait_for(agent.communicate(), timeout=60)
        assert agent.returncode == 0, err.decode()
        events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        names = [e["event"] for e in events]
        assert "agent.start" in names and "agent.stop" in names
        stop = next(e for e in events if e["event"] == "agent.stop")
        assert stop["cycles"] >= 2 and stop["writes"] >= 6  # lease + setpoint to each of 6 controllable assets
        assert not [e for e in events if e.get("level") in ("error", "critical")]
    finally:
        sim.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sim.communicate(), timeout=20)
    assert sim.returncode == 0


async def test_signals_from_a_file_and_the_events_report(tmp_path: Path) -> None:
    """Without a broker: an up-DR event from a JSON-lines file runs to completion and `events` reports it."""
    from datetime import UTC, datetime, timedelta

    config = shipped_config_on_free_ports(tmp_path)
    now = datetime.now(UTC)
    event = {
        "id": "file-dr",
        "start": (now + timedelta(seconds=3)).isoformat(),
        "end": (now + timedelta(seconds=9)).isoformat(),
        "requested_increase_w": 10000,
        "price_per_kwh": 4,
    }
    signals = tmp_path / "signals.jsonl"
    signals.write_text(json.dumps({"kind": "up_dr", "payload": event}) + "\n" + "not json\n")
    sim, _ = await run_until([sys.executable, "-m", "sim_devices.cli", "--config", str(config)], "meter-pv")
    try:
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(config), "--duration", "11",
            "--signals", str(signals), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        _, err = await asyncio.wait_for(agent.communicate(), timeout=60)
        assert agent.returncode == 0, err.decode()
        log_events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        assert any(e["event"] == "signal.file_line_rejected" and e["line"] == 2 for e in log_events)
    finally:
        sim.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sim.communicate(), timeout=20)
    report = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "events", "--config", str(config), "--json",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, _ = await report.communicate()
    events = json.loads(out)
    assert [e["id"] for e in events] == ["file-dr"]
    assert events[0]["state"] == "completed" and events[0]["report"]["delivered_kwh"] > 0
    table = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "events", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    printed, err = await table.communicate()
    assert table.returncode == 0, err.decode()
    assert "file-dr: delivery per interval" in printed.decode() and "baseline_method" in printed.decode()


def _broken_site(tmp_path: Path, case: str) -> tuple[Path, str]:
    """The shipped config with one start-up mistake (state kept in tmp_path); the key path the error must name."""
    config = shipped_config_on_free_ports(tmp_path)
    text = config.read_text()
    if case == "ca_file not a certificate":
        (tmp_path / "ca.pem").write_text("not a certificate\n")
        text = text.replace("enabled = false", f'enabled = true\nca_file = "{tmp_path / "ca.pem"}"')
        text += "\n[trust]\nrequire_signatures = false\n"  # a lab: the case is about the CA file
        key = "mqtt.ca_file"
    elif case == "mqtt host empty":
        text = text.replace('host = "127.0.0.1"\nport = 1883', 'host = ""\nport = 1883')
        key = "mqtt.host"
    elif case == "state file not SQLite":
        (tmp_path / "state.db").write_bytes(b"\x00garbage" * 1000)
        key = "agent.state_file"
    elif case == "map with scale = nan":
        battery = (ROOT / "drivers" / "maps" / "vppsim_battery.toml").read_text()
        (tmp_path / "bess.toml").write_text(battery.replace('unit = "kW"\n', 'unit = "kW"\nscale = nan\n', 1))
        text = text.replace('map = "vppsim_battery"', f'map = "{tmp_path / "bess.toml"}"')
        key = "registers.2.scale"
    elif case == "binary config":
        text = text.replace('log_level = "info"', 'log_level = "\udcff"')
        config.write_bytes(text.encode("utf-8", "surrogateescape"))
        return config, "not UTF-8"
    else:
        raise AssertionError(case)
    config.write_text(text)
    return config, key


@pytest.mark.parametrize(
    "case", ["ca_file not a certificate", "mqtt host empty", "state file not SQLite", "map with scale = nan",
             "binary config"],
)  # fmt: skip
async def test_broken_config_exits_2_from_check_config_run_and_demo(tmp_path: Path, case: str) -> None:
    """The console script as a user runs it: exit 2 and one line naming the key, never a traceback, whichever
    command meets the mistake first (check-config, run and demo share the same start-up checks)."""
    config, key = _broken_site(tmp_path, case)
    script = str(Path(sys.executable).parent / "vpp-agent")
    for argv in (["check-config", str(config)], ["run", "--config", str(config), "--duration", "1"],
                 ["demo", "--config", str(config), "--duration", "1", "--quiet"]):  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            script, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        text = err.decode()
        assert proc.returncode == 2, (argv, text)
        assert "Traceback" not in text and text.startswith("error: ") and key in text, (argv, text)
