"""The results table of an evaluation (rich), and the goals line, as the `simulate` command prints them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from agent.dispatch.evaluate import Evaluation


def _yen(value: float) -> str:
    return f"{value:,.0f}"


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}"


def results_table(evaluation: Evaluation) -> Table:
    c = evaluation.config
    table = Table(
        title=f"{c.days} days, seed {c.seed}, fleet {c.fleet}, step {c.step_s:.0f} s, {c.area} prices (JPY)",
    )
    columns = ["strategy", "energy net", "up-DR", "regulation", "reg. score",
               "battery degr.", "EV wear paid", "EV penalty", "net value",
               "gain vs uncontrolled", "fade % (Xu)", "fade % (BLAST)", "EV short kWh", "bat. kWh out", "solves"]
    for name in columns:
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for r in evaluation.results.values():
        blast = [b.blast_fade for b in r.batteries]
        blast_text = "-" if not blast or any(f is None for f in blast) else " / ".join(_pct(f) for f in blast)
        table.add_row(
            r.name,
            _yen(r.energy_net),
            _yen(r.updr_revenue),
            _yen(r.regulation_revenue),
            "-" if r.regulation_score is None else f"{r.regulation_score:.3f}",
            _yen(r.battery_degradation),
            _yen(r.ev_wear_paid),
            _yen(r.ev_penalty),
            _yen(r.net_value),
            _yen(r.gain_over_uncontrolled or 0.0),
            " / ".join(_pct(b.fade) for b in r.batteries) or "-",
            blast_text,
            f"{r.ev_shortfall_kwh:.1f}",
            f"{r.battery_discharged_kwh:,.0f}",
            f"{r.solves}" + (f" ({r.solve_failures} failed)" if r.solve_failures else ""),
        )
    return table


def goals_lines(evaluation: Evaluation) -> list[str]:
    g = evaluation.goals
    figures = {
        "aware >= 97 % of oracle": _pct(g.aware_share_of_oracle, 1) + " % of the oracle's gain",
        "aware beats blind by >= 20 %": _pct(g.aware_over_blind, 1) + " % more gain than blind",
        ">= 30 % less fade than blind": _pct(g.fade_reduction_vs_blind, 1) + " % less fade (Xu)",
    }
    lines = []
    for goal, met in g.met().items():
        verdict = "n/a" if met is None else ("met" if met else "NOT met")
        lines.append(f"{goal}: {verdict} ({figures[goal]})")
    return lines


def print_report(evaluation: Evaluation, console: Console | None = None) -> None:
    console = console or Console(width=200)
    console.print(results_table(evaluation))
    for line in goals_lines(evaluation):
        console.print(line)
    console.print(f"BLAST-Lite: {'used' if evaluation.blast else 'not installed (optional eval extra)'}; "
                  f"wall {evaluation.wall_s:.1f} s")
