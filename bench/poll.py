"""Polling benchmark: the agent's control loop against a bare pymodbus read loop, same devices, same run.

For each fleet size a simulated site runs in its own process (`vpp-sim`, devices behind Modbus gateways of 100
unit ids each, as large sites are wired). Then, one after the other and each in a fresh process:
  * bare  – one AsyncModbusTcpClient per gateway, every period read each device's register span; nothing else.
  * agent – the real ControlLoop (drivers, fleet, safety envelope, controller, setpoint writes) at the same period.
Printed per size: reads/s achieved, cycle time p50/p99, process CPU seconds per wall second and peak RSS, and the
agent/bare CPU ratio. Figures are ratios against the baseline measured in the same run because these machines are
shared and noisy. Usage: python bench/poll.py [--sizes 100 500 1000] [--seconds 20] [--repeats 3] [--sunspec]

--sunspec: the fleet is SunSpec devices instead (80 % V2G chargers 1+701+702+704+714+713, 20 % battery inverters
1+701+702+704+713+802+124, half of each in either firmware order) served by vpp-sim, plus the
register-map site meter from vpp-sim; the bare loop reads the same ranges the SunSpec driver planned at discovery.
Each size also prints the discovery time of its fleet (every device: marker, then the model chain), measured in a
fresh agent process, devices behind one gateway one after another as the agent does it.
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


def sunspec_site_config(devices: int, port: int, period_s: float) -> str:
    """Agent config + vpp-sim [simulation] for a SunSpec fleet of `devices` on gateways of UNITS_PER_GATEWAY unit
    ids, plus the site meter."""
    chargers = devices * 4 // 5
    groups = []
    first = port
    for name, count, product, kind in (("ev", chargers, "sunspec_v2g_charger", "ev_charger"),
                                       ("bess", devices - chargers, "sunspec_battery_inverter", "battery")):
        for order, part in (("a", count // 2), ("b", count - count // 2)):
            if part:
                groups.append((f"{name}{order}{{i:04d}}", part, product, kind, order, first))
                first += -(-part // UNITS_PER_GATEWAY)
    meter_port = first
    agent = (
        f"[agent]\npoll_period_s = {period_s}\npoll_timeout_s = {period_s / 2}\nlog_level = 'warning'\n"
        "[site]\nmeter = 'meter-site'\n[control]\nmode = 'site_target'\nsite_target_w = 0.0\n"
    )
    sim = (
        "[simulation]\nhost = '127.0.0.1'\nspeed = 1.0\ntick_s = 0.5\nseed = 3\nbase_load_w = 5000.0\n"
        f"[[simulation.devices]]\nid = 'meter-site'\nmodel = 'vppsim_dc_meter'\nport = {meter_port}\n"
    )
    for pattern, count, product, kind, order, at in groups:
        common = f"id = {pattern!r}\ncount = {count}\nport = {at}\nunits_per_port = {UNITS_PER_GATEWAY}\n"
        agent += f"[[assets]]\n{common}transport = 'sunspec'\nkind = '{kind}'\n"
        sim += f"[[simulation.devices]]\n{common}transport = 'sunspec'\nmodel = '{product}'\n"
        sim += f"sunspec_order = '{order}'\n"
    agent += f"[[assets]]\nid = 'meter-site'\nmap = 'vppsim_dc_meter'\nport = {meter_port}\n"
    return agent + sim


def sunspec_ports(devices: int) -> int:
    chargers = devices * 4 // 5
    batteries = devices - chargers
    parts = [chargers // 2, chargers - chargers // 2, batteries // 2, batteries - batteries // 2]
    return sum(-(-p // UNITS_PER_GATEWAY) for p in parts) + 1


async def discovery_time(config_path: str) -> dict[str, float]:
    """Seconds to discover every SunSpec device of the config (gateways in parallel, devices on one in turn)."""
    from agent.config import load_config
    from agent.logs import configure_logging
    from agent.wiring import build_drivers

    config = load_config(config_path)
    configure_logging("warning", "json")
    drivers, pool = build_drivers(config, now=_now)
    by_channel: dict[object, list] = {}
    for driver in drivers.values():
        if hasattr(driver, "discover"):
            by_channel.setdefault(driver.channel, []).append(driver)

    async def gateway(members: list) -> int:
        for driver in members:
            await driver.discover()
        return len(members)

    t0, cpu0 = time.monotonic(), cpu_s()
    counts = await asyncio.gather(*(gateway(m) for m in by_channel.values()))
    wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
    pool.close()
    return {"devices": float(sum(counts)), "discovery_s": wall, "discovery_cpu_s": cpu}


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
    if any(a.transport == "sunspec" for a in config.assets):
        from agent.logs import configure_logging

        configure_logging("warning", "json")
    by_port: dict[int, list[tuple[int, list[tuple[int, int]]]]] = {}
    for asset in config.assets:
        if asset.transport == "sunspec":  # the ranges the driver planned at discovery (not measured)
            from agent.wiring import build_drivers
            from drivers.sunspec.driver import SunSpecDriver

            one = config.model_copy(update={"assets": [asset]})
            drivers, pool = build_drivers(one, now=_now)
            for p in asset.placements():
                driver = drivers[p.id]
                assert isinstance(driver, SunSpecDriver)
                reads = [(a + k, min(125, n - k)) for a, n in (await driver.discover()).reads for k in range(0, n, 125)]
                by_port.setdefault(p.port, []).append((p.unit_id, reads))
            pool.close()
            continue
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
    from agent.wiring import build_drivers

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
    parser.add_argument("--child", choices=["bare", "agent", "discover"])
    parser.add_argument("--sunspec", action="store_true", help="a SunSpec fleet (see the module docstring)")
    parser.add_argument("--config")
    args = parser.parse_args()
    if args.child:
        if args.child == "discover":
            print(json.dumps(asyncio.run(discovery_time(args.config))))
            return
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
        if args.sunspec:
            ports = sunspec_ports(size)
        first = free_port_block(ports)
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
            handle.write(sunspec_site_config(size, first, args.period) if args.sunspec
                         else site_config(size, first, args.period))
        sim = subprocess.Popen(
            [sys.executable, "-m", "sim_devices.cli", "--config", handle.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_ports(first, ports)
            if args.sunspec:
                found = run_child("discover", handle.name, args.seconds)
                rows.append(f"{'':>7} SunSpec discovery of {found['devices']:.0f} devices: "
                            f"{found['discovery_s']:.2f} s wall, {found['discovery_cpu_s']:.2f} s agent CPU")
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
        print("\n".join(rows[-(4 if args.sunspec else 3):]), flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
