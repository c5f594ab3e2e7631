"""A price-only reserve offer (`as_offer`, agent.signals.models.AsOffer): validated strictly, mapped onto the planning
steps by the energy prices' rule (agent.dispatch.build), and bid by the planner only where it pays for its wear.

Expected prices per step are written out by hand from the signals, so the lookup cannot share a mistake with them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import get_args

import numpy as np
import pytest

from agent.config import AppConfig, AssetConfig
from agent.dispatch.build import Offered, offered_prices, plan_inputs
from agent.dispatch.inputs import Penalties
from agent.dispatch.planner import solve
from agent.fleet import AssetState, Fleet
from agent.model import AssetKind, DeviceStatus, Measurement
from agent.products import PRODUCTS
from agent.signals.models import (
    MAX_CAPACITY_PRICE_PER_KW_H,
    SIGNAL_TYPES,
    AsAward,
    AsOffer,
    AsProduct,
    OfferProduct,
    PriceSeries,
    SignalRejected,
    parse_signal,
)

START = datetime(2026, 12, 2, tzinfo=UTC)
NOW = START + timedelta(minutes=7)  # inside the step 00:00-00:15


def good(**changes: object) -> dict[str, object]:
    return {"id": "o1", "product": "FRR", "start": START.isoformat(), "interval_s": 1800,
            "capacity_price_per_kw_h": [1.5, 2.0], **changes}  # fmt: skip


def parsed(fields: dict[str, object]) -> AsOffer:
    signal = parse_signal("as_offer", json.dumps(fields).encode())
    assert isinstance(signal, AsOffer)
    return signal


# -- the signal ---------------------------------------------------------------------------------------------------
def test_a_good_offer_parses_with_its_defaults_and_its_times() -> None:
    offer = parsed(good())
    assert SIGNAL_TYPES["as_offer"] is AsOffer
    assert offer.directions == "up_down" and offer.activation_per_h is None  # omitted: the product's figure
    assert offer.starts_at() == START and offer.ends_at() == START + timedelta(hours=1)
    regd = parsed(good(product="RegD", activation_per_h=0.15, interval_s=3600, capacity_price_per_kw_h=[0, 3]))
    assert regd.capacity_price_per_kw_h == [0.0, 3.0] and regd.activation_per_h == 0.15


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"product": "XFR"}, "product"),
        ({"product": "regd"}, "product"),
        ({"start": "2026-12-02T00:00:00"}, "start"),  # no offset
        ({"start": "1999-12-31T00:00:00Z"}, "start"),
        ({"start": 1_796_000_000}, "start"),
        ({"interval_s": 30}, "interval_s"),
        ({"interval_s": 900.5}, "interval_s"),
        ({"capacity_price_per_kw_h": []}, "capacity_price_per_kw_h"),
        ({"capacity_price_per_kw_h": [1.0] * 2001}, "capacity_price_per_kw_h"),
        ({"capacity_price_per_kw_h": [1.0, -0.5]}, "capacity_price_per_kw_h.1"),
        ({"capacity_price_per_kw_h": [1e6]}, "capacity_price_per_kw_h.0"),
        ({"capacity_price_per_kw_h": ["1.5"]}, "capacity_price_per_kw_h.0"),
        ({"capacity_price_per_kw_h": 1.5}, "capacity_price_per_kw_h"),
        ({"interval_s": 86400, "capacity_price_per_kw_h": [1.0] * 8}, "capacity_price_per_kw_h: 8 intervals"),
        ({"directions": "sideways"}, "directions"),
        ({"product": "RegD", "directions": "up"}, "directions 'up': RegD is one band"),
        ({"activation_per_h": 1.5}, "activation_per_h"),
        ({"activation_per_h": -0.1}, "activation_per_h"),
        ({"activation_per_h": True}, "activation_per_h"),
        ({"max_up_w": 5_000}, "max_up_w"),  # no caps: the planner's Reserve has none
        ({"id": "a b"}, "id"),
    ],
)
def test_each_bad_key_is_refused_with_its_name(changes: dict[str, object], named: str) -> None:
    with pytest.raises(SignalRejected) as refused:
        parsed(good(**changes))
    assert named in str(refused.value)


def test_a_price_above_the_bound_is_refused_naming_the_key_and_the_bound() -> None:
    assert MAX_CAPACITY_PRICE_PER_KW_H == 50
    parsed(good(capacity_price_per_kw_h=[50.0]))
    with pytest.raises(SignalRejected, match=r"capacity_price_per_kw_h\.1: Input should be less than or equal to 50"):
        parsed(good(capacity_price_per_kw_h=[1.0, 50.5]))


def test_the_capacity_price_bound_stays_below_every_obligation_penalty() -> None:
    """An "up_down" kW·h earns the price on both sides: twice the bound must not outbid any penalty the planner
    keeps an obligation with (else an offer buys its way out of an award, an EV's need or the site limit)."""
    penalties = Penalties()
    per_kwh = {k: v for k, v in vars(penalties).items() if k.endswith("_per_kwh")}
    assert set(per_kwh) >= {"dr_short_per_kwh", "reserve_short_per_kwh", "ev_short_tier1_per_kwh", "site_limit_per_kwh"}
    assert min(per_kwh.values()) >= 2 * MAX_CAPACITY_PRICE_PER_KW_H, per_kwh


@pytest.mark.parametrize(
    ("changes", "allowed"),
    [
        ({"directions": "down", "activation_per_h": 0.1}, False),
        ({"directions": "down", "activation_per_h": 0.0}, True),
        ({"directions": "down"}, True),  # FRR has no figure of its own: 0
        ({"directions": "up", "activation_per_h": 0.1}, True),
        ({"directions": "up_down", "activation_per_h": 0.1}, True),
    ],
)
def test_activations_need_the_up_side_where_the_planner_prices_them(changes: dict, allowed: bool) -> None:
    if allowed:
        parsed(good(**changes))
        return
    with pytest.raises(SignalRejected, match=r"activation_per_h 0\.1: a 'down' offer's activations are not priced"):
        parsed(good(**changes))


def test_nan_and_infinity_prices_are_refused() -> None:
    payload = json.dumps(good()).replace("[1.5, 2.0]", "[NaN, Infinity]").encode()
    with pytest.raises(SignalRejected, match=r"capacity_price_per_kw_h\.0: Input should be a finite number"):
        parse_signal("as_offer", payload)


def test_offers_name_every_product_of_the_table_and_awards_its_japanese_ones() -> None:
    assert set(get_args(OfferProduct)) == set(PRODUCTS)
    assert set(get_args(AsProduct)) == {name for name, p in PRODUCTS.items() if p.market == "JP"}


# -- onto the planning steps --------------------------------------------------------------------------------------
def config(steps: int = 8, **dispatch: object) -> AppConfig:
    return AppConfig.model_validate(
        {"dispatch": {"step_s": 900, "horizon_steps": steps, "default_price_per_kwh": 20.0, **dispatch}}
    )


def offer(offer_id: str = "o", **fields: object) -> AsOffer:
    values: dict[str, object] = {"product": "FRR", "start": START, "interval_s": 1800,
                                 "capacity_price_per_kw_h": [1.0, 2.0, 3.0], **fields}  # fmt: skip
    return AsOffer(id=offer_id, **values)  # type: ignore[arg-type]


def test_an_offer_is_a_reserve_with_its_prices_per_step_and_nothing_awarded() -> None:
    newer = offer("o2", start=START + timedelta(minutes=30), interval_s=900, capacity_price_per_kw_h=[7.0, 8.0],
                  activation_per_h=0.1)  # fmt: skip
    book = {"as_offer": {"o1": offer("o1", activation_per_h=0.05), "o2": newer}}
    inputs, step_start = plan_inputs(Fleet({}), config(), NOW, book, 0.0)
    assert step_start == START
    (reserve,) = inputs.reserves
    assert reserve.product == "FRR"
    # steps: 00:00 00:15 (o1) | 00:30 00:45 (o2) | 01:00 01:15 (o1's third half hour) | 01:30 01:45 (none: 0)
    assert reserve.up_price_per_kw_h.tolist() == [1, 1, 7, 8, 3, 3, 0, 0]
    assert reserve.down_price_per_kw_h.tolist() == [1, 1, 7, 8, 3, 3, 0, 0]
    assert not reserve.awarded_up_w.any() and not reserve.awarded_down_w.any()
    assert reserve.activation_per_h == 0.1  # the higher of the two offers covering the horizon


def test_an_offer_without_an_activation_takes_its_products_and_an_explicit_one_wins() -> None:
    def activation(**fields: object) -> float:
        inputs, _ = plan_inputs(Fleet({}), config(), NOW, {"as_offer": {"o": offer(**fields)}}, 0.0)
        (reserve,) = inputs.reserves
        return reserve.activation_per_h

    regd = PRODUCTS["RegD"].activation_per_h
    assert regd is not None and regd > 0.1  # RegD's figure: a continuous signal, not rare activations
    assert activation(product="RegD") == regd
    assert activation(product="RegD", activation_per_h=None) == regd  # null is the same as omitted
    assert activation(product="RegD", activation_per_h=0.0) == 0.0  # an explicit 0 stays 0
    assert activation(product="RegD", activation_per_h=0.05) == 0.05
    assert PRODUCTS["FRR"].activation_per_h is None
    assert activation(product="FRR") == 0.0  # no figure of its own: rarely activated


def test_offer_prices_follow_the_same_steps_as_energy_prices() -> None:
    """One mapping rule for both: a price series and an offer with the same intervals give the same per-step list."""
    values = [4.0, 5.0, 6.0]
    start = START + timedelta(minutes=20)  # not on a step boundary: each step takes the interval its start falls in
    prices = PriceSeries(id="p", start=start, interval_s=1800, prices_per_kwh=values)
    book = {"prices": {"p": prices}, "as_offer": {"o": offer(start=start, capacity_price_per_kw_h=values)}}
    inputs, _ = plan_inputs(Fleet({}), config(default_price_per_kwh=0.0), NOW, book, 0.0)
    assert inputs.reserves[0].up_price_per_kw_h.tolist() == inputs.site.price_per_kwh.tolist()
    assert inputs.site.price_per_kwh.tolist() == [0, 0, 4, 4, 5, 5, 6, 6]


def test_sides_offered_and_offers_outside_the_horizon() -> None:
    later = offer("late", start=START + timedelta(days=1))  # covers no step: no Reserve
    down = offer("down", directions="down", capacity_price_per_kw_h=[4.0])
    book = {"as_offer": {"up": offer("up", directions="up"), "down": down, "late": later}}
    inputs, _ = plan_inputs(Fleet({}), config(), NOW, book, 0.0)
    (reserve,) = inputs.reserves  # one per product, both sides in it
    assert reserve.up_price_per_kw_h.tolist() == [1, 1, 2, 2, 3, 3, 0, 0]
    assert reserve.down_price_per_kw_h.tolist() == [4, 4, 0, 0, 0, 0, 0, 0]


def test_a_newer_one_sided_offer_replaces_that_side_of_an_older_offer_only() -> None:
    """An older FRR up_down offer at 5 and a newer FRR up offer at 1 over the same hour: the up price is the newer
    one's, the down price stays the older one's (before: two Reserves, and the LP took the dearer up price)."""
    old = offer("old", capacity_price_per_kw_h=[5.0, 5.0])
    new = offer("new", directions="up", capacity_price_per_kw_h=[1.0, 1.0])
    inputs, _ = plan_inputs(Fleet({}), config(), NOW, {"as_offer": {"old": old, "new": new}}, 0.0)
    (reserve,) = inputs.reserves
    assert reserve.up_price_per_kw_h.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert reserve.down_price_per_kw_h.tolist() == [5, 5, 5, 5, 0, 0, 0, 0]
    # the other way round, the newer up_down offer sets both sides
    inputs, _ = plan_inputs(Fleet({}), config(), NOW, {"as_offer": {"new": new, "old": old}}, 0.0)
    (reserve,) = inputs.reserves
    assert reserve.up_price_per_kw_h[:4].tolist() == [5] * 4 and reserve.down_price_per_kw_h[:4].tolist() == [5] * 4


def test_the_activation_is_the_highest_of_the_offers_in_force_not_of_one_overwritten() -> None:
    old = offer("old", capacity_price_per_kw_h=[5.0, 5.0], activation_per_h=0.3)
    new = offer("new", capacity_price_per_kw_h=[1.0, 1.0], activation_per_h=0.05)
    inputs, _ = plan_inputs(Fleet({}), config(), NOW, {"as_offer": {"old": old, "new": new}}, 0.0)
    (reserve,) = inputs.reserves
    assert reserve.activation_per_h == 0.05


def test_an_offer_is_priced_0_where_an_award_of_its_product_already_sold_the_capacity() -> None:
    """A still-valid offer must not bid the awarded block's capacity again on top of the award."""
    award = AsAward(id="a", product="FRR", block_start=START, block_end=START + timedelta(minutes=30), up_w=4_000,
                    down_w=0)  # fmt: skip
    other = AsAward(id="x", product="S-FRR", block_start=START + timedelta(minutes=30),
                    block_end=START + timedelta(hours=1), up_w=4_000, down_w=0)  # fmt: skip
    book = {"as_award": {"a": award, "x": other}, "as_offer": {"o": offer()}}
    inputs, _ = plan_inputs(Fleet({}), config(), NOW, book, 0.0)
    offered = next(r for r in inputs.reserves if r.product == "FRR" and not r.awarded_up_w.any())
    # the FRR award covers 00:00-00:30 (steps 0, 1); the S-FRR award is another product: the offer still bids there
    assert offered.up_price_per_kw_h[:6].tolist() == [0, 0, 2, 2, 3, 3]
    assert offered.down_price_per_kw_h[:6].tolist() == [0, 0, 2, 2, 3, 3]


def test_an_award_and_an_offer_of_one_product_are_two_reserves() -> None:
    award = AsAward(id="a", product="FRR", block_start=START, block_end=START + timedelta(hours=1), up_w=4_000,
                    down_w=0)  # fmt: skip
    inputs, _ = plan_inputs(Fleet({}), config(), NOW, {"as_award": {"a": award}, "as_offer": {"o": offer()}}, 0.0)
    held, offered = inputs.reserves
    assert held.awarded_up_w.tolist() == [4_000] * 4 + [0] * 4 and not held.up_price_per_kw_h.any()
    # the award's hour is sold already: the offer bids only after it
    assert offered.up_price_per_kw_h[:6].tolist() == [0, 0, 0, 0, 3, 3] and not offered.awarded_up_w.any()


# -- the planner's bid ---------------------------------------------------------------------------------------------
def battery_fleet(wear_per_kwh: float) -> Fleet:
    """A 100 kWh, 50 kW battery half full, its wear priced flat (activations pay it per kWh discharged)."""
    cfg = AssetConfig(id="b", map="vppsim_battery", rated_charge_w=50_000, rated_discharge_w=50_000,
                      efficiency=0.95, wear_price_per_kwh=wear_per_kwh)  # fmt: skip
    state = AssetState("b", AssetKind.BATTERY, cfg, available=True)
    state.measurement = Measurement("b", NOW, 0.0, DeviceStatus.STANDBY, soc=0.5, soh=1.0, capacity_wh=100_000)
    return Fleet({"b": state})


def bid(price_per_kw_h: float, wear_per_kwh: float = 15.0) -> tuple[np.ndarray, np.ndarray, float]:
    """The planned RegD band (up, down; W per step) and its revenue for an offer at a flat capacity price."""
    regd = offer(product="RegD", interval_s=900, capacity_price_per_kw_h=[price_per_kw_h] * 4, activation_per_h=0.2)
    inputs, _ = plan_inputs(battery_fleet(wear_per_kwh), config(steps=4), NOW, {"as_offer": {"o": regd}}, 0.0)
    plan = solve(inputs)
    assert plan.status == "optimal", plan.status
    return plan.reserve_up_w[0], plan.reserve_down_w[0], plan.breakdown["reserve_revenue"]


def test_the_planner_bids_where_the_offer_pays_for_the_wear_and_not_at_a_price_of_0() -> None:
    # a symmetric kW·h earns the price up and again down, and moves 0.2 kWh up: at 15 per kWh of wear it costs 3.0,
    # plus the round trip's loss, 0.2 x (1/0.95 - 0.95) kWh bought back at 20 (0.41): 3.41 per kW·h of band
    up, down, revenue = bid(2.5)  # earns 5.0
    assert up == pytest.approx(np.full(4, 50_000), rel=1e-4)  # the whole rating: nothing else competes for it
    assert down == pytest.approx(up, abs=1e-3)  # RegD is one band
    assert abs(revenue) == pytest.approx(2 * 2.5 * 50 * 0.25 * 4, rel=1e-4)  # price x (up + down) kW x hours
    for price in (1.5, 0.0):  # earns 3.0 < 3.41; nothing
        up, down, _ = bid(price)
        assert np.all(up < 1e-3) and np.all(down < 1e-3), price


def test_an_offer_at_the_highest_price_keeps_every_obligation() -> None:
    """A battery and an EV, an FRR award of 40 kW up and an S-FRR up offer at the highest price a signal may carry:
    the plan holds the award, meets the EV and keeps the site limit (at 5,000 per kW·h it dropped the award: 80 kWh
    short over the two hours)."""
    b = AssetConfig(id="b", map="vppsim_battery", rated_charge_w=50_000, rated_discharge_w=50_000, efficiency=0.95,
                    replacement_cost=3_000_000)  # fmt: skip
    battery = AssetState("b", AssetKind.BATTERY, b, available=True)
    battery.measurement = Measurement("b", NOW, 0.0, DeviceStatus.STANDBY, soc=0.5, soh=1.0, capacity_wh=100_000)
    e = AssetConfig(id="ev", map="vppsim_v2g_dc", rated_charge_w=11_000, rated_discharge_w=11_000, efficiency=0.95,
                    wear_price_per_kwh=10.0)  # fmt: skip
    ev = AssetState("ev", AssetKind.EV_CHARGER, e, available=True)
    ev.measurement = Measurement("ev", NOW, 0.0, DeviceStatus.CHARGING, soc=0.3, soh=1.0, capacity_wh=60_000,
                                 ev_connected=True, ev_target_soc=0.6, ev_min_soc=0.1,
                                 ev_departure=START + timedelta(hours=2))  # fmt: skip
    cfg = AppConfig.model_validate({"dispatch": {"step_s": 900, "horizon_steps": 8, "default_price_per_kwh": 20.0},
                                    "site": {"import_limit_w": 40_000, "export_limit_w": 40_000}})  # fmt: skip
    award = AsAward(id="a", product="FRR", block_start=START, block_end=START + timedelta(hours=2), up_w=40_000,
                    down_w=0)  # fmt: skip
    top = parsed(good(product="S-FRR", directions="up", capacity_price_per_kw_h=[MAX_CAPACITY_PRICE_PER_KW_H] * 4))
    book = {"as_award": {"a": award}, "as_offer": {"o": top}}
    plan = solve(plan_inputs(Fleet({"b": battery, "ev": ev}), cfg, NOW, book, 0.0)[0])
    assert plan.status == "optimal", plan.status
    assert plan.violations["reserve_short_kwh"] == pytest.approx(0, abs=1e-6)
    assert plan.violations["ev_short_kwh"] == pytest.approx(0, abs=1e-6)
    assert plan.violations["site_limit_excess_kwh"] == pytest.approx(0, abs=1e-6)
    assert plan.breakdown["reserve_revenue"] != 0  # the offer is bid where it does not crowd out the award


def test_what_the_status_page_lists_is_what_the_plan_prices() -> None:
    """build.offered_prices (the status page's reserve line) reads the book by plan_inputs' rule: the newer offer's
    side wins, an award's block is sold (not listed), and a step no offer covers lists nothing."""
    old = offer("old", capacity_price_per_kw_h=[5.0, 5.0])
    new = offer("new", directions="up", capacity_price_per_kw_h=[1.0, 1.0])
    award = AsAward(id="a", product="FRR", block_start=START, block_end=START + timedelta(minutes=30), up_w=4_000,
                    down_w=0)  # fmt: skip
    book = {"as_offer": {"old": old, "new": new}, "as_award": {"a": award}}
    inputs, _ = plan_inputs(Fleet({}), config(), NOW, book, 0.0)
    offered = next(r for r in inputs.reserves if not r.awarded_up_w.any())
    for step in range(6):
        listed = offered_prices(book, START + timedelta(minutes=15 * step), 900)
        up, down = offered.up_price_per_kw_h[step], offered.down_price_per_kw_h[step]
        assert listed == ([Offered("FRR", up, down)] if up or down else []), step
    assert offered_prices(book, START, 900) == []  # the award's block: sold
    assert offered_prices(book, START + timedelta(minutes=30), 900) == [Offered("FRR", 1.0, 5.0)]
