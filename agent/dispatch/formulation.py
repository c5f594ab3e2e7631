"""The dispatch LP: one cvxpy problem per problem *shape*, re-solved with new Parameter values (DPP).

Shape = (assets, steps, wear segments, has up-DR, reserve products). Everything that changes from one MPC step to
the next — prices, forecasts, energies, availability, targets, limits — is a Parameter, so cvxpy compiles the
problem once and each re-solve only refills numbers (EMHASS' lesson, DESIGN.md §10). Each cost term and
constraint family is its own small function named for what it models.

Variables (W and Wh, grid-side powers):
  c[j], d[j]  (N×T)   charge / discharge power drawn from wear segment j (segment 1 = shallowest)
  e[j]        (N×T+1) energy held in segment j above the asset's floor; E = floor + Σ e[j]
Degradation follows Xu et al. 2018 (agent.dispatch.degradation): discharging from segment j costs m_j per kWh.
Every price Parameter holds a coefficient of the one cost model (agent.dispatch.costs: currency per W for one step,
or per Wh), so each term here is that coefficient times its variable, summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from agent.dispatch.inputs import SYMMETRIC_PRODUCTS, PlanInputs, activation_loss_wh, product_duration_h
from agent.dispatch.plan import net_of

BIG_W = 1e12  # stands in for "no limit": Parameters cannot hold inf


@dataclass(frozen=True)
class Shape:
    """What the compiled problem depends on. Efficiencies are part of it on purpose: as a Parameter they would
    multiply a variable elementwise, and cvxpy's DPP canonicalisation of an (N, T) parameter-times-variable product
    grows with (N·T)² (68.9 GiB at 1000 EVs x 96 steps); as constants they cost nothing and rarely change."""

    assets: int
    steps: int
    segments: int
    updr: bool
    products: tuple[str, ...]
    efficiencies: tuple[float, ...]
    paths: bool = False  # per-step hard energy bounds (virtual batteries of agent.dispatch.aggregate)
    # per product, kWh an activation moves per kW·h reserved (Reserve.activation_per_h): constants for the same
    # reason as the efficiencies, as the round-trip loss they cause multiplies the (N, T) reserve variables
    activations: tuple[float, ...] = ()
    tapers: bool = False  # some asset's charge tapers (AssetPlan.charge_taper_soc): the taper rows exist
    # the asset of each calendar bend (AssetPlan.calendar_bends), in order: one excess variable per bend and step
    bent: tuple[int, ...] = ()

    @staticmethod
    def of(inputs: PlanInputs) -> Shape:
        segments = max((len(a.wear_prices) for a in inputs.assets), default=1)
        products = tuple(r.product for r in inputs.reserves)
        efficiencies = tuple(float(a.efficiency) for a in inputs.assets)
        paths = any(a.has_paths for a in inputs.assets)
        activations = tuple(float(r.activation_per_h) for r in inputs.reserves)
        tapers = any(a.charge_taper_soc is not None for a in inputs.assets)
        bent = tuple(i for i, a in enumerate(inputs.assets) for _ in a.calendar_bends)
        return Shape(
            len(inputs.assets), inputs.steps, segments, inputs.updr is not None, products, efficiencies, paths,
            activations, tapers, bent,
        )  # fmt: skip


class DispatchModel:
    """The compiled problem for one shape; `solve(inputs)` refills Parameters and solves."""

    def __init__(self, shape: Shape, step_h: float) -> None:
        self.shape = shape
        n, t, j = shape.assets, shape.steps, shape.segments
        self.h = step_h
        p = self.params = _Params(n, t, j, shape)
        eta = np.array(shape.efficiencies).reshape(n, 1)
        self.efficiency = np.repeat(eta, t, axis=1)  # constants (see Shape)
        self.c = [cp.Variable((n, t), nonneg=True, name=f"charge_{k}") for k in range(j)]
        self.d = [cp.Variable((n, t), nonneg=True, name=f"discharge_{k}") for k in range(j)]
        self.e = [cp.Variable((n, t + 1), nonneg=True, name=f"segment_{k}") for k in range(j)]
        self.charge = cp.sum(self.c) if j > 1 else self.c[0]
        self.discharge = cp.sum(self.d) if j > 1 else self.d[0]
        # energy above each asset's floor; the floor itself is a Parameter kept out of products with other
        # Parameters (DPP forbids parameter x parameter), so costs and targets are written on this
        self.above = cp.sum(self.e) if j > 1 else self.e[0]
        self.power = self.charge - self.discharge
        self.site = p.base_minus_pv + cp.sum(self.power, axis=0)
        self.r_up = [cp.Variable((n, t), nonneg=True, name=f"reserve_up_{k}") for k in shape.products]
        self.r_down = [cp.Variable((n, t), nonneg=True, name=f"reserve_down_{k}") for k in shape.products]
        constraints = self._storage() + self._limits()
        terms: dict[str, cp.Expression] = {}
        terms["energy"] = self._energy_cost()
        terms["wear_cycle"] = self._wear_cost()
        calendar_cons, terms["wear_calendar"] = self._calendar_cost()
        constraints += calendar_cons
        terms["terminal_value"] = self._terminal_value()
        ev_cons, terms["ev_shortfall_penalty"] = self._ev_targets()
        site_cons, terms["site_limit_penalty"] = self._site_limits()
        constraints += ev_cons + site_cons
        if shape.updr:
            dr_cons, terms["updr_revenue"], terms["updr_shortfall_penalty"], terms["updr_below_baseline_penalty"] = (
                self._updr()
            )
            constraints += dr_cons
        if shape.products:
            as_cons, terms["reserve_revenue"], terms["reserve_shortfall_penalty"] = self._reserves()
            terms["reserve_activation"] = self.activation_cost
            constraints += as_cons
        self.terms = terms
        objective = net_of(terms)
        # the objective is a variable tied to the costs by one equality row: cvxpy before 1.8 extracts the Parameter
        # coefficients of a QP objective as a dense (variables x all Parameter entries) array, 27.9 GiB at 100 EVs
        # x 96 steps, and the `eval` extra (BLAST-Lite needs numpy < 2) holds cvxpy at 1.7; constraints are
        # extracted sparse in every version
        self.objective = cp.Variable(name="objective")
        self.problem = cp.Problem(cp.Minimize(self.objective), [*constraints, self.objective == objective])
        assert self.problem.is_dcp(dpp=True), "the dispatch problem must stay DPP for cached re-solves"

    # -- physics (hard) ---------------------------------------------------------------------------------------
    def _storage(self) -> list[cp.Constraint]:
        p, h = self.params, self.h
        cons = []
        losses = self._activation_losses(cons)
        for k in range(self.shape.segments):
            gain = cp.multiply(self.efficiency, self.c[k]) - cp.multiply(1.0 / self.efficiency, self.d[k])
            cons += [
                self.e[k][:, 0] == p.initial[:, k],
                self.e[k][:, 1:] == self.e[k][:, :-1] + h * gain - losses[k],
                self.e[k] <= p.segment_cap[:, k : k + 1] @ np.ones((1, self.shape.steps + 1)),
            ]
        if self.shape.paths:
            # a virtual battery's reachable-energy envelope: the sum of its members' own envelopes, per step
            cons += [self.above >= p.floor_at, self.above <= p.ceiling_at]
        if self.shape.tapers:
            cons += self._taper()
        return cons

    def _taper(self) -> list[cp.Constraint]:
        """The charge taper: what a step stores is at most β of the room left to full at the step's start,
        η·charge·h ≤ β·(headroom − above), β per asset (agent.dispatch.taper.held_step_fraction: the largest share
        a setpoint held for the step delivers under a linear taper). Charge is at the grid terminals, so the pack
        gets η of it, as in the energy balance. Written η·h·charge + β·above ≤ β·headroom, the product β·headroom
        filled as its own Parameter (DPP allows no Parameter x Parameter); an asset without a taper has β = 0 and a
        right-hand side its rating cannot reach. A per-asset β times the (N, T) energy compiles in time linear in N·T
        (measured: 100 EVs x 96 steps 0.5 s, 1000 x 96 8 s), unlike an (N, T) Parameter there (Shape).

        A down reserve is more charge the device must be able to take at any time of the step, so it shares the same
        tapered limit: charge + down ≤ the limit at the step's end, i.e. η·h·charge + η·h·(1 − β)·down + β·above ≤
        β·headroom (taper.held_step_fraction); without it a tapering EV "held" down regulation it could not follow,
        and following only the up half drained it before departure.

        An EV leaving mid-step is plugged in for a fraction f of its departure step and its setpoint is held for f·h
        (plan.Plan.setpoints_w), so there the share is β for f·h, smaller: a second row per asset with that β and a
        right-hand side per step, β_f·headroom at the departure step and out of reach elsewhere (a Parameter on the
        right-hand side, so the step can move without a recompile). Its down reserve is 0 there (whole steps
        only)."""
        p, h, t = self.params, self.h, self.shape.steps
        stored = h * cp.multiply(self.efficiency, self.charge)
        share = cp.multiply(p.taper_fraction @ np.ones((1, t)), self.above[:, :-1])
        held = stored
        if self.shape.products:
            stored = stored + cp.multiply(p.taper_down @ np.ones((1, t)), cp.sum(self.r_down))
        departure_share = cp.multiply(p.taper_departure_fraction @ np.ones((1, t)), self.above[:, :-1])
        return [stored + share <= p.taper_room @ np.ones((1, t)), held + departure_share <= p.taper_departure_room]

    def _activation_losses(self, cons: list[cp.Constraint]) -> list[cp.Expression | float]:
        """Wh each segment loses per step to following activations: expected, so the plan buys it back.

        An up activation discharges α·r·h kWh (α = Reserve.activation_per_h) and a down one charges it back, so the
        store loses α·r·h·(1/η − η) per step of up reservation r (inputs.activation_loss_wh). Without this the band's
        loss was priced but not stored, and EVs following regulation left short of their departure need. With
        several segments the loss is drawn from any of them (one non-negative share per segment)."""
        j = self.shape.segments
        if not any(a > 0 for a in self.shape.activations):
            return [0.0] * j
        per_w = [activation_loss_wh(a, self.efficiency, self.h) for a in self.shape.activations]
        total = sum(cp.multiply(per_w[k], self.r_up[k]) for k in range(len(per_w)) if self.shape.activations[k] > 0)
        if j == 1:
            return [total]
        shares = [cp.Variable((self.shape.assets, self.shape.steps), nonneg=True, name=f"loss_{k}") for k in range(j)]
        cons.append(cp.sum(shares) == total)
        return shares

    def _limits(self) -> list[cp.Constraint]:
        """The flows' own bounds (`charge_flow_max`, `discharge_flow_max`), apart from the power limits the reserve
        headroom reads (`charge_max`, `discharge_max`): the burning re-solve (planner._forbid_burning) forbids a flow
        in a step without taking away the headroom an idle asset still has for an activation. planner.fill sets them
        to the power limits, and the re-solve only lowers them, so they are the flows' only rows."""
        p = self.params
        return [self.charge <= p.charge_flow_max, self.discharge <= p.discharge_flow_max]

    # -- costs ------------------------------------------------------------------------------------------------
    def _energy_cost(self) -> cp.Expression:
        """Cost of the assets' energy at the site meter (the uncontrolled load's own cost is added in the report)."""
        return self.params.price @ cp.sum(self.power, axis=0)

    def _wear_cost(self) -> cp.Expression:
        p = self.params
        return sum(p.wear[:, k] @ cp.sum(self.d[k], axis=1) for k in range(self.shape.segments))

    def _calendar_cost(self) -> tuple[list[cp.Constraint], cp.Expression]:
        """SoC-dependent calendar ageing of the energy held above the floor (the floor's share is in the report),
        plus its convex part: each bend's price times the Wh held above the bend, max(0, E − bend), which the
        minimisation makes exact through one non-negative excess variable per bend and step."""
        p = self.params
        cost = p.calendar @ cp.sum(self.above[:, 1:], axis=1)
        if not self.shape.bent:
            return [], cost
        excess = cp.Variable((len(self.shape.bent), self.shape.steps), nonneg=True, name="calendar_excess")
        cons = [excess >= self.above[list(self.shape.bent), 1:] - p.bend_above_floor]
        return cons, cost + p.bend_price @ cp.sum(excess, axis=1)

    def _terminal_value(self) -> cp.Expression:
        """The worth of energy left above the floor at the horizon's end (inputs.terminal_price); a revenue."""
        return self.params.terminal @ self.above[:, self.shape.steps]

    # -- preferences (soft, tiered) ---------------------------------------------------------------------------
    def _ev_targets(self) -> tuple[list[cp.Constraint], cp.Expression]:
        p = self.params
        n = self.shape.assets
        self.ev_short1 = cp.Variable(n, nonneg=True, name="ev_short_tier1")
        self.ev_short2 = cp.Variable(n, nonneg=True, name="ev_short_tier2")
        # the target sits in a Parameter matrix (N, T+1): the target at the departure column, 0 elsewhere (met
        # trivially, energy above the floor is never negative); a Parameter only on the right-hand side keeps DPP
        # cheap where a one-hot Parameter times the energy variable would not be
        short = cp.reshape(self.ev_short1 + self.ev_short2, (n, 1), order="C") @ np.ones((1, self.shape.steps + 1))
        cons = [self.above + short >= p.target_at, self.ev_short1 <= p.tier1_wh]
        penalty = p.ev_tier1_price * cp.sum(self.ev_short1) + p.ev_tier2_price * cp.sum(self.ev_short2)
        return cons, penalty

    def _site_limits(self) -> tuple[list[cp.Constraint], cp.Expression]:
        p = self.params
        self.site_over = cp.Variable(self.shape.steps, nonneg=True, name="site_limit_excess")
        cons = [self.site <= p.import_limit + self.site_over, self.site >= -p.export_limit - self.site_over]
        return cons, p.site_penalty * cp.sum(self.site_over)

    def _updr(self) -> tuple[list[cp.Constraint], cp.Expression, cp.Expression, cp.Expression]:
        """Up-DR as settlement pays it: the paid increase u ≥ 0 is at most the site's load above the baseline.

        Settlement pays p·clip(load − baseline, 0, requested) per step, a kink at the baseline an LP cannot hold.
        Here u ∈ [0, requested] and u ≤ load − baseline + b, where b ≥ 0 is how far the load stays under the
        baseline, priced above the up-DR price plus the shortfall penalty (inputs.below_baseline_price): the LP then
        never claims u over b, so u is exactly what settlement pays (for p ≥ 0; the signal schema refuses p < 0,
        with which u would sit at 0 and understate what settlement charges). b's price is the one part that is not
        money: the least convex majorant of the kinked reward (a step under the baseline counts as if its shortfall
        grew with the distance), which keeps the plan an LP; it is reported as `updr_below_baseline_penalty`.
        """
        p, t = self.params, self.shape.steps
        self.dr_up = cp.Variable(t, nonneg=True, name="updr_increase")
        self.dr_short = cp.Variable(t, nonneg=True, name="updr_shortfall")
        self.dr_below = cp.Variable(t, nonneg=True, name="updr_below_baseline")
        cons = [
            # outside the window dr_outside is huge: dr_up (0 there anyway) must not tie the site to the baseline
            self.dr_up <= self.site - p.dr_baseline + p.dr_outside + self.dr_below,
            self.dr_up <= p.dr_requested,  # per step: requested x window
            self.dr_up + self.dr_short >= p.dr_requested,
        ]
        revenue = p.dr_price * cp.sum(self.dr_up)
        penalty = p.dr_penalty * cp.sum(self.dr_short)
        below = p.dr_below_price * cp.sum(self.dr_below)
        return cons, revenue, penalty, below

    def _reserves(self) -> tuple[list[cp.Constraint], cp.Expression, cp.Expression]:
        p, t = self.params, self.shape.steps
        up, down = cp.sum(self.r_up), cp.sum(self.r_down)
        # power headroom: reserving up means being able to discharge that much more, down to charge more
        cons = [
            up <= p.discharge_max - self.discharge + self.charge,
            down <= p.charge_max - self.charge + self.discharge,
            # held for whole steps only: none where the asset is plugged in for part of the step (its flows there
            # keep the minutes' power; zeroing the limits above instead forbade an EV to charge in its departure step)
            up <= p.reserve_cap,
            down <= p.reserve_cap,
        ]
        # energy headroom: every product's reservation sustainable for its duration from the planned energy, at the
        # step's start as well as its end (an activation may come at either; agent.dispatch.reserve_check, same rule)
        hours = [product_duration_h(k) for k in self.shape.products]
        hold_up = sum(self.r_up[k] * hours[k] for k in range(len(hours)))
        hold_down = sum(self.r_down[k] * hours[k] for k in range(len(hours)))
        for held in (self.above[:, :-1], self.above[:, 1:]):
            cons += [
                held - cp.multiply(1.0 / self.efficiency, hold_up) >= 0,
                held + cp.multiply(self.efficiency, hold_down) <= p.headroom @ np.ones((1, t)),
            ]
        revenue: cp.Expression = 0
        penalty: cp.Expression = 0
        # following activations (inputs.activation_price): per kW·h reserved up, one cost per asset and product
        self.activation_cost = sum(p.activation[k] @ cp.sum(self.r_up[k], axis=1) for k in range(len(hours)))
        symmetric = [k for k, name in enumerate(self.shape.products) if name in SYMMETRIC_PRODUCTS]
        cons += [self.r_up[k] == self.r_down[k] for k in symmetric]
        self.r_short = []
        for k in range(len(self.shape.products)):
            short = cp.Variable((2, t), nonneg=True, name=f"reserve_short_{k}")
            self.r_short.append(short)
            cons += [
                cp.sum(self.r_up[k], axis=0) + short[0] >= p.award_up[k],
                cp.sum(self.r_down[k], axis=0) + short[1] >= p.award_down[k],
            ]
            revenue += p.up_price[k] @ cp.sum(self.r_up[k], axis=0) + p.down_price[k] @ cp.sum(self.r_down[k], axis=0)
            penalty += p.reserve_penalty * cp.sum(short)
        return cons, revenue, penalty


class _Params:
    """Every number the problem reads, as cvxpy Parameters (filled by agent.dispatch.planner.fill); prices are the
    coefficients of agent.dispatch.costs (currency per W for one step, or per Wh)."""

    def __init__(self, n: int, t: int, j: int, shape: Shape) -> None:
        P = cp.Parameter
        self.initial = P((n, j), nonneg=True)
        self.segment_cap = P((n, j), nonneg=True)
        self.headroom = P((n, 1), nonneg=True)  # usable energy between floor and ceiling
        self.charge_max = P((n, t), nonneg=True)  # power limits for the reserve headroom
        self.discharge_max = P((n, t), nonneg=True)
        self.reserve_cap = P((n, t), nonneg=True)  # most reserve an asset may hold: 0 in a step it is not there whole
        self.charge_flow_max = P((n, t), nonneg=True)  # the flows only (planner._forbid_burning cuts these)
        self.discharge_flow_max = P((n, t), nonneg=True)
        self.wear = P((n, j), nonneg=True)
        self.calendar = P(n, nonneg=True)
        if shape.bent:  # per calendar bend: its Wh above its asset's floor, per step; currency per Wh above it
            self.bend_above_floor = P((len(shape.bent), t))
            self.bend_price = P(len(shape.bent), nonneg=True)
        self.terminal = P(n, nonneg=True)  # currency per Wh above the floor at the horizon's end
        self.price = P(t)
        self.base_minus_pv = P(t)
        self.import_limit = P(t, nonneg=True)
        self.export_limit = P(t, nonneg=True)
        self.site_penalty = P(nonneg=True)
        self.target_at = P((n, t + 1), nonneg=True)  # EV target energy above the floor, at its departure column
        self.tier1_wh = P(n, nonneg=True)
        if shape.tapers:  # agent.dispatch.taper: β per asset, and β x headroom (W·h stored per step at most)
            self.taper_fraction = P((n, 1), nonneg=True)
            self.taper_room = P((n, 1), nonneg=True)
            self.taper_down = P((n, 1), nonneg=True)  # Wh of the row per W of down reserve: η·h·(1 − β)
            self.taper_departure_fraction = P((n, 1), nonneg=True)  # β for the part of its departure step plugged in
            self.taper_departure_room = P((n, t), nonneg=True)  # β_f x headroom there, out of reach at other steps
        if shape.paths:  # energy above the floor, per step boundary (only models of virtual batteries have them)
            self.floor_at = P((n, t + 1), nonneg=True)
            self.ceiling_at = P((n, t + 1), nonneg=True)
        self.ev_tier1_price = P(nonneg=True)
        self.ev_tier2_price = P(nonneg=True)
        if shape.updr:
            self.dr_baseline = P(t)
            self.dr_outside = P(t, nonneg=True)
            self.dr_requested = P(t, nonneg=True)
            self.dr_price = P(nonneg=True)
            self.dr_penalty = P(nonneg=True)
            self.dr_below_price = P(nonneg=True)
        k = len(shape.products)
        self.award_up = [P(t, nonneg=True) for _ in range(k)]
        self.award_down = [P(t, nonneg=True) for _ in range(k)]
        self.up_price = [P(t, nonneg=True) for _ in range(k)]
        self.down_price = [P(t, nonneg=True) for _ in range(k)]
        self.activation = [P(n, nonneg=True) for _ in range(k)]  # currency per kW·h of up reservation
        self.reserve_penalty = P(nonneg=True)
