"""kill -9 of the shipped agent (`vpp-agent run` in its own process) while it steers a simulated OCPP 2.1 station:
the station falls back by itself after its maxOfflineDuration, and a new agent on the same state file takes control
again and resumes the same transaction (the station starts none; the agent logs the resumption).

The station and its EV are the simulator in this process, so every check is made on the station's side."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from sitekit import agent_process, eventually
from test_q04_end_to_end import _site

from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite


async def test_killed_agent_station_falls_back_and_a_new_agent_resumes_the_same_transaction(tmp_path: Path) -> None:
    text = _site(tmp_path).replace("[agent]\n", f'[agent]\nstate_file = "{tmp_path / "state.db"}"\n', 1)
    config = tmp_path / "config.toml"
    config.write_text(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        assert site.ocpp is not None
        station = site.ocpp.stations["CP001"]
        ev = site.devices["CP001"]

        def discharging() -> bool:
            return ev.power_w == pytest.approx(-5000.0, rel=0.02)

        async with agent_process(config) as first:
            await eventually(discharging, timeout_s=60, what="the first agent has the EV discharge 5 kW")
            started = [e for e in station.sent if e["event_type"] == "Started"]
            assert len(started) == 1
            transaction = started[0]["transaction_id"]
            await first.kill9()
        await eventually(lambda: not station.online, timeout_s=60, what="the station sees the CSMS gone")
        await eventually(lambda: station.fallbacks >= 1, timeout_s=30, what="fallback after maxOfflineDuration")
        await eventually(lambda: abs(ev.power_w) < 1.0, timeout_s=30, what="the EV at the fallback power, 0 W")

        async with agent_process(config) as second:
            await eventually(lambda: station.online, timeout_s=60, what="the station reconnects to the new agent")
            await eventually(discharging, timeout_s=60, what="the new agent has the EV discharge 5 kW again")
            assert [e["transaction_id"] for e in station.sent if e["event_type"] == "Started"] == [transaction]
            await second.wait_logged("ocpp.transaction_resumed", timeout_s=30)
        assert ev.writes_outside_nameplate == 0
