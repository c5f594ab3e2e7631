"""Polling benchmark: the agent's control loop against a bare pymodbus read loop, same devices, same run.

For each fleet size a simulated site runs in its own process (`vpp-sim`, devices behind Modbus gateways of 100
unit ids each, as large sites are wired). Then, one after the other and each in a fresh process:
  * bare  – one AsyncModbusTcpClient per gateway, every period read each device's register span; nothing else.
  * agent – the real ControlLoop (drivers, fleet, safety envelope, controller, setpoint writes) at the same period.
Printed per size: reads/s achieved, cycle time p50/p99, process CPU seconds per wall second and peak RSS, and the
agent/bare CPU ratio. Figures are ratios against the baseline measured in the same run because these machines are
shared and noisy. Usage: python bench/poll.py [--sizes 100 500 1000] [--seconds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import wait_for_ports

from sim_devices.ports import free_port_block

UNITS_PER_GATEWAY = 100
WARMUP_S = 3.0


def site_config(devices: int, port: int, period_s: float) -> str:
    """Agent tables and the matching [simulation] for `devices` assets (80 % chargers, 20 % batteries) + a meter."""
    chargers = devices * 4 // 5
    batteries = devices - chargers
    bess_port = port + -(-chargers // UNITS_PER_GATEWAY)
    meter_port = bess_port + -(-batteries // UNITS_PER_GATEWAY)
    groups = [("ev{i:04d}", chargers, "vppsim_v2g_dc", port), ("bess{i:04d}", batteries, "vppsim_battery", bess_port)]

    def tables(header: str, key: str) -> str:
        text = ""
        for pattern, count, model, first in groups:
            text += f"{header}\nid = {pattern!r}\ncount = {count}\n{key} = {model!r}\nport = {first}\n"
            text += f"units_per_port = {UNITS_PER_GATEWAY}\n"
        return text + f"{header}\nid = 'meter-site'\n{key} = 'vppsim_dc_meter'\nport = {meter_port}\n"

    return (
        f"[agent]\npoll_period_s = {period_s}\npoll_timeout_s = {period_s / 2}\nlog_level = 'warning'\n"
        "[site]\nmeter = 'meter-site'\n[control]\nmode = 'site_target'\nsite_target_w = 0.0\n"
        + tables("[[assets]]", "map")
        + "[simulation]\nhost = '127.0.0.1'\nspeed = 1.0\ntick_s = 0.5\nseed = 3\nbase_load_w = 5000.0\n"
        + tables("[[simulation.devices]]", "model")
    )


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bare_loop(config_path: str, seconds: float) -> dict[str, float]:
    from pymodbus.client import AsyncModbusTcpClient

    from agent.config import load_config
    from drivers.registermap import load_map

    config = load_config(config_path)
    by_port: dict[int, list[tuple[int, list[tuple[int, int]]]]] = {}
    for asset in config.assets:
        spans = [(s.address, s.count) for s in load_map(asset.map).spans]
        for p in asset.placements():
            by_port.setdefault(p.port, []).append((p.unit_id, spans))
    clients = {port: AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0) for port in by_port}
    for client in clients.values():
        await client.connect()
    period = config.agent.poll_period_s
    reads = 0
    cycles: list[float] = []

    async def gateway(port: int) -> int:
        done = 0
        for unit, spans in by_port[port]:
            for address, count in spans:
                rr = await clients[port].read_holding_registers(address, count=count, device_id=unit)
                done += 0 if rr.isError() else 1
        return done

    measure_from = time.monotonic() + WARMUP_S
    end = measure_from + seconds
    cpu0 = None
    next_start = time.monotonic()
    while time.monotonic() < end:
        t0 = time.monotonic()
        counts = await asyncio.gather(*(gateway(port) for port in by_port))
        if t0 >= measure_from:
            if cpu0 is None:
                cpu0, wall0 = cpu_s(), t0
            reads += sum(counts)
            cycles.append(time.monotonic() - t0)
        next_start += period
        await asyncio.sleep(max(0.0, next_start - time.monotonic()))
    wall = time.monotonic() - wall0
    for client in clients.values():
        client.close()
    return _figures(reads, wall, cpu_s() - cpu0, cycles, writes=0)


async def agent_loop(config_path: str, seconds: float) -> dict[str, float]:
    from agent.config import load_config
    from agent.control.loop import ControlLoop
    from agent.logs import configure_logging
    from drivers.factory import build_drivers

    config = load_config(config_path)
    configure_logging("warning", "json")
    drivers, pool = build_drivers(config, now=_now)
    loop = ControlLoop(config, drivers, clock=_now)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(WARMUP_S)
    reads0 = sum(s.polls_ok for s in loop.fleet.assets.values())
    writes0, cycles0 = loop.writes, loop.cycles
    cpu0, wall0 = cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = cpu_s() - cpu0
    wall = time.monotonic() - wall0
    reads = sum(s.polls_ok for s in loop.fleet.assets.values()) - reads0
    timings = [t.total_s for t in list(loop.timings)[-(loop.cycles - cycles0) :]]
    stop.set()
    await task
    pool.close()
    figures = _figures(reads, wall, cpu, timings, writes=loop.writes - writes0)
    figures["available"] = len(loop.fleet.available())
    return figures


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _figures(reads: int, wall: float, cpu: float, cycles: list[float], writes: int) -> dict[str, float]:
    ordered = sorted(cycles) or [0.0]
    return {
        "reads_per_s": reads / wall,
        "writes_per_s": writes / wall,
        "cycle_p50_ms": statistics.median(ordered) * 1000,
        "cycle_p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        "cpu_per_s": cpu / wall,
        "rss_mb": peak_rss_mb(),
    }


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per figure, the median over runs (each figure on its own: a robust summary of a noisy machine)."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def run_child(kind: str, config_path: str, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--config", config_path, "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare/agent runs; medians are reported")
    parser.add_argument("--child", choices=["bare", "agent"])
    parser.add_argument("--config")
    args = parser.parse_args()
    if args.child:
        runner = bare_loop if args.child == "bare" else agent_loop
        print(json.dumps(asyncio.run(runner(args.config, args.seconds))))
        return
    print(f"poll benchmark: period {args.period} s, {args.seconds:.0f} s measured per run, {os.cpu_count()} cores")
    columns = ("devices", "run", "reads/s", "writes/s", "p50 ms", "p99 ms", "CPU/s", "RSS MB")
    widths = (7, 5, 8, 8, 7, 7, 6, 7)
    header = " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
    rows = [header]
    for size in args.sizes:
        ports = -(-size * 4 // 5 // UNITS_PER_GATEWAY) + -(-(size - size * 4 // 5) // UNITS_PER_GATEWAY) + 1
        first = free_port_block(ports)
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
            handle.write(site_config(size, first, args.period))
        sim = subprocess.Popen(
            [sys.executable, "-m", "sim_devices.cli", "--config", handle.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_ports(first, ports)
            bare_runs, agent_runs = [], []
            for _ in range(args.repeats):  # alternate, so a noisy neighbour hits both sides alike
                bare_runs.append(run_child("bare", handle.name, args.seconds))
                agent_runs.append(run_child("agent", handle.name, args.seconds))
            bare, agent = _median_run(bare_runs), _median_run(agent_runs)
        finally:
            sim.terminate()
            sim.wait(10)
            os.unlink(handle.name)
        for name, fig in (("bare", bare), ("agent", agent)):
            rows.append(
                f"{size + 1:>7} {name:>5} {fig['reads_per_s']:>8.0f} {fig['writes_per_s']:>8.0f} "
                f"{fig['cycle_p50_ms']:>7.1f} {fig['cycle_p99_ms']:>7.1f} {fig['cpu_per_s']:>6.3f} "
                f"{fig['rss_mb']:>7.1f}"
            )
        ratio = agent["cpu_per_s"] / bare["cpu_per_s"] if bare["cpu_per_s"] else float("nan")
        spread = [round(a["cpu_per_s"] / b["cpu_per_s"], 2) for a, b in zip(agent_runs, bare_runs, strict=True)]
        rows.append(
            f"{'':>7} agent/bare CPU ratio {ratio:.2f} (median of {args.repeats}; per pair {spread}) · "
            f"assets available {agent['available']:.0f}/{size + 1}"
        )
        print("\n".join(rows[-3:]), flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
