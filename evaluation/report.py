"""The results tables of an evaluation (rich) and the goals, as the `simulate` command prints them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from evaluation.evaluate import best_constant

if TYPE_CHECKING:
    from evaluation.evaluate import Evaluation

SCORER_NAMES = {"xu": "Xu", "blast": "BLAST"}


def _yen(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}"


def results_table(evaluation: Evaluation) -> Table:
    c = evaluation.config
    scorers = evaluation.scorers
    table = Table(
        title=(
            f"{c.days} days, seed {c.seed}, fleet {c.fleet} ({c.chemistry.upper()}), step {c.step_s:.0f} s, {c.area} "
            f"prices, regulation median {c.regulation_median_per_kw_h:g}, replacement {c.replacement_cost_per_kwh:,.0f}"
            f"/kWh, price error {c.price_error:g} (JPY; battery wear valued as replacement cost x fade / 20 %)"
        ),
    )
    columns = ["strategy", "energy net", "up-DR", "regulation", "EV wear+pen.", "cash"]
    for s in scorers:
        name = SCORER_NAMES.get(s, s)
        columns += [f"degr. {name}", f"net {name}", f"gain {name}", f"fade % {name}"]
    columns += ["bat. kWh out", "EV short kWh", "envelope cuts", "solves"]
    for name in columns:
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for r in evaluation.results.values():
        row = [r.name, _yen(r.energy_net), _yen(r.updr_revenue), _yen(r.regulation_revenue),
               _yen(r.ev_wear_paid + r.ev_penalty), _yen(r.cash)]
        for s in scorers:
            gain = None if r.gain_over_uncontrolled is None else r.gain_over_uncontrolled[s]
            row += [_yen(r.battery_degradation[s]), _yen(r.net_value[s]), _yen(gain), _pct(r.fade[s])]
        row += [
            f"{r.battery_discharged_kwh:,.0f}",
            f"{r.ev_shortfall_kwh:.1f}",
            f"{r.envelope_cuts}" + (f" (+{r.envelope_band_cuts} bands)" if r.envelope_band_cuts else ""),
            f"{r.solves}" + (f" ({r.solve_failures} failed)" if r.solve_failures else ""),
        ]
        table.add_row(*row)
    return table


def goals_lines(evaluation: Evaluation) -> list[str]:
    lines = []
    for s in evaluation.scorers:
        best = best_constant(evaluation.results, s)
        if best is not None:
            lines.append(f"hindsight-best constant on the {SCORER_NAMES.get(s, s)} scorer (tuned on that scorer, "
                         f"over the constants run): {best}")
    for g in evaluation.goals:
        figures = {
            "beats blind by >= 20 %": f"{_pct(g.over_blind, 1)} %",
            "beats hindsight-best constant by >= 3 %": f"{_pct(g.over_best_const, 1)} % vs {g.best_const or '-'}",
            ">= 30 % less fade than blind": f"{_pct(g.fade_reduction_vs_blind, 1)} % less",
        }
        for goal, met in g.met().items():
            verdict = "n/a" if met is None else ("met" if met else "NOT met")
            lines.append(f"{g.aware} [{SCORER_NAMES.get(g.scorer, g.scorer)} scorer] {goal}: {verdict} "
                         f"({figures[goal]})")
    return lines


def print_report(evaluation: Evaluation, console: Console | None = None) -> None:
    console = console or Console(width=240)
    console.print(results_table(evaluation))
    for line in goals_lines(evaluation):
        console.print(line)
    console.print(f"BLAST-Lite: {'used' if evaluation.blast else 'not installed (optional eval extra)'}; "
                  f"wall {evaluation.wall_s:.1f} s")
