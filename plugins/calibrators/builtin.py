"""Built-in activation calibrators: ``minmax`` and ``kl``."""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.numeric import act_from_range, act_from_threshold
from ptqconv.core.records import Calibrator
from ptqconv.plugins.calibrators.kl import kl_threshold


def minmax(stats, spec, params):
    """Symmetric: threshold = absmax. Asymmetric: the observed [min, max] (0 included)."""
    if spec.symmetric:
        return act_from_threshold(stats.absmax, spec)
    return act_from_range(stats.min, stats.max, spec)


def kl(stats, spec, params):
    """KL-divergence threshold (ncnn/TensorRT variant, 2048 bins, 128 target bins).

    For asymmetric targets the KL threshold clips the side(s) of the observed range it exceeds.
    """
    t = kl_threshold(stats, int(params.get("bins", 2048)), int(params.get("target_bins", 128)))
    if spec.symmetric:
        return act_from_threshold(t, spec)
    return act_from_range(max(stats.min, -t), min(stats.max, t), spec)


@hookimpl
def register_calibrators(register):
    register(Calibrator("minmax", minmax, "running min/max (absmax for symmetric targets)"))
    register(Calibrator("kl", kl, "KL-divergence threshold search (ncnn/TensorRT, 2048 bins)"))
