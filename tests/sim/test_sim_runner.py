"""SimSite lifecycle: the real-time ticker, 500 devices in one process, and the vpp-sim command."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from simhelpers import HOST, eventually, free_port_block, span

from sim_devices.config import parse_simulation
from sim_devices.faults import parse_fault_spec
from sim_devices.runner import SimSite


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) != 0


async def test_ticker_advances_physics_with_the_clock_and_stop_closes_ports() -> None:
    base = free_port_block(2)
    cfg = parse_simulation(
        {
            "speed": 100.0,
            "tick_s": 0.02,
            "devices": [
                {"id": "b{i}", "count": 2, "model": "vppsim_battery", "port": base, "params": {"lease_timeout_s": 0}}
            ],
        }
    )
    async with SimSite.from_config(cfg) as site:
        site.devices["b1"].write_setpoint(10_000)

        async def moved() -> bool:
            return site.site.t_s > 10 and site.devices["b1"].power_w == 10_000

        await eventually(moved, what="ticker stepped the site")
        assert site.site.t_s <= site.clock.seconds()
    assert _refused(base) and _refused(base + 1)


async def test_five_hundred_devices_each_answer_one_read() -> None:
    n_solo, n_gw, per_port = 300, 200, 50
    solo = free_port_block(n_solo + n_gw // per_port)  # one block: two separate blocks could overlap
    gw = solo + n_solo
    cfg = parse_simulation(
        {
            "devices": [
                {"id": "ev{i:03d}", "count": n_solo, "model": "vppsim_v2g_dc", "port": solo},
                {"id": "bess{i:03d}", "count": n_gw, "model": "vppsim_battery", "port": gw, "units_per_port": per_port},
            ]
        }
    )
    async with SimSite.from_config(cfg) as site:
        assert len(site.devices) == 500 and len(site.ports) == n_solo + n_gw // per_port
        answered: set[str] = set()
        gate = asyncio.Semaphore(64)

        async def read_port(port: int, ids: list[str]) -> None:
            async with gate:
                client = AsyncModbusTcpClient(HOST, port=port, timeout=10, retries=1)
                try:
                    assert await client.connect()
                    for device_id in ids:
                        model = "vppsim_v2g_dc" if device_id.startswith("ev") else "vppsim_battery"
                        first, count = span(model)
                        unit = site.placements[device_id].unit_id
                        rr = await client.read_holding_registers(first, count=count, device_id=unit)
                        if not rr.isError():
                            answered.add(device_id)
                finally:
                    client.close()

        await asyncio.gather(*(read_port(p, ids) for p, ids in site.ports.items()))
        assert answered == set(site.devices)
        assert all(e.reads == 1 for e in site.endpoints.values())


def test_fault_specs_parse() -> None:
    assert parse_fault_spec("ev1:offline") == ("ev1", "offline", None)
    assert parse_fault_spec("meter:x:slow=1.5") == ("meter:x", "slow", 1.5)
    for bad in ("ev1", "ev1:melt", "ev1:slow", "ev1:device=abc"):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)


async def test_vpp_sim_command_serves_until_sigterm(tmp_path: Path) -> None:
    port = free_port_block(1)
    path = tmp_path / "sim.toml"
    path.write_text(
        f'[agent]\nignored = true\n\n[simulation]\nspeed = 5\n\n[[simulation.devices]]\nid = "m"\n'
        f'model = "vppsim_dc_meter"\nport = {port}\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sim_devices.cli",
        "--config",
        str(path),
        "--host",
        HOST,
        "--fault",
        "m:exception=6",
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def listening() -> bool:
            assert proc.returncode is None
            return not _refused(port)

        await eventually(listening, timeout_s=20, what="vpp-sim listening")
        client = AsyncModbusTcpClient(HOST, port=port, timeout=5, retries=0)
        assert await client.connect()
        rr = await client.read_holding_registers(0, count=1, device_id=1)
        client.close()
        assert rr.isError() and rr.exception_code == 6  # the --fault option took effect
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, err_bytes = await proc.communicate()
        err = err_bytes.decode()
        assert proc.returncode == 0, err
        assert '"sim.listening"' in err and f'"port": {port}' in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
