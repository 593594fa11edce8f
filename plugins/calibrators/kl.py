"""KL-divergence (entropy) threshold search in the seed tools' variants (specs/algorithms.md §2.2).

All variants share the loop: for each candidate bin count ``i`` (``target <= i < B``) the first
``i`` bins, with the tail mass added to the last one, form ``P``; the *unclipped* first ``i`` bins
merged into ``target`` bins and expanded back form ``Q``; the first ``i`` with the smallest
``KL(P || Q)`` wins and ``T = (i + 0.5) * absmax / B``. The variants differ in seeding,
normalization, the expansion rule and the handling of zeros:

* ``ncnn``: normalize (stored as float32), average expansion, 1e-4 added to every bin of P and Q.
* ``mnn`` (MNN and TNN): 1e-7 in every raw bin, normalize, non-zero expansion, +1 where Q is 0.
* ``tengine``: bin 0 dropped, normalize by bins 1..B-1, non-zero expansion, +1 where Q is 0;
  its histogram bins are centred on multiples of ``absmax/(B-1)`` (:func:`tengine_histogram`).
* ``mindspore``: 1e-7 in every raw bin, bins holding only the seed count as empty in the
  expansion, P and Q each renormalized inside the KL, +1 where Q is 0 but P holds observed mass.
  MindSpore itself keeps the seed in P, so every seed-only bin below the candidate adds 1 (P has
  its seed, Q none there): ``mindspore-tool`` reproduces that literally. On a discrete-valued
  tensor (a network input of integer pixels minus a mean: a few hundred distinct values over
  2048 bins) that penalty counts empty bins, the smallest candidate wins and the input is
  clipped to 6% of its range. The seed is a pseudo-count meant to avoid zeros, not an
  observation: ``mindspore`` drops it from P exactly where it is dropped from Q, which is the
  limit of the tool's divergence as the seed goes to 0 (a term ``p log(p/q)`` with ``p -> 0``
  vanishes) and leaves continuous tensors, whose bins are all occupied, unchanged.

The merge/expand step is vectorized with cumulative sums (linear inside a bin equals the seed
tools' fractional edge weights) and evaluated for many candidates at once.
"""
from __future__ import annotations

import numpy as np

from ptqconv.plugins.calibrators.histogram import histogram_on_edges

NCNN_EPS = 1e-4
SEED = 1e-7
SEED_EMPTY = 1e-6  # MindSpore: a bin at or below this holds only the seed and counts as empty
VARIANTS = ("ncnn", "mnn", "tengine", "mindspore", "mindspore-tool")


def _interval_sums(values: np.ndarray, i: int, target: int) -> np.ndarray:
    """Sum of ``values[:i]`` over each of ``target`` equal intervals of width ``i/target``,
    partial edge bins weighted by their overlap."""
    cum = np.concatenate([[0.0], np.cumsum(values[:i], dtype=np.float64)])
    cum_at = np.interp(np.arange(target + 1) * (i / target), np.arange(i + 1), cum)
    return np.diff(cum_at)


def merge_expand(hist: np.ndarray, i: int, target: int, nonzero=None) -> np.ndarray:
    """Quantize the first ``i`` bins of ``hist`` to ``target`` bins and expand back to ``i``.

    Each source bin receives its target bin's mass divided by the (overlap-weighted) number of
    source bins sharing it: all bins (``nonzero`` None, ncnn) or only the bins where ``nonzero``
    is true (TensorRT rule; the others get 0). A source bin on a boundary gets its share of both
    target bins.
    """
    w = i / target
    mass = _interval_sums(hist, i, target)
    if nonzero is None:
        density = mass / w
    else:
        count = _interval_sums(nonzero.astype(np.float64), i, target)
        density = np.divide(mass, count, out=np.zeros_like(mass), where=count > 0)
    k = np.arange(i)
    j0 = np.minimum((k / w).astype(np.int64), target - 1)
    first = np.clip(np.minimum((j0 + 1) * w, k + 1) - k, 0.0, 1.0)  # share of bin k inside j0
    j1 = np.minimum(j0 + 1, target - 1)
    q = density[j0] * first + np.where(j1 != j0, density[j1] * (1.0 - first), 0.0)
    if nonzero is not None:
        q = np.where(nonzero[:i], q, 0.0)
    return q


def _kl_skip_zero(p: np.ndarray, q: np.ndarray) -> float:
    """KL with the seed tools' zero handling: terms with P = 0 skipped, 1 added where Q = 0."""
    pos = p != 0
    qz = pos & (q == 0)
    ok = pos & ~qz
    return float(np.sum(p[ok] * np.log(p[ok] / q[ok])) + np.count_nonzero(qz))


def _prepare(hist: np.ndarray, variant: str):
    """Return (distribution used by the loop, nonzero mask or None)."""
    hist = np.asarray(hist, dtype=np.float64)
    if variant == "ncnn":
        return (hist / hist.sum()).astype(np.float32).astype(np.float64), None
    if variant == "mnn":
        seeded = hist + SEED
        norm = seeded / seeded.sum()
        return norm, norm != 0
    if variant == "tengine":
        h = hist.copy()
        h[0] = 0.0
        norm = h / h[1:].sum()
        return norm, norm != 0
    if variant in ("mindspore", "mindspore-tool"):
        return hist + SEED, hist + SEED > SEED_EMPTY
    raise ValueError(f"unknown KL variant '{variant}' (known: {', '.join(VARIANTS)})")


def kl_divergences(hist, target_bins: int = 128, variant: str = "ncnn",
                   chunk: int = 64) -> np.ndarray:
    """KL divergence of every candidate ``i = target_bins .. len(hist)-1`` (index ``i -
    target_bins``) for ``variant``. ``hist`` counts ``|x|`` per bin (exact zeros excluded).

    Candidates are evaluated ``chunk`` at a time as rows of 2-D arrays; each row equals the
    per-candidate loop of :func:`merge_expand` (the unit tests check the worked examples).
    """
    dist, nonzero = _prepare(hist, variant)
    size, t = dist.size, target_bins
    tail = np.concatenate([np.cumsum(dist[::-1])[::-1], [0.0]])  # tail[i] = sum(dist[i:])
    cum = np.concatenate([[0.0], np.cumsum(dist, dtype=np.float64)])
    cnt = None if nonzero is None else \
        np.concatenate([[0.0], np.cumsum(nonzero.astype(np.float64))])
    grid = np.arange(size + 1)
    out = np.empty(size - t)
    for start in range(t, size, chunk):
        cands = np.arange(start, min(start + chunk, size))
        k = np.arange(cands[-1])  # the columns any candidate of this chunk uses
        w = (cands / t)[:, None]
        edges = np.arange(t + 1)[None, :] * w                       # (n, t+1) interval edges
        mass = np.diff(np.interp(edges, grid, cum), axis=1)
        if cnt is None:
            density = mass / w
        else:
            count = np.diff(np.interp(edges, grid, cnt), axis=1)
            density = np.divide(mass, count, out=np.zeros_like(mass), where=count > 0)
        j0 = np.minimum((k[None, :] / w).astype(np.int64), t - 1)  # (n, size)
        first = np.clip(np.minimum((j0 + 1) * w, k + 1) - k, 0.0, 1.0)
        j1 = np.minimum(j0 + 1, t - 1)
        q = np.take_along_axis(density, j0, 1) * first + \
            np.where(j1 != j0, np.take_along_axis(density, j1, 1) * (1.0 - first), 0.0)
        valid = k[None, :] < cands[:, None]
        if nonzero is not None:
            q = np.where(nonzero[None, :k.size], q, 0.0)
        p_src = dist if variant != "mindspore" else np.where(nonzero, dist, 0.0)
        p = np.where(valid, p_src[None, :k.size], 0.0)
        p[np.arange(cands.size), cands - 1] += tail[cands]
        q = np.where(valid, q, 0.0)
        out[cands - t] = _row_divergences(p, q, valid, variant)
    return out


def _row_divergences(p, q, valid, variant):
    """KL(P || Q) of each row over its valid bins, with the variant's zero handling."""
    if variant == "ncnn":
        pe, qe = p + NCNN_EPS, q + NCNN_EPS
        return np.sum(np.where(valid, pe * np.log(pe / qe), 0.0), axis=1)
    if variant.startswith("mindspore"):
        p = p / p.sum(axis=1, keepdims=True)
        qs = q.sum(axis=1, keepdims=True)
        q = np.divide(q, qs, out=q.copy(), where=qs > 0)
    pos = valid & (p != 0)
    qz = pos & (q == 0)
    ok = pos & ~qz
    terms = np.where(ok, p * np.log(np.where(ok, p, 1.0) / np.where(ok, q, 1.0)), 0.0)
    return terms.sum(axis=1) + qz.sum(axis=1)


def kl_best_bin(hist, target_bins: int = 128, variant: str = "ncnn") -> tuple:
    """Return (best i, its KL): the first candidate with the strictly smallest divergence.

    An empty histogram gives (target_bins, nan), as the seed tools' loop does."""
    hist = np.asarray(hist, dtype=np.float64)
    if hist.sum() <= 0 or hist.size <= target_bins:
        return target_bins, float("nan")
    kl = kl_divergences(hist, target_bins, variant)
    if not np.isfinite(kl).any():
        return target_bins, float("nan")
    best = int(np.nanargmin(kl))  # first occurrence of the minimum: ties keep the smaller i
    return target_bins + best, float(kl[best])


def tengine_histogram(stats, bins: int = 2048) -> np.ndarray:
    """Tengine's binning: bin ``k`` holds ``|x|`` rounding to ``k * absmax/(bins-1)``."""
    d = stats.absmax / (bins - 1)
    edges = np.concatenate([[0.0], (np.arange(1, bins) - 0.5) * d, [stats.absmax]])
    return histogram_on_edges(stats, edges)


def kl_threshold(stats, bins: int = 2048, target_bins: int = 128, variant: str = "ncnn") -> float:
    """Return the KL threshold ``T = (i + 0.5) * absmax / bins`` for streamed ``stats``
    (0 when the tensor held no non-zero value)."""
    absmax = stats.absmax
    if absmax <= 0 or stats.hist is None or stats.hist.sum() <= 0:
        return 0.0
    if stats.hist.sum() < bins:
        # fewer values than bins (e.g. a pooled FC input on a few images): the divergence
        # compares mostly empty bins and picks an arbitrary, often tiny, threshold
        return absmax
    if variant == "tengine":
        hist = tengine_histogram(stats, bins)
    else:
        hist = stats.resampled(bins, absmax)
    i, kl = kl_best_bin(hist, target_bins, variant)
    if not np.isfinite(kl):
        return 0.0
    if i <= int(np.flatnonzero(hist)[0]):
        # Degenerate histogram (e.g. a constant tensor: all mass in the last bin makes every
        # candidate's KL equal and the loop keeps the first). A threshold below every value
        # clips them all; ptqconv uses the absmax instead.
        return absmax
    return (i + 0.5) * absmax / bins
