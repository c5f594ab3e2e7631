"""Pieces every bench script uses: waiting for a simulator's ports, a raw Modbus write round trip."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import sys
import time
from pathlib import Path


def wait_for_ports(first: int, count: int, deadline_s: float = 60.0) -> None:
    """Block until ports first..first+count-1 accept connections on 127.0.0.1 (a simulator started elsewhere)."""
    deadline = time.monotonic() + deadline_s
    for port in range(first, first + count):
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulator port {port} did not open")
            time.sleep(0.05)


async def raw_write_p50_ms(port: int, count: int = 200) -> float:
    """Median round trip of a bare pymodbus register write: the floor any agent-side latency is compared with."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await client.write_registers(19, [10], device_id=1)  # the battery map's lease register: harmless
        times.append(time.perf_counter() - t0)
    client.close()
    return statistics.median(times) * 1000


async def start_vpp_sim(sim_text: str, work: Path) -> asyncio.subprocess.Process:
    """`vpp-sim` serving `sim_text` (written to work/sim.toml) in its own process, returned once its `sim.ready` line
    says every port listens; its stderr is left for the caller to drain (a full pipe would stall the simulator)."""
    (work / "sim.toml").write_text(sim_text)
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim_devices.cli", "--config", str(work / "sim.toml"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=work,
    )  # fmt: skip
    assert sim.stderr is not None
    try:
        async with asyncio.timeout(120):
            while b'"sim.ready"' not in (line := await sim.stderr.readline()):
                if not line:
                    raise RuntimeError(f"vpp-sim exited ({await sim.wait()}) before it was ready")
    except BaseException:
        if sim.returncode is None:
            sim.kill()
            await sim.wait()
        raise
    return sim


async def stop_processes(*processes: asyncio.subprocess.Process | None) -> None:
    """SIGTERM each process still running and wait for it, SIGKILL after 30 s (a bench must not leave one behind)."""
    for process in processes:
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
