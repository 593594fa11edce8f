"""Threshold searches on weighted points (raw values, or histogram bin centres with counts):
the quantization-error (MSE / Lp) search of specs/algorithms.md §2.8 and the percentile of §2.7."""
from __future__ import annotations

import numpy as np

from ptqconv.core.numeric import round_half_away

MSE_CANDIDATES = 100
DEFAULT_PERCENTILE = 99.99


def quantization_errors(values, counts, thresholds, qmax: int, p: float = 2.0) -> np.ndarray:
    """``sum(counts * |x - s*clamp(round_half_away(x/s), -qmax, qmax)|^p)`` for each threshold
    (``s = T/qmax``); a threshold of 0 quantizes everything to 0."""
    x = np.asarray(values, dtype=np.float64)[None, :]
    c = np.ones(x.shape[1]) if counts is None else np.asarray(counts, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)[:, None]
    s = np.where(t > 0, t / qmax, 1.0)
    xq = np.where(t > 0, s * np.clip(round_half_away(x / s), -qmax, qmax), 0.0)
    err = np.abs(x - xq)
    return ((err ** p if p != 2 else err * err) * c[None, :]).sum(axis=1)


def mse_threshold(values, counts, absmax: float, qmax: int, candidates: int = MSE_CANDIDATES,
                  p: float = 2.0):
    """Return (T, error): the candidate ``absmax * k / candidates`` (k = 1..candidates) with the
    smallest quantization error; ties keep the larger T (fewer clipped values)."""
    if absmax <= 0 or np.size(values) == 0:
        return 0.0, 0.0
    ts = absmax * np.arange(1, candidates + 1) / candidates
    err = quantization_errors(values, counts, ts, qmax, p)
    best = len(err) - 1 - int(np.argmin(err[::-1]))  # last occurrence of the minimum
    return float(ts[best]), float(err[best])


def percentile_threshold(stats, percentile: float = DEFAULT_PERCENTILE) -> float:
    """``|x|`` value at which the cumulative count reaches ``percentile``% of all values (exact
    zeros included), interpolated linearly inside the histogram bin, clamped to [0, absmax]."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], not {percentile}")
    absmax = stats.absmax
    if absmax <= 0 or stats.hist is None or stats.bin_width == 0.0:
        return 0.0
    cum = np.concatenate([[0.0], np.cumsum(stats.hist)]) + stats.zero_count
    target = percentile / 100.0 * cum[-1]
    k = int(np.searchsorted(cum, target, side="left"))  # first edge whose cumulative reaches it
    if k == 0:
        return 0.0
    inside = stats.hist[k - 1]
    frac = (target - cum[k - 1]) / inside if inside > 0 else 1.0
    return float(min(max((k - 1 + frac) * stats.bin_width, 0.0), absmax))
