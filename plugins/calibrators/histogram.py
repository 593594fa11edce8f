"""Views of a streamed ``|x|`` histogram (:class:`ptqconv.core.stats.TensorStats`) that the
histogram-based calibrators share: re-sampling onto other bin edges, and weighted points."""
from __future__ import annotations

import numpy as np

DEFAULT_BINS = 2048


def histogram_on_edges(stats, edges: np.ndarray) -> np.ndarray:
    """Counts of the streamed ``|x|`` histogram of ``stats`` re-sampled onto ``edges`` (uniform
    density inside a source bin; anything above the last edge lands in the last bin)."""
    if stats.hist is None or stats.bin_width == 0.0:
        return np.zeros(len(edges) - 1)
    src = np.arange(stats.bins + 1) * stats.bin_width
    cum = np.concatenate([[0.0], np.cumsum(stats.hist)])
    at = np.interp(edges, src, cum)
    out = np.diff(at)
    out[-1] += cum[-1] - at[-1]
    return np.maximum(out, 0.0)


def weighted_points(stats, bins: int = DEFAULT_BINS):
    """Return (values, counts): the centres of ``bins`` equal bins on ``[0, absmax]`` and the
    histogram's count in each (empty bins dropped). Exact zeros are left out: they quantize
    to 0 under every symmetric step, so they never change an error or a fixed point."""
    absmax = stats.absmax
    if absmax <= 0 or stats.hist is None:
        return np.zeros(0), np.zeros(0)
    counts = stats.resampled(bins, absmax)
    centres = (np.arange(bins) + 0.5) * (absmax / bins)
    keep = counts > 0
    return centres[keep], counts[keep]
