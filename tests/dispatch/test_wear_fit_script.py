"""evaluation/wearfit.py fits a tiny grid with BLAST-Lite and reproduces the shipped data file's numbers.

Runs only where the eval extra is installed (BLAST-Lite pins numpy<2 and ~60 packages, so the CI venv has none):
`.venv-eval/bin/python -m pytest tests/dispatch/test_wear_fit_script.py`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("blast.models", reason="BLAST-Lite is not installed: the fit needs the eval extra (CI has none)")
pytest.importorskip("matplotlib", reason="the fit script's figures need matplotlib (the eval extra)")

from evaluation import wearfit


def test_a_tiny_fit_reproduces_the_shipped_file(tmp_path: Path) -> None:
    out = tmp_path / "fits.json"
    assert wearfit.main(["--chemistries", "lfp", "--temperatures", "25", "--out", str(out),
                         "--plots", str(tmp_path / "img")]) == 0  # fmt: skip
    fresh = json.loads(out.read_text(encoding="utf-8"))["chemistries"]["lfp"]["fits"]
    shipped_text = resources.files("agent.dispatch.wear_fits").joinpath("fits.json").read_text(encoding="utf-8")
    shipped = json.loads(shipped_text)["chemistries"]["lfp"]["fits"]
    for source in ("blast", "xu"):
        for key in ("life_per_cycle", "shallow_life_per_cycle", "calendar_life_per_h", "calendar_convex_per_h"):
            assert np.allclose(fresh[source]["25"][key], shipped[source]["25"][key], rtol=1e-5), (source, key)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [
        "wear_calendar.png", "wear_cycle.png", "wear_shallow.png",
    ]  # fmt: skip


def test_the_fitted_blast_curve_is_what_blast_lite_says_of_a_year_of_cycles() -> None:
    """Independent of the script's chunk loop: BLAST-Lite's own simulate_battery_life on a year of daily cycles."""
    from blast import models

    days = 365
    one_t, one_s = wearfit.cycle_day(0.5)
    rest_t, rest_s = wearfit.cycle_day(0.0)

    def year(t: np.ndarray, s: np.ndarray) -> float:
        tt = np.concatenate([t[:-1] + 86400.0 * d for d in range(days)] + [[86400.0 * days]])
        ss = np.concatenate([s[:-1]] * days + [[s[-1]]])
        cell = models.Lfp_Gr_250AhPrismatic()
        cell.simulate_battery_life({"Time_s": tt, "SOC": ss, "Temperature_C": np.full(len(tt), 25.0)})
        return float(1 - cell.outputs["q"][-1])

    life = (year(one_t, one_s) - year(rest_t, rest_s)) / 0.2 / days
    fitted = wearfit.fit_blast("Lfp_Gr_250AhPrismatic", 25.0, wearfit.Grid(("lfp",), (25.0,), depths=(0.5,),
                               shallow_depths=(0.003,), calendar_socs=(0.4, 0.6)))["life_per_cycle"][0]  # fmt: skip
    assert fitted == pytest.approx(life, rel=0.01)  # 0.3 % here: the chunk loop is BLAST-Lite's own
