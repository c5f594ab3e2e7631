"""The dispatcher in the running agent: re-plan each step and on new signals, off the event loop, with fallback.

The solver runs in its own process (agent.dispatch.worker; DESIGN.md §3: never on the event loop) under a time
budget: this process sends it the PlanInputs and receives the Plan, and never imports cvxpy. If a solve fails,
overruns (the solver process is then killed) or the solver process dies, the last plan keeps running for as long as
it covers the clock; after that `requests()` returns None and the control loop falls back to its safe rule. The
fleet is never left without setpoints, and the next solve gets a fresh solver process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog

from agent.config import AppConfig
from agent.dispatch.build import plan_inputs
from agent.dispatch.inputs import PlanInputs, SiteForecast, UpDr
from agent.dispatch.plan import Plan, PlanError
from agent.dispatch.wear_book import PriceTrack, WearBook, WearSave
from agent.dispatch.worker import SolverWorker, WorkerDied, WorkerError, aggregated_plan, full_plan
from agent.fleet import Fleet
from agent.signals.models import SignalModel
from agent.store import Store, StoreError

log = structlog.get_logger("agent.dispatch")

# a solve that has not answered after budget x OVERRUN_FACTOR + OVERRUN_GRACE_S is killed (HiGHS keeps to the budget;
# model compilation, the aggregate's split and refinement do not)
OVERRUN_FACTOR = 2.0
OVERRUN_GRACE_S = 5.0


class Dispatcher:
    def __init__(
        self,
        config: AppConfig,
        clock: Callable[[], datetime],
        book: Mapping[str, Mapping[str, SignalModel]] | None = None,
        worker: SolverWorker | None = None,
        time_scale: float = 1.0,
        baselines: Callable[[], Mapping[str, Mapping[float, float]]] | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.time_scale = time_scale  # clock seconds per wall second (the demo's --speed): waits are in wall time
        self.book: Mapping[str, Mapping[str, SignalModel]] = book or {}
        # up-DR event id → the settlement's baseline (W per M&V interval start) the event lifecycle fixed, so the plan
        # aims at the baseline it is paid against (agent.dispatch.build); None: the planner applies the rule itself
        self.baselines = baselines
        self.plan: Plan | None = None
        self.plan_start: datetime | None = None
        # what the plan was made against (prices per step, the up-DR event): what the demo's reasons and the status
        # page's price line quote, so neither rebuilds the inputs after the fact (signals may have changed since)
        self.plan_site: SiteForecast | None = None
        self.plan_updr: UpDr | None = None
        self.failures = 0
        self.failures_in_a_row = 0  # since the last plan: the agent reports itself degraded past a few
        self.last_failure: str | None = None
        self.solves = 0
        self.method = "full"  # or "aggregated": how the last plan was solved
        d = config.dispatch
        self.worker = worker or SolverWorker(d.solver_recycle_solves, int(d.solver_recycle_rss_mb * 2**20))
        # told of every plan adopted, with its start and how it was solved (the audit trail records plan changes)
        self.adopted: list[Callable[[Plan, datetime, str], None]] = []
        self._wake = asyncio.Event()
        # packs priced at the opportunity value of their life (docs/wear.md): settled from measured energy per re-plan
        self.wear = WearBook(d.step_s)
        self._opportunity = any(a.wear_pricing == "opportunity" for a in config.assets)
        self._last_basis: dict[str, float] = {}  # planned with when settling fails (`_wear_basis`)
        # the book across restarts (agent.store; None: memory only): read here, written after the re-plans that
        # settled something, one write at a time, and at the end of `run`
        self.store = store
        self._wear_write: asyncio.Task[None] | None = None
        self._wear_store_failing = False
        if store is not None:
            self._load_wear(store)

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
        return self.plan.setpoints_w(index)

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
        known: dict[str, object] = {"baselines": self.baselines()} if self.baselines is not None else {}
        if self._opportunity:
            known["wear_basis"] = self._wear_basis(fleet, now)
        inputs, start = plan_inputs(fleet, self.config, now, self.book, uncontrolled_w, **known)
        if not inputs.assets:
            return None
        budget = self.config.dispatch.time_budget_s
        try:
            solver = self._solver(inputs)
            plan = await self.worker.call(solver, inputs, budget, deadline_s=budget * OVERRUN_FACTOR + OVERRUN_GRACE_S)
        except (PlanError, TimeoutError) as exc:
            self._failed(now, "dispatch.failed", str(exc) or type(exc).__name__)
            return None
        except (WorkerDied, WorkerError) as exc:  # the solver process died or hit a bug: the next solve gets a new one
            self._failed(now, "dispatch.crashed", str(exc))
            return None
        except Exception as exc:  # a bug on this side must not stop control: the last plan, then the rule, go on
            self._failed(now, "dispatch.crashed", repr(exc), exc_info=True)
            return None
        self.plan, self.plan_start = plan, start
        self.plan_site, self.plan_updr = inputs.site, inputs.updr
        self.solves += 1
        self.failures_in_a_row, self.last_failure = 0, None
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
        for listener in self.adopted:
            listener(plan, start, self.method)
        return plan

    def _wear_basis(self, fleet: Fleet, now: datetime) -> dict[str, float]:
        """Settle the packs' measured energy since the last re-plan at the prices the last plan used, then each
        opportunity-priced pack's value of a whole life (build.plan_inputs' `wear_basis`). A failure of the book
        (a bug, a period it refuses to record) is logged and the plan made with the last basis: pricing wear a step
        late must not stop the dispatcher."""
        prices = None
        if self.plan is not None and self.plan_start is not None and self.plan_site is not None:
            prices = PriceTrack(self.plan_start.timestamp(), self.plan.step_s, self.plan_site.price_per_kwh)
        try:
            self.wear.observe(fleet, now.timestamp(), prices)
            self._last_basis = self.wear.basis(now.timestamp())
        except Exception as exc:
            log.error("wear.settle_failed", error=repr(exc), exc_info=True)
        self._save_wear_soon(now)
        return self._last_basis

    # -- the wear book across restarts ------------------------------------------------------------------------------
    def _load_wear(self, store: Store) -> None:
        """Read the stored book (each pack takes its own up at first sight), then apply the store's retention to it.
        A failing disk leaves the book at its seeds (a read) or the old rows in place (the retention): both are
        logged and the agent goes on."""
        forget_before = self.clock().timestamp() - self.wear.window_s
        try:
            self.wear.restore(store.load_wear(forget_before), store.path)
            store.forget_wear(forget_before)
        except StoreError as exc:
            self._wear_store_failed(exc)

    def _save_wear_soon(self, now: datetime) -> None:
        """Start a background write of what the book settled since the last one, unless one is still running (what
        it leaves waits for the next re-plan): a re-plan never waits on the disk."""
        if self.store is None or (self._wear_write is not None and not self._wear_write.done()):
            return
        save = self.wear.unsaved(now.timestamp())
        if save is not None:
            self._wear_write = asyncio.get_running_loop().create_task(self._save_wear(self.store, save))

    async def _save_wear(self, store: Store, save: WearSave) -> None:
        try:
            await asyncio.to_thread(store.save_wear, save.packs, save.settlements, save.forget_before_ts)
        except StoreError as exc:  # the periods stay unsaved for the next write
            self._wear_store_failed(exc)
            return
        except Exception as exc:  # a bug here must not end the dispatcher (nor the shutdown's last write)
            log.error("wear.save_failed", error=repr(exc), exc_info=True)
            return
        self.wear.saved(save)
        self._wear_store_failing = False

    def _wear_store_failed(self, exc: StoreError) -> None:
        """Log a failing state file once per run of failures (the store's `last_error` puts it in the agent's
        health); the book carries on from memory."""
        if not self._wear_store_failing:
            log.error("wear.store_failed", error=str(exc), action="the wear book carries on in memory")
        self._wear_store_failing = True

    async def flush_wear(self) -> None:
        """Wait for a write under way, then write what is still unsaved (the end of `run`; tests)."""
        if self._wear_write is not None:
            await self._wear_write
        if self.store is not None:
            save = self.wear.unsaved(self.clock().timestamp())
            if save is not None:
                await self._save_wear(self.store, save)

    def _failed(self, now: datetime, event: str, error: str, exc_info: bool = False) -> None:
        """Count and log a re-plan that produced nothing; the last plan (then the rule) keeps control."""
        self.failures += 1
        self.failures_in_a_row += 1
        self.last_failure = error[:300]
        covered = self.requests(now) is not None
        emit = log.warning if event == "dispatch.failed" else log.error
        emit(event, error=error, last_plan_covers_now=covered, failures_in_a_row=self.failures_in_a_row,
             exc_info=exc_info)  # fmt: skip

    def _solver(self, inputs: PlanInputs) -> Callable[[PlanInputs, float], Plan]:
        """The full per-asset LP, or the aggregated one past `aggregate_above_evs` EVs: the full LP of a thousand
        EVs takes ~15 s here (bench/dispatch.py), longer than a step's time budget; the aggregate takes ~0.4 s
        and gives up under 1 % of the optimum there (README, Dispatch). A module-level function of
        agent.dispatch.worker, so it travels to the solver process by name."""
        evs = sum(1 for a in inputs.assets if a.is_ev)
        self.method = "aggregated" if evs > self.config.dispatch.aggregate_above_evs else "full"
        return aggregated_plan if self.method == "aggregated" else full_plan

    async def run(self, fleet: Fleet, uncontrolled: Callable[[], float], stop: asyncio.Event) -> None:
        """Re-plan at every step boundary and whenever woken, until `stop`; the solver process ends with it."""
        self.worker.start()  # imports the solver stack while the fleet is polled for the first time
        try:
            await self._run(fleet, uncontrolled, stop)
        finally:
            try:
                await self.flush_wear()
                await self.worker.aclose()
            except asyncio.CancelledError:
                self.worker.kill()
                raise

    async def aclose(self) -> None:
        """Stop the solver process (within a second); a later replan starts a new one."""
        await self.worker.aclose()

    async def _run(self, fleet: Fleet, uncontrolled: Callable[[], float], stop: asyncio.Event) -> None:
        step = timedelta(seconds=self.config.dispatch.step_s)
        while not stop.is_set():
            planned = await self.replan(fleet, uncontrolled())
            now = self.clock()
            if planned is None:  # nothing to plan yet (fleet not polled) or the solver failed: try again soon
                wait_s = 2 * self.config.agent.poll_period_s
            else:
                wait_s = max(0.1, ((self.plan_start or now) + step - now).total_seconds() / self.time_scale)
            waker = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waker, stopper}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            stopper.cancel()
            self._wake.clear()
