"""Opportunity-cost wear pricing (docs/wear.md): each pack's settled figures, and the value of its life they imply.

One `OpportunityWearValue` per pack configured `wear_pricing = "opportunity"`, fed once per planning step with what
the pack did in the step before, and read back as the cost basis of its wear prices (`basis`, passed to
`agent.dispatch.build.plan_inputs(wear_basis=...)`). The running agent (agent.dispatch.runner) and the evaluation
(evaluation.policies, `aware-value`) both settle through `WearBook.settle`, so the rule below has one home.

What a step counts, per pack:

* revenue: the pack's measured energy at its terminals × the step's energy price (export earns, import pays), plus
  the reserve capacity payment the caller attributes to it (the evaluation: its regulation band × the capacity
  price, at a perfect performance score; the running agent: none, since an awarded reserve carries no price in its
  plan inputs). Not counted: up-DR payments (a site-level settlement against a baseline).
* life used: the cycling life its throughput used plus the calendar life the period used, both by the pack's own
  fitted wear (`build.wear_model`, the fit its prices come from), so the life used per unit of time is the rate at
  which the pack's service runs out. Cycling: net discharge extends the current half cycle (depth from where the
  pack last charged, as a fraction of its usable energy): it uses Φ(depth after) − Φ(depth before), so a discharge
  spread over several steps costs what one cycle of its whole depth costs, as the planner's segment prices charge
  it; a net charge refills the half cycle by what it stored (depth − charged × efficiency / usable, at least 0), as
  the planner's segments refill by the amount charged, so a small top-up between two discharges leaves them nearly
  one deep cycle (Xu's convention: a cycle is charged once, on discharge). Energy that went out and came back within
  the step (regulation swings) uses the pack's shallow-swing life per kWh (`build.activation_life_per_kwh`).
  Calendar: the period's hours × the fit's calendar life per hour (`WearFit.calendar_life_per_h`, the curve the
  calendar price is the slope of) at the pack's measured SoC over the period, the mean of the SoCs read at its start
  and end (the one known when only one is), not the mean of the rates at the two: the scorers age a period at its
  mean SoC (BLAST-Lite's per-chunk mean, the Xu simulator's trapezoid average). No SoC read at either end: no
  calendar life is counted (such a pack is not planned, build._plannable, so its price is not used).

Why calendar life is counted (Kumtepeli et al. 2024; docs/wear.md): ν is to be the marginal value of a unit of life,
what the pack would earn with it at the end of its service. The service ends when the TOTAL fade reaches end of
life; a unit used now shortens it by 1 / (total life used per unit time), and the pack then earns revenue per unit
time, so ν = Σ revenue / Σ (cycling + calendar life) to first order. Counting cycling life only overstated ν by the
calendar share of the pack's ageing.

Measured energy in the running agent (`observe`): the device's import/export counters between two readings, else
its SoC change × usable energy, converted to terminal energy with the configured efficiency (which sees only the
net of a step). Never the plan's intention. A period whose imported or exported energy exceeds what the pack's
rating could move in it (rated power × period × PLAUSIBLE_FACTOR + PLAUSIBLE_SLACK_WH) is not recorded: a counter
that jumped (a replaced meter, a wrong scale) would otherwise set the value of a life to 0 or to thousands of
replacement costs for the whole window. It is logged (`wear.reading_refused`, once per pack and hour) and the next
period starts at the jumped reading, which is the new counter baseline: keeping the reading before the jump would
refuse every later period too. A pack with no rating (none configured, none reported) is not checked.

Across restarts (`restore`, `unsaved`, `saved`; the running agent's dispatcher moves them to and from agent.store):
a pack resumes from its settled periods still in the window and the depth of its current half cycle, which is all
its estimate and the life rule are made of (the last reading is not kept: the period over a restart has no plan's
price, so it would not be counted anyway). A stored book is taken up only when it is of this `FORMAT` and was
measured in the same life measure (the rule, `LIFE_RULE`, and the chemistry, temperature and source of the pack's
fit: a life fraction of another rule or fit is another unit, and rows written before calendar life was counted have
no rule, read as 1); otherwise, or when it does not decode, it is logged (`wear.stored_ignored`: asset, the file,
why) and the pack starts from its seed, and its first save replaces the stored rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import structlog

from agent.dispatch.build import activation_life_per_kwh, wear_model
from agent.dispatch.wear_value import OpportunityWearValue
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, Measurement
from agent.store import StoredWear, WearPackRow, WearSettlementRow

log = structlog.get_logger("agent.dispatch")

OPPORTUNITY = "opportunity"
# a period's measured energy above rating × period × this (+ the slack) is a counter jump, not the pack's doing: the
# margin covers a rating the config sets below the device's and readings' timing; the slack, counters that count in
# whole kWh and periods of a few seconds
PLAUSIBLE_FACTOR = 1.5
PLAUSIBLE_SLACK_WH = 1_000.0
REFUSAL_LOG_S = 3600.0  # `wear.reading_refused` at most once per pack in this long
# the layout of a stored pack's `state` (agent.store `wear_packs.format`): a row of another number (an older or newer
# agent's) is refused with its number, never read as this one; a change of layout takes the next number
FORMAT = 1
# what a stored period's life used counts (`_life_measure`): 1 (rows with no rule, written before it existed) cycling
# life only; 2 cycling + calendar life. Periods of another rule are in another unit: ignored, never mixed in
LIFE_RULE = 2
Period = tuple[float, float, float, float]  # one settled period: start (unix s), end, revenue, life used


@dataclass(frozen=True)
class PriceTrack:
    """The energy price per step the plan used (currency/kWh), from `start_s` (unix s) in steps of `step_s`."""

    start_s: float
    step_s: float
    prices_per_kwh: np.ndarray

    def mean(self, start_s: float, end_s: float) -> float | None:
        """Time-weighted price over the part of [start_s, end_s) the track covers; None where it covers none."""
        total = covered = 0.0
        for k, price in enumerate(np.asarray(self.prices_per_kwh, dtype=float)):
            lo = max(start_s, self.start_s + k * self.step_s)
            hi = min(end_s, self.start_s + (k + 1) * self.step_s)
            if hi > lo:
                total += price * (hi - lo)
                covered += hi - lo
        return total / covered if covered > 0 else None


@dataclass(frozen=True)
class Reading:
    """What `observe` keeps of a pack's last reading: when, its energy counters (Wh), its stored energy (Wh) and its
    SoC (fraction of its usable energy; the calendar life of the period it starts is counted at it)."""

    t_s: float
    import_wh: float | None
    export_wh: float | None
    stored_wh: float | None
    soc: float | None = None


@dataclass(frozen=True)
class WearSave:
    """What the state file lacks of the book (`WearBook.unsaved`), as rows for agent.store.Store.save_wear, and how
    much of each pack's unsaved list they are (`WearBook.saved` drops that much once they are on disk)."""

    packs: list[WearPackRow]
    settlements: list[WearSettlementRow]
    forget_before_ts: float  # the store's retention: what left the book's window by now
    written: dict[str, tuple[int, float]]  # asset id -> (periods written, run depth written)


@dataclass
class _Pack:
    value: OpportunityWearValue
    measure: dict[str, object]  # the life measure its periods are in (`_life_measure`)
    run_depth: float = 0.0  # depth of the discharge since the pack last charged (fraction of its usable energy)
    reading: Reading | None = None
    logged_step: int | None = None
    refusal_logged_s: float | None = None
    unsaved: list[Period] = field(default_factory=list)  # settled, not yet on disk (oldest first)
    saved_depth: float = 0.0  # run_depth as last written
    rewrite: bool = True  # not resumed: its first save replaces whatever periods the file holds for its id


@dataclass
class WearBook:
    """Per pack, the online value of its life; `step_s` only limits the log to one line per pack and step."""

    step_s: float
    prior_life: float = OpportunityWearValue.prior_life
    window_s: float = OpportunityWearValue.window_s
    packs: dict[str, _Pack] = field(default_factory=dict)
    stored: dict[str, StoredWear] = field(default_factory=dict)  # read at start, each taken up at its first sight
    stored_where: str = "the state file"

    @staticmethod
    def applies(state: AssetState) -> bool:
        """Opportunity-priced stationary batteries only: an EV's driving takes its energy at no price, so its value
        of a life would go to 0 (the config refuses it too; this is the second guard)."""
        cfg = state.config
        return state.kind is AssetKind.BATTERY and cfg.wear_pricing == OPPORTUNITY and bool(cfg.replacement_cost)

    def value(self, state: AssetState) -> OpportunityWearValue:
        """The pack's estimate (created at its replacement cost on first sight)."""
        return self._pack(state).value

    def _pack(self, state: AssetState) -> _Pack:
        pack = self.packs.get(state.id)
        if pack is None:
            pack = self.packs[state.id] = _Pack(self._seed(state), _life_measure(state))
            stored = self.stored.pop(state.id, None)
            if stored is not None:
                self._resume(pack, state, stored)
        return pack

    def _seed(self, state: AssetState) -> OpportunityWearValue:
        return OpportunityWearValue(float(state.config.replacement_cost or 0.0), self.prior_life, self.window_s)

    # -- across restarts (the module docstring) ----------------------------------------------------------------------
    def restore(self, stored: Mapping[str, StoredWear], where: str) -> None:
        """Books read from the state file `where` (agent.store.Store.load_wear); each pack takes up its own at its
        first sight, when it has the fleet state to judge it by."""
        self.stored, self.stored_where = dict(stored), where

    def _resume(self, pack: _Pack, state: AssetState, stored: StoredWear) -> None:
        try:
            depth, periods = _decode(stored, pack.measure)
            value = self._seed(state)
            for period in periods:
                value.record(*period)  # refuses a period out of order or not a number of its kind
        except ValueError as exc:
            where = f"{self.stored_where}: wear_packs / wear_settlements, asset_id {state.id!r}"
            log.warning("wear.stored_ignored", asset=state.id, where=where, error=str(exc)[:300],
                        action="starts from its replacement cost; its first save replaces the rows")  # fmt: skip
            return
        pack.value, pack.run_depth, pack.saved_depth, pack.rewrite = value, depth, depth, False
        log.info("wear.resumed", asset=state.id, periods=len(periods), run_depth=round(depth, 4))

    def unsaved(self, now_s: float) -> WearSave | None:
        """The packs' periods settled since the last save and their changed depths (None: nothing new). Periods
        that left the window by now are dropped unsaved: a disk that fails for long does not grow the list."""
        forget_before = now_s - self.window_s
        packs: list[WearPackRow] = []
        settlements: list[WearSettlementRow] = []
        written: dict[str, tuple[int, float]] = {}
        for asset_id, pack in self.packs.items():
            pack.unsaved = [p for p in pack.unsaved if p[1] > forget_before]
            if not pack.unsaved and pack.run_depth == pack.saved_depth:
                continue
            text = json.dumps({"life_measure": pack.measure, "run_depth": pack.run_depth}, separators=(",", ":"))
            packs.append(WearPackRow(asset_id, FORMAT, now_s, text, pack.rewrite))
            settlements += [WearSettlementRow(asset_id, *p) for p in pack.unsaved]
            written[asset_id] = (len(pack.unsaved), pack.run_depth)
        return WearSave(packs, settlements, forget_before, written) if packs else None

    def saved(self, save: WearSave) -> None:
        """`save` is on disk: those periods leave the unsaved lists (periods settled meanwhile stay)."""
        for asset_id, (count, depth) in save.written.items():
            pack = self.packs[asset_id]
            del pack.unsaved[:count]
            pack.saved_depth, pack.rewrite = depth, False

    def basis(self, now_s: float) -> dict[str, float]:
        """Asset id → currency per whole life to price its wear at now (build.plan_inputs' `wear_basis`)."""
        return {asset_id: pack.value.cost_basis(now_s) for asset_id, pack in self.packs.items()}

    def settle(
        self,
        state: AssetState,
        start_s: float,
        end_s: float,
        *,
        exported_wh: float,
        imported_wh: float,
        price_per_kwh: float,
        reserve_revenue: float = 0.0,
        soc_start: float | None = None,
        soc_end: float | None = None,
    ) -> tuple[float, float]:
        """Record one settled period of one pack from its measured terminal energy and the SoCs read at its start
        and end (its calendar life, the module docstring; both None: none counted); returns (revenue, life used)."""
        pack = self._pack(state)
        revenue = (exported_wh - imported_wh) / 1000.0 * price_per_kwh + reserve_revenue
        life = self._life_used(pack, state, max(exported_wh, 0.0), max(imported_wh, 0.0))
        life += _calendar_life(state, (end_s - start_s) / 3600.0, soc_start, soc_end)
        pack.value.record(start_s, end_s, revenue, life)
        pack.unsaved.append((start_s, end_s, revenue, life))
        return revenue, life

    def _life_used(self, pack: _Pack, state: AssetState, exported_wh: float, imported_wh: float) -> float:
        """The module docstring's rule: the half-cycle's depth increment by Φ, plus the swings at the shallow rate."""
        usable = state.usable_capacity_wh()
        m = state.measurement
        if not usable or m is None:
            return 0.0
        model = wear_model(state)
        eff = state.config.efficiency
        net_out = exported_wh - imported_wh
        life = 0.0
        if net_out > 0:
            after = min(pack.run_depth + net_out / eff / usable, 1.0)
            life += float(model.cycle_life(after)) - float(model.cycle_life(pack.run_depth))
            pack.run_depth = after
        elif net_out < 0:  # the charge refills the half cycle by what it stored
            pack.run_depth = max(0.0, pack.run_depth + net_out * eff / usable)
        swung = min(exported_wh, imported_wh)
        if swung > 0:
            soh = m.soh if m.soh is not None else 1.0
            rate = activation_life_per_kwh(state, usable, m.capacity_wh or usable, soh, model)
            # no product that swings: the swing counted as one cycle of its depth
            life += swung / 1000.0 * rate if rate is not None else float(model.cycle_life(swung / eff / usable))
        return max(life, 0.0)

    def observe(self, fleet: Fleet, now_s: float, prices: PriceTrack | None) -> None:
        """The running agent, once per re-plan: settle each opportunity-priced pack's measured energy since its last
        reading at the prices of the plan that ran then (none known: the period is not counted)."""
        for state in fleet.assets.values():
            if not self.applies(state):
                continue
            pack = self._pack(state)
            reading = _reading(state)
            if reading is None:  # no reading now: the next period starts at the next one
                pack.reading = None
                continue
            before = pack.reading
            if before is not None and reading.t_s <= before.t_s:
                continue  # no new reading since the last settlement
            pack.reading = reading
            price = prices.mean(before.t_s, reading.t_s) if before is not None and prices is not None else None
            energy = _energy(before, reading, state.config.efficiency) if before is not None else None
            if before is None or price is None or energy is None:
                continue
            exported, imported = energy
            if not self._plausible(pack, state, reading.t_s - before.t_s, exported, imported, now_s):
                continue
            self.settle(state, before.t_s, reading.t_s, exported_wh=exported, imported_wh=imported,
                        price_per_kwh=price, soc_start=before.soc, soc_end=reading.soc)  # fmt: skip
            step = int(now_s // self.step_s)
            if pack.logged_step != step:
                pack.logged_step = step
                value = pack.value
                log.info("wear.value_updated", asset=state.id, value_per_life=round(value.value_per_life(now_s), 2),
                         cost_basis=round(value.cost_basis(now_s), 2),
                         history_life=round(value.history_life(now_s), 6))  # fmt: skip

    @staticmethod
    def _plausible(pack: _Pack, state: AssetState, period_s: float, exported: float, imported: float,
                   now_s: float) -> bool:  # fmt: skip
        """Whether the pack's rating could have moved this much energy in the period (the module docstring)."""
        rating = max(state.rated_charge_w(), state.rated_discharge_w())
        if rating <= 0:
            return True
        bound = rating * period_s / 3600.0 * PLAUSIBLE_FACTOR + PLAUSIBLE_SLACK_WH
        if imported <= bound and exported <= bound:
            return True
        if pack.refusal_logged_s is None or now_s - pack.refusal_logged_s >= REFUSAL_LOG_S:
            pack.refusal_logged_s = now_s
            log.warning(
                "wear.reading_refused",
                asset=state.id,
                imported_wh=round(imported, 1),
                exported_wh=round(exported, 1),
                bound_wh=round(bound, 1),
                period_s=round(period_s, 1),
            )
        return False


def _calendar_life(state: AssetState, hours: float, soc_start: float | None, soc_end: float | None) -> float:
    """Calendar life fraction a pack used over `hours` at the mean of the SoCs read (the module docstring)."""
    socs = [s for s in (soc_start, soc_end) if s is not None and math.isfinite(s)]
    if not socs or hours <= 0:
        return 0.0
    soc = min(max(sum(socs) / len(socs), 0.0), 1.0)  # a reading past full or empty ages as full or empty
    return hours * float(wear_model(state).calendar_life_per_h(soc))


def _life_measure(state: AssetState) -> dict[str, object]:
    """What a pack's life fractions are measured in: the rule that counts them (`LIFE_RULE`) and its fit
    (build.wear_model), by the fit's own resolved names."""
    model = wear_model(state)
    return {"rule": LIFE_RULE, "chemistry": model.chemistry, "source": model.source,
            "temperature_c": model.temperature_c}  # fmt: skip


def _decode(stored: StoredWear, measure: dict[str, object]) -> tuple[float, list[Period]]:
    """A stored pack's (run depth, periods), or ValueError saying why it cannot be taken up."""
    if stored.format != FORMAT:
        raise ValueError(f"format {stored.format!r} is not the one this agent reads ({FORMAT}): written by another "
                         "version of vpp-agent")  # fmt: skip
    try:
        state = json.loads(stored.state)
        found, depth = state["life_measure"], float(state["run_depth"])
        periods = [(float(a), float(b), float(c), float(d)) for a, b, c, d in stored.settlements]
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"corrupt row: {exc!r}") from exc
    if not isinstance(found, dict):
        raise ValueError(f"corrupt row: life_measure {found!r} is not an object")
    rule = found.get("rule", 1)  # rows written before the rule was recorded counted cycling life only
    if rule != measure["rule"]:
        raise ValueError(f"life measured by rule {rule!r} ({'cycling only' if rule == 1 else 'unknown'}), this agent "
                         f"counts by rule {measure['rule']} (cycling + calendar): another unit")  # fmt: skip
    if found != measure:
        raise ValueError(f"measured for another pack: life in {found}, the pack's fit now {measure}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"run_depth {depth!r} is not a depth in 0..1")
    return depth, periods


def _reading(state: AssetState) -> Reading | None:
    m: Measurement | None = state.measurement
    if m is None:
        return None
    usable = state.usable_capacity_wh()
    stored = m.soc * usable if m.soc is not None and usable else None
    counters = [v if v is not None and math.isfinite(v) else None for v in (m.energy_import_wh, m.energy_export_wh)]
    soc = m.soc if m.soc is not None and math.isfinite(m.soc) else None
    return Reading(m.at.timestamp(), counters[0], counters[1], stored, soc)


def _energy(before: Reading, after: Reading, efficiency: float) -> tuple[float, float] | None:
    """(exported, imported) Wh at the terminals between two readings: the counters when both readings have them and
    they did not run backwards (a reset), else the stored-energy change (only the net of the period)."""
    if None not in (before.import_wh, before.export_wh, after.import_wh, after.export_wh):
        imported = after.import_wh - before.import_wh  # type: ignore[operator]
        exported = after.export_wh - before.export_wh  # type: ignore[operator]
        if imported >= 0 and exported >= 0:
            return exported, imported
    if before.stored_wh is None or after.stored_wh is None:
        return None
    change = after.stored_wh - before.stored_wh
    return (-change * efficiency, 0.0) if change < 0 else (0.0, change / efficiency)
