"""Built-in weight quantizers (specs/algorithms.md §3): ``minmax`` (max-abs), ``admm`` and
``mse`` (per-row clipping search minimizing the weight quantization error, §2.8 applied to
weights).

Both return one step per output channel (``axis``) or one for the whole tensor (``axis`` None);
codes are ``clamp(round_half_away(w / step), -clamp, clamp)`` (``core.numeric.quantize_weights``).
``quantize.params`` may set MNN's ``weight_clamp_value`` (largest code, <= 127): with 8 bits it
replaces 127; with fewer bits the clamp is ``2^(bits-1) - 1`` and a disagreeing value is ignored
with a warning (MNN only applies its bits when the clamp is also given; ptqconv always does).
"""
from functools import lru_cache

import numpy as np

from ptqconv.core import log
from ptqconv.core.errors import PtqconvError
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import WeightQuantizer
from ptqconv.plugins.calibrators.admm import WEIGHT_INIT, WEIGHT_ITERS, admm_steps
from ptqconv.plugins.calibrators.search import MSE_CANDIDATES, row_mse_thresholds

ADMM_EPS = 1e-9


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.step("warning: " + message)


def weight_clamp(bits: int, params) -> int:
    """Largest weight code for ``bits`` and an optional ``weight_clamp_value``."""
    qmax = 2 ** (bits - 1) - 1
    value = params.get("weight_clamp_value")
    if value is None:
        return qmax
    value = int(value)
    if not 1 <= value <= 127:
        raise PtqconvError(f"quantize.params.weight_clamp_value must be in 1..127, not {value}")
    if bits < 8:
        if value != qmax:
            _warn_once(f"weight_clamp_value {value} disagrees with {bits}-bit weights; using "
                       f"{qmax}")
        return qmax
    return value


def channel_rows(w, axis) -> np.ndarray:
    """``w`` as rows: one per output channel along ``axis``, or a single row (``axis`` None)."""
    w = np.asarray(w)
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def absmax_scales(w, axis, bits, params):
    """Step per output channel (``axis``) or for the whole tensor (``axis`` None): absmax/clamp.
    An all-zero channel gets step 0 (its codes are 0)."""
    rows = np.abs(channel_rows(np.asarray(w, dtype=np.float64), axis))
    if rows.size == 0:
        return np.zeros(rows.shape[0])
    return rows.max(axis=1) / weight_clamp(bits, params)


def admm_scales(w, axis, bits, params):
    """MNN/TNN weight ADMM per row: from ``max|w|/(clamp*1.25)`` (``mean|w|`` when the clamp is
    1, i.e. 2 bits), 1000 float32 iterations of the step fixed point (params:
    ``admm_iterations``). All-zero rows get step 0."""
    rows = channel_rows(np.asarray(w, dtype=np.float32), axis)
    bound = weight_clamp(bits, params)
    mags = np.abs(rows)
    init = mags.max(axis=1) / (bound * WEIGHT_INIT) if bound > 1 else mags.mean(axis=1)
    steps, _ = admm_steps(rows, init, bound, int(params.get("admm_iterations", WEIGHT_ITERS)),
                          eps=ADMM_EPS, dtype=np.float32)
    return steps.astype(np.float64)


def mse_scales(w, axis, bits, params):
    """Per row, the clipping threshold among ``absmax * k / candidates`` (k = 1..candidates,
    params ``candidates``, default 100; ``p``, default 2) minimizing ``sum |w - fq(w)|^p``;
    step = threshold / clamp. Useful below 8 bits, where clipping the largest weights pays."""
    rows = channel_rows(np.asarray(w, dtype=np.float64), axis)
    clamp = weight_clamp(bits, params)
    t = row_mse_thresholds(rows, clamp, int(params.get("candidates", MSE_CANDIDATES)),
                           float(params.get("p", 2)))
    return t / clamp


@hookimpl
def register_weight_quantizers(register):
    register(WeightQuantizer("minmax", absmax_scales, "max-abs per channel or per tensor "
                             "(params: weight_clamp_value)"))
    register(WeightQuantizer("admm", admm_scales, "MNN/TNN ADMM step fixed point per channel or "
                             "per tensor (params: weight_clamp_value, admm_iterations)"))
    register(WeightQuantizer("mse", mse_scales, "per-channel or per-tensor clipping search "
                             "minimizing the weight quantization error (params: candidates, p)"))
