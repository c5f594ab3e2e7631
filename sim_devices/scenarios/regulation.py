"""A synthetic RegD-like regulation signal: normalised −1..1, one value every 2 s, energy-neutral per 15 min.

Why synthetic: PJM publishes RegD test signals, but no data set may be vendored without a licence (REFERENCE.md
"Data"). What the controller and the performance-score tests need is a signal with RegD's properties:

- Fast, band-limited content (PJM's RegD is the high-pass part of the regulation requirement meant for fast,
  energy-limited resources such as batteries): here white noise shaped in the frequency domain to periods between
  `min_period_s` (30 s) and `max_period_s` (5 min), with a 1/f tilt so slower swings are larger.
- Normalised to −1..1 (+1 = full regulation up). The noise is scaled to a standard deviation of 0.45 and clipped,
  so the signal saturates at ±1 a few per cent of the time, as RegD does.
- Energy neutrality: RegD is designed to be roughly energy-neutral over short windows; here it is made exact: in each
  15-minute window counted from `start`, the side of zero with the larger sum is scaled down until both sides
  balance. Scaling one side toward zero keeps every value within −1..1 and keeps zero crossings where they were, so
  the mean of every window is 0 to rounding error (≈1e-17). A trailing partial window is balanced the same way.
  The cost is a small distortion: with the defaults the scaled side shrinks by ~7 % in a median window (~16 % at
  the 5th percentile), which keeps the signal's shape.

Times are aware datetimes (pass a UTC or JST start); values are a numpy float array of the same length.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

NEUTRAL_WINDOW_S = 900.0


def _band_limited(rng: np.random.Generator, n: int, step_s: float, min_period_s: float,
                  max_period_s: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=step_s)
    band = (freqs >= 1.0 / max_period_s) & (freqs <= 1.0 / min_period_s)
    gain = np.zeros_like(freqs)
    gain[band] = 1.0 / np.sqrt(freqs[band] * max_period_s)  # 1/f power tilt inside the band
    x = np.fft.irfft(spectrum * gain, n)
    std = float(x.std())
    return x / std if std > 0 else x


def _neutralise(values: np.ndarray) -> np.ndarray:
    """Scale the larger side of zero so the window sums to zero; values stay within their original bounds."""
    pos = values[values > 0].sum()
    neg = -values[values < 0].sum()
    out = values.copy()
    if pos > neg and pos > 0:
        out[values > 0] *= neg / pos
    elif neg > pos and neg > 0:
        out[values < 0] *= pos / neg
    return out


def generate_regulation(
    start: datetime,
    seconds: int,
    seed: int,
    step_s: float = 2.0,
    *,
    min_period_s: float = 30.0,
    max_period_s: float = 300.0,
) -> tuple[list[datetime], np.ndarray]:
    """`seconds // step_s` samples from `start` (aware); values in −1..1 with zero mean in every 15-min window."""
    if start.utcoffset() is None:
        raise ValueError("start must be timezone-aware")
    values = regulation_values(seconds, seed, step_s, min_period_s=min_period_s, max_period_s=max_period_s)
    times = [start + timedelta(seconds=k * step_s) for k in range(len(values))]
    return times, values


def regulation_values(
    seconds: int, seed: int, step_s: float = 2.0, *, min_period_s: float = 30.0, max_period_s: float = 300.0
) -> np.ndarray:
    """The values of `generate_regulation` alone: a year at 10 s is 3.2 M samples, whose datetimes alone would
    take ~150 MB."""
    if step_s <= 0 or seconds < step_s:
        raise ValueError(f"need step_s > 0 and seconds ≥ step_s, got step_s={step_s}, seconds={seconds}")
    if not 2 * step_s <= min_period_s < max_period_s:
        raise ValueError(f"need 2·step_s ≤ min_period_s < max_period_s, got {min_period_s}, {max_period_s}")
    n = int(seconds // step_s)
    rng = np.random.default_rng(seed)
    values = np.clip(0.45 * _band_limited(rng, n, step_s, min_period_s, max_period_s), -1.0, 1.0)
    # windows are contiguous runs of samples: balance each slice (a boolean mask per window made a year at 10 s
    # take 80 s, quadratic in the length)
    window = np.floor(np.arange(n) * step_s / NEUTRAL_WINDOW_S).astype(int)
    bounds = np.flatnonzero(np.diff(window)) + 1
    for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [n]]), strict=True):
        values[lo:hi] = _neutralise(values[lo:hi])
    return values


def regulation_capacity_prices(hours: int, seed: int, median_per_kw_h: float, sigma: float = 0.7) -> np.ndarray:
    """Hourly regulation capacity prices (currency per kW·h of each side's reservation): lognormal around
    `median_per_kw_h`, independent from hour to hour.

    An assumption, not fitted: regulation clearing prices (PJM's RMCP, Japan's ΔkW) are volatile with a long upper
    tail; with σ = 0.7 one hour in ten pays over 2.5x the median and one in a hundred over 5x. The seed is offset
    from the signal's, so a (seed) names both without tying them together.
    """
    if hours < 1 or median_per_kw_h < 0 or sigma < 0:
        raise ValueError(f"need hours ≥ 1, median ≥ 0, sigma ≥ 0; got {hours}, {median_per_kw_h}, {sigma}")
    rng = np.random.default_rng(seed + 7919)
    return median_per_kw_h * np.exp(sigma * rng.standard_normal(hours))


def turning_points(values: np.ndarray) -> np.ndarray:
    """Indices of the local extrema of `values` (where its direction changes; of a flat top, its last sample): the
    points that keep every cycle's depth, so a cycle-counting model sees the same cycles from far fewer samples."""
    direction = np.sign(np.diff(values))
    moving = np.flatnonzero(direction != 0)
    if moving.size < 2:
        return np.zeros(0, dtype=int)
    return moving[1:][np.diff(direction[moving]) != 0]


def swing_h(values: np.ndarray, step_s: float) -> float:
    """The energy-weighted mean half-cycle of following `values` (−1..1), in kWh per kW reserved (i.e. hours).

    Half cycles run between the turning points of the signal's running energy; weighted by their own energy (a
    kWh sits in a long swing more often than in a short one), they are what sizes the cycle depth, and so the wear,
    of a resource following the signal (agent.dispatch.degradation.shallow_cycle_price).
    """
    energy = np.cumsum(np.asarray(values, dtype=float)) * step_s / 3600.0
    swings = np.abs(np.diff(energy[turning_points(energy)]))
    total = float(swings.sum())
    return float((swings**2).sum() / total) if total > 0 else 0.0
