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
