"""The dispatcher in the running agent: re-plan each step and on new signals, off the event loop, with fallback.

The solver runs in a worker thread (DESIGN.md §3: never on the event loop) under a time budget. If it fails or
overruns, the last plan keeps running for as long as it covers the clock; after that `requests()` returns None
and the control loop falls back to its safe rule. The fleet is never left without setpoints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog

from agent.config import AppConfig
from agent.dispatch.aggregate import solve_aggregated
from agent.dispatch.build import plan_inputs
from agent.dispatch.inputs import PlanInputs
from agent.dispatch.planner import Plan, PlanError, solve
from agent.fleet import Fleet
from agent.signals.models import SignalModel

log = structlog.get_logger("agent.dispatch")


class Dispatcher:
    def __init__(
        self,
        config: AppConfig,
        clock: Callable[[], datetime],
        book: Mapping[str, Mapping[str, SignalModel]] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.book: Mapping[str, Mapping[str, SignalModel]] = book or {}
        self.plan: Plan | None = None
        self.plan_start: datetime | None = None
        self.failures = 0
        self.solves = 0
        self.method = "full"  # or "aggregated": how the last plan was solved
        self._wake = asyncio.Event()

    def request_replan(self) -> None:
        """Called when a signal arrives: plan again now rather than at the next step."""
        self._wake.set()

    def _index(self, now: datetime) -> int | None:
        if self.plan is None or self.plan_start is None:
            return None
        index = int((now - self.plan_start).total_seconds() // self.plan.step_s)
        return index if 0 <= index < self.plan.power_w.shape[1] else None

    def requests(self, now: datetime) -> dict[str, float] | None:
        """This step's planned power per asset, or None when no plan covers `now`."""
        index = self._index(now)
        if self.plan is None or index is None:
            return None
        return {asset_id: float(self.plan.power_w[i, index]) for i, asset_id in enumerate(self.plan.asset_ids)}

    def reserves(self, now: datetime) -> tuple[dict[str, float], dict[str, float]] | None:
        """This step's reserved (up, down) headroom per asset in W, or None when no plan covers `now`."""
        index = self._index(now)
        if self.plan is None or index is None:
            return None
        ids = self.plan.asset_ids
        up = {a: float(self.plan.reserve_up_w[i, index]) for i, a in enumerate(ids)}
        down = {a: float(self.plan.reserve_down_w[i, index]) for i, a in enumerate(ids)}
        return up, down

    async def replan(self, fleet: Fleet, uncontrolled_w: float) -> Plan | None:
        now = self.clock()
        inputs, start = plan_inputs(fleet, self.config, now, self.book, uncontrolled_w)
        if not inputs.assets:
            return None
        budget = self.config.dispatch.time_budget_s
        try:
            solver = self._solver(inputs)
            plan = await asyncio.wait_for(asyncio.to_thread(solver, inputs, budget), timeout=budget * 2 + 5)
        except (PlanError, TimeoutError) as exc:
            self.failures += 1
            covered = self.requests(now) is not None
            log.warning("dispatch.failed", error=str(exc) or type(exc).__name__, last_plan_covers_now=covered)
            return None
        except Exception as exc:  # a bug in the optimiser must not stop control: the last plan, then the rule, go on
            self.failures += 1
            covered = self.requests(now) is not None
            log.error("dispatch.crashed", error=repr(exc), last_plan_covers_now=covered, exc_info=True)
            return None
        self.plan, self.plan_start = plan, start
        self.solves += 1
        log.info(
            "dispatch.planned",
            method=self.method,
            assets=len(plan.asset_ids),
            steps=inputs.steps,
            solve_s=round(plan.solve_s, 3),
            net_cost=round(plan.net_cost, 2),
            breakdown={k: round(v, 2) for k, v in plan.breakdown.items()},
            violations={k: round(v, 3) for k, v in plan.violations.items() if v > 1e-6},
        )
        return plan

    def _solver(self, inputs: PlanInputs) -> Callable[[PlanInputs, float], Plan]:
        """The full per-asset LP, or the aggregated one past `aggregate_above_evs` EVs: the full LP of a thousand
        EVs takes ~15 s here (bench/dispatch.py), longer than a step's time budget; the aggregate takes ~0.4 s
        and gives up under 1 % of the optimum there (README, Dispatch)."""
        evs = sum(1 for a in inputs.assets if a.is_ev)
        self.method = "aggregated" if evs > self.config.dispatch.aggregate_above_evs else "full"
        if self.method == "aggregated":
            return lambda i, budget: solve_aggregated(i, time_limit_s=budget)
        return lambda i, budget: solve(i, budget)

    async def run(self, fleet: Fleet, uncontrolled: Callable[[], float], stop: asyncio.Event) -> None:
        """Re-plan at every step boundary and whenever woken, until `stop`."""
        step = timedelta(seconds=self.config.dispatch.step_s)
        while not stop.is_set():
            planned = await self.replan(fleet, uncontrolled())
            now = self.clock()
            if planned is None:  # nothing to plan yet (fleet not polled) or the solver failed: try again soon
                wait_s = 2 * self.config.agent.poll_period_s
            else:
                wait_s = max(0.1, ((self.plan_start or now) + step - now).total_seconds())
            waker = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waker, stopper}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            stopper.cancel()
            self._wake.clear()
