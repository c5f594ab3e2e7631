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
    if step_s <= 0 or seconds < step_s:
        raise ValueError(f"need step_s > 0 and seconds ≥ step_s, got step_s={step_s}, seconds={seconds}")
    if not 2 * step_s <= min_period_s < max_period_s:
        raise ValueError(f"need 2·step_s ≤ min_period_s < max_period_s, got {min_period_s}, {max_period_s}")
    n = int(seconds // step_s)
    rng = np.random.default_rng(seed)
    values = np.clip(0.45 * _band_limited(rng, n, step_s, min_period_s, max_period_s), -1.0, 1.0)
    window = np.floor(np.arange(n) * step_s / NEUTRAL_WINDOW_S).astype(int)
    for w in range(int(window[-1]) + 1):
        idx = window == w
        values[idx] = _neutralise(values[idx])
    times = [start + timedelta(seconds=k * step_s) for k in range(n)]
    return times, values
