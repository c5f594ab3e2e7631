"""PJM-style regulation performance score (PJM Manual 12, as summarised in REFERENCE.md).

On 10-second samples of the normalised regulation signal and the resource's normalised response:
  accuracy  = the highest correlation between signal and response over delays 0..5 min (10 s steps)
  delay     = (5 min − the delay at that highest correlation) / 5 min
  precision = 1 − mean(|response − signal|) / mean(|signal|)
  score     = the mean of the three; a resource passes at ≥ 0.75.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_S = 10.0
MAX_DELAY_S = 300.0


@dataclass(frozen=True)
class PerformanceScore:
    accuracy: float
    delay: float
    precision: float
    delay_s: float

    @property
    def composite(self) -> float:
        return (self.accuracy + self.delay + self.precision) / 3.0


def score(signal: np.ndarray, response: np.ndarray, sample_s: float = SAMPLE_S) -> PerformanceScore:
    """Score `response` against `signal`, both normalised to −1..1 and sampled every `sample_s` seconds."""
    signal = np.asarray(signal, dtype=float)
    response = np.asarray(response, dtype=float)
    if signal.shape != response.shape or signal.size < 3:
        raise ValueError("signal and response need the same length, at least 3 samples")
    best_corr, best_shift = -1.0, 0
    for shift in range(int(MAX_DELAY_S / sample_s) + 1):
        if signal.size - shift < 3:
            break
        a, b = signal[: signal.size - shift], response[shift:]
        if np.std(a) == 0 or np.std(b) == 0:
            corr = 1.0 if np.allclose(a, b) else 0.0
        else:
            corr = float(np.corrcoef(a, b)[0, 1])
        if corr > best_corr + 1e-12:
            best_corr, best_shift = corr, shift
    delay_s = best_shift * sample_s
    mean_abs = float(np.mean(np.abs(signal)))
    precision = 1.0 - float(np.mean(np.abs(response - signal))) / mean_abs if mean_abs > 0 else 0.0
    return PerformanceScore(
        accuracy=max(0.0, best_corr),
        delay=max(0.0, (MAX_DELAY_S - delay_s) / MAX_DELAY_S),
        precision=max(0.0, precision),
        delay_s=delay_s,
    )
