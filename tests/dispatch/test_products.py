"""One product table (agent.products): the planner's durations and symmetric bands, and the signal schema's product
names, are read from it."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from agent.dispatch.inputs import PRODUCT_DURATION_S, SYMMETRIC_PRODUCTS, Reserve, product_duration_h
from agent.products import PRODUCTS, product
from agent.signals.models import AsProduct


def test_the_signal_schema_names_the_tables_japanese_products() -> None:
    assert set(get_args(AsProduct)) == {name for name, p in PRODUCTS.items() if p.market == "JP"}


def test_the_planner_reads_durations_and_bands_from_the_table() -> None:
    assert {name: p.sustain_s for name, p in PRODUCTS.items()} == PRODUCT_DURATION_S
    assert {"RegD"} == SYMMETRIC_PRODUCTS
    zeros = np.zeros(1)
    assert Reserve("S-FRR", zeros, zeros, zeros, zeros).duration_h == pytest.approx(0.5)
    assert product_duration_h("FCR") == pytest.approx(5 / 60)


def test_an_unknown_product_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown reserve product 'XFR'; known: FCR"):
        product("XFR")


def test_the_tables_regd_swing_is_the_generators() -> None:
    # the planner prices regulation's shallow cycles at this swing (agent.dispatch.build); it is a fact of the
    # evaluation's RegD-like signal, measured here on three seeds (a week at 10 s each) so the two cannot drift:
    # within 3 % of every seed (the seeds themselves spread 0.0060-0.0062 h)
    from sim_devices.scenarios.regulation import regulation_values, swing_h

    table = product("RegD").swing_h
    assert table is not None
    for seed in (1, 2, 3):
        assert table == pytest.approx(swing_h(regulation_values(7 * 86_400, seed, 10.0), 10.0), rel=0.03)


def test_only_regulation_swings() -> None:
    assert {name for name, p in PRODUCTS.items() if p.swing_h is not None} == {"RegD"}


def test_the_tables_regd_activation_is_the_generators() -> None:
    # an offer without an activation of its own is priced at this (agent.signals.models.AsOffer); it is the mean of
    # the signal's positive part, as evaluation.scenario computes it, measured on three seeds (a week at 10 s each):
    # within 2 % of every seed (the seeds themselves spread 0.1710-0.1714)
    from sim_devices.scenarios.regulation import regulation_values

    table = product("RegD").activation_per_h
    assert table is not None
    for seed in (1, 2, 3):
        assert table == pytest.approx(
            float(np.maximum(regulation_values(7 * 86_400, seed, 10.0), 0.0).mean()), rel=0.02
        )


def test_only_regulation_has_an_activation_figure() -> None:
    assert {name for name, p in PRODUCTS.items() if p.activation_per_h is not None} == {"RegD"}
