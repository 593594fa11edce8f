"""ncnn's int8 rules: which IR nodes become int8 Convolution / ConvolutionDepthWise /
InnerProduct layers and with which multipliers (shared specs/ncnn.md §5, algorithms.md §3).

ncnn stores *multipliers* (``q = round(x * m)``); the :class:`QuantTable` holds steps, so
``m = 1 / step``. Weight multipliers are per output channel (Convolution, InnerProduct) or per
group (ConvolutionDepthWise, the group's largest step); a 3x3 stride-1 dilation-1 Convolution
gets 6-bit weights (codes within ±31) because ncnn's int8 Winograd kernels need them. Bias stays
fp32; the input gets one multiplier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ptqconv.core.numeric import round_half_away
from ptqconv.core.qtable import QuantTable

WINOGRAD_QMAX = 31


@dataclass
class Int8Layer:
    """How one IR node is written in int8: its ncnn type, weights in ncnn layout ``[rows, ...]``
    (rows = output channels), per-row multipliers, the per-layer multipliers ncnn stores
    (``scales``: per output channel or per group) and the input multiplier."""

    ncnn_type: str
    weight: np.ndarray
    row_multipliers: np.ndarray
    scales: np.ndarray
    input_multiplier: float
    qmax: int = 127

    def codes(self) -> np.ndarray:
        """int8 weight codes ``clip(round_half_away(w * m), -qmax, qmax)`` in fp32, as
        ncnn2int8 computes them (qmax 31 for the 6-bit Winograd layers)."""
        w = self.weight.reshape(self.weight.shape[0], -1).astype(np.float32)
        m = self.row_multipliers.astype(np.float32).reshape(-1, 1)
        return np.clip(round_half_away(w * m), -self.qmax, self.qmax).astype(np.int8)


def ncnn_type(graph, node) -> Optional[str]:
    """The int8-capable ncnn layer an IR node becomes (None if it cannot be int8 in ncnn)."""
    if len(node.inputs) < 2 or node.inputs[1] not in graph.constants:
        return None
    w = graph.constants[node.inputs[1]]
    if node.op == "Conv" and w.ndim == 4:
        return "Convolution" if int(node.attr("group", 1)) == 1 else "ConvolutionDepthWise"
    if node.op == "Gemm" and w.ndim == 2 and not node.attr("transA", 0):
        return "InnerProduct"
    if node.op == "MatMul" and w.ndim == 2:
        return "InnerProduct"
    return None


def weight_rows(graph, node) -> np.ndarray:
    """The node's weight in ncnn layout: ``[out][in][kh][kw]`` for convolutions,
    ``[out][in]`` for InnerProduct (Gemm transB=0 and MatMul weights are transposed)."""
    w = graph.constants[node.inputs[1]].astype(np.float32)
    if node.op == "Gemm":
        w = w * np.float32(node.attr("alpha", 1.0))
        return w if node.attr("transB", 0) else np.ascontiguousarray(w.T)
    if node.op == "MatMul":
        return np.ascontiguousarray(w.T)
    return w


def is_winograd_conv(node) -> bool:
    """True for a 3x3, stride 1, dilation 1, group 1 Conv (ncnn2table gives it 6-bit weights)."""
    if node.op != "Conv" or int(node.attr("group", 1)) != 1:
        return False
    return list(node.attr("kernel_shape", [])) == [3, 3] and \
        list(node.attr("strides", [1, 1])) == [1, 1] and \
        list(node.attr("dilations", [1, 1])) == [1, 1]


def _inverse(steps: np.ndarray) -> np.ndarray:
    s = np.asarray(steps, np.float64)
    return np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)


def row_steps(graph, node, table: Optional[QuantTable], rows: np.ndarray) -> np.ndarray:
    """Per-output-channel weight steps from the table (absmax/127 when it has none)."""
    n = rows.shape[0]
    absmax = np.abs(rows.reshape(n, -1)).max(axis=1).astype(np.float64)
    wq = table.weights.get(node.inputs[1]) if table is not None else None
    if wq is None:
        return absmax / 127.0
    steps = np.asarray(wq.scales, np.float64).reshape(-1)
    if steps.size == 1:
        return np.full(n, steps[0])
    if steps.size != n:
        return absmax / 127.0
    return steps


def six_bit_steps(rows: np.ndarray, steps: np.ndarray, table: Optional[QuantTable]) -> np.ndarray:
    """Steps that keep every code within ±31: the table's when they already do (a table from
    ncnn2table), else the job's weight quantizer rerun at 6 bits (``minmax`` gives ncnn2table's
    ``absmax / 31``)."""
    n = rows.shape[0]
    absmax = np.abs(rows.reshape(n, -1)).max(axis=1).astype(np.float64)
    if np.all(steps * WINOGRAD_QMAX >= absmax * (1 - 1e-6)):
        return steps
    method = str((table.meta if table is not None else {}).get("weight_method", "minmax"))
    try:
        from ptqconv.core.plugins import get_registry
        quantizer = get_registry().weight_quantizers.get(method)
        six = np.asarray(quantizer.quantize(rows, 0, 6, {}), np.float64).reshape(-1) \
            if quantizer is not None else absmax / WINOGRAD_QMAX
    except Exception:   # a quantizer that cannot run at 6 bits: fall back to absmax
        six = absmax / WINOGRAD_QMAX
    if six.size != n or not np.all(np.isfinite(six)):
        six = absmax / WINOGRAD_QMAX
    return six


def plan_int8(graph, node, table: Optional[QuantTable], winograd_6bit: bool = True,
              require_activation: bool = True) -> Optional[Int8Layer]:
    """The int8 layout of ``node`` under ``table``, or None when it stays float (not int8 in the
    table, no usable input scale, or not an int8-capable ncnn layer)."""
    kind = ncnn_type(graph, node)
    if kind is None or table is None:
        return None
    aq = table.activations.get(node.inputs[0])
    if require_activation and (not table.is_quantized(node.name) or aq is None or aq.scale <= 0):
        return None
    rows = weight_rows(graph, node)
    steps = row_steps(graph, node, table, rows)
    n = rows.shape[0]
    qmax = 127
    if winograd_6bit and is_winograd_conv(node):
        wq = table.weights.get(node.inputs[1])
        if wq is None or wq.bits > 6:  # a table made for another backend
            steps = six_bit_steps(rows, steps, table)
        qmax = WINOGRAD_QMAX
    if kind == "ConvolutionDepthWise":
        group = int(node.attr("group", 1))
        per_group = steps.reshape(group, -1).max(axis=1)
        scales = _inverse(per_group)
        row_m = np.repeat(scales, n // group)
    else:
        scales = row_m = _inverse(steps)
    bottom = 1.0 / aq.scale if aq is not None and aq.scale > 0 else 0.0
    return Int8Layer(kind, rows, row_m.astype(np.float32), scales.astype(np.float32),
                     float(np.float32(bottom)), qmax)
