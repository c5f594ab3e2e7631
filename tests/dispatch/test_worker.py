"""The solver process: same plans as in-process, recycled, replaced when it dies or overruns, gone when the agent stops.

Everything runs a real child process; a solve in flight is caught by stopping the child with SIGSTOP first (it then
cannot answer), so a kill or an overrun lands mid-solve whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import operator
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from test_aggregate import fixed_fleet

from agent.config import parse_config
from agent.dispatch import planner, runner
from agent.dispatch.aggregate import solve_aggregated
from agent.dispatch.plan import PlanError
from agent.dispatch.planner import solve
from agent.dispatch.runner import Dispatcher
from agent.dispatch.worker import SolverWorker, WorkerDied, WorkerError, aggregated_plan, full_plan

START = datetime(2026, 11, 20, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def children() -> set[int]:
    """Live (not yet reaped included) child processes of this test process, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("PPid", "0")) == os.getpid():
            found.add(int(entry.name))
    return found


async def until(check: object, what: str) -> None:
    """Wait for a state (the deadline only bounds a failing test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60.0
    while not check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"not reached: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def worker() -> AsyncIterator[SolverWorker]:
    w = SolverWorker(max_solves=100, max_rss_bytes=None)
    yield w
    await w.aclose()


def dispatcher(monkeypatch: pytest.MonkeyPatch, evs: int = 5, worker: SolverWorker | None = None) -> Dispatcher:
    """A dispatcher whose inputs are a fixed fleet (the plan's content is not what these tests are about)."""
    inputs = fixed_fleet(evs)
    monkeypatch.setattr(runner, "plan_inputs", lambda *args: (inputs, START))
    config = parse_config("[control]\nmode = 'dispatch'\n[dispatch]\ntime_budget_s = 30\n")
    return Dispatcher(config, lambda: START, worker=worker)


# -- the causes, in the planner (they grow the solver process too) ---------------------------------------------


def test_no_solve_leaves_the_solvers_copy_of_the_lp_behind() -> None:
    """cvxpy keeps the last HiGHS instance in the Problem (~180 MB at 100 EVs) unless the planner drops it."""
    inputs = fixed_fleet(5)
    solve(inputs, 30.0)
    assert planner.model_for(inputs).problem._solver_cache == {}


def test_the_compiled_model_cache_is_bounded() -> None:
    """A new shape per asset coming or going: the cache keeps the most recently used shapes only."""
    planner._MODELS.clear()
    fleet = fixed_fleet(planner.MODEL_CACHE_SIZE + 2)
    shapes = [dataclasses.replace(fleet, assets=fleet.assets[k:]) for k in range(planner.MODEL_CACHE_SIZE + 2)]
    for inputs in shapes:
        planner.model_for(inputs)
    assert len(planner._MODELS) == planner.MODEL_CACHE_SIZE
    newest = planner.model_for(shapes[-1])
    assert planner.model_for(shapes[-1]) is newest, "a cached shape is reused"


# -- the solver process ------------------------------------------------------------------------------------------


async def test_the_worker_returns_the_plan_of_an_in_process_solve(worker: SolverWorker) -> None:
    inputs = fixed_fleet(30)
    here = solve(inputs, 30.0)
    there = await worker.call(full_plan, inputs, 30.0, deadline_s=120.0)
    assert there.net_cost == pytest.approx(here.net_cost, abs=1e-6)
    assert there.asset_ids == here.asset_ids
    assert there.power_w.shape == here.power_w.shape
    here_agg = solve_aggregated(inputs, time_limit_s=30.0)
    there_agg = await worker.call(aggregated_plan, inputs, 30.0, deadline_s=120.0)
    assert there_agg.net_cost == pytest.approx(here_agg.net_cost, abs=1e-6)
    assert there_agg.asset_ids == here_agg.asset_ids


async def test_a_plan_error_comes_back_as_one_and_keeps_the_worker(worker: SolverWorker) -> None:
    inputs = fixed_fleet(30)
    await worker.call(full_plan, inputs, 30.0, deadline_s=120.0)
    pid = worker.pid
    with pytest.raises(PlanError):
        await worker.call(full_plan, inputs, 1e-9, deadline_s=120.0)  # HiGHS stops at its time limit: no plan
    assert worker.pid == pid


async def test_the_worker_is_recycled_after_max_solves() -> None:
    w = SolverWorker(max_solves=2, max_rss_bytes=None)
    inputs = fixed_fleet(5)
    try:
        pids = []
        for _ in range(3):
            await w.call(full_plan, inputs, 30.0, deadline_s=120.0)
            pids.append(w.pid)
        assert pids[0] is not None and pids[1] != pids[0], "a new child after the second solve"
        assert pids[2] == pids[1]
        assert pids[0] not in children(), "the retired child is stopped and reaped"
        assert w.started == 2
    finally:
        await w.aclose()


async def test_the_worker_is_recycled_when_its_rss_passes_the_limit() -> None:
    w = SolverWorker(max_solves=100, max_rss_bytes=1)
    inputs = fixed_fleet(5)
    try:
        with capture_logs() as logs:
            await w.call(full_plan, inputs, 30.0, deadline_s=120.0)
            first = w.pid
            await w.call(full_plan, inputs, 30.0, deadline_s=120.0)
        assert w.pid != first
        recycled = [e for e in logs if e["event"] == "dispatch.worker_recycled"]
        assert len(recycled) == 2 and "RSS" in recycled[0]["reason"]
    finally:
        await w.aclose()


async def test_an_exception_in_a_job_is_reported_with_its_traceback_and_the_worker_replaced(
    worker: SolverWorker,
) -> None:
    assert await worker.call(operator.truediv, 1, 4, deadline_s=60.0) == 0.25
    pid = worker.pid
    with pytest.raises(WorkerError, match="ZeroDivisionError"):
        await worker.call(operator.truediv, 1, 0, deadline_s=60.0)
    assert worker.pid != pid and pid not in children()
    assert await worker.call(operator.truediv, 1, 2, deadline_s=60.0) == 0.5


async def test_an_overrun_is_killed_and_the_next_call_gets_a_new_worker(worker: SolverWorker) -> None:
    await worker.call(operator.add, 1, 1, deadline_s=60.0)
    process = worker.process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)  # it cannot answer now
    with pytest.raises(TimeoutError, match="overran"):
        await worker.call(operator.add, 1, 2, deadline_s=0.2)
    assert process.returncode == -signal.SIGKILL, "killed and reaped"
    assert await worker.call(operator.add, 2, 2, deadline_s=60.0) == 4
    assert worker.pid != process.pid


async def test_a_worker_killed_mid_call_raises_worker_died(worker: SolverWorker) -> None:
    await worker.call(operator.add, 1, 1, deadline_s=60.0)
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    call = asyncio.create_task(worker.call(operator.add, 1, 2, deadline_s=60.0))
    await until(lambda: worker._busy, "the call is in flight")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match="killed by SIGKILL during the solve"):
        await call
    assert worker.pid is None and pid not in children()


async def test_a_worker_killed_mid_solve_is_reported_the_last_plan_kept_and_the_next_solve_gets_a_fresh_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = dispatcher(monkeypatch)
    try:
        first = await d.replan(None, 0.0)  # type: ignore[arg-type]  # plan_inputs is replaced: no fleet is read
        assert first is not None
        victim = d.worker.pid
        assert victim is not None
        os.kill(victim, signal.SIGSTOP)  # the solve below cannot finish before the kill
        with capture_logs() as logs:
            task = asyncio.create_task(d.replan(None, 0.0))  # type: ignore[arg-type]
            await until(lambda: d.worker._busy, "the solve is in flight")
            os.kill(victim, signal.SIGKILL)  # as the OOM killer would
            assert await task is None
        crashed = [e for e in logs if e["event"] == "dispatch.crashed"]
        assert len(crashed) == 1 and "SIGKILL" in crashed[0]["error"], logs
        assert crashed[0]["last_plan_covers_now"] is True
        assert d.failures == 1 and d.plan is first and d.requests(START) is not None
        again = await d.replan(None, 0.0)  # type: ignore[arg-type]
        assert again is not None and d.plan is again
        assert d.worker.pid not in (None, victim)
        assert victim not in children()
    finally:
        await d.aclose()


async def test_a_bug_inside_the_optimiser_is_reported_as_a_crash_with_the_solver_process_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = dispatcher(monkeypatch)
    try:
        first = await d.replan(None, 0.0)  # type: ignore[arg-type]
        assert first is not None
        pid = d.worker.pid
        # a "solver" that raises in the solver process: truediv(PlanInputs, budget) is a TypeError there
        monkeypatch.setattr(d, "_solver", lambda _inputs: operator.truediv)
        with capture_logs() as logs:
            assert await d.replan(None, 0.0) is None  # type: ignore[arg-type]
        crashed = [e for e in logs if e["event"] == "dispatch.crashed"]
        assert len(crashed) == 1 and "TypeError" in crashed[0]["error"] and "Traceback" in crashed[0]["error"]
        assert d.failures == 1 and d.plan is first
        monkeypatch.undo()
        monkeypatch.setattr(runner, "plan_inputs", lambda *args: (fixed_fleet(5), START))
        assert await d.replan(None, 0.0) is not None  # type: ignore[arg-type]
        assert d.worker.pid not in (None, pid), "the child that raised was replaced"
    finally:
        await d.aclose()


async def test_a_worker_killed_while_idle_is_replaced_before_the_next_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    d = dispatcher(monkeypatch)
    try:
        assert await d.replan(None, 0.0) is not None  # type: ignore[arg-type]
        process = d.worker.process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        await until(lambda: process.poll() is not None, "the worker is dead")
        with capture_logs() as logs:
            assert await d.replan(None, 0.0) is not None  # type: ignore[arg-type]
        events = [e["event"] for e in logs]
        assert "dispatch.worker_lost" in events and "dispatch.crashed" not in events
        assert d.failures == 0 and d.worker.pid not in (None, process.pid)
    finally:
        await d.aclose()


async def test_an_overrunning_solve_is_killed_and_reported_as_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    d = dispatcher(monkeypatch)
    try:
        first = await d.replan(None, 0.0)  # type: ignore[arg-type]
        process = d.worker.process
        assert first is not None and process is not None
        os.kill(process.pid, signal.SIGSTOP)
        monkeypatch.setattr(runner, "OVERRUN_FACTOR", 0.0)
        monkeypatch.setattr(runner, "OVERRUN_GRACE_S", 0.2)
        with capture_logs() as logs:
            assert await d.replan(None, 0.0) is None  # type: ignore[arg-type]
        failed = [e for e in logs if e["event"] == "dispatch.failed"]
        assert len(failed) == 1 and "overran" in failed[0]["error"]
        assert process.returncode == -signal.SIGKILL
        assert d.plan is first
    finally:
        await d.aclose()


async def test_cancelling_a_solve_in_flight_kills_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent stopping mid-solve: the task is cancelled and the solver process goes with it at once."""
    d = dispatcher(monkeypatch)
    assert await d.replan(None, 0.0) is not None  # type: ignore[arg-type]
    process = d.worker.process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    task = asyncio.create_task(d.replan(None, 0.0))  # type: ignore[arg-type]
    await until(lambda: d.worker._busy, "the solve is in flight")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert process.returncode == -signal.SIGKILL
    assert d.worker.pid is None and process.pid not in children()


async def test_run_stops_its_worker_when_the_agent_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    d = dispatcher(monkeypatch)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(None, lambda: 0.0, stop))  # type: ignore[arg-type]
    await until(lambda: d.plan is not None, "a first plan")
    process = d.worker.process
    assert process is not None
    stop.set()
    await task
    assert process.returncode is not None and process.pid not in children()
    assert d.worker.pid is None


APP_SCRIPT = """
import asyncio, json, os, sys, tomllib
sys.path.insert(0, {tests!r})
from sitekit import free_port_block
from agent.app import AgentApp
from agent.config import parse_config
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

SITE = '''
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
lease_timeout_s = 1.0
state_file = ":memory:"
[site]
meter = "meter"
[control]
mode = "dispatch"
[dispatch]
step_s = 60
horizon_steps = 6
base_load_w = 0.0
[[assets]]
id = "bess"
map = "vppsim_battery"
port = {{port}}
replacement_cost = 3000000
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {{port}}
unit_id = 2
[simulation]
base_load_w = 0.0
[[simulation.devices]]
id = "bess"
model = "vppsim_battery"
port = {{port}}
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {{port}}
unit_id = 2
'''

def children():
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                lines = open(f"/proc/{{name}}/status").read().splitlines()
            except OSError:
                continue
            if any(line == f"PPid:\\t{{os.getpid()}}" for line in lines):
                out.append(int(name))
    return out

async def main():
    text = SITE.replace("{{port}}", str(free_port_block(1)))
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(parse_config(text), site.clock.now)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        while app.dispatcher.plan is None:
            await asyncio.sleep(0.05)
        worker = app.dispatcher.worker.pid
        during = children()
        stop.set()
        await task
        loaded = sorted(m for m in ("cvxpy", "highspy", "scipy") if m in sys.modules)
        print(json.dumps({{"loaded": loaded, "worker": worker, "during": during, "after": children()}}))

asyncio.run(main())
"""


def test_the_agent_plans_without_loading_the_solver_stack_and_leaves_no_child_process() -> None:
    """A fresh agent process (the app against the simulator): it plans, holds no cvxpy, highspy or scipy itself,
    and once its run returns, its solver process is gone."""
    script = APP_SCRIPT.format(tests=str(ROOT / "tests" / "integration"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [], "the control process imported the solver stack"
    assert result["worker"] in result["during"], "the plan came from a child process"
    assert result["after"] == []


async def test_re_plans_come_every_step_of_the_given_clock_not_of_the_wall(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the demo's --speed the site's clock runs fast: a 15-min step is 15 s of wall time at x60, so the
    dispatcher must wait steps in wall time (step / time_scale), or a sped-up site is steered by stale plans."""
    scale = 600.0  # a 900 s step every 1.5 wall seconds
    loop = asyncio.get_running_loop()
    started = loop.time()

    def clock() -> datetime:
        return START + timedelta(seconds=(loop.time() - started) * scale)

    inputs = fixed_fleet(3)
    monkeypatch.setattr(runner, "plan_inputs", lambda *args: (inputs, clock()))
    config = parse_config("[control]\nmode = 'dispatch'\n[dispatch]\ntime_budget_s = 30\n")
    dispatcher = Dispatcher(config, clock, time_scale=scale)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(None, lambda: 0.0, stop))  # type: ignore[arg-type]
    try:
        await until(lambda: dispatcher.solves >= 3, "three plans, one per step of the fast clock")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
