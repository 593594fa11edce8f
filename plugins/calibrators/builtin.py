"""Built-in activation calibrators (specs/algorithms.md §2), each registered as a plugin.

Every method works from the streamed, fixed-size :class:`TensorStats` (plus, for ``aciq`` and
``ema``, a small observer), so memory does not depend on the number of calibration inputs.
Symmetric methods produce a threshold ``T``; for asymmetric (uint8) targets ``T`` clips the side(s)
of the observed range it exceeds. ``calibration.params`` reach ``compute`` as ``params``.
"""
from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.numeric import act_from_range, act_from_threshold
from ptqconv.core.qtable import ActQuant
from ptqconv.core.records import Calibrator
from ptqconv.plugins.calibrators import aciq as aciq_mod
from ptqconv.plugins.calibrators.admm import FEATURE_INIT, FEATURE_ITERS, admm_steps
from ptqconv.plugins.calibrators.ema import EmaRange, asymmetric_int
from ptqconv.plugins.calibrators.eq import eq_refine
from ptqconv.plugins.calibrators.histogram import DEFAULT_BINS, weighted_points
from ptqconv.plugins.calibrators.kl import kl_threshold
from ptqconv.plugins.calibrators.search import (DEFAULT_PERCENTILE, MSE_CANDIDATES, mse_threshold,
                                                percentile_threshold)


def from_threshold(t: float, stats, spec) -> ActQuant:
    """Quantization for threshold ``t``: symmetric, or the observed range clipped to ``[-t, t]``."""
    if spec.symmetric:
        return act_from_threshold(t, spec)
    return act_from_range(max(stats.min, -t), min(stats.max, t), spec)


def minmax(stats, spec, params):
    """Symmetric: threshold = absmax. Asymmetric: the observed [min, max] (0 included)."""
    if spec.symmetric:
        return act_from_threshold(stats.absmax, spec)
    return act_from_range(stats.min, stats.max, spec)


def _kl(variant):
    def compute(stats, spec, params):
        target = int(params.get("target_bins", 2 ** (spec.bits - 1)))
        v = "mindspore-tool" if variant == "mindspore" and params.get("seed_penalty") else variant
        t = kl_threshold(stats, int(params.get("bins", DEFAULT_BINS)), target, v)
        return from_threshold(t, stats, spec)
    compute.__name__ = f"kl_{variant}"
    compute.__doc__ = f"KL-divergence threshold, {variant} variant (2048 bins, 2^(bits-1) " \
                      f"target bins; params 'bins', 'target_bins'" + \
                      (", 'seed_penalty': true adds 1 per seed-only bin as MindSpore does)."
                       if variant == "mindspore" else ").")
    return compute


def aciq(stats, spec, params):
    """ACIQ clip. params: ``distribution`` gauss (default) | laplace, ``clamp`` (default true:
    T is limited to the absmax; false reproduces the seed tools, which do not clamp)."""
    dist = str(params.get("distribution", "gauss")).lower()
    if dist in ("gauss", "gaussian"):
        n = stats.extra.per_sample if stats.extra is not None else stats.count
        t = aciq_mod.aciq_gauss_threshold(stats.absmax, n, spec.bits)
    elif dist == "laplace":
        t = aciq_mod.aciq_laplace_threshold(stats.sum_abs / max(stats.count, 1), spec.bits)
    else:
        raise ValueError(f"aciq: calibration.params.distribution must be 'gauss' or 'laplace', "
                         f"not '{dist}'")
    if params.get("clamp", True):
        t = min(t, stats.absmax)
    return from_threshold(t, stats, spec)


def admm(stats, spec, params):
    """MNN's feature ADMM (step fixed point, 300 iterations from ``absmax/(qmax*2.5)``) run on
    the histogram's bin centres weighted by their counts. params: ``iterations``."""
    x, counts = weighted_points(stats, int(params.get("bins", DEFAULT_BINS)))
    if x.size == 0:
        return from_threshold(0.0, stats, spec)
    qmax = spec.qmax
    step, _ = admm_steps(x, stats.absmax / (qmax * FEATURE_INIT), qmax,
                         int(params.get("iterations", FEATURE_ITERS)), counts)
    return from_threshold(float(step[0]) * qmax, stats, spec)


def ema(stats, spec, params):
    """MNN's EMA range (momentum 0.99 per batch, nudged). Asymmetric signed codes with a zero
    point where the backend runs them (params ``asymmetric``, default true), otherwise the
    symmetric threshold covering the averaged range; uint8 targets use the range directly."""
    st = stats.extra
    if st is None or st.lo is None:
        return from_threshold(0.0, stats, spec)
    if not spec.signed:
        return act_from_range(st.lo, st.hi, spec)
    if spec.symmetric and not (spec.allow_asymmetric and params.get("asymmetric", True)):
        return act_from_threshold(max(-st.lo, st.hi), spec)
    return asymmetric_int(st.lo, st.hi, spec.bits)


def percentile(stats, spec, params):
    """Threshold at the ``percentile`` (default 99.99) of ``|x|``, interpolated in the bin."""
    return from_threshold(percentile_threshold(stats, float(params.get("percentile",
                                                                        DEFAULT_PERCENTILE))),
                          stats, spec)


def mse(stats, spec, params):
    """Threshold among ``absmax*k/candidates`` minimizing the histogram's quantization error
    (``sum n |x - fq(x)|^p``). params: ``candidates`` (100), ``p`` (2). For a non-negative tensor
    with unsigned codes the search uses the unsigned code range."""
    x, counts = weighted_points(stats, int(params.get("bins", DEFAULT_BINS)))
    unsigned = not spec.signed and stats.min >= 0
    qmax = 2 ** spec.bits - 1 if unsigned else spec.qmax
    t, _ = mse_threshold(x, counts, stats.absmax, qmax,
                         int(params.get("candidates", MSE_CANDIDATES)), float(params.get("p", 2)))
    return from_threshold(t, stats, spec)


@hookimpl
def register_calibrators(register):
    register(Calibrator("minmax", minmax, "running min/max (absmax for symmetric targets)",
                        histogram=False))
    register(Calibrator("kl", _kl("ncnn"), "KL-divergence threshold, ncnn/TensorRT variant "
                        "(2048 bins, eps 1e-4 on P and Q)"))
    register(Calibrator("kl-mnn", _kl("mnn"), "KL-divergence threshold, MNN/TNN variant "
                        "(1e-7 seeded bins, non-zero expansion)"))
    register(Calibrator("kl-tengine", _kl("tengine"), "KL-divergence threshold, Tengine variant "
                        "(bins centred on absmax/2047, bin 0 dropped)"))
    register(Calibrator("kl-mindspore", _kl("mindspore"), "KL-divergence threshold, MindSpore "
                        "Lite variant (seeded bins, P and Q renormalized; params seed_penalty: true for the "
                        "tool's +1 per seed-only bin)"))
    register(Calibrator("aciq", aciq, "ACIQ analytical clip (Gaussian from absmax and size, or "
                        "Laplace from mean |x|)", observer=aciq_mod.SampleSize, histogram=False))
    register(Calibrator("admm", admm, "MNN feature ADMM step fixed point, on the histogram"))
    register(Calibrator("ema", ema, "MNN EMA of nudged per-batch ranges, asymmetric",
                        observer=EmaRange))
    register(Calibrator("percentile", percentile, "percentile of |x| (params: percentile, "
                        "default 99.99)"))
    register(Calibrator("mse", mse, "threshold search minimizing the quantization error on the "
                        "histogram (params: candidates, p)"))
    register(Calibrator("eq", _kl("ncnn"), "ncnn EQ: KL start, then per-layer search of weight "
                        "and input scales maximizing the layer-output cosine (streamed passes)",
                        refine=eq_refine))
