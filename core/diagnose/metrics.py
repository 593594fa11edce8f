"""Quantization error metrics on tensors (shared specs/algorithms.md §5.1-§5.2).

Each metric exists twice: a numpy function on whole tensors (tests, small checks) and a
``*_from_sums`` form that turns the per-input scalars streamed out of onnxruntime (see
:mod:`ptqconv.core.diagnose.probes`) into the same number, so memory never grows with the data.
"""
from __future__ import annotations

import math

import numpy as np

from ptqconv.core.numeric import round_half_away

NORM_FLOOR = 1e-7  # Tengine's guard: below this norm product a cosine is undefined


def cosine_from_sums(dot: float, ref_sq: float, test_sq: float) -> float:
    """Cosine similarity from ``Σab``, ``Σa²``, ``Σb²``: 1 if both tensors are zero, 0 if only one
    is (specs §5.2 edge cases)."""
    if ref_sq <= 0.0 and test_sq <= 0.0:
        return 1.0
    denom = math.sqrt(ref_sq) * math.sqrt(test_sq)
    if denom < NORM_FLOOR:
        return 0.0
    return float(dot) / denom


def sqnr_from_sums(ref_sq: float, err_sq: float) -> float:
    """SQNR in dB, ``10 log10(Σx² / Σ(x - x̂)²)``; +inf when the error is zero."""
    if err_sq <= 0.0:
        return math.inf
    if ref_sq <= 0.0:
        return -math.inf
    return 10.0 * math.log10(ref_sq / err_sq)


def cosine(ref, test) -> float:
    """Cosine similarity of two tensors (flattened), computed in float64."""
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(test, np.float64).ravel()
    return cosine_from_sums(float(a @ b), float(a @ a), float(b @ b))


def sqnr_db(ref, test) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``ref`` in dB."""
    a = np.asarray(ref, np.float64).ravel()
    e = a - np.asarray(test, np.float64).ravel()
    return sqnr_from_sums(float(a @ a), float(e @ e))


def max_abs_error(ref, test) -> float:
    """Largest element-wise ``|ref - test|``."""
    d = np.abs(np.asarray(ref, np.float64) - np.asarray(test, np.float64))
    return float(d.max()) if d.size else 0.0


def code_range(aq):
    """``(lowest, highest)`` integer code an activation can take, and whether the lowest one is a
    saturation (it is not for unsigned codes with zero point 0: code 0 is the value 0)."""
    if not aq.signed:
        return 0, 2 ** aq.bits - 1, aq.zero_point != 0
    if aq.zero_point == 0:  # symmetric: codes [-qmax, qmax], -128 never produced
        return -aq.qmax, aq.qmax, True
    return -(2 ** (aq.bits - 1)), 2 ** (aq.bits - 1) - 1, True


def saturation_bounds(aq):
    """Float bounds ``(lo, hi)``: values ``>= hi`` (or ``<= lo``) get a saturated code; the
    half-step margin counts values that round exactly to the end code, as MNN does."""
    qlo, qhi, low_saturates = code_range(aq)
    hi = (qhi - aq.zero_point - 0.5) * aq.scale
    lo = (qlo - aq.zero_point + 0.5) * aq.scale if low_saturates else -math.inf
    return lo, hi


def clipping_bounds(aq):
    """Float bounds ``(lo, hi)`` beyond which a value is clipped (its error exceeds half a
    step): the information the chosen threshold throws away."""
    qlo, qhi, _ = code_range(aq)
    return (qlo - aq.zero_point - 0.5) * aq.scale, (qhi - aq.zero_point + 0.5) * aq.scale


def overflow_ratio(x, aq) -> float:
    """MNN's "overflow ratio": the fraction of elements whose code is saturated
    (``q = clamp(round(x/s) + zp)`` equals an end of the code range)."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0 or aq.scale <= 0:
        return 0.0
    qlo, qhi, low_saturates = code_range(aq)
    q = np.clip(round_half_away(x / aq.scale) + aq.zero_point, qlo, qhi)
    hit = q == qhi
    if low_saturates:
        hit |= q == qlo
    return float(np.count_nonzero(hit)) / x.size


def clip_ratio(x, aq) -> float:
    """Fraction of elements outside the representable range (error above half a step)."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0 or aq.scale <= 0:
        return 0.0
    lo, hi = clipping_bounds(aq)
    return float(np.count_nonzero((x > hi) | (x < lo))) / x.size


def summarize_error(parts) -> dict:
    """Turn an error probe's per-input arrays (see ``ProbeGraph.error``) into ``cosine`` (mean of
    the per-input cosines, as MNN averages over images), ``sqnr`` (dB, from the two summed
    energies), ``max_abs`` and ``noise`` (error energy / signal energy)."""
    cos = [cosine_from_sums(d, r, t) for d, r, t in
           zip(parts["dot"], parts["ref_sq"], parts["test_sq"])]
    ref, err = float(np.sum(parts["ref_sq"])), float(np.sum(parts["err_sq"]))
    return {"cosine": float(np.mean(cos)) if cos else 1.0, "sqnr": sqnr_from_sums(ref, err),
            "max_abs": float(np.max(parts["max_abs"])) if len(parts["max_abs"]) else 0.0,
            "noise": err / ref if ref > 0 else (0.0 if err <= 0 else math.inf)}
