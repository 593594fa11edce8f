"""Built-in weight quantizer: ``minmax`` (max-abs per channel or per tensor)."""
import numpy as np

from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.records import WeightQuantizer


def absmax_scales(w, axis, bits, params):
    """Step per output channel (``axis``) or for the whole tensor (``axis`` None): absmax/qmax."""
    qmax = 2 ** (bits - 1) - 1
    clamp = int(params.get("weight_clamp_value") or qmax)
    w = np.abs(np.asarray(w, dtype=np.float64))
    if axis is None:
        return np.array([w.max() / clamp if w.size else 0.0])
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return moved.max(axis=1) / clamp


@hookimpl
def register_weight_quantizers(register):
    register(WeightQuantizer("minmax", absmax_scales, "max-abs per channel or per tensor"))
