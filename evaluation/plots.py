"""Figures of an evaluation, drawn from the per-step series every StrategyResult carries (the same series `--out`
writes): cumulative net value over the uncontrolled reference, battery SoC and capacity fade, per strategy and per
scorer. matplotlib is optional (the `plot` extra); without it `write_plots` raises PlotError naming the extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from evaluation.evaluate import Evaluation, StrategyResult

SCORER_NAMES = {"xu": "Xu (simulator)", "blast": "BLAST-Lite"}
FORMATS = ("png", "svg")


class PlotError(ValueError):
    """The plots cannot be drawn (matplotlib missing, or the directory unusable); the message says which."""


def require_matplotlib():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the file-only backend; PlotError naming the extra when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a gateway or in CI
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'vpp-agent[plot]'") from None
    return plt


def _days(r: StrategyResult) -> np.ndarray:
    return np.asarray(r.series["t_h"], dtype=float) / 24.0


def _mean_over_packs(per_pack: dict[str, list[float]]) -> np.ndarray:
    return np.mean([np.asarray(v, dtype=float) for v in per_pack.values()], axis=0)


def write_plots(evaluation: Evaluation, directory: str | Path) -> list[Path]:
    """Write net_value, soc and fade as PNG and SVG into `directory` (created if missing); returns the files."""
    plt = require_matplotlib()
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlotError(f"--plot {directory}: cannot create the directory: {exc.strerror}") from None
    results = evaluation.results
    scorers = evaluation.scorers
    reference = results.get("uncontrolled")
    c = evaluation.config
    title = f"{c.days} d, seed {c.seed}, fleet {c.fleet} ({c.chemistry.upper()}), step {c.step_s:.0f} s"
    written: list[Path] = []

    def save(fig: object, stem: str) -> None:
        for fmt in FORMATS:
            path = out / f"{stem}.{fmt}"
            fig.savefig(path, dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
            written.append(path)
        plt.close(fig)

    fig, axes = plt.subplots(1, len(scorers), figsize=(6.5 * len(scorers), 4.2), squeeze=False)
    for ax, s in zip(axes[0], scorers, strict=True):
        base = np.asarray(reference.series["net"][s]) if reference is not None else 0.0
        for r in results.values():
            ax.plot(_days(r), np.asarray(r.series["net"][s]) - base, label=r.name, lw=1.2)
        ax.set_title(f"wear scored by {SCORER_NAMES.get(s, s)}")
        ax.set_xlabel("day")
        ax.set_ylabel("cumulative net value over uncontrolled, JPY")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    save(fig, "net_value")

    fig, ax = plt.subplots(figsize=(9, 4))
    for r in results.values():
        if r.series["soc"]:
            ax.plot(_days(r), _mean_over_packs(r.series["soc"]), label=r.name, lw=0.9)
    ax.set_xlabel("day")
    ax.set_ylabel("battery SoC (mean of packs)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    save(fig, "soc")

    fig, axes = plt.subplots(1, len(scorers), figsize=(6.5 * len(scorers), 4.2), squeeze=False)
    for ax, s in zip(axes[0], scorers, strict=True):
        for r in results.values():
            fades = r.series["fade"].get(s, {})
            if fades:
                ax.plot(_days(r), 100.0 * _mean_over_packs(fades), label=r.name, lw=1.2)
        ax.set_title(f"capacity fade, {SCORER_NAMES.get(s, s)}")
        ax.set_xlabel("day")
        ax.set_ylabel("fade %, mean of packs")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    save(fig, "fade")
    return written
