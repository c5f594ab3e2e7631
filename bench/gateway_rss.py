"""Gateway memory: the resident set of the shipped `vpp-agent run` (issue 16, "Memory" and "Figures to report").

For each fleet size (8, 100, 1000 devices by default) and each mode (`site_target`, `dispatch`) this script starts
  * the simulated devices in their own process (`python -m sim_devices.cli`, i.e. `vpp-sim`): the devices' physics
    and Modbus servers then cost neither this process's event loop (which samples /proc every 0.2 s and must not
    fall behind at 1000 devices) nor the agent's; nothing here needs the devices' internals;
  * the agent as deployed: `python -m agent.cli run --config FILE` in its own process, cwd a temp dir, state file in
    it, MQTT off (`[mqtt] enabled = false`, as shipped: no broker is part of this figure) and no `[metrics]`
    endpoint; the `[web]` status page on, as shipped, on a free port (`--web off` leaves it out, to show what it
    costs); its config holds no `[simulation]` table (a gateway's does not, and the CLI would import the
    simulator's config code to check one).
The config is the shipped config.toml: at 8 devices its own assets (4 V2G chargers, 2 batteries, 2 meters) on free
ports; above that bench/soak.py's large site (80 % V2G chargers, 20 % batteries behind gateways of 50 unit ids, one
site meter: N devices in all). In dispatch mode `[dispatch] step_s` is 60 s instead of 900 s (the validator's
minimum) so that re-plans come every minute instead of every 15; `horizon_steps` stays 96, so every LP has the
shipped size. Above `aggregate_above_evs` (300) EVs the agent plans by aggregation: the 1000-device site does.

What is waited for (states read from the agent's JSON log on stderr, never fixed sleeps): the first `agent.stats`
line (60 cycles in) and, in dispatch mode, the first `dispatch.planned`: the steady window starts there; it ends at
the next `agent.stats` line (60 cycles more) once `--plans` re-plans in all have ended (dispatch mode; a re-plan
that ends without a plan, e.g. over its time budget, counts: the solver process did its work, and the table says
how many failed).

Printed per run: control-process RSS (median over the steady window; peak = VmHWM over its whole life, start-up
included), the solver worker's peak (VmHWM, max over every worker the agent started), CPU seconds per wall second of
each over the steady window, cycle p50/p99 from the last `agent.stats` line; the issue's goals where it sets one.
Baselines measured in the same run: a bare interpreter, `import agent.app`, `import agent.cli` with the drivers
(what `run` imports before it reads its config), the same after loading the shipped config.toml (what validating it
imports: holidays' calendars, for `[events] holiday_country`), `import cvxpy` (the worker's floor); then what the
control process's RSS is made of: its mappings (anonymous vs files, from /proc/PID/smaps) and the RSS each
third-party package the agent imports costs alone in a fresh interpreter (over a bare one; packages share
dependencies, so these overlap).

Usage: python bench/gateway_rss.py [--devices 8 100 1000] [--modes site_target dispatch] [--plans 3] [--web off]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchkit import start_vpp_sim, stop_processes  # noqa: E402

from sim_devices.ports import free_port_block  # noqa: E402

UNITS_PER_GATEWAY = 50
SAMPLE_S = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOALS_MB = {(1000, "dispatch"): 150.0, (8, "site_target"): 60.0}  # issue 16, item 2: the control process
SHIPPED_FIRST_PORT = 15021  # config.toml's assets sit on 15021..15042
SHIPPED_PORTS = 22


# --- configs -----------------------------------------------------------------------------------------------------


def _split_shipped() -> tuple[str, str, str]:
    """config.toml as (agent tables, [[assets]], [simulation] with its devices)."""
    text = (ROOT / "config.toml").read_text()
    head, rest = text.split("\n[[assets]]", 1)
    assets, simulation = ("[[assets]]" + rest).split("\n[simulation]", 1)
    return head + "\n", assets, "[simulation]" + simulation


def configs(
    devices: int, mode: str, first_port: int, state: Path, step_s: float, web_port: int | None
) -> tuple[str, str, int]:
    """(agent config, simulator config, ports used from first_port); the status page on `web_port` (None: off)."""
    head, assets, simulation = _split_shipped()
    head = head.replace('mode = "dispatch"', f'mode = "{mode}"', 1)
    head = head.replace('state_file = "vpp-state.sqlite3"', f'state_file = "{state}"', 1)
    if mode == "dispatch":
        head = head.replace("step_s = 900.0", f"step_s = {step_s}", 1)
    assert "[mqtt]\nenabled = false" in head and "[metrics]" not in head, "the shipped config changed: check MQTT"
    assert "[web]\nenabled = true" in head, "the shipped config changed: check [web]"
    if web_port is None:
        head = head.replace("[web]\nenabled = true", "[web]\nenabled = false", 1)
    else:  # the shipped page, on a free port
        head = re.sub(
            r"^(\[web\]\n(?:[^\[\n].*\n|\n)*?)port = \d+", rf"\g<1>port = {web_port}", head, count=1, flags=re.M
        )
    if devices == 8:  # the shipped site itself, moved onto free ports
        shift = first_port - SHIPPED_FIRST_PORT

        def moved(text: str) -> str:
            return re.sub(r"^port = (\d+)", lambda m: f"port = {int(m[1]) + shift}", text, flags=re.M)

        return head + moved(assets), moved(simulation), SHIPPED_PORTS
    controllable = devices - 1
    chargers = controllable * 4 // 5
    batteries = controllable - chargers
    bess_port = first_port + -(-chargers // UNITS_PER_GATEWAY)
    meter_port = bess_port + -(-batteries // UNITS_PER_GATEWAY)
    site = (  # bench/soak.py's large site
        "[site]\nimport_limit_w = 4000000.0\nexport_limit_w = 3000000.0\nmeter = 'meter-site'\n"
        "base_load_min_w = 100000.0\nbase_load_max_w = 400000.0\npv_max_w = 600000.0\n"
    )
    head = head[: head.index("[site]")] + site + "\n" + head[head.index("[control]") :]
    groups = [("ev{i:04d}", chargers, "vppsim_v2g_dc", first_port), ("bess{i:04d}", batteries, "vppsim_battery",
                                                                      bess_port)]  # fmt: skip
    agent, sim = head, "[simulation]\nhost = '127.0.0.1'\nspeed = 1.0\ntick_s = 0.5\nseed = 3\n"
    sim += "base_load_w = 200000.0\npv_peak_w = 500000.0\nutc_offset_h = 9\n"
    for pattern, count, model, first in groups:
        if not count:
            continue
        common = f"id = {pattern!r}\ncount = {count}\nport = {first}\nunits_per_port = {UNITS_PER_GATEWAY}\n"
        wear = "replacement_cost = 3000000.0\n" if "bess" in pattern else "wear_price_per_kwh = 8.0\n"
        agent += f"\n[[assets]]\n{common}map = {model!r}\n{wear}"
        sim += f"\n[[simulation.devices]]\n{common}model = {model!r}\n"
    agent += f"\n[[assets]]\nid = 'meter-site'\nmap = 'vppsim_dc_meter'\nport = {meter_port}\n"
    sim += f"\n[[simulation.devices]]\nid = 'meter-site'\nmodel = 'vppsim_dc_meter'\nport = {meter_port}\n"
    return agent, sim, meter_port + 1 - first_port


# --- /proc -------------------------------------------------------------------------------------------------------


def status_mb(pid: int, field_name: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_s(pid: int) -> float | None:
    """utime + stime of one process (not its children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def smaps_top(pid: int, top: int = 6) -> tuple[float, float, list[tuple[str, float]]]:
    """(anonymous MB, file-backed MB, the largest files by RSS) of a process's mappings; files of one installed
    package are summed under its name."""
    by_name: Counter[str] = Counter()
    anon = files = 0.0
    name = ""
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as smaps:
            for line in smaps:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping's header line
                    parts = line.split(maxsplit=5)
                    name = parts[5].strip() if len(parts) > 5 else ""
                elif first == "Rss:":
                    mb = int(line.split()[1]) / 1024
                    if not name or name.startswith("["):
                        anon += mb
                        by_name["[anon, heap, stack]"] += mb
                    else:
                        files += mb
                        package = re.search(r"site-packages/([^/]+)/", name)
                        by_name[package[1] if package else Path(name).name] += mb
    except OSError:
        pass
    return anon, files, [(k, v) for k, v in by_name.most_common(top)]


# --- one run -----------------------------------------------------------------------------------------------------


@dataclass
class Watch:
    """What the agent's log and /proc say, as the run goes."""

    stats: list[dict[str, Any]] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # re-plans that produced no plan (solver error, over budget)
    recycled: int = 0
    levels: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    tail: list[str] = field(default_factory=list)
    ended: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, control RSS MB)
    worker_hwm: dict[int, float] = field(default_factory=dict)
    worker_rss: dict[int, float] = field(default_factory=dict)
    worker_cpu: dict[int, float] = field(default_factory=dict)
    last_worker: int | None = None


async def read_log(stream: asyncio.StreamReader, watch: Watch) -> None:
    while line := await stream.readline():
        text = line.decode(errors="replace").strip()
        watch.tail = [*watch.tail[-19:], text]
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        event, level = str(entry.get("event")), str(entry.get("level"))
        watch.levels[level] += 1
        if level in ("warning", "error", "critical"):
            watch.warnings[event] += 1
        if event == "agent.stats":
            watch.stats.append(entry)
        elif event == "dispatch.planned":
            watch.plans.append(entry)
        elif event in ("dispatch.failed", "dispatch.crashed"):
            watch.failed.append(str(entry.get("error")))
        elif event == "dispatch.worker_recycled":
            watch.recycled += 1
        watch.changed.set()
    watch.ended = True
    watch.changed.set()


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def sample(pid: int, watch: Watch) -> None:
    while True:
        rss = status_mb(pid, "VmRSS")
        if rss is None:
            return
        watch.samples.append((time.monotonic(), rss))
        for child in children(pid):
            watch.last_worker = child
            hwm, now_rss, cpu = status_mb(child, "VmHWM"), status_mb(child, "VmRSS"), cpu_s(child)
            if hwm is not None:
                watch.worker_hwm[child] = max(hwm, watch.worker_hwm.get(child, 0.0))
            if now_rss is not None:
                watch.worker_rss[child] = now_rss
            if cpu is not None:
                watch.worker_cpu[child] = cpu
        await asyncio.sleep(SAMPLE_S)


async def until(watch: Watch, agent: asyncio.subprocess.Process, done: Any, what: str, deadline: float) -> None:
    """Wait for a state of the agent's log (woken by each line), failing on its exit or at the deadline."""
    while not done():
        if agent.returncode is not None or watch.ended:
            raise RuntimeError(f"agent exited ({agent.returncode}) waiting for {what}:\n" + "\n".join(watch.tail))
        watch.changed.clear()
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await watch.changed.wait()
        except TimeoutError:
            raise RuntimeError(f"timed out waiting for {what}; log tail:\n" + "\n".join(watch.tail)) from None


async def run_one(
    devices: int, mode: str, plans_wanted: int, step_s: float, timeout_s: float, web: bool
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vpp-gwrss-"))
    sim = agent = None
    tasks: list[asyncio.Task[None]] = []
    try:
        probe_ports = SHIPPED_PORTS if devices == 8 else devices // UNITS_PER_GATEWAY + 4
        first = free_port_block(probe_ports + 1)  # the last one for the status page
        web_port = first + probe_ports if web else None
        agent_text, sim_text, _ = configs(devices, mode, first, work / "state.sqlite3", step_s, web_port)
        (work / "agent.toml").write_text(agent_text)
        sim = await start_vpp_sim(sim_text, work)
        assert sim.stderr is not None
        tasks.append(asyncio.create_task(drain(sim.stderr)))
        started = time.monotonic()
        deadline = started + timeout_s
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(work / "agent.toml"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=work,
        )  # fmt: skip
        watch = Watch()
        assert agent.stderr is not None
        tasks += [asyncio.create_task(read_log(agent.stderr, watch)), asyncio.create_task(sample(agent.pid, watch))]
        dispatch = mode == "dispatch"

        def solves() -> int:  # re-plans that ended, with a plan or without: the solver process has done its work
            return len(watch.plans) + len(watch.failed)

        await until(watch, agent, lambda: watch.stats and (not dispatch or solves()), "warm-up", deadline)
        t_a, cpu_a, stats_a = time.monotonic(), cpu_s(agent.pid) or 0.0, len(watch.stats)
        worker_cpu_a = dict(watch.worker_cpu)

        def steady() -> bool:
            return len(watch.stats) > stats_a and (not dispatch or solves() >= plans_wanted)

        await until(watch, agent, steady, "the steady window's end", deadline)
        t_b, cpu_b = time.monotonic(), cpu_s(agent.pid) or 0.0
        hwm = status_mb(agent.pid, "VmHWM") or 0.0
        anon, files, top = smaps_top(agent.pid)
        window = [rss for t, rss in watch.samples if t_a <= t <= t_b]
        worker_cpu = sum(c - worker_cpu_a.get(pid, 0.0) for pid, c in watch.worker_cpu.items())
        last = watch.stats[-1]
        return {
            "devices": devices, "mode": mode,
            "rss_steady_mb": statistics.median(window), "rss_end_mb": window[-1], "rss_peak_mb": hwm,
            "worker_peak_mb": max(watch.worker_hwm.values(), default=None),
            "worker_end_mb": watch.worker_rss.get(watch.last_worker or -1),
            "workers": len(watch.worker_hwm), "recycled": watch.recycled,
            "cpu_per_s": (cpu_b - cpu_a) / (t_b - t_a),
            "worker_cpu_per_s": worker_cpu / (t_b - t_a) if dispatch else None,
            "cycle_p50_s": last.get("cycle_p50_s"), "cycle_p99_s": last.get("cycle_p99_s"),
            "cycles": last.get("cycles"), "cycle_failures": last.get("cycle_failures"),
            "plans": len(watch.plans), "failed": len(watch.failed), "first_failure": next(iter(watch.failed), None),
            "methods": sorted({str(p.get("method")) for p in watch.plans}),
            "solve_s": [p.get("solve_s") for p in watch.plans],
            "window_s": t_b - t_a, "wall_s": t_b - started,
            "anon_mb": anon, "files_mb": files, "top_maps": top,
            "warnings": dict(watch.warnings.most_common(5)), "stats_rss_mb": last.get("rss_mb"),
        }  # fmt: skip
    finally:
        await stop_processes(agent, sim)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        shutil.rmtree(work, ignore_errors=True)


# --- baselines ---------------------------------------------------------------------------------------------------

PROBE = "\nprint([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmRSS:')][0])"


def import_rss_mb(code: str) -> float | None:
    """RSS of a fresh interpreter that ran `code` (then only read its own /proc status: builtins only)."""
    out = subprocess.run([sys.executable, "-c", code + PROBE], capture_output=True, text=True, cwd=ROOT, check=False)
    return int(out.stdout.split()[-1]) / 1024 if out.returncode == 0 and out.stdout.split() else None


RUN_IMPORTS = "import agent.cli, agent.app, agent.wiring, drivers.registermap"


def baselines() -> tuple[dict[str, float | None], list[tuple[str, float]]]:
    figures = {
        "bare interpreter": import_rss_mb("pass"),
        "import agent.app": import_rss_mb("import agent.app"),
        "import agent.cli + app + drivers": import_rss_mb(RUN_IMPORTS),
        "  + load config.toml": import_rss_mb(RUN_IMPORTS + "\nagent.config.load_config('config.toml')"),
        "import cvxpy": import_rss_mb("import cvxpy"),
    }
    listing = "import sys\nbase = {m.split('.')[0] for m in sys.modules}\n" + RUN_IMPORTS
    listing += "\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules} - base)), 'cvxpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True, cwd=ROOT, check=True)
    *names, has_cvxpy = out.stdout.split()
    figures["cvxpy in the control process's imports"] = float(has_cvxpy == "True")
    stdlib = set(sys.stdlib_module_names)
    third = [n for n in names if n not in stdlib and not n.startswith("_") and n not in ("agent", "drivers")]
    bare = figures["bare interpreter"] or 0.0
    costs = [(n, (import_rss_mb(f"import {n}") or bare) - bare) for n in third]
    return figures, sorted(costs, key=lambda c: -c[1])


# --- report ------------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def report(rows: list[dict[str, Any]], base: dict[str, float | None], costs: list[tuple[str, float]], web: str) -> None:
    print("\nvpp-agent run (shipped CLI, own process; vpp-sim in its own process; MQTT off, no metrics endpoint, "
          f"status page {web}), {os.cpu_count()} cores")  # fmt: skip
    head = ("devices", "mode", "ctl RSS steady", "ctl RSS peak", "worker peak", "ctl CPU s/s", "wkr CPU s/s",
            "cycle p50", "cycle p99", "plans", "goal")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        goal = GOALS_MB.get((r["devices"], r["mode"]))
        verdict = "—" if goal is None else (
            f"≤ {goal:.0f} MB: {'met' if r['rss_peak_mb'] <= goal else 'NOT met'} (peak)")  # fmt: skip
        worker = f"{fmt(r['worker_peak_mb'])} MB ({r['workers']})" if r["worker_peak_mb"] else "—"
        plans = f"{r['plans']} ({'/'.join(r['methods'])})" if r["plans"] else "—"
        if r["failed"]:
            plans += f", {r['failed']} failed"
        print(f"| {r['devices']} | {r['mode']} | {fmt(r['rss_steady_mb'])} MB | {fmt(r['rss_peak_mb'])} MB | "
              f"{worker} | {fmt(r['cpu_per_s'], '.3f')} | {fmt(r['worker_cpu_per_s'], '.3f')} | "
              f"{fmt(r['cycle_p50_s'] and r['cycle_p50_s'] * 1000)} ms | "
              f"{fmt(r['cycle_p99_s'] and r['cycle_p99_s'] * 1000)} ms | {plans} | {verdict} |")  # fmt: skip
    print("\nbaselines (fresh interpreters, this run):")
    for name, value in base.items():
        if name.startswith("cvxpy in"):
            print(f"  cvxpy imported by the control process's modules: {'yes' if value else 'no'}")
        else:
            print(f"  {name:<34} {fmt(value):>7} MB")
    print("\nRSS each third-party package costs imported alone (over a bare interpreter; overlapping):")
    print("  " + ", ".join(f"{n} {mb:.1f}" for n, mb in costs[:12] if mb >= 0.5) + " (MB)")
    print("\nper run: steady window, control process mappings at its end (smaps), solves, warnings")
    for r in rows:
        top = ", ".join(f"{n} {mb:.1f}" for n, mb in r["top_maps"])
        solves = ", ".join(fmt(s, ".2f") for s in r["solve_s"]) or "—"
        print(f"  {r['devices']:>4} {r['mode']:<11} window {r['window_s']:.0f} s ({r['wall_s']:.0f} s in), "
              f"{r['cycles']} cycles, {r['cycle_failures']} failed; RSS end {r['rss_end_mb']:.1f} MB "
              f"(agent.stats {fmt(r['stats_rss_mb'])}); anon {r['anon_mb']:.1f} + files {r['files_mb']:.1f} MB: "
              f"{top}; solves [{solves}] s; worker idle at end {fmt(r['worker_end_mb'])} MB, "
              f"recycled {r['recycled']}; warnings {r['warnings'] or 'none'}"
              + (f"; first re-plan failure: {r['first_failure']}" if r["first_failure"] else ""))  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    base, costs = await asyncio.to_thread(baselines)
    print("baselines: " + ", ".join(f"{k} {fmt(v)}" for k, v in base.items()), file=sys.stderr, flush=True)
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for devices in args.devices:
        for mode in args.modes:
            t0 = time.monotonic()
            try:
                row = await run_one(devices, mode, args.plans, args.step_s, args.timeout, args.web == "on")
            except RuntimeError as exc:  # one run's failure must not cost the others' figures
                print(f"{devices} {mode}: FAILED: {exc}", file=sys.stderr, flush=True)
                failures.append(f"{devices} {mode}: {str(exc).splitlines()[0]}")
                continue
            rows.append(row)
            print(f"{devices} {mode}: steady {row['rss_steady_mb']:.1f} MB, peak {row['rss_peak_mb']:.1f} MB, "
                  f"worker {fmt(row['worker_peak_mb'])} MB ({time.monotonic() - t0:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    report(rows, base, costs, args.web)
    for failure in failures:
        print(f"FAILED run: {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[8, 100, 1000], help="fleet sizes (8: the shipped)")
    parser.add_argument("--modes", nargs="+", default=["site_target", "dispatch"], choices=["site_target", "dispatch"])
    parser.add_argument("--plans", type=int, default=3, help="plans solved before a dispatch run may end")
    parser.add_argument("--step-s", type=float, default=60.0, help="[dispatch] step_s (shipped: 900; minimum 60)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take before it fails")
    parser.add_argument("--web", choices=["on", "off"], default="on", help="the [web] status page (shipped: on)")
    args = parser.parse_args()
    if any(d < 8 for d in args.devices):
        parser.error("--devices: at least 8")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
