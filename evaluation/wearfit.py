"""Fit the planner's wear prices per chemistry to BLAST-Lite (and to Xu et al. 2018) and write the runtime's data file.

Run in the eval venv (docs/evaluation.md "Optional extra"; BLAST-Lite is never a runtime dependency):

    .venv-eval/bin/python -m evaluation.wearfit --plots docs/img

It writes `agent/dispatch/wear_fits/fits.json` (read by `agent.dispatch.wear_fits`) and, with `--plots`, the images
of docs/wear.md. Method (docs/wear.md says it at length): every number is the life a reference duty uses in the
pack's first year, by simulation of the cell model, as a fraction of the life to 20 % fade:

* cycle depth δ: one full cycle a day of depth δ centred on SoC 0.5 at 0.5 C, rest at 0.5 otherwise; its life per
  cycle is (fade of that year − fade of a year at rest at 0.5) / 20 % / 365. The planner's segments are increments
  of this curve over the window they span (agent.dispatch.degradation.segment_prices);
* shallow (regulation) swings of depth d: continuous triangle swings centred on 0.5 at the C-rate of the evaluation's
  RegD-like signal (mean |signal| 0.34 × 0.5 C = 0.17 C); life per swing likewise, net of the rest year;
* calendar: a year at constant SoC s; life per hour = fade / 20 % / 8760, fitted by least squares over 10–90 % twice:
  as a line in s (what EVs are priced with, linear in stored energy) and as the closest convex, non-decreasing
  piecewise-linear curve on the SoC grid (what stationary packs are priced with: convex, so the LP stays an LP).

BLAST-Lite simulates a series chunk by chunk (a chunk is a day or one equivalent full cycle, whichever is shorter);
the duty here is one such chunk repeated for 365 days, its stressors extracted once and the depth of discharge
rescaled by capacity each repetition, as BLAST-Lite's own energy-conserving loop does. Xu's model (sim_devices'
scorer) is evaluated analytically on the same grids; its life used is damage over the damage at 20 % fade.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.dispatch.degradation import damage_at_end_of_life
from sim_devices.degradation import K_CAL_PER_S, depth_stress, soc_stress, temperature_stress

# chemistry -> (BLAST-Lite 1.1.1 class, what it is)
CHEMISTRIES: dict[str, tuple[str, str]] = {
    "lfp": ("Lfp_Gr_250AhPrismatic", "LFP/graphite, 250 Ah prismatic (stationary storage cell), NREL 2019"),
    "nmc": ("Nmc111_Gr_Kokam75Ah_Battery", "NMC111/graphite, Kokam 75 Ah pouch, NREL 2017"),
    "nca": ("Nca_Gr_Panasonic3Ah_Battery", "NCA/graphite, Panasonic 3 Ah cylindrical, NREL 2018"),
    "second_life": ("Lmo_Gr_NissanLeaf66Ah_2ndLife_Battery", "LMO/graphite, Nissan Leaf 66 Ah modules in second life"),
}
TEMPERATURES_C = (10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0)
DEPTHS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SHALLOW_DEPTHS = (0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05)
CALENDAR_SOCS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CENTRE_SOC = 0.5
CYCLE_C_RATE = 0.5
REGULATION_C_RATE = 0.17
DAYS = 365
END_OF_LIFE_FADE = 0.2
# the residuals are stated for the planner's default use: 4 segments over the evaluation's 10-90 % window
CHECK_SEGMENTS, CHECK_WINDOW = 4, 0.8
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "agent" / "dispatch" / "wear_fits" / "fits.json"


@dataclass(frozen=True)
class Grid:
    """What to fit: the full grid, or a tiny one (tests)."""

    chemistries: tuple[str, ...]
    temperatures_c: tuple[float, ...]
    depths: tuple[float, ...] = DEPTHS
    shallow_depths: tuple[float, ...] = SHALLOW_DEPTHS
    calendar_socs: tuple[float, ...] = CALENDAR_SOCS
    days: int = DAYS


# -- BLAST-Lite ---------------------------------------------------------------------------------------------------


def blast_fade(cell: str, t_s: np.ndarray, soc: np.ndarray, temperature_c: float, days: float) -> float:
    """Capacity fade after repeating the chunk (t_s, soc) for `days` days, from a new cell (see module docstring)."""
    from blast import models

    model = getattr(models, cell)()
    temps = np.full(len(t_s), float(temperature_c))
    stress = model._extract_stressors(t_s, soc, temps)
    dod0 = float(stress["dod"])
    reps = max(1, round(days * 86400.0 / (t_s[-1] - t_s[0])))
    for _ in range(reps):
        stress["dod"] = min(dod0 / float(model.outputs["q"][-1]), 1.0)
        model.update_rates(stress)
        model.update_states(stress)
        model.update_outputs(stress)
    return float(1.0 - model.outputs["q"][-1])


def cycle_day(depth: float) -> tuple[np.ndarray, np.ndarray]:
    """One day: a full cycle of `depth` centred on CENTRE_SOC at CYCLE_C_RATE (down first), rest at the centre."""
    if depth <= 0:
        return np.array([0.0, 43200.0, 86400.0]), np.full(3, CENTRE_SOC)
    dur = 2 * depth / CYCLE_C_RATE * 3600.0
    corners_t = np.array([0.0, dur / 4, 3 * dur / 4, dur])
    corners_s = CENTRE_SOC + np.array([0.0, -depth / 2, depth / 2, 0.0])
    # sampled densely while cycling: BLAST-Lite's mean C-rate is a trapezoid over the samples
    t = np.unique(np.concatenate([np.linspace(0.0, dur, 41), [dur + 60.0, 43200.0, 86400.0]]))
    return t, np.interp(t, corners_t, corners_s)


def swing_chunk(depth: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Triangle swings of `depth` at REGULATION_C_RATE for one chunk (a day or one full cycle of throughput); the
    series and its number of swings."""
    swing_s = 2 * depth / REGULATION_C_RATE * 3600.0
    chunk_s = min(86400.0, 2.0 / REGULATION_C_RATE * 3600.0)
    n = max(1, round(chunk_s / swing_s))
    t = np.arange(4 * n + 1) * swing_s / 4
    pattern = np.array([0.0, -depth / 2, 0.0, depth / 2])
    return t, CENTRE_SOC + np.append(np.tile(pattern, n), 0.0), n


def fit_blast(cell: str, temperature_c: float, grid: Grid) -> dict[str, Any]:
    rest_t, rest_s = cycle_day(0.0)
    rest = blast_fade(cell, rest_t, rest_s, temperature_c, grid.days)
    life = []
    for depth in grid.depths:
        t, s = cycle_day(depth)
        life.append((blast_fade(cell, t, s, temperature_c, grid.days) - rest) / END_OF_LIFE_FADE / grid.days)
    raw = np.array(life)
    curve = np.maximum.accumulate(np.maximum(raw, 0.0))  # a deeper cycle contains a shallower one
    shallow = []
    for depth in grid.shallow_depths:
        t, s, n = swing_chunk(depth)
        reps = max(1, round(grid.days * 86400.0 / t[-1]))
        swings = n * reps
        fade = blast_fade(cell, t, s, temperature_c, reps * t[-1] / 86400.0)
        rest_same = blast_fade(cell, rest_t, rest_s, temperature_c, reps * t[-1] / 86400.0)
        shallow.append(max(fade - rest_same, 0.0) / END_OF_LIFE_FADE / swings)
    calendar = []
    for soc in grid.calendar_socs:
        t = np.array([0.0, 43200.0, 86400.0])
        calendar.append(blast_fade(cell, t, np.full(3, soc), temperature_c, grid.days) / END_OF_LIFE_FADE / 8760 /
                        (grid.days / 365))  # fmt: skip
    midpoints = [(a + b) / 2 for a, b in zip(grid.depths[:-1], grid.depths[1:], strict=True)]
    mid_model = []
    for depth in midpoints:
        t, s = cycle_day(depth)
        mid_model.append((blast_fade(cell, t, s, temperature_c, grid.days) - rest) / END_OF_LIFE_FADE / grid.days)
    interp = np.interp(midpoints, grid.depths, curve)
    mid = np.array(mid_model)
    depth_err = float(np.max(np.abs(interp - mid) / np.maximum(np.abs(mid), 1e-30))) if midpoints else 0.0
    out = _finish(grid, curve, np.array(shallow), np.array(calendar))
    out["residuals"]["depth_interpolation_max_rel_err"] = round(depth_err, 4)
    out["residuals"]["cycle_curve_clipped"] = bool(np.any(curve != raw))
    out["calendar_first_year_fade"] = round(float(np.interp(CENTRE_SOC, grid.calendar_socs, calendar)) * 8760 *
                                            END_OF_LIFE_FADE, 6)  # fmt: skip
    return out


# -- Xu -----------------------------------------------------------------------------------------------------------


def fit_xu(temperature_c: float, grid: Grid) -> dict[str, Any]:
    """Xu et al. 2018 as the simulator scores it: life per cycle S_δ(δ)·S_σ(0.5)·S_T(T) / f_EOL."""
    f_eol = damage_at_end_of_life()
    stress = soc_stress(CENTRE_SOC) * temperature_stress(temperature_c) / f_eol

    def life(depths: tuple[float, ...]) -> np.ndarray:
        return np.array([depth_stress(d) * stress for d in depths])

    calendar = np.array(
        [K_CAL_PER_S * 3600.0 * soc_stress(s) * temperature_stress(temperature_c) / f_eol for s in grid.calendar_socs]
    )
    out = _finish(grid, life(grid.depths), life(grid.shallow_depths), calendar)
    out["residuals"]["depth_interpolation_max_rel_err"] = round(_xu_interp_err(grid, stress), 4)
    return out


def _xu_interp_err(grid: Grid, stress: float) -> float:
    mids = [(a + b) / 2 for a, b in zip(grid.depths[:-1], grid.depths[1:], strict=True)]
    exact = np.array([depth_stress(d) * stress for d in mids])
    interp = np.interp(mids, grid.depths, [depth_stress(d) * stress for d in grid.depths])
    return float(np.max(np.abs(interp - exact) / exact)) if mids else 0.0


# -- common -------------------------------------------------------------------------------------------------------


def segment_cost_curve(depths: np.ndarray, curve: np.ndarray, query: np.ndarray, segments: int, window: float):
    """Life of a cycle of each `query` depth as the planner's convexified segments charge it (cheapest first)."""
    full_d = np.concatenate([[0.0], depths])
    full_c = np.concatenate([[0.0], curve])
    bounds = np.interp(window * np.arange(segments + 1) / segments, full_d, full_c)
    width = window / segments
    per_depth = np.maximum.accumulate(np.diff(bounds) / width)
    fill = np.clip(query[:, None] - width * np.arange(segments)[None, :], 0.0, width)
    return fill @ per_depth


def _finish(grid: Grid, curve: np.ndarray, shallow: np.ndarray, calendar: np.ndarray) -> dict[str, Any]:
    depths = np.array(grid.depths)
    socs = np.array(grid.calendar_socs)
    slope, base = np.polyfit(socs, calendar, 1)
    cal_fit = base + slope * socs
    cal_err = _max_rel_err(cal_fit, calendar)
    convex = convex_calendar(socs, calendar)
    inside = (depths >= CHECK_WINDOW / CHECK_SEGMENTS - 1e-12) & (depths <= CHECK_WINDOW + 1e-12)
    seg = segment_cost_curve(depths, curve, depths[inside], CHECK_SEGMENTS, CHECK_WINDOW)
    ref = curve[inside]
    seg_err = float(np.max(np.abs(seg - ref) / np.maximum(ref, 1e-30))) if inside.any() else 0.0
    return {
        "life_per_cycle": [_sig(x) for x in curve],
        "shallow_life_per_cycle": [_sig(x) for x in shallow],
        "calendar_life_per_h": [_sig(x) for x in calendar],
        "calendar_base_per_h": _sig(base),
        "calendar_slope_per_h": _sig(slope),
        "calendar_convex_per_h": [_sig(x) for x in convex],
        "residuals": {
            "segments_max_rel_err": round(seg_err, 4),
            "calendar_linear_max_rel_err": round(cal_err, 4),
            "calendar_convex_max_rel_err": round(_max_rel_err(convex, calendar), 4),
        },
    }


def _max_rel_err(fitted: np.ndarray, model: np.ndarray) -> float:
    """The largest gap between a fitted calendar curve and the model's points, over the points' mean."""
    return float(np.max(np.abs(fitted - model)) / np.mean(model)) if np.mean(model) > 0 else 0.0


def convex_calendar(socs: np.ndarray, calendar: np.ndarray) -> np.ndarray:
    """The least-squares fit to `calendar` (life per hour at each SoC of `socs`) among curves that are convex and
    non-decreasing in SoC, as values at `socs` (linear between them at runtime).

    Convex because the LP can price a convex cost of stored energy exactly (one variable per knee and step) and
    nothing else; non-decreasing because a negative price of a Wh held would pay the planner to keep packs full. A
    model that is convex already (Xu's exponential SoC stress, BLAST-Lite's NMC) is reproduced up to its curvature
    between grid points; one that bends the other way (BLAST-Lite's LFP around SoC 0.5) gets its closest convex
    curve, whose residual the data file records."""
    from scipy.optimize import nnls

    # every such curve is f0 + Σ_j a_j·max(0, s − s_j) over the knees s_0 … s_{n−2} with every a_j ≥ 0 (a_0 the first
    # slope, a_j the bend at s_j): a non-negative least-squares problem, with f0 = p − q split into two non-negatives
    knees = np.maximum(socs[:, None] - socs[None, :-1], 0.0)
    basis = np.column_stack([np.ones(len(socs)), -np.ones(len(socs)), knees])
    scale = float(np.mean(calendar)) or 1.0  # numbers near 1 for the solver, not 1e-6
    weights, _ = nnls(basis, calendar / scale)
    return basis @ weights * scale


def _sig(x: float) -> float:
    return float(f"{float(x):.6g}")


def fit_all(grid: Grid, log=print) -> dict[str, Any]:
    """The data file's content for `grid`."""
    import blast

    chems: dict[str, Any] = {}
    for name in grid.chemistries:
        cell, what = CHEMISTRIES[name]
        fits: dict[str, dict[str, Any]] = {"blast": {}, "xu": {}}
        for temp in grid.temperatures_c:
            started = time.monotonic()
            fits["blast"][f"{temp:g}"] = fit_blast(cell, temp, grid)
            fits["xu"][f"{temp:g}"] = fit_xu(temp, grid)
            log(f"{name} {temp:g} °C: {time.monotonic() - started:.1f} s")
        chems[name] = {"blast_class": cell, "cell": what, "fits": fits}
    return {
        "generated_by": "python -m evaluation.wearfit",
        "blast_lite_version": getattr(blast, "__version__", "1.1.1"),
        "method": (
            "life used in the pack's first year by a reference duty, simulated; life = BLAST-Lite fade / 20 % "
            "(Xu: damage / damage at 20 % fade). Cycle depth: one cycle a day centred on SoC 0.5 at 0.5 C, net of a "
            "year at rest at 0.5, per cycle; curve made non-decreasing. Shallow: continuous triangle swings at 0.17 C "
            "centred on 0.5, net of rest, per swing. Calendar: a year at constant SoC, per hour, least-squares line "
            "over SoC 0.1-0.9 and least-squares convex non-decreasing curve on the SoC grid. Runtime: linear in depth "
            "and temperature, linear in log depth for shallow swings."
        ),
        "reference": {
            "centre_soc": CENTRE_SOC,
            "cycle_c_rate": CYCLE_C_RATE,
            "regulation_c_rate": REGULATION_C_RATE,
            "days": grid.days,
            "end_of_life_fade": END_OF_LIFE_FADE,
            "residual_check": {"segments": CHECK_SEGMENTS, "window": CHECK_WINDOW},
        },
        "temperatures_c": list(grid.temperatures_c),
        "depths": list(grid.depths),
        "shallow_depths": list(grid.shallow_depths),
        "calendar_socs": list(grid.calendar_socs),
        "chemistries": chems,
    }


# -- figures ------------------------------------------------------------------------------------------------------

# the figures' pack: the evaluation's (100 kWh, 30,000 JPY/kWh, η 0.95)
PLOT_COST_PER_KWH, PLOT_EFFICIENCY = 30_000.0, 0.95


def plot(data: dict[str, Any], out_dir: Path, temperature_c: float = 25.0) -> list[Path]:
    """docs/wear.md's images: cycle cost vs depth, shallow price vs swing depth, calendar cost vs SoC and T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    key = f"{temperature_c:g}"
    depths = np.array(data["depths"])
    chems = list(data["chemistries"])
    per_kwh = PLOT_COST_PER_KWH / PLOT_EFFICIENCY  # life fraction per unit depth -> JPY per kWh discharged
    paths = []

    fig, axes = plt.subplots(1, len(chems), figsize=(4.2 * len(chems), 3.6), squeeze=False)
    fine = np.linspace(0.01, 1.0, 200)
    for ax, name in zip(axes[0], chems, strict=True):
        for source, style in (("blast", "o"), ("xu", "s")):
            curve = np.array(data["chemistries"][name]["fits"][source][key]["life_per_cycle"])
            ax.plot(depths, per_kwh * curve / depths, style, ms=4, label=f"{source} model (per cycle)")
            for window, ls in ((CHECK_WINDOW, "-"), (1.0, ":")):
                seg = segment_cost_curve(depths, curve, fine[fine <= window], CHECK_SEGMENTS, window)
                ax.plot(fine[fine <= window], per_kwh * seg / fine[fine <= window], ls,
                        label=f"{source} {CHECK_SEGMENTS} segments, window {window:g}")  # fmt: skip
        ax.set_title(f"{name} ({data['chemistries'][name]['blast_class']}), {key} °C", fontsize=8)
        ax.set_xlabel("cycle depth (fraction of usable energy)")
        ax.set_ylabel("JPY per kWh discharged")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    paths.append(out_dir / "wear_cycle.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    sd = np.array(data["shallow_depths"])
    for name in chems:
        for source, ls in (("blast", "-o"), ("xu", "--s")):
            life = np.array(data["chemistries"][name]["fits"][source][key]["shallow_life_per_cycle"])
            if source == "xu" and name != chems[0]:
                continue  # Xu is the same for every chemistry
            ax.plot(sd, per_kwh * life / sd, ls, ms=4, label=f"{name if source == 'blast' else 'Xu (all)'}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("swing depth (fraction of usable energy)")
    ax.set_ylabel("JPY per kWh discharged")
    ax.set_title(f"shallow (regulation) swings at {REGULATION_C_RATE} C, {key} °C", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "wear_shallow.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    socs = np.array(data["calendar_socs"])
    temps = np.array(data["temperatures_c"])
    pack = PLOT_COST_PER_KWH * 100.0  # JPY, the 100 kWh pack
    for name in chems:
        fits = data["chemistries"][name]["fits"]["blast"]
        f = fits[key]
        (line,) = ax1.plot(socs, pack * np.array(f["calendar_life_per_h"]) * 24, "o", ms=4, label=f"{name} BLAST")
        ax1.plot(socs, pack * (f["calendar_base_per_h"] + f["calendar_slope_per_h"] * socs) * 24, ":",
                 color=line.get_color(), label=f"{name} line (EVs)")  # fmt: skip
        ax1.plot(socs, pack * np.array(f["calendar_convex_per_h"]) * 24, "-", color=line.get_color(),
                 label=f"{name} convex (stationary)")  # fmt: skip
        mid = [np.interp(0.5, socs, fits[f"{t:g}"]["calendar_life_per_h"]) for t in temps]
        ax2.plot(temps, pack * np.array(mid) * 24, "-o", ms=4, color=line.get_color(), label=f"{name} BLAST")
    xu = data["chemistries"][chems[0]]["fits"]["xu"]
    ax1.plot(socs, pack * np.array(xu[key]["calendar_life_per_h"]) * 24, "k--", label="Xu")
    ax2.plot(temps, [pack * np.interp(0.5, socs, xu[f"{t:g}"]["calendar_life_per_h"]) * 24 for t in temps], "k--",
             label="Xu")  # fmt: skip
    ax1.set_xlabel("SoC")
    ax1.set_ylabel("JPY per day (3 M JPY pack), first year")
    ax1.set_title(f"calendar ageing at {key} °C", fontsize=9)
    ax2.set_xlabel("pack temperature (°C)")
    ax2.set_title("calendar ageing at SoC 0.5", fontsize=9)
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.legend(fontsize=6)
    fig.tight_layout()
    paths.append(out_dir / "wear_calendar.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def summary(data: dict[str, Any], temperature_c: float = 25.0) -> str:
    """docs/wear.md's table: the planner's prices for the figures' pack (100 kWh, 30,000 JPY/kWh, η 0.95, SoH 1)."""
    from agent.dispatch.degradation import calendar_bends, calendar_price_per_wh_h, segment_prices, shallow_cycle_price
    from agent.dispatch.wear_fits import WearFit

    rows = [
        "| chemistry | source | segments, 10-90 % window (JPY/kWh) | shallow, 0.3 % swings (JPY/kWh) | calendar "
        "(JPY per kWh held a day): line; convex at SoC 0.15 / 0.5 / 0.85 | calendar life used, year 1 at SoC 0.5 | "
        "residuals: segments / calendar line / calendar convex / depth interp. |",
        "|---|---|---|---|---|---|---|",
    ]
    key = f"{temperature_c:g}"
    pack_wh, cost = 100_000.0, PLOT_COST_PER_KWH * 100.0
    for name, chem in data["chemistries"].items():
        for source in SOURCES_ORDER:
            f = chem["fits"][source][key]
            model = WearFit(
                name, source, temperature_c, np.concatenate([[0.0], data["depths"]]),
                np.concatenate([[0.0], f["life_per_cycle"]]), np.array(data["shallow_depths"]),
                np.array(f["shallow_life_per_cycle"]), f["calendar_base_per_h"], f["calendar_slope_per_h"],
                np.array(data["calendar_socs"]), np.array(f["calendar_convex_per_h"]),
            )  # fmt: skip
            seg = segment_prices(cost, pack_wh, 1.0, PLOT_EFFICIENCY, CHECK_SEGMENTS, window=CHECK_WINDOW, model=model)
            shallow = shallow_cycle_price(cost, pack_wh, 1.0, PLOT_EFFICIENCY, 0.003, model=model)
            cal = calendar_price_per_wh_h(cost, pack_wh, model=model) * 1000 * 24
            base, bends = calendar_bends(cost, pack_wh, model)
            convex = [(base + sum(x for knee, x in bends if soc * pack_wh > knee)) * 1000 * 24
                      for soc in (0.15, 0.5, 0.85)]  # fmt: skip
            life = np.interp(CENTRE_SOC, data["calendar_socs"], f["calendar_life_per_h"]) * 8760
            r = f["residuals"]
            rows.append(
                f"| {name} | {source} | {' / '.join(f'{x:.2f}' for x in seg)} | {shallow:.2f} | {cal:.2f}; "
                f"{' / '.join(f'{x:.2f}' for x in convex)} | {100 * life:.1f} % | "
                f"{100 * r['segments_max_rel_err']:.1f} % / {100 * r['calendar_linear_max_rel_err']:.1f} % / "
                f"{100 * r['calendar_convex_max_rel_err']:.1f} % / {100 * r['depth_interpolation_max_rel_err']:.1f} % |"
            )
    return "\n".join(rows)


SOURCES_ORDER = ("blast", "xu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.wearfit", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the data file to write")
    parser.add_argument("--plots", type=Path, default=None, help="directory for docs/wear.md's images")
    parser.add_argument("--chemistries", default=",".join(CHEMISTRIES))
    parser.add_argument("--temperatures", default=",".join(f"{t:g}" for t in TEMPERATURES_C))
    parser.add_argument("--days", type=int, default=DAYS, help="length of the reference duty (tests shorten it)")
    parser.add_argument("--replot", action="store_true", help="draw --plots from the existing --out file, no fit")
    parser.add_argument("--table", action="store_true", help="print docs/wear.md's table of the existing --out file")
    args = parser.parse_args(argv)
    if args.table:
        print(summary(json.loads(args.out.read_text(encoding="utf-8"))))
        return 0
    if args.replot:
        if args.plots is None:
            print("--replot needs --plots DIR", file=sys.stderr)
            return 2
        for path in plot(json.loads(args.out.read_text(encoding="utf-8")), args.plots):
            print(f"wrote {path}")
        return 0
    try:
        import blast.models  # noqa: F401
    except ImportError:
        print("evaluation.wearfit needs BLAST-Lite: install the eval extra (docs/evaluation.md)", file=sys.stderr)
        return 2
    chems = tuple(c.strip() for c in args.chemistries.split(",") if c.strip())
    unknown = [c for c in chems if c not in CHEMISTRIES]
    if unknown:
        print(f"--chemistries: unknown {', '.join(unknown)} (one of {', '.join(CHEMISTRIES)})", file=sys.stderr)
        return 2
    temps = tuple(float(t) for t in args.temperatures.split(","))
    if any(math.isnan(t) for t in temps):
        print("--temperatures: not a number", file=sys.stderr)
        return 2
    data = fit_all(Grid(chems, temps, days=args.days), log=lambda m: print(m, file=sys.stderr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if args.plots is not None:
        for path in plot(data, args.plots):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
