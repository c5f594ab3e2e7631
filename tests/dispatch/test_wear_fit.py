"""The runtime's per-chemistry wear prices come from the fitted data file (no BLAST-Lite needed to read it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from agent.config import ConfigError, parse_config
from agent.dispatch import wear_fits
from agent.dispatch.degradation import (
    calendar_base_cost_per_h,
    calendar_price_per_wh_h,
    segment_prices,
    shallow_cycle_price,
)
from agent.dispatch.wear_fits import fit

R, NOMINAL_WH, ETA = 3_000_000.0, 100_000.0, 0.95


def raw() -> dict:
    """The data file as shipped, read independently of the loader under test."""
    return json.loads(resources.files("agent.dispatch.wear_fits").joinpath("fits.json").read_text(encoding="utf-8"))


def test_the_file_holds_both_sources_for_every_chemistry_and_temperature() -> None:
    data = raw()
    assert {"lfp", "nmc", "nca", "second_life"} <= set(data["chemistries"])
    for chem in data["chemistries"].values():
        assert chem["blast_class"]
        for source in ("blast", "xu"):
            for t in data["temperatures_c"]:
                entry = chem["fits"][source][f"{t:g}"]
                assert len(entry["life_per_cycle"]) == len(data["depths"])
                assert len(entry["shallow_life_per_cycle"]) == len(data["shallow_depths"])
                assert "segments_max_rel_err" in entry["residuals"]


def test_each_chemistry_names_the_blast_lite_class_it_was_fitted_to() -> None:
    assert wear_fits.blast_class() == "Lfp_Gr_250AhPrismatic"  # the default chemistry's
    assert wear_fits.blast_class("second_life") == "Lmo_Gr_NissanLeaf66Ah_2ndLife_Battery"
    with pytest.raises(ValueError, match="unknown battery chemistry 'lto'"):
        wear_fits.blast_class("lto")


def test_a_known_cycle_is_priced_to_the_value_in_the_file() -> None:
    entry = raw()["chemistries"]["nmc"]["fits"]["blast"]["25"]
    depths = raw()["depths"]
    life_08 = entry["life_per_cycle"][depths.index(0.8)]
    # one segment over a 0.8 window: a full-window cycle costs exactly the fitted life of a 0.8-deep cycle
    (price,) = segment_prices(R, NOMINAL_WH, 1.0, ETA, 1, window=0.8, model=fit("nmc", 25.0, "blast"))
    assert price * 0.8 * NOMINAL_WH / 1000 * ETA == pytest.approx(R * life_08, rel=1e-12)
    shallow = entry["shallow_life_per_cycle"][raw()["shallow_depths"].index(0.003)]
    got = shallow_cycle_price(R, NOMINAL_WH, 1.0, ETA, 0.003, model=fit("nmc", 25.0, "blast"))
    assert got == pytest.approx(R * shallow / (0.003 * NOMINAL_WH / 1000 * ETA), rel=1e-12)
    cal = calendar_price_per_wh_h(R, NOMINAL_WH, model=fit("nmc", 25.0, "blast"))
    assert cal == pytest.approx(R * entry["calendar_slope_per_h"] / NOMINAL_WH, rel=1e-12)
    assert calendar_base_cost_per_h(R, model=fit("nmc", 25.0, "blast")) == pytest.approx(
        R * entry["calendar_base_per_h"], rel=1e-12
    )


def test_temperature_is_interpolated_between_fitted_points() -> None:
    fits = raw()["chemistries"]["lfp"]["fits"]["blast"]
    mid = fit("lfp", 27.5, "blast")
    expected = (np.array(fits["25"]["life_per_cycle"]) + np.array(fits["30"]["life_per_cycle"])) / 2
    assert np.allclose(mid.life_per_cycle[1:], expected, rtol=1e-12)
    assert fit("lfp", 40.0, "blast").calendar_base_per_h > fit("lfp", 25.0, "blast").calendar_base_per_h  # warmer ages
    assert mid.calendar_slope_per_h == pytest.approx(
        (fits["25"]["calendar_slope_per_h"] + fits["30"]["calendar_slope_per_h"]) / 2
    )


def test_the_default_is_lfp_at_25_c_fitted_to_blast_lite() -> None:
    default, explicit = fit(), fit("lfp", 25.0, "blast")
    assert (default.chemistry, default.source, default.temperature_c) == ("lfp", "blast", 25.0)
    assert np.array_equal(default.life_per_cycle, explicit.life_per_cycle)
    assert parse_config('[[assets]]\nid = "b"\nmap = "x"\n').assets[0].chemistry is None  # resolved by fit()


def test_the_xu_fit_reproduces_the_analytic_xu_prices() -> None:
    # at the fitted depths the tabulated Xu curve is Xu's own: same segment and shallow prices as the analytic path
    for chem in wear_fits.chemistries():
        xu = fit(chem, 25.0, "xu")
        assert np.allclose(
            segment_prices(R, NOMINAL_WH, 1.0, ETA, 4, window=0.8, model=xu),
            segment_prices(R, NOMINAL_WH, 1.0, ETA, 4, window=0.8),
            rtol=1e-5,
        )
        assert shallow_cycle_price(R, NOMINAL_WH, 1.0, ETA, 0.003, model=xu) == pytest.approx(
            shallow_cycle_price(R, NOMINAL_WH, 1.0, ETA, 0.003), rel=1e-5
        )


def test_segments_are_priced_for_the_window_they_span() -> None:
    whole = segment_prices(R, NOMINAL_WH, 1.0, ETA, 1)  # Xu, segments over the whole pack
    window = segment_prices(R, NOMINAL_WH, 1.0, ETA, 1, window=0.8)
    # a full 10-90 % cycle moves 80 kWh: priced by the window it costs Φ(0.8), by the whole pack's rate 1.58x that
    assert whole[0] / window[0] == pytest.approx(1.58, abs=0.01)


def test_an_aged_pack_costs_more_per_kwh_in_every_source() -> None:
    for source in wear_fits.SOURCES:
        model = fit("lfp", 25.0, source)
        new = segment_prices(R, NOMINAL_WH, 1.0, ETA, 4, window=0.8, model=model)
        aged = segment_prices(R, NOMINAL_WH, 0.8, ETA, 4, window=0.8, model=model)
        assert np.allclose(aged, new / 0.8)
        assert np.all(np.diff(new) >= 0)  # convex: an LP without binaries


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('chemistry = "lead_acid"', "assets[0].chemistry: unknown battery chemistry 'lead_acid': one of lfp, nmc"),
        ("temperature_c = 70", "assets[0].temperature_c: pack temperature 70.0 °C is outside the fitted range 10..45"),
    ],
)
def test_a_bad_chemistry_or_temperature_in_config_is_a_clear_error(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f'[[assets]]\nid = "b"\nmap = "x"\n{line}\n')
    assert message in str(err.value)


def test_a_fitted_chemistry_and_temperature_in_config_are_accepted() -> None:
    asset = parse_config('[[assets]]\nid = "b"\nmap = "x"\nchemistry = "second_life"\ntemperature_c = 32.5\n').assets[0]
    assert (asset.chemistry, asset.temperature_c) == ("second_life", 32.5)
    assert fit(asset.chemistry, asset.temperature_c).chemistry == "second_life"


def test_an_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown wear source 'rainflow': one of blast, xu"):
        fit("lfp", 25.0, "rainflow")


@pytest.mark.skipif(importlib.util.find_spec("blast") is not None, reason="BLAST-Lite is installed here: the fit runs")
def test_without_blast_lite_the_fit_script_says_what_to_install(tmp_path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "evaluation.wearfit", "--out", str(tmp_path / "fits.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "needs BLAST-Lite: install the eval extra" in run.stderr
    assert not (tmp_path / "fits.json").exists()
