"""M&V reports of completed events, from the site-meter readings taken while they were active.

Up-DR: delivered energy per settlement interval against that interval's baseline (the guideline settles per
interval; a shortfall in one interval is not offset by a surplus in another). Awards: energy moved up and down
against the baseline, the PJM-style performance score of the response to the activation signal, and how long the
response took to follow each activation step against the product's allowed response time.

Readings are held until the next one, at most `max_hold_s` (agent.events.mv.intervals), so a silent meter is not
credited with delivery it did not measure.

Beside the site meter's figures (the settlement of record), `asset_energy_report` lists each asset's own account of
its energy per interval of the event window (an OCPP EVSE's transaction registers, booked to the interval they were
measured in): attribution, which may be amended after the event when a station sends what it queued offline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from agent.events.mv.intervals import IntervalMeter
from agent.events.mv.performance import SAMPLE_S, score

Report = dict[str, object]
STEP_MIN = 0.1  # steps of the activation smaller than this (of capacity) are not judged for response time
HOLD_TOL = 0.05  # the activation counts as holding a value while it stays this close to it (of capacity)
SETTLED = 0.1  # a step counts as followed once the response is this close to its value (of capacity)


def updr_report(
    samples: Sequence[tuple[float, float]],
    baseline_at: Callable[[float], float],
    increase_w: float,
    interval_s: float,
    max_hold_s: float,
    start_ts: float,
    end_ts: float,
) -> Report:
    """Requested energy counts over the whole window: time the meter did not cover is delivery not shown."""
    window_s = max(0.0, end_ts - start_ts)
    requested = increase_w * window_s / 3.6e6
    if len(samples) < 2:
        return {"samples": len(samples), "requested_kwh": round(requested, 4), "delivered_kwh": 0.0,
                "delivered_fraction": 0.0, "note": "fewer than 2 meter readings while active"}  # fmt: skip
    meter = IntervalMeter(interval_s, max_hold_s)
    closed = []
    for ts, watts in samples:
        closed += meter.add(ts, watts)
    closed += meter.flush(until_ts=end_ts)
    if not closed:
        return {"samples": len(samples), "requested_kwh": round(requested, 4), "delivered_kwh": 0.0,
                "delivered_fraction": 0.0, "note": "no meter time covered while active"}  # fmt: skip
    rows: list[dict[str, object]] = []
    delivered = covered = 0.0
    for item in closed:
        baseline = baseline_at(item.start_ts)
        hours = item.covered_s / 3600.0
        got = max(0.0, item.mean_w - baseline) * hours / 1000.0
        in_window_s = min(item.start_ts + interval_s, end_ts) - max(item.start_ts, start_ts)
        asked = increase_w * max(0.0, in_window_s) / 3.6e6
        delivered, covered = delivered + got, covered + item.covered_s
        rows.append(
            {
                "start": datetime.fromtimestamp(item.start_ts, UTC).isoformat(),
                "covered_s": round(item.covered_s, 1),
                "baseline_w": round(baseline, 1),
                "mean_site_w": round(item.mean_w, 1),
                "delivered_kwh": round(got, 4),
                "requested_kwh": round(asked, 4),
            }
        )
    return {
        "samples": len(samples),
        "covered_s": round(covered, 1),
        "covered_fraction": round(covered / window_s, 4) if window_s else 0.0,
        "baseline_w": round(float(np.mean([r["baseline_w"] for r in rows])), 1),  # type: ignore[misc]
        "mean_site_w": round(sum(r["mean_site_w"] * r["covered_s"] for r in rows) / covered, 1),  # type: ignore[operator]
        "delivered_kwh": round(delivered, 4),
        "requested_kwh": round(requested, 4),
        "delivered_fraction": round(delivered / requested, 4) if requested else 0.0,
        "intervals": rows,
    }


def asset_energy_report(
    bookings: Mapping[str, Mapping[float, tuple[float, float]]], assets: Iterable[str], starts: Sequence[float]
) -> Report:
    """Per asset (those given and those with bookings), import and export Wh in each interval starting at `starts`
    (0 where nothing is booked: a station that has not told yet), with the totals."""
    by_asset: dict[str, object] = {}
    for asset_id in sorted(set(assets) | set(bookings)):
        booked = bookings.get(asset_id, {})
        rows = [
            {
                "start": datetime.fromtimestamp(start, UTC).isoformat(),
                "import_wh": round(booked.get(start, (0.0, 0.0))[0], 1),
                "export_wh": round(booked.get(start, (0.0, 0.0))[1], 1),
            }
            for start in starts
        ]
        by_asset[asset_id] = {
            "import_wh": round(sum(booked.get(s, (0.0, 0.0))[0] for s in starts), 1),
            "export_wh": round(sum(booked.get(s, (0.0, 0.0))[1] for s in starts), 1),
            "intervals": rows,
        }
    return {
        "basis": "each asset's own meter, booked to the interval it measured in; attribution only: the settlement "
        "is the site meter's",
        "assets": by_asset,
    }


def award_report(
    samples: Sequence[tuple[float, float]],
    activations: Sequence[tuple[float, float]],
    baseline_w: float,
    up_w: float,
    down_w: float,
    response_s: float,
    max_hold_s: float,
) -> Report:
    """Response of the site to an award's activations; +activation = up = the site imports less than its baseline."""
    if len(samples) < 2:
        return {"samples": len(samples), "note": "fewer than 2 meter readings while active"}
    times = np.array([t for t, _ in samples])
    watts = np.array([w for _, w in samples])
    dt = np.minimum(np.diff(times), max_hold_s)
    moved = baseline_w - watts[:-1]  # W toward "up"
    report: Report = {
        "samples": len(samples),
        "baseline_w": round(baseline_w, 1),
        "up_kwh": round(float(np.sum(np.maximum(0.0, moved) * dt)) / 3.6e6, 4),
        "down_kwh": round(float(np.sum(np.maximum(0.0, -moved) * dt)) / 3.6e6, 4),
        "activations": len(activations),
    }
    if not activations:
        return report
    act_t = np.array([t for t, _ in activations])
    act_v = np.array([v for _, v in activations])

    def signal_at(t: np.ndarray) -> np.ndarray:
        index = np.searchsorted(act_t, t, side="right") - 1
        return np.where(index >= 0, act_v[np.clip(index, 0, None)], 0.0)

    def response_at(t: np.ndarray, signal: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(times, t, side="right") - 1, 0, None)
        capacity = np.where(signal >= 0, up_w, down_w)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(capacity > 0, (baseline_w - watts[index]) / np.where(capacity > 0, capacity, 1), 0.0)

    grid = np.arange(times[0] + SAMPLE_S, times[-1], SAMPLE_S)
    if grid.size >= 3:
        signal = signal_at(grid)
        if np.any(signal != 0):
            result = score(signal, response_at(grid, signal))
            report.update(
                score=round(result.composite, 4),
                accuracy=round(result.accuracy, 4),
                delay_score=round(result.delay, 4),
                precision=round(result.precision, 4),
                delay_s=result.delay_s,
            )
    report.update(_response_times(times, act_t, act_v, signal_at, response_at, response_s))
    return report


def _response_times(
    times: np.ndarray,
    act_t: np.ndarray,
    act_v: np.ndarray,
    signal_at: Callable[[np.ndarray], np.ndarray],
    response_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
    allowed_s: float,
) -> Report:
    """Time from each step of the activation to a settled response, judged where a step can be judged.

    Activations may arrive as a stream (a frequency reading every second moves the droop's output a little each
    time), so a step is not a message: it starts where the activation leaves the band (±HOLD_TOL) of the value
    before and is judged only if the new value then holds inside its band for the product's allowed response time,
    after a move of at least STEP_MIN. The response must come within SETTLED of it by the end of that time.
    A signal that never holds still is not assessed (`response_assessed` false), which is not a pass.
    """
    judged = late = 0
    worst = 0.0
    end = times[-1]
    for i in range(act_t.size):
        start, value = float(act_t[i]), float(act_v[i])
        before = float(act_v[i - 1]) if i > 0 else 0.0
        if abs(value - before) <= HOLD_TOL or start + allowed_s > end:
            continue  # not a step start, or the data ends before it could be judged
        stop = np.searchsorted(act_t, start + allowed_s, side="right")
        if np.max(np.abs(act_v[i:stop] - value)) > HOLD_TOL or abs(value - before) < STEP_MIN:
            continue  # the activation moved on before the allowed time: no settled target to judge against
        window = times[(times >= start) & (times <= start + allowed_s)]
        if window.size == 0:
            continue
        judged += 1
        response = response_at(window, np.full(window.size, value))
        settled = np.abs(response - value) <= SETTLED
        took = float(window[np.argmax(settled)] - start) if settled.any() else math.inf
        worst = max(worst, took)
        late += not settled.any()
    return {
        "allowed_response_s": allowed_s,
        "response_assessed": judged > 0,
        "steps_judged": judged,
        "steps_late": late,
        "worst_response_s": round(worst, 2) if math.isfinite(worst) else "not reached",
    }
