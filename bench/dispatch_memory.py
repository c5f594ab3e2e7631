"""Dispatch memory bench: RSS over repeated re-plans, the solver in the control process against the solver process.

The same sequence of plans (the 100-EV + 2-battery fleet of bench/dispatch.py by default, prices re-forecast with
noise on every re-plan as an MPC step does; `--shapes K` cycles through K fleet sizes, as assets coming and going
change the problem's shape) is solved `--solves` times in two fresh interpreters, each started by this script:
  * in-process – agent.dispatch.planner.solve on a thread of the process (`asyncio.to_thread`, as the dispatcher
                 ran it before agent.dispatch.worker): the control process holds the solver stack and every solve;
  * worker     – agent.dispatch.worker.SolverWorker, as the dispatcher runs it now: the control process sends the
                 inputs and receives plans; the child imports cvxpy, solves and is recycled by its own rules.
Printed: RSS of each process (VmRSS from /proc, MB; the solver process's as it measured it after the solve, before
a recycle) after its imports and after chosen solves, its peak (VmHWM; the solver process's over its lifetimes),
growth from the 10th solve (or the first, with fewer) to the last, and ratios of the two runs; seconds of the first
solve (worker start, imports, compilation included) and the median re-solve; how long the worker takes to stop.
Figures are measured in this run on this machine: compare within a run. No thresholds: it reports.
Usage: python bench/dispatch_memory.py [--solves 50] [--evs 100] [--shapes 1] [--budget 60] [--in-process-repo DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from agent.dispatch.inputs import PlanInputs

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def status_mb(pid: int | None, field: str) -> float:
    """A VmRSS/VmHWM-style field of /proc/<pid>/status in MB (pid None: this process)."""
    with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_inputs(solves: int, evs: int, shapes: int, path: Path) -> None:
    """The plans to solve, pickled for both runs (built here: bench/dispatch.py imports cvxpy)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from dispatch import START, fleet_inputs, quarter_hour_prices, sessions_for

    t0, series = quarter_hour_prices(seed=11)
    base = fleet_inputs(sessions_for(evs, seed=3), START, (t0, series))
    rng = np.random.default_rng(5)
    plans = []
    for k in range(solves):
        first = base.assets[k % shapes :]  # another fleet size: another compiled problem
        price = np.maximum(0.01, base.site.price_per_kwh * rng.lognormal(0.0, 0.08, base.steps))
        plans.append(dataclasses.replace(base, assets=first, site=dataclasses.replace(base.site, price_per_kwh=price)))
    path.write_bytes(pickle.dumps(plans))


def marks(solves: int) -> list[int]:
    return sorted({m for m in (1, 2, 5, 10, 20, 30, 50, 100, 200, solves) if m <= solves})


async def run_in_process(plans: list[PlanInputs], budget: float) -> dict[str, object]:
    started = time.perf_counter()
    from agent.dispatch.planner import solve

    import_s = time.perf_counter() - started
    out: dict[str, object] = {"after_imports": status_mb(None, "VmRSS"), "import_s": import_s}
    rss, seconds, costs = [], [], []
    for inputs in plans:
        t = time.perf_counter()
        plan = await asyncio.to_thread(solve, inputs, budget)
        seconds.append(time.perf_counter() - t)
        costs.append(plan.net_cost)
        rss.append(status_mb(None, "VmRSS"))
    out.update(control=rss, control_peak=status_mb(None, "VmHWM"), seconds=seconds, costs=costs)
    out["solver_stack_loaded"] = "cvxpy" in sys.modules
    return out


async def run_worker(plans: list[PlanInputs], budget: float) -> dict[str, object]:
    from agent.dispatch.worker import SolverWorker, full_plan

    out: dict[str, object] = {"after_imports": status_mb(None, "VmRSS")}
    worker = SolverWorker(max_solves=100, max_rss_bytes=None)
    control, child, seconds, costs, peaks = [], [], [], [], []
    for inputs in plans:
        pid = worker.pid
        t = time.perf_counter()
        plan = await worker.call(full_plan, inputs, budget, deadline_s=budget * 2 + 60)
        seconds.append(time.perf_counter() - t)
        costs.append(plan.net_cost)
        control.append(status_mb(None, "VmRSS"))
        child.append((worker.rss_bytes or 0) / MB)  # measured by the child that solved, after the solve
        if pid is not None and worker.pid == pid:  # not just recycled: its peak so far
            peaks.append(status_mb(pid, "VmHWM"))
    t = time.perf_counter()
    await worker.aclose()
    out.update(
        control=control, control_peak=status_mb(None, "VmHWM"), worker=child, worker_peak=max(peaks),
        seconds=seconds, costs=costs, workers_started=worker.started, stop_s=time.perf_counter() - t,
        solver_stack_loaded="cvxpy" in sys.modules,
    )  # fmt: skip
    return out


def child_main(mode: str, path: Path, budget: float, repo: Path) -> None:
    sys.path.insert(0, str(repo))  # before anything of `agent` is imported
    plans = pickle.loads(path.read_bytes())
    runner = run_in_process if mode == "in-process" else run_worker
    result = asyncio.run(runner(plans, budget))
    print(json.dumps(result))


def growth(series: list[float]) -> tuple[int, float]:
    """From the 10th value (or the first, with fewer) to the last, in percent."""
    start = 9 if len(series) >= 20 else 0
    return start + 1, 100.0 * (series[-1] - series[start]) / series[start]


def report(results: dict[str, dict[str, object]], solves: int) -> None:
    inp, wrk = results["in-process"], results["worker"]
    rows = marks(solves)
    print(f"{'RSS MB after solve':<34}" + "".join(f"{m:>8}" for m in rows) + f"{'peak':>8}")
    for name, series, peak in (
        ("in-process: control process", inp["control"], inp["control_peak"]),
        ("worker:     control process", wrk["control"], wrk["control_peak"]),
        ("worker:     solver process", wrk["worker"], wrk["worker_peak"]),
    ):
        print(f"{name:<34}" + "".join(f"{series[m - 1]:8.1f}" for m in rows) + f"{peak:8.1f}")  # type: ignore[index]
    print(f"control process after its imports: in-process {inp['after_imports']:.1f} MB (solver stack loaded: "
          f"{inp['solver_stack_loaded']}), worker {wrk['after_imports']:.1f} MB (solver stack loaded: "
          f"{wrk['solver_stack_loaded']})")  # fmt: skip
    for name, series in (("in-process control", inp["control"]), ("worker control", wrk["control"]),
                         ("worker solver", wrk["worker"])):  # fmt: skip
        start, pct = growth(series)  # type: ignore[arg-type]
        print(f"growth {name:<20} solve {start} -> {len(series)}: {pct:+.1f} %")  # type: ignore[arg-type]
    last_in, last_ctl = inp["control"][-1], wrk["control"][-1]  # type: ignore[index]
    last_total = last_ctl + wrk["worker"][-1]  # type: ignore[index]
    print(f"ratio control RSS worker/in-process after the last solve: {last_ctl / last_in:.3f}; "
          f"control + solver process / in-process: {last_total / last_in:.3f}")  # fmt: skip
    s_in, s_w = inp["seconds"], wrk["seconds"]
    med_in, med_w = statistics.median(s_in[1:] or s_in), statistics.median(s_w[1:] or s_w)  # type: ignore[index]
    print(f"first solve s: in-process {s_in[0]:.2f} (+ {inp['import_s']:.2f} imports), worker {s_w[0]:.2f} "  # type: ignore[index]
          f"(start, imports, compilation); median re-solve s: in-process {med_in:.3f}, worker {med_w:.3f} "
          f"(ratio {med_w / med_in:.3f})")  # fmt: skip
    diff = max(abs(a - b) for a, b in zip(inp["costs"], wrk["costs"], strict=True))  # type: ignore[arg-type]
    print(f"largest net-cost difference between the runs: {diff:.2e}; workers started: {wrk['workers_started']}; "
          f"worker stop took {wrk['stop_s']:.3f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solves", type=int, default=50)
    parser.add_argument("--evs", type=int, default=100)
    parser.add_argument("--shapes", type=int, default=1, help="cycle through this many fleet sizes")
    parser.add_argument("--budget", type=float, default=60.0, help="solver time limit per solve, s")
    parser.add_argument(
        "--in-process-repo", type=Path, default=ROOT,
        help="checkout whose planner the in-process run uses, e.g. a `git worktree` of the commit before the solver "
        "process, for the figures before the fix (default: this one)",
    )  # fmt: skip
    parser.add_argument("--child", choices=["in-process", "worker"], help=argparse.SUPPRESS)
    parser.add_argument("--plans", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.plans, args.budget, args.in_process_repo)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plans.pickle"
        build_inputs(args.solves, args.evs, max(1, args.shapes), path)
        print(f"{args.solves} re-plans of {args.evs} EVs + 2 batteries x 96 steps, {max(1, args.shapes)} shape(s)",
              flush=True)  # fmt: skip
        results = {}
        if args.in_process_repo != ROOT:
            print(f"in-process run: the planner of {args.in_process_repo}", flush=True)
        for mode in ("in-process", "worker"):
            repo = args.in_process_repo if mode == "in-process" else ROOT
            cmd = [sys.executable, __file__, "--child", mode, "--plans", str(path), "--budget", str(args.budget)]
            done = subprocess.run([*cmd, "--in-process-repo", str(repo)], capture_output=True, text=True, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    report(results, args.solves)


if __name__ == "__main__":
    main()
