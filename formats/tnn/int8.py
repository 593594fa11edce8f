"""TNN int8 arithmetic: the input-scale fold, weight/bias (de)quantization (algorithms.md §3.4,
§3.7; tnn.md §4).

TNN stores for a quantized Convolution/InnerProduct the *combined* scale ``s[oc]``: the int32
accumulator ``sum(q_w * q_x)`` times ``s[oc]`` is the float output. For a normal convolution the
weights were multiplied by the input blob scale of their input channel before quantizing
(``w' = w * s_in[ic]``); for a depthwise one the scale is multiplied afterwards. Either way
``w = q * s[oc] / s_in[ic]`` (depthwise: ``/ s_in[oc]``) and the bias is ``trunc(b / s[oc])``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ptqconv.core.numeric import round_half_away

QMAX = 127
INT32_LIMIT = 2 ** 31 - 1


def input_scale_per_column(s_in: np.ndarray, w_shape, group: int) -> np.ndarray:
    """Broadcastable input scale for weights ``[oc, icg, ...]`` (or ``[N, K]``): the scale of
    the global input channel each weight column reads. ``s_in`` has 1 or C entries; for an
    InnerProduct with K = C*H*W each channel's scale repeats H*W times."""
    s_in = np.asarray(s_in, dtype=np.float64).reshape(-1)
    oc, icg = int(w_shape[0]), int(w_shape[1])
    rest = [1] * (len(w_shape) - 2)
    if s_in.size == 1:
        return s_in.reshape([1, 1] + rest)
    ocg = oc // group
    if group > 1 and s_in.size == icg * group:
        per_oc = s_in.reshape(group, icg)[np.arange(oc) // ocg]  # [oc, icg]
        return per_oc.reshape([oc, icg] + rest)
    if icg % s_in.size == 0:  # flattened features: channel-major blocks
        return np.repeat(s_in, icg // s_in.size).reshape([1, icg] + rest)
    raise ValueError(f"input scale has {s_in.size} entries for a weight of shape {tuple(w_shape)}")


def is_depthwise(w_shape, group: int) -> bool:
    """TNN's depthwise test: one input and one output channel per group."""
    return group > 1 and int(w_shape[1]) == 1 and int(w_shape[0]) == group


def _per_oc(scale: np.ndarray, w_shape) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    return scale.reshape([-1] + [1] * (len(w_shape) - 1))


def dequantize_weights(q: np.ndarray, scale: np.ndarray, s_in: Optional[np.ndarray],
                       group: int = 1) -> np.ndarray:
    """Float weights of a TNN int8 layer: ``q * s[oc] / s_in[ic]`` (0 where ``s_in`` is 0).
    ``s_in`` None means weight-only quantization (no input scale folded in)."""
    w = q.astype(np.float64) * _per_oc(scale, q.shape)
    if s_in is None:
        return w.astype(np.float32)
    if is_depthwise(q.shape, group):
        s = np.asarray(s_in, dtype=np.float64).reshape(-1)
        s = np.broadcast_to(s, (q.shape[0],)) if s.size == 1 else s
        div = s.reshape([-1] + [1] * (q.ndim - 1))
    else:
        div = input_scale_per_column(s_in, q.shape, group)
    div = np.broadcast_to(div, w.shape)
    out = np.divide(w, div, out=np.zeros_like(w), where=div > 0)
    return out.astype(np.float32)


def combined_scales(w: np.ndarray, s_in: np.ndarray, group: int, per_tensor: bool,
                    steps: Optional[np.ndarray] = None) -> np.ndarray:
    """The stored TNN scale: absmax of the folded weights / 127, per output channel (or one
    over the tensor with ``per_tensor``). With ``steps`` (float-space weight steps from a table)
    and a per-tensor input scale the result is ``steps * s_in`` instead, honouring the table's
    weight method (also when a per-channel blob scale repeats one value)."""
    s_in = np.asarray(s_in, dtype=np.float64).reshape(-1)
    if steps is not None and np.all(s_in == s_in[0]):  # one input scale (maybe repeated)
        steps = np.asarray(steps, dtype=np.float64).reshape(-1)
        return (steps * s_in[0]).astype(np.float32)
    folded = np.abs(fold_input_scale(w, s_in, group))
    if per_tensor:
        base = np.array([folded.max() / QMAX if folded.size else 0.0])
    else:
        base = folded.reshape(folded.shape[0], -1).max(axis=1) / QMAX
    if is_depthwise(w.shape, group):  # the input scale is multiplied in after quantizing
        base = base * s_in if s_in.size == 1 or base.size > 1 else base[0] * s_in
    return base.astype(np.float32)


def fold_input_scale(w: np.ndarray, s_in: np.ndarray, group: int) -> np.ndarray:
    """``w * s_in[ic]`` for a normal layer; depthwise weights are returned unchanged."""
    w = w.astype(np.float64)
    if is_depthwise(w.shape, group):
        return w
    return w * input_scale_per_column(s_in, w.shape, group)


def quantize_layer(w: np.ndarray, s_in: np.ndarray, group: int,
                   scale: np.ndarray) -> np.ndarray:
    """int8 codes of a TNN layer for the stored (combined) ``scale``: normal layers
    ``round(w * s_in / scale)``, depthwise ``round(w * s_in[oc] / scale)``; half away from
    zero, clamped to [-127, 127], 0 where the scale is 0."""
    s_in = np.asarray(s_in, dtype=np.float64).reshape(-1)
    if is_depthwise(w.shape, group):
        s = np.broadcast_to(s_in, (w.shape[0],)) if s_in.size == 1 else s_in
        folded = w.astype(np.float64) * s.reshape([-1] + [1] * (w.ndim - 1))
    else:
        folded = fold_input_scale(w, s_in, group)
    sc = np.broadcast_to(_per_oc(scale, w.shape), folded.shape)
    q = np.divide(folded, sc, out=np.zeros_like(folded), where=sc > 0)
    return np.clip(round_half_away(q), -QMAX, QMAX).astype(np.int8)


def on_grid(w: np.ndarray, s_in: np.ndarray, group: int, scale: np.ndarray) -> bool:
    """True when ``w`` is exactly representable with ``scale`` (up to float32 rounding): then
    re-quantizing reproduces the codes it was dequantized from."""
    q = quantize_layer(w, s_in, group, scale).astype(np.float64)
    back = dequantize_weights(q, scale, s_in, group).astype(np.float64)
    tol = 1e-5 * np.maximum(np.abs(w), 1e-30) + 1e-30
    return bool(np.all(np.abs(back - w) <= tol))


def bias_to_int32(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """TNN's int32 bias: ``trunc(b / scale)`` (C cast toward zero), 0 where the scale is 0.
    Quotients within 1e-6 (relative) of an integer are snapped to it first, so a bias that
    was dequantized from int32 (``b = b_q * scale`` in float32) gives ``b_q`` back."""
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), b.shape)
    x = np.divide(b, s, out=np.zeros_like(b), where=s > 0)
    near = np.round(x)
    x = np.where(np.abs(x - near) <= 1e-6 * np.maximum(np.abs(x), 1.0), near, x)
    return np.clip(np.trunc(x), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)


def bias_from_int32(bq: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Float bias ``b_q * scale``."""
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), bq.shape)
    return (bq.astype(np.float64) * s).astype(np.float32)


def float_steps(w: np.ndarray, scale: np.ndarray, s_in: Optional[np.ndarray],
                group: int) -> Tuple[np.ndarray, Optional[int]]:
    """ptqconv's float-space weight steps (table convention) for a dequantized TNN layer:
    ``s[oc] / s_in`` when that is exact (per-tensor input scale, or depthwise), else the
    per-channel absmax/127 of the float weights. Returns (steps, axis or None)."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    axis = None if scale.size == 1 else 0
    if s_in is None:
        return scale.astype(np.float32), axis
    s = np.asarray(s_in, dtype=np.float64).reshape(-1)
    if s.size == 1 or np.all(s == s[0]):
        steps = scale / s[0] if s[0] > 0 else np.zeros_like(scale)
        return steps.astype(np.float32), axis
    if is_depthwise(w.shape, group) and scale.size == w.shape[0]:
        steps = np.divide(scale, s, out=np.zeros_like(scale), where=s > 0)
        return steps.astype(np.float32), 0
    flat = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1)
    if axis is None:
        return np.array([flat.max() / QMAX], dtype=np.float32), None
    return (flat.max(axis=1) / QMAX).astype(np.float32), 0
