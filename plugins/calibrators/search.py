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


def _row_errors(x, t, qmax, p):
    """Quantization errors ``[rows, K]`` of rows ``x`` ``[rows, n]`` at thresholds ``t``."""
    s = np.where(t > 0, t / qmax, 1.0)[:, :, None].astype(x.dtype)
    xq = s * np.clip(round_half_away(x[:, None, :] / s), -qmax, qmax)
    err = np.abs(x[:, None, :] - xq)
    return (err * err if p == 2 else err ** p).sum(axis=2)


def row_mse_thresholds(rows, qmax: int, candidates: int = MSE_CANDIDATES, p: float = 2.0,
                       stride: int = 5, chunk_elements: int = 1 << 22) -> np.ndarray:
    """:func:`mse_threshold` for every row of ``rows`` (2-D, raw values, float32 arithmetic):
    first every ``stride``-th candidate, then every candidate within ``stride`` of the best one
    (the error is nearly unimodal in T; ``stride=1`` searches them all). Ties keep the larger
    T. Returns one T per row (0 for a row of zeros)."""
    rows = np.asarray(rows, dtype=np.float32)
    n_rows = rows.shape[0]
    absmax = np.abs(rows).max(axis=1) if rows.size else np.zeros(n_rows, np.float32)
    out = np.zeros(n_rows)
    frac = np.arange(1, candidates + 1) / candidates
    coarse = np.arange(candidates - 1, -1, -stride)[::-1]          # always includes k = K
    per_row = max(len(coarse), 2 * stride + 1) * max(rows.shape[1], 1)
    step = max(1, chunk_elements // per_row)
    for lo in range(0, n_rows, step):
        x, a = rows[lo:lo + step], absmax[lo:lo + step, None]
        err = _row_errors(x, a * frac[coarse][None, :], qmax, p)
        centre = coarse[len(coarse) - 1 - np.argmin(err[:, ::-1], axis=1)]
        window = np.clip(centre[:, None] + np.arange(-stride, stride + 1)[None, :], 0,
                         candidates - 1)
        err = _row_errors(x, a * frac[window], qmax, p)
        pick = window[np.arange(len(x)), window.shape[1] - 1 - np.argmin(err[:, ::-1], axis=1)]
        out[lo:lo + step] = absmax[lo:lo + step] * frac[pick]
    return out


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
