"""Rounding, scale/zero-point construction and integer packing shared by every writer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptqconv.core.qtable import ActQuant

TINY = 1e-30


def round_half_away(v):
    """Round half away from zero (C ``round``), as every seed tool does; ``np.round`` does not."""
    v = np.asarray(v)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


@dataclass(frozen=True)
class QuantSpec:
    """Target integer type of a tensor: ``bits``, ``signed`` codes, ``symmetric`` range."""

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    clamp: int = 0  # MNN feature_clamp_value style: largest code (0 = 2**(bits-1)-1)
    allow_asymmetric: bool = False  # the backend also runs signed codes with a zero point

    @property
    def qmax(self) -> int:
        """Largest code for symmetric signed quantization."""
        return self.clamp or 2 ** (self.bits - 1) - 1


def act_from_threshold(threshold: float, spec: QuantSpec) -> ActQuant:
    """Symmetric quantization with ``threshold`` mapped to qmax (step 0 if threshold is 0)."""
    t = float(threshold) if threshold > TINY else 0.0
    return ActQuant(scale=t / spec.qmax, zero_point=0, bits=spec.bits, signed=True, threshold=t)


def act_from_range(lo: float, hi: float, spec: QuantSpec) -> ActQuant:
    """Asymmetric quantization of ``[lo, hi]`` (0 forced into the range) for ``spec``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if spec.symmetric:
        return act_from_threshold(max(-lo, hi), spec)
    if spec.signed:
        qmin, qmax = -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1
    else:
        qmin, qmax = 0, 2 ** spec.bits - 1
    if hi - lo <= TINY:
        return ActQuant(0.0, 0 if spec.signed else 0, spec.bits, spec.signed)
    scale = (hi - lo) / (qmax - qmin)
    zp = int(np.clip(round_half_away(qmin - lo / scale), qmin, qmax))
    return ActQuant(scale=scale, zero_point=zp, bits=spec.bits, signed=spec.signed)


def quantize_weights(w: np.ndarray, scales: np.ndarray, axis, bits: int = 8) -> np.ndarray:
    """Quantize ``w`` with per-channel ``scales`` along ``axis`` (None: one scale) to int8 codes
    in [-qmax, qmax], half away from zero; channels with scale 0 give code 0."""
    qmax = 2 ** (bits - 1) - 1
    scales = np.asarray(scales, dtype=np.float64)
    if axis is None:
        shape = (1,) * w.ndim
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
    s = scales.reshape(shape)
    safe = np.where(s > 0, s, 1.0)
    q = np.where(s > 0, round_half_away(w.astype(np.float64) / safe), 0.0)
    return np.clip(q, -qmax, qmax).astype(np.int8)


def quantize_bias(b: np.ndarray, input_scale: float, weight_scales: np.ndarray) -> np.ndarray:
    """int32 bias with step ``input_scale * weight_scale`` (0 where that step is 0)."""
    step = float(input_scale) * np.asarray(weight_scales, dtype=np.float64)
    step = np.broadcast_to(step, b.shape)
    safe = np.where(step > 0, step, 1.0)
    q = np.where(step > 0, round_half_away(b.astype(np.float64) / safe), 0.0)
    lim = 2 ** 31 - 1
    return np.clip(q, -lim, lim).astype(np.int32)
