"""ACIQ analytical clipping (specs/algorithms.md §2.3): Gaussian (ncnn, Tengine, TNN) and
Laplace (TNN) rules. One pass; the Gaussian rule needs only the absmax and the number of elements
of one input's tensor, the Laplace rule the mean of ``|x|``."""
from __future__ import annotations

import math

import numpy as np

# optimal clip / spread for bits 1..8 (index bits - 1), Banner et al.
ALPHA_GAUSS = (0.0, 1.71063519, 2.15159277, 2.55913646, 2.93620062, 3.28691474, 3.6151146,
               3.92403714)
ALPHA_LAPLACE = (0.0, 2.83068299, 3.89722946, 5.02864014, 6.20476633, 7.41312622, 8.64561995,
                 9.89675982)
GAUSS_C = 0.5 * 0.35 * (1.0 + math.sqrt(math.pi * math.log(4.0)))  # 0.540208362...


def _alpha(table, bits: int) -> float:
    if not 2 <= bits <= len(table):
        raise ValueError(f"ACIQ supports 2..{len(table)} bits, not {bits}")
    return table[bits - 1]


def gauss_sigma(absmax: float, n: int) -> float:
    """sigma of a Gaussian whose expected extreme over ``n`` samples is ``absmax`` (ncnn rule)."""
    return 2.0 * absmax * GAUSS_C / math.sqrt(2.0 * math.log(n))


def aciq_gauss_threshold(absmax: float, n: int, bits: int = 8) -> float:
    """Gaussian ACIQ clip ``alpha(bits) * sigma(absmax, n)``, not clamped (may exceed absmax for
    small ``n``). ``n < 2`` has no estimate: the absmax is returned."""
    if absmax <= 0:
        return 0.0
    if n < 2:
        return float(absmax)
    return _alpha(ALPHA_GAUSS, bits) * gauss_sigma(absmax, n)


def aciq_laplace_threshold(mean_abs: float, bits: int = 8) -> float:
    """Laplace ACIQ clip ``alpha(bits) * b`` with ``b`` estimated by the mean of ``|x|`` (TNN)."""
    return _alpha(ALPHA_LAPLACE, bits) * max(float(mean_abs), 0.0)


class SampleSize:
    """Streaming observer: the number of elements of one input's tensor (``c*h*w``), as ncnn
    counts it (the last batch's per-sample size; the batch axis is not counted)."""

    def __init__(self, name=None):
        self.per_sample = 0

    def update(self, array) -> None:
        """Record the per-sample element count of a batch ``array`` (batch axis first)."""
        shape = np.shape(array)
        self.per_sample = int(np.prod(shape[1:])) if len(shape) > 1 else int(np.prod(shape))
