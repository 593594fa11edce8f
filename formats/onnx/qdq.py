"""Insert QuantizeLinear/DequantizeLinear pairs into an IR graph from a quantization table.

Activations: one Q->DQ pair per quantized tensor (per tensor, int8 symmetric or uint8 with zero
point), read by the quantized layers only. Weights: int8 initializers with a per-axis
DequantizeLinear. Bias: int32 with step ``input_step * weight_step``.
"""
from __future__ import annotations

import numpy as np

from ptqconv.core.ir.graph import Graph, Node
from ptqconv.core.numeric import quantize_bias, quantize_weights
from ptqconv.core.qtable import INT8, QuantTable

QDQ_OPSET = 13


def _const(graph: Graph, base: str, value) -> str:
    name = graph.unique_name(base)
    graph.constants[name] = np.asarray(value)
    return name


def _act_qdq(graph: Graph, tensor: str, aq) -> str:
    dtype = np.int8 if aq.signed else np.uint8
    scale = _const(graph, tensor + "_scale", np.float32(aq.scale))
    zp = _const(graph, tensor + "_zero_point", dtype(aq.zero_point))
    q_out, dq_out = graph.unique_name(tensor + "_quantized"), graph.unique_name(tensor + "_dequantized")
    graph.nodes.append(Node("QuantizeLinear", graph.unique_name(tensor + "_QuantizeLinear"),
                            [tensor, scale, zp], [q_out]))
    graph.nodes.append(Node("DequantizeLinear", graph.unique_name(tensor + "_DequantizeLinear"),
                            [q_out, scale, zp], [dq_out]))
    return dq_out


def _weight_dq(graph: Graph, weight: str, wq) -> tuple:
    w = graph.constants[weight]
    scales = np.asarray(wq.scales, dtype=np.float32).reshape(-1)
    axis = wq.axis if scales.size > 1 else None
    codes = quantize_weights(w, scales, axis, wq.bits)
    safe = np.where(scales > 0, scales, np.float32(1.0)).astype(np.float32)
    q = _const(graph, weight + "_quantized", codes)
    if axis is None:
        s = _const(graph, weight + "_scale", np.float32(safe[0]))
        zp = _const(graph, weight + "_zero_point", np.int8(0))
        attrs = {}
    else:
        s = _const(graph, weight + "_scale", safe)
        zp = _const(graph, weight + "_zero_point", np.zeros(scales.size, np.int8))
        attrs = {"axis": int(axis)}
    out = graph.unique_name(weight + "_dequantized")
    graph.nodes.append(Node("DequantizeLinear", graph.unique_name(weight + "_DequantizeLinear"),
                            [q, s, zp], [out], attrs))
    return out, scales


def _bias_dq(graph: Graph, bias: str, in_step: float, w_steps: np.ndarray):
    b = graph.constants[bias]
    steps = (float(in_step) * np.broadcast_to(w_steps, b.shape)).astype(np.float32)
    if np.any(steps <= 0) or b.ndim != 1:
        return None
    codes = quantize_bias(b, in_step, np.broadcast_to(w_steps, b.shape))
    q = _const(graph, bias + "_quantized", codes)
    s = _const(graph, bias + "_scale", steps)
    zp = _const(graph, bias + "_zero_point", np.zeros(b.size, np.int32))
    out = graph.unique_name(bias + "_dequantized")
    graph.nodes.append(Node("DequantizeLinear", graph.unique_name(bias + "_DequantizeLinear"),
                            [q, s, zp], [out], {"axis": 0}))
    return out


def insert_qdq(graph: Graph, table: QuantTable) -> Graph:
    """Return a copy of ``graph`` with Q/DQ nodes for every int8 layer of ``table``."""
    g = graph.copy()
    g.opset = max(g.opset or QDQ_OPSET, QDQ_OPSET)
    dq_of = {}
    for node in list(g.nodes):
        if table.precision.get(node.name) != INT8:
            continue
        act, weight = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        aq, wq = table.activations.get(act), table.weights.get(weight)
        if aq is None or aq.scale <= 0:
            continue
        if act not in dq_of:
            dq_of[act] = _act_qdq(g, act, aq)
        node.inputs[0] = dq_of[act]
        if wq is None or weight not in g.constants:
            continue
        node.inputs[1], w_steps = _weight_dq(g, weight, wq)
        if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2] in g.constants \
                and wq.axis is not None and g.constants[node.inputs[2]].ndim != 1:
            continue
        if len(node.inputs) > 2 and node.inputs[2] in g.constants:
            b = _bias_dq(g, node.inputs[2], aq.scale, w_steps)
            if b is not None:
                node.inputs[2] = b
    return g.toposort().cleanup()
