"""MNN's EMA calibration (specs/algorithms.md §2.6): per batch, the range ``[min(0, min),
max(0, max)]`` nudged so that 0 is an integer code, then an exponential moving average of the
nudged ends (momentum 0.99; the first batch initializes). Asymmetric int8 codes [-qmax, qmax] with
a zero point. The result depends on the calibration batch size, as in MNN."""
from __future__ import annotations

import numpy as np

from ptqconv.core.numeric import round_half_away
from ptqconv.core.qtable import ActQuant

MOMENTUM = 0.99
NUDGE_QMAX = 127


def nudged_range(lo: float, hi: float, qmax: int = NUDGE_QMAX):
    """Widen ``[min(0, lo), max(0, hi)]`` so that 0 falls on an integer code of a symmetric
    ``[-qmax, qmax]`` grid with a zero point; returns (lo', hi')."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    step = (hi - lo) / (2 * qmax)
    if step <= 0:
        return 0.0, 0.0
    zp = float(round_half_away(-lo / step - qmax))
    return min(0.0, (-qmax - zp) * step), max(0.0, (qmax - zp) * step)


def asymmetric_int(lo: float, hi: float, bits: int = 8) -> ActQuant:
    """MNN's asymmetric signed quantization of ``[lo, hi]``: step ``(hi-lo)/(2*qmax)``, zero
    point ``round(-lo/step - qmax)``, codes [-qmax, qmax] (step 0 for an empty range)."""
    qmax = 2 ** (bits - 1) - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    step = (hi - lo) / (2 * qmax)
    if step <= 0:
        return ActQuant(0.0, 0, bits, True)
    zp = int(np.clip(round_half_away(-lo / step - qmax), -qmax, qmax))
    return ActQuant(step, zp, bits, True)


class EmaRange:
    """Streaming observer: the moving average of each batch's nudged range."""

    def __init__(self, name=None, momentum: float = MOMENTUM):
        self.momentum = momentum
        self.lo = self.hi = None
        self.batches = 0

    def update(self, array) -> None:
        """Fold one batch (NaN/Inf ignored here; the engine reports them)."""
        a = np.asarray(array)
        if a.size and not np.isfinite(a).all():
            a = a[np.isfinite(a)]
        if a.size == 0:
            return
        lo, hi = nudged_range(a.min(), a.max())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo = m * self.lo + (1 - m) * lo
            self.hi = m * self.hi + (1 - m) * hi
        self.batches += 1
