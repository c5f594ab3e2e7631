"""The charge taper in the plan (formulation._taper) against the simulator's own physics, and how the agent learns
the taper's knee from live limits (agent.dispatch.taper) without being told the simulator's."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agent.config import AppConfig, AssetConfig, ConfigError, parse_config
from agent.dispatch.build import plan_inputs
from agent.dispatch.inputs import AssetPlan, PlanInputs, SiteForecast
from agent.dispatch.planner import model_for, solve
from agent.dispatch.taper import MIN_OBSERVATIONS, TaperBook, held_step_fraction, knee_from_limit, taper_book
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement
from sim_devices.ev_charger import CHARGE_TAPER_START_SOC, EVCharger
from sim_devices.ev_sessions import EVSession

STEP_S = 3600.0
STEPS = 6
CAPACITY_WH = 60_000.0
RATED_W = 11_000.0
ETA = 0.95
START_SOC, TARGET_SOC = 0.5, 0.95
# dear now, cheap in the last three hours before departure: without the taper the plan leaves charging to them
PRICES = np.array([30.0, 30.0, 30.0, 5.0, 5.0, 5.0])


def ev_plan(knee: float | None) -> PlanInputs:
    ev = AssetPlan(
        "ev", energy_wh=START_SOC * CAPACITY_WH, min_wh=0.1 * CAPACITY_WH, max_wh=CAPACITY_WH, charge_w=RATED_W,
        discharge_w=RATED_W, efficiency=ETA, available=np.ones(STEPS, dtype=bool), target_wh=TARGET_SOC * CAPACITY_WH,
        target_step=STEPS, wear_prices=np.array([20.0]), is_ev=True, charge_taper_soc=knee,
    )  # fmt: skip
    site = SiteForecast(PRICES, np.zeros(STEPS), np.zeros(STEPS))
    return PlanInputs(STEPS, STEP_S, [ev], site)


def run_on_the_simulator(power_w: np.ndarray) -> np.ndarray:
    """Hold each step's planned power as the charger's setpoint for the step, as the agent does, and return the
    pack energy (Wh) at every step boundary: the simulator's physics (its own taper, its 2 s sub-steps) decide."""
    session = EVSession(0.0, STEPS * STEP_S, CAPACITY_WH, START_SOC, TARGET_SOC, 0.1)
    charger = EVCharger(
        [session], rated_charge_w=RATED_W, rated_discharge_w=RATED_W, efficiency=ETA, lease_timeout_s=2 * STEP_S
    )
    energy = [charger.soc * CAPACITY_WH]
    for k in range(STEPS):
        charger.write_setpoint(float(power_w[k]))
        charger.step(STEP_S - 1e-6 if k == STEPS - 1 else STEP_S)  # read the last step just before the plug is pulled
        energy.append(charger.soc * CAPACITY_WH)
    return np.array(energy)


def test_a_plan_with_the_taper_is_what_the_tapering_charger_delivers() -> None:
    """With the simulator's knee in the plan, every planned step boundary is what the charger reaches, and the EV
    leaves at its target."""
    plan = solve(ev_plan(CHARGE_TAPER_START_SOC))
    reached = run_on_the_simulator(plan.power_w[0])
    np.testing.assert_allclose(reached, plan.energy_wh[0], atol=0.002 * CAPACITY_WH)
    assert plan.violations["ev_short_kwh"] < 1e-6
    assert reached[-1] >= TARGET_SOC * CAPACITY_WH - 0.002 * CAPACITY_WH


def test_a_plan_without_the_taper_promises_what_the_charger_cannot_deliver() -> None:
    """The failure the taper rows fix: planned as if charging at the rating to full, the cheap last hours cannot
    store what the plan says, and the EV leaves several kWh short."""
    plan = solve(ev_plan(None))
    assert plan.violations["ev_short_kwh"] < 1e-6  # the plan believes it meets the target
    reached = run_on_the_simulator(plan.power_w[0])
    assert TARGET_SOC * CAPACITY_WH - reached[-1] > 2_000.0


# -- learning the knee from live limits --------------------------------------------------------------------------

NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
KNEE = 0.8


def tapered_limit(soc: float, knee: float = KNEE) -> float:
    """A linear CC-CV taper's live limit: the rating up to the knee, then down to 0 at full."""
    return RATED_W if soc <= knee else RATED_W * (1.0 - soc) / (1.0 - knee)


def ev_state(soc: float, limit_w: float, at: datetime, status: DeviceStatus = DeviceStatus.CHARGING,
             **config: object) -> AssetState:  # fmt: skip
    cfg = AssetConfig(id="ev", map="vppsim_v2g_dc", rated_charge_w=RATED_W, rated_discharge_w=RATED_W,
                      **config)  # type: ignore[arg-type]  # fmt: skip
    state = AssetState("ev", AssetKind.EV_CHARGER, cfg, available=True)
    state.measurement = Measurement(
        "ev", at, 0.0, status, rated_charge_w=RATED_W, rated_discharge_w=RATED_W, max_charge_w=limit_w,
        max_discharge_w=RATED_W, soc=soc, soh=1.0, capacity_wh=CAPACITY_WH, ev_connected=True, ev_target_soc=0.95,
        ev_min_soc=0.1, ev_departure=at + timedelta(hours=4),
    )  # fmt: skip
    return state


def test_one_limit_reading_gives_the_knee_of_a_linear_taper() -> None:
    assert knee_from_limit(0.9, tapered_limit(0.9), RATED_W) == pytest.approx(KNEE)
    assert knee_from_limit(0.97, tapered_limit(0.97, 0.6), RATED_W) == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("soc", "limit_w"),
    [
        (0.5, RATED_W),  # at the rating: no taper seen
        (0.85, 0.99 * RATED_W),  # within the rating's noise band
        (1.0, 0.0),  # full
        (0.6, 0.0),  # cut to 0 below full: a trip, not a taper
        (0.3, 0.5 * RATED_W),  # a derate the taper cannot explain (knee below 0)
        (float("nan"), 5_000.0),
    ],
)
def test_readings_that_are_no_taper_are_not_observations(soc: float, limit_w: float) -> None:
    assert knee_from_limit(soc, limit_w, RATED_W) is None


def test_the_book_takes_the_median_of_several_observations_once_per_poll() -> None:
    book = TaperBook()
    socs = [0.81, 0.86, 0.91, 0.96]
    for n, soc in enumerate(socs[:-1]):
        state = ev_state(soc, tapered_limit(soc), NOW + timedelta(minutes=n))
        book.observe(state)
        book.observe(state)  # the same poll read again (a re-plan on a signal): not a second observation
    # the first reading counts only once a second, 5 % of SoC away, agrees with it: too few yet
    assert book.observations("ev") == 2 and book.knee("ev") is None
    book.observe(ev_state(0.3, 0.5 * RATED_W, NOW + timedelta(minutes=5)))  # an odd derate: ignored
    book.observe(ev_state(0.9, 0.0, NOW + timedelta(minutes=6), DeviceStatus.FAULT))  # tripped: ignored
    out = ev_state(0.95, 0.1 * RATED_W, NOW + timedelta(minutes=6, seconds=30))
    out.available = False  # e.g. frozen: its reading is not believed
    book.observe(out)
    book.observe(ev_state(socs[-1], tapered_limit(socs[-1]), NOW + timedelta(minutes=7)))
    assert book.observations("ev") == MIN_OBSERVATIONS
    assert book.knee("ev") == pytest.approx(KNEE)
    book.observe(ev_state(0.95, 0.1 * RATED_W, NOW + timedelta(minutes=8)))  # one outlier (knee 0.5)
    assert book.knee("ev") == pytest.approx(KNEE)


def test_a_steady_derate_is_not_taken_for_a_taper() -> None:
    """A car taking 7.4 kW from an 11 kW charger over SoC 0.30-0.79: each reading alone gives a plausible knee (0.39
    at 0.59), but two readings 5 % of SoC apart give knees 0.07 apart, where a taper gives one."""
    book = TaperBook()
    for n, soc in enumerate(np.arange(0.30, 0.80, 0.01)):
        book.observe(ev_state(float(soc), 7_400.0, NOW + timedelta(minutes=n)))
    assert book.observations("ev") == 0 and book.knee("ev") is None


def dispatch_config() -> AppConfig:
    return AppConfig.model_validate({"dispatch": {"step_s": 3600, "horizon_steps": 8}})


def test_the_plan_inputs_learn_the_knee_from_the_fleets_live_limits_and_the_config_wins() -> None:
    """Each plan reads the fleet's newest poll; once a charger has shown its taper a few times its AssetPlan
    carries the learnt knee (for later sessions too), a configured knee wins, and another fleet learns alone."""
    state = ev_state(0.5, RATED_W, NOW)
    fleet = Fleet({"ev": state})
    for n, soc in enumerate([0.5, 0.84, 0.9, 0.95, 0.99]):  # at 0.5 no taper yet; 0.84 counts once 0.9 agrees
        state.measurement = ev_state(soc, tapered_limit(soc), NOW + timedelta(hours=n)).measurement
        inputs, _ = plan_inputs(fleet, dispatch_config(), NOW + timedelta(hours=n), {}, 0.0)
        knee = inputs.assets[0].charge_taper_soc
        assert (knee is None) if n <= MIN_OBSERVATIONS else knee == pytest.approx(KNEE)
    state.measurement = ev_state(0.2, RATED_W, NOW + timedelta(days=1)).measurement  # the next session
    inputs, _ = plan_inputs(fleet, dispatch_config(), NOW + timedelta(days=1), {}, 0.0)
    assert inputs.assets[0].charge_taper_soc == pytest.approx(KNEE)
    assert taper_book(Fleet({"ev": state})).knee("ev") is None

    for configured, planned in ((0.7, 0.7), (1.0, None)):
        told = ev_state(0.2, RATED_W, NOW, charge_taper_soc=configured)
        told_fleet = Fleet({"ev": told})
        for n, soc in enumerate([0.84, 0.9, 0.95, 0.99]):  # what the live limits taught does not matter then
            taper_book(told_fleet).observe(ev_state(soc, tapered_limit(soc), NOW - timedelta(hours=n + 1)))
        assert taper_book(told_fleet).knee("ev") == pytest.approx(KNEE)
        inputs, _ = plan_inputs(told_fleet, dispatch_config(), NOW, {}, 0.0)
        assert inputs.assets[0].charge_taper_soc == planned


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_a_bad_knee_in_the_config_is_refused_naming_the_key(value: str) -> None:
    text = f'[[assets]]\nid = "ev"\nmap = "vppsim_v2g_dc"\ncharge_taper_soc = {value}\n'
    with pytest.raises(ConfigError, match=r"assets\[0\]\.charge_taper_soc"):
        parse_config(text)


# -- the compiled problem --------------------------------------------------------------------------------------


def test_the_compiled_problem_is_reused_with_new_tapers_and_without_them_nothing_changes() -> None:
    """A new knee is a new Parameter value, not a new problem; plans without a taper keep the shape they had."""
    late, early = ev_plan(0.9), ev_plan(0.6)
    model = model_for(late)
    first = solve(late)
    assert model_for(early) is model
    second = solve(early)
    assert second.energy_wh[0, 3] > first.energy_wh[0, 3] + 1_000.0  # an earlier knee: charge earlier
    assert model_for(ev_plan(None)) is not model
    assert not model_for(ev_plan(None)).shape.tapers


def test_a_held_step_stores_less_than_flat_out_and_nothing_binds_without_a_taper() -> None:
    x = ETA * RATED_W * 1.0 / (CAPACITY_WH * (1.0 - KNEE))
    beta = held_step_fraction(KNEE, CAPACITY_WH, RATED_W, ETA, 1.0)
    assert beta == pytest.approx(x / (1.0 + x)) and beta < 1.0 - np.exp(-x)
    assert held_step_fraction(1.0, CAPACITY_WH, RATED_W, ETA, 1.0) == 1.0


def test_an_asset_without_a_taper_plans_as_before_next_to_one_with_it() -> None:
    """The taper rows of a mixed problem bind only the asset that has a taper."""
    plain = ev_plan(None)
    mixed = replace(plain, assets=[plain.assets[0], replace(plain.assets[0], id="ev2", charge_taper_soc=KNEE)])
    alone = solve(plain)
    both = solve(mixed)
    np.testing.assert_allclose(both.power_w[0], alone.power_w[0], atol=1e-3)
    np.testing.assert_allclose(both.power_w[1], solve(ev_plan(KNEE)).power_w[0], atol=1e-3)


def test_a_down_reserve_stays_within_the_tapered_limit() -> None:
    """Down regulation is charge the EV must take at any time of the step: with the plan's charge it stays within
    the taper's limit at the step's end (the lowest of the step), where the rating alone would let it promise the
    full 11 kW band on a nearly full pack."""
    from agent.dispatch.inputs import Reserve

    base = ev_plan(KNEE)
    ev = replace(base.assets[0], energy_wh=0.9 * CAPACITY_WH, target_wh=0.9 * CAPACITY_WH)
    zeros = np.zeros(STEPS)
    band = Reserve("RegD", np.full(STEPS, 20.0), np.full(STEPS, 20.0), zeros, zeros)
    plan = solve(replace(base, assets=[ev], reserves=[band]))
    assert plan.reserve_down_w[0].max() > 1_000.0  # the band pays: some is held
    limit_at_end = np.array([tapered_limit(e / CAPACITY_WH) for e in plan.energy_wh[0, 1:]])
    charge = np.maximum(plan.power_w[0], 0.0)
    assert np.all(charge + plan.reserve_down_w[0] <= limit_at_end + 1.0)
