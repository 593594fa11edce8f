"""Per-channel weight ranges: why per-tensor weight quantization fails on some layers.

With one step for the whole tensor, the step is set by the widest output channel; a channel
whose range is many times narrower gets only a few of the 127 codes (a depthwise convolution
with a few wide channels is the classic case). This module measures that from the weights alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from ptqconv.core.corrections import fake_quant_weight
from ptqconv.core.diagnose.metrics import sqnr_from_sums
from ptqconv.core.qtable import WeightQuant
from ptqconv.core.quantize import weight_axis

FAR = 4.0        # a channel is "far from the others" at 4x (2 bits) from the median range
STARVED = 16     # fewer codes than this under a per-tensor step: more than 3 bits lost


@dataclass
class WeightRange:
    """Output-channel ranges of one layer's weight and what quantizing them costs."""

    channels: int
    absmax: np.ndarray          # per output channel
    far: List[int]              # channels whose range is FAR x above or below the median
    starved: List[int]          # channels with < STARVED codes under one per-tensor step
    sqnr_table: float           # median over channels of the weight SQNR (dB), table's steps
    sqnr_per_channel: float     # the same with per-channel absmax steps
    per_tensor: bool            # the table quantizes this weight per tensor
    depthwise: bool

    @property
    def spread(self) -> float:
        """Widest channel range over the median channel range."""
        med = float(np.median(self.absmax))
        return float(self.absmax.max()) / med if med > 0 else float("inf")


def is_depthwise(graph, node) -> bool:
    """True for a Conv whose every group has one input channel and group > 1."""
    if node.op != "Conv" or len(node.inputs) < 2 or node.inputs[1] not in graph.constants:
        return False
    w = graph.constants[node.inputs[1]]
    group = int(node.attr("group", 1))
    return group > 1 and w.ndim >= 2 and w.shape[1] == 1


def channel_absmax(w: np.ndarray, axis: int) -> np.ndarray:
    """Largest magnitude of each slice of ``w`` along ``axis``."""
    return np.abs(np.moveaxis(np.asarray(w, np.float64), axis, 0)).reshape(w.shape[axis], -1).max(1)


def channel_sqnr(w: np.ndarray, wq_w: np.ndarray, axis: int) -> float:
    """Median over output channels of each channel's SQNR (dB): unlike one SQNR over the whole
    tensor, it is not hidden by a few wide channels that hold most of the energy."""
    ref = np.moveaxis(np.asarray(w, np.float64), axis, 0).reshape(w.shape[axis], -1)
    err = ref - np.moveaxis(np.asarray(wq_w, np.float64), axis, 0).reshape(ref.shape)
    return float(np.median([sqnr_from_sums(float(r @ r), float(e @ e))
                            for r, e in zip(ref, err)]))


def weight_range(graph, node, wq: WeightQuant) -> WeightRange:
    """Measure the weight of ``node`` (quantized as ``wq`` by the table)."""
    name = node.inputs[1]
    w = graph.constants[name]
    axis = weight_axis(graph, node)
    axis = 0 if axis is None else axis
    absmax = channel_absmax(w, axis)
    med, top = float(np.median(absmax)), float(absmax.max())
    far = [int(c) for c in np.flatnonzero((absmax >= FAR * med) | (absmax <= med / FAR))] \
        if med > 0 else []
    codes = wq.qmax * absmax / top if top > 0 else np.zeros_like(absmax)
    starved = [int(c) for c in np.flatnonzero(codes < STARVED)]
    per_channel = WeightQuant((absmax / wq.qmax).astype(np.float32), axis, wq.bits)
    per_tensor = wq.axis is None or np.size(wq.scales) == 1
    return WeightRange(int(absmax.size), absmax, far, starved,
                       channel_sqnr(w, fake_quant_weight(graph, name, wq), axis),
                       channel_sqnr(w, fake_quant_weight(graph, name, per_channel), axis),
                       per_tensor, is_depthwise(graph, node))


def weight_ranges(graph, table, nodes) -> Dict[str, WeightRange]:
    """{node name: :class:`WeightRange`} for the ``nodes`` whose weight the table quantizes."""
    result = {}
    for node in nodes:
        if len(node.inputs) > 1 and node.inputs[1] in table.weights \
                and node.inputs[1] in graph.constants:
            result[node.name] = weight_range(graph, node, table.weights[node.inputs[1]])
    return result
