"""Centring never-negative int8 inputs, for backends whose int8 activations have no zero point.

A ReLU/ReLU6 output ``x`` in ``[0, T]`` quantized with signed symmetric codes uses only the codes
0..127: the sign bit is wasted, and the step is twice what 8 bits allow. onnxruntime (uint8) and
MNN (zero point -127) get the bit back in the table. A backend without zero points (ncnn) can get
it back in the float graph instead: with ``c = 127 * step``, write ``x' = x - c`` by lowering the
producing layer's bias by ``c`` and moving its activation bounds by ``-c`` (``Relu`` becomes
``Clip(-c, inf)``, ``Clip(0, 6)`` becomes ``Clip(-c, 6 - c)``), and add ``c * sum(W)`` to the
bias of every consumer. ``x'`` fills the codes -127..127, the same codes as the uint8
``round(x / step)`` shifted by 127, and the model computes the same function.

This is exact only where nothing sees ``x'`` but the shifted layers: every consumer must be a
convolution without padding (a padded border would read 0 = ``x`` of ``c``) or a fully connected
layer (with ``padded``, a padded convolution too: its padding moves into an explicit ``Pad``
with value ``-c``, which costs the backend a padding layer; ~30% slower MobileNetV2 in ncnn on
x86), and the chain back to the producing layers may pass only through ops that commute with
a shift (Concat, MaxPool, whose ONNX padding is -inf, global pooling, Flatten, Reshape), with
no other reader on the way.

:func:`centrable` is the structural test used when the table is built (such tensors get unsigned
codes there, so the threshold check, bias correction and diagnosis simulate what the backend will
compute); :func:`centre_tensors` rewrites the graph and table just before writing.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from ptqconv.core import log
from ptqconv.core.corrections import fake_quant_weight
from ptqconv.core.ir.graph import Graph, Node
from ptqconv.core.qtable import ActQuant, QuantTable

FLT_MAX = 3.4028234663852886e38
# value-preserving or shift-commuting ops a centred chain may pass through (single input first)
PASS_THROUGH = ("Concat", "MaxPool", "GlobalMaxPool", "GlobalAveragePool", "Flatten", "Reshape")
WEIGHTED = ("Conv", "Gemm")


def _scalar_constant(graph: Graph, node: Node, index: int, attr: str, default: float):
    """A Clip bound (input ``index`` or attribute ``attr``), None if it is not a constant."""
    if len(node.inputs) > index and node.inputs[index]:
        value = graph.constants.get(node.inputs[index])
        if value is None or np.size(value) != 1:
            return None
        return float(np.asarray(value).reshape(-1)[0])
    return float(node.attr(attr, default))


def _activation_bounds(graph: Graph, node: Node) -> Optional[Tuple[float, float]]:
    """(min, max) of a Relu or constant Clip with min >= 0, else None."""
    if node.op == "Relu":
        return 0.0, FLT_MAX
    if node.op != "Clip":
        return None
    lo = _scalar_constant(graph, node, 1, "min", -FLT_MAX)
    hi = _scalar_constant(graph, node, 2, "max", FLT_MAX)
    if lo is None or hi is None or lo < 0:
        return None
    return lo, hi


def _has_padding(node: Node) -> bool:
    auto = node.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto not in ("NOTSET", "VALID") or any(int(p) for p in node.attr("pads", []) or [])


def _explicit_pads(node: Node) -> bool:
    auto = node.attr("auto_pad", "NOTSET")
    return (auto.decode() if isinstance(auto, bytes) else auto) in ("NOTSET", "VALID")


def _adjustable_bias(graph: Graph, node: Node) -> bool:
    """True when :func:`_add_to_bias` can change ``node``'s bias: none, or a constant (for Gemm
    at most 1-D, with a non-zero ``beta``)."""
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if node.op == "Gemm" and float(node.attr("beta", 1.0)) == 0:
        return False
    if bias is None:
        return True
    return bias in graph.constants and (node.op != "Gemm" or graph.constants[bias].ndim <= 1)


def _shiftable_consumer(graph: Graph, node: Node, tensor: str, padded: bool) -> bool:
    if not node.inputs or node.inputs[0] != tensor or tensor in node.inputs[1:] or \
            len(node.inputs) < 2 or node.inputs[1] not in graph.constants or \
            not _adjustable_bias(graph, node):
        return False
    if node.op == "Conv":
        w = graph.constants[node.inputs[1]]
        group = int(node.attr("group", 1))
        # 2-D, and plain or depthwise: ncnn runs other grouped convolutions with one weight step
        # per group, so their int8 weights are not the table's per-channel ones
        if w.ndim != 4 or group not in (1, w.shape[0]):
            return False
        return _explicit_pads(node) if padded else not _has_padding(node)
    if node.op == "Gemm":
        return graph.constants[node.inputs[1]].ndim == 2 and not node.attr("transA", 0)
    return False


def _weighted_producer(graph: Graph, node: Optional[Node], consumers) -> bool:
    """True for a Conv/Gemm with a constant weight whose output only the activation reads."""
    if node is None or node.op not in WEIGHTED or len(consumers.get(node.outputs[0], [])) != 1 \
            or node.outputs[0] in graph.output_names() or node.inputs[1] not in graph.constants:
        return False
    return _adjustable_bias(graph, node)


def _sources(graph: Graph, tensor: str, producers, consumers) -> Optional[List[Node]]:
    """The activation nodes whose outputs flow into ``tensor`` through :data:`PASS_THROUGH` ops
    only, or None when the chain has another reader or another kind of node."""
    node = producers.get(tensor)
    if node is None:
        return None
    if node.op in PASS_THROUGH:
        found = []
        for src in node.inputs if node.op == "Concat" else node.inputs[:1]:
            if len(consumers.get(src, [])) != 1 or src in graph.output_names():
                return None
            more = _sources(graph, src, producers, consumers)
            if more is None:
                return None
            found += more
        return found
    if _activation_bounds(graph, node) is None or \
            not _weighted_producer(graph, producers.get(node.inputs[0]), consumers):
        return None
    return [node]


def centrable(graph: Graph, tensor: str, padded: bool = False) -> bool:
    """True when ``tensor`` can be centred exactly (see the module docstring); ``padded``
    allows padded convolutions among its readers."""
    if tensor in graph.output_names() or tensor in graph.input_names():
        return False
    consumers = graph.consumers()
    readers = consumers.get(tensor, [])
    if not readers or not all(_shiftable_consumer(graph, n, tensor, padded) for n in readers):
        return False
    return _sources(graph, tensor, graph.producers(), consumers) is not None


def _add_to_bias(graph: Graph, node: Node, delta: np.ndarray) -> None:
    """Add ``delta`` (per output channel) to the bias of Conv/Gemm ``node`` (made if absent)."""
    scale = float(node.attr("beta", 1.0)) if node.op == "Gemm" else 1.0
    delta = np.asarray(delta, np.float64) / scale
    name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    old = np.zeros(delta.shape) if name is None else \
        np.broadcast_to(np.asarray(graph.constants[name], np.float64), delta.shape)
    new = graph.unique_name((name or node.name + "_bias") + "_centred")
    graph.constants[new] = (old + delta).astype(np.float32)
    node.inputs = node.inputs[:2] + [new]


def _output_channels(graph: Graph, node: Node) -> int:
    w = graph.constants[node.inputs[1]]
    if node.op == "Conv":
        return w.shape[0]
    return w.shape[0] if node.attr("transB", 0) else w.shape[1]


def _weight_sums(graph: Graph, node: Node, table: QuantTable) -> np.ndarray:
    """Per output channel, the sum of the weights applied to the centred input: the int8 layer's
    dequantized weights, so that ``sum(Wq (x - c)) + c sum(Wq)`` is exactly ``sum(Wq x)`` (the
    float weights would add ``c * sum(W - Wq)``, a weight-rounding error scaled by ``c``)."""
    wq = table.weights.get(node.inputs[1])
    w = fake_quant_weight(graph, node.inputs[1], wq) if wq is not None and \
        table.is_quantized(node.name) else graph.constants[node.inputs[1]]
    w = np.asarray(w, np.float64)
    if node.op == "Conv":
        return w.reshape(w.shape[0], -1).sum(axis=1)
    sums = w.sum(axis=1) if node.attr("transB", 0) else w.sum(axis=0)
    return sums * float(node.attr("alpha", 1.0))


def _shift_source(graph: Graph, act: Node, c: float, producers) -> None:
    """Lower ``act``'s input layer bias by ``c`` and move its bounds: act(z) - c."""
    layer = producers[act.inputs[0]]
    _add_to_bias(graph, layer, np.full(_output_channels(graph, layer), -c))
    lo, hi = _activation_bounds(graph, act)
    bounds = []
    for value, tag in ((lo - c, "min"), (hi - c if hi < FLT_MAX else FLT_MAX, "max")):
        name = graph.unique_name(f"{act.name}_{tag}_centred")
        graph.constants[name] = np.array(value, np.float32)
        bounds.append(name)
    act.op, act.attrs = "Clip", {}
    act.inputs = [act.inputs[0]] + bounds


def _move_padding(graph: Graph, reader: Node, tensor: str, value: float) -> str:
    """Put ``reader``'s padding into a ``Pad`` node with ``value`` in front of it; returns the
    padded tensor's name."""
    pads = [int(p) for p in reader.attrs.pop("pads")]
    half = len(pads) // 2
    pads_name = graph.unique_name(tensor + "_pads")
    graph.constants[pads_name] = np.array([0, 0] + pads[:half] + [0, 0] + pads[half:], np.int64)
    value_name = graph.unique_name(tensor + "_pad_value")
    graph.constants[value_name] = np.array(value, np.float32)
    out = graph.unique_name(tensor + "_padded")
    graph.nodes.insert(graph.nodes.index(reader), Node(
        "Pad", graph.unique_name(reader.name + "_pad"), [tensor, pads_name, value_name], [out],
        {"mode": "constant"}))
    reader.inputs[0] = out
    return out


def centre_tensors(graph: Graph, table: Optional[QuantTable],
                   padded: bool = False) -> Tuple[Graph, Optional[QuantTable]]:
    """Rewrite a copy of ``graph`` so that every unsigned (zero point 0) activation of ``table``
    that :func:`centrable` allows is centred, and return it with a table whose entries are
    signed again: step unchanged, threshold ``127 * step``. Unsigned entries that cannot be
    centred fall back to signed codes over their threshold (with a warning). ``padded`` centres
    inputs of padded convolutions too, through explicit ``Pad`` nodes."""
    if table is None:
        return graph, table
    unsigned = [t for t, a in table.activations.items() if not a.signed and a.zero_point == 0]
    if not unsigned:
        return graph, table
    g = graph.copy()
    activations: Dict[str, ActQuant] = dict(table.activations)
    centred, fallback = 0, []
    for tensor in unsigned:
        aq = activations[tensor]
        bits = aq.bits
        qmax = 2 ** (bits - 1) - 1
        if not centrable(g, tensor, padded):
            t = aq.threshold if aq.threshold is not None else aq.scale * (2 ** bits - 1)
            activations[tensor] = ActQuant(t / qmax, 0, bits, True, t)
            fallback.append(tensor)
            continue
        c = qmax * aq.scale
        producers, consumers = g.producers(), g.consumers()
        for act in _sources(g, tensor, producers, consumers):
            _shift_source(g, act, c, producers)
        activations[tensor] = ActQuant(aq.scale, 0, bits, True, c)
        for reader in consumers[tensor]:
            _add_to_bias(g, reader, c * _weight_sums(g, reader, table))
            if reader.op == "Conv" and _has_padding(reader):
                activations[_move_padding(g, reader, tensor, -c)] = activations[tensor]
        centred += 1
    if fallback:
        log.step(f"warning: {len(fallback)} unsigned activation(s) cannot be centred for this "
                 f"backend and use signed codes (e.g. '{fallback[0]}')")
    if centred:
        log.step(f"{centred} never-negative int8 input(s) centred (full 8-bit codes without "
                 f"zero points)")
    return g.cleanup(), replace(table, activations=activations)
