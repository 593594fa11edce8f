"""The ADMM fixed point on the step (specs/algorithms.md §2.5, §3.5), shared by the feature
calibrator (run on histogram points) and the weight quantizer (run per output channel).

``q = clamp(round_half_away(x / (a + eps)), -bound, bound)``, ``a = sum(q x) / (sum(q q) + eps)``:
alternating least squares for ``min ||x - a q||``. Rows are independent and iterated together.
"""
from __future__ import annotations

import numpy as np

from ptqconv.core.numeric import round_half_away

FEATURE_ITERS = 300
FEATURE_INIT = 2.5   # MNN: initial step = max / (bound * 2.5)
WEIGHT_ITERS = 1000
WEIGHT_INIT = 1.25   # MNN/TNN: initial step = max / (bound * 1.25)


def admm_steps(x, alpha, bound: int, iters: int, counts=None, eps: float = 0.0,
               dtype=np.float64):
    """Run the fixed point on every row of ``x`` (2-D; 1-D is one row) from steps ``alpha``.

    ``counts`` (same shape as ``x``) weights each value (histogram counts). Returns (steps,
    codes of the last iteration). A row whose codes are all 0 gets step 0. The loop stops early
    once no step changes (the iteration is then at its fixed point, so the result is the same).
    """
    x = np.atleast_2d(np.asarray(x, dtype=dtype))
    c = None if counts is None else np.atleast_2d(np.asarray(counts, dtype=dtype))
    alpha = np.asarray(alpha, dtype=dtype).reshape(-1).copy()
    eps = dtype(eps)
    q = np.zeros_like(x)
    for _ in range(iters):
        safe = np.where(alpha + eps != 0, alpha + eps, dtype(1.0))
        q = np.clip(round_half_away(x / safe[:, None]), -bound, bound).astype(dtype)
        qw = q if c is None else q * c
        num = (qw * x).sum(axis=1, dtype=dtype)
        den = (qw * q).sum(axis=1, dtype=dtype) + eps
        new = np.divide(num, den, out=np.zeros_like(num), where=den != 0).astype(dtype)
        if np.array_equal(new, alpha):
            break
        alpha = new
    return alpha, q
