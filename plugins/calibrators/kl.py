"""KL-divergence (entropy) threshold search, ncnn/TensorRT variant (specs/algorithms.md §2.2)."""
from __future__ import annotations

import numpy as np

NCNN_EPS = 1e-4


def _quantize_expand(hist: np.ndarray, i: int, target: int) -> np.ndarray:
    """Merge the first ``i`` bins of ``hist`` into ``target`` bins (fractional edges) and expand
    back to ``i`` bins, each source bin receiving its target bin's average density (ncnn rule)."""
    w = i / target
    cum = np.concatenate([[0.0], np.cumsum(hist[:i], dtype=np.float64)])
    edges = np.arange(target + 1) * w
    cum_at = np.interp(edges, np.arange(i + 1), cum)
    density = np.diff(cum_at) / w                   # mass per unit source width, per target bin
    # overlap of source bin k=[k,k+1) with target bins: at most two because w >= 1
    k = np.arange(i)
    j0 = np.minimum((k / w).astype(np.int64), target - 1)
    boundary = (j0 + 1) * w
    first = np.clip(np.minimum(boundary, k + 1) - k, 0.0, 1.0)
    j1 = np.minimum(j0 + 1, target - 1)
    return density[j0] * first + np.where(j1 != j0, density[j1] * (1.0 - first), 0.0)


def kl_best_bin(hist, target_bins: int = 128) -> tuple:
    """Return (best i, its KL) for the ncnn variant on a histogram of ``|x|`` (ncnn normalizes by
    the total and adds 1e-4 to every bin of P and Q; no renormalization)."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return target_bins, float("nan")
    norm = (hist / total).astype(np.float32).astype(np.float64)
    tail = np.concatenate([np.cumsum(norm[::-1])[::-1], [0.0]])  # tail[i] = sum(norm[i:])
    best_i, best_kl = target_bins, np.inf
    for i in range(target_bins, hist.size):
        p = norm[:i].copy()
        p[i - 1] += tail[i]
        q = _quantize_expand(norm, i, target_bins)
        p += NCNN_EPS
        q += NCNN_EPS
        kl = float(np.sum(p * np.log(p / q)))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i, best_kl


def kl_threshold(stats, bins: int = 2048, target_bins: int = 128) -> float:
    """Return the KL threshold ``T = (i + 0.5) * absmax / bins`` for streamed ``stats``."""
    absmax = stats.absmax
    if absmax <= 0 or stats.hist is None or stats.hist.sum() <= 0:
        return 0.0
    hist = stats.resampled(bins, absmax)
    i, _ = kl_best_bin(hist, target_bins)
    return (i + 0.5) * absmax / bins
