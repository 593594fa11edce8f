"""Post-calibration corrections measured on the calibration data.

Empirical bias correction (specs/algorithms.md §4.1): for each int8 layer, the per-channel mean of
its fp32 output minus the mean of the same layer run on its fake-quantized input with its
fake-quantized weights (layer-local). The difference is stored in the table
(``QuantTable.bias_corrections``) and added to the layer's bias before writing. One streamed pass:
both paths run in a single onnxruntime model that outputs only per-channel means.
"""
from __future__ import annotations

import numpy as np

from ptqconv.core import log
from ptqconv.core.ir.graph import Node
from ptqconv.core.numeric import quantize_weights
from ptqconv.core.qtable import INT8
from ptqconv.core.runtime import make_session

CORRECTABLE = ("Conv", "Gemm", "MatMul")


def fake_quant_weight(graph, name, wq):
    w = graph.constants[name]
    scales = np.asarray(wq.scales, np.float32).reshape(-1)
    axis = wq.axis if scales.size > 1 else None
    codes = quantize_weights(w, scales, axis, wq.bits).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    return (codes * scales.reshape(shape)).astype(np.float32)


def _channel_mean(graph, node, tensor, suffix):
    out = graph.unique_name(f"{tensor}_{suffix}")
    rank = len(graph.shape(node.outputs[0]) or ())
    axes = [0] + list(range(2, rank)) if node.op == "Conv" else list(range(max(rank - 1, 1)))
    axes_name = graph.unique_name(out + "_axes")
    graph.constants[axes_name] = np.array(axes, np.int64)
    graph.nodes.append(Node("ReduceMean", graph.unique_name(out + "_op"), [tensor, axes_name],
                            [out], {"keepdims": 0}))
    return out


def measure_bias_corrections(graph, table, data, threads=0):
    """Return {node name: per-channel bias delta} for the table's int8 Conv/Gemm/MatMul layers."""
    g = graph.copy()
    g.opset = max(g.opset, 18)
    pairs = {}
    for node in list(g.nodes):
        if node.op not in CORRECTABLE or table.precision.get(node.name) != INT8:
            continue
        aq = table.activations.get(node.inputs[0])
        wq = table.weights.get(node.inputs[1])
        if aq is None or wq is None or aq.scale <= 0 or g.shape(node.outputs[0]) is None:
            continue
        x = node.inputs[0]
        scale = g.unique_name(x + "_bc_scale")
        zp = g.unique_name(x + "_bc_zp")
        g.constants[scale] = np.float32(aq.scale)
        g.constants[zp] = (np.int8 if aq.signed else np.uint8)(aq.zero_point)
        q, dq = g.unique_name(x + "_bc_q"), g.unique_name(x + "_bc_dq")
        g.nodes.append(Node("QuantizeLinear", g.unique_name(q + "_op"), [x, scale, zp], [q]))
        g.nodes.append(Node("DequantizeLinear", g.unique_name(dq + "_op"), [q, scale, zp], [dq]))
        w_fq = g.unique_name(node.inputs[1] + "_bc_fq")
        g.constants[w_fq] = fake_quant_weight(g, node.inputs[1], wq)
        y_q = g.unique_name(node.outputs[0] + "_bc_y")
        g.nodes.append(Node(node.op, g.unique_name(node.name + "_bc"),
                            [dq, w_fq] + node.inputs[2:], [y_q], dict(node.attrs)))
        pairs[node.name] = (_channel_mean(g, node, node.outputs[0], "bc_mean_fp"),
                            _channel_mean(g, node, y_q, "bc_mean_q"))
    if not pairs:
        return {}
    g.toposort()
    fetch = [name for pair in pairs.values() for name in pair]
    session = make_session(g, extra_outputs=fetch, threads=threads, batch=data.batch_size)
    sums = {name: 0.0 for name in fetch}
    count = 0
    with log.progress(len(data), "bias correction") as bar:
        for feed in data.batches():
            n = next(iter(feed.values())).shape[0]
            for name, value in zip(fetch, session.run(fetch, feed)):
                sums[name] = sums[name] + np.asarray(value, np.float64) * n
            count += n
            bar.update(n)
    deltas = {k: ((sums[fp] - sums[q]) / count).astype(np.float32) for k, (fp, q) in pairs.items()}
    log.step(f"bias correction: measured {len(deltas)} layer(s) on {count} input(s)")
    return deltas


def apply_bias_corrections(graph, table):
    """Add the table's bias deltas to the layers' bias constants (creating a bias if needed)."""
    if not table or not table.bias_corrections:
        return graph
    nodes = {n.name: n for n in graph.nodes}
    for name, delta in table.bias_corrections.items():
        node = nodes.get(name)
        if node is None:
            continue
        delta = np.asarray(delta, np.float32).reshape(-1)
        if len(node.inputs) > 2 and node.inputs[2] in graph.constants:
            bias = graph.constants[node.inputs[2]]
            if bias.shape != delta.shape:
                continue
            new = graph.unique_name(node.inputs[2] + "_corrected")
            graph.constants[new] = (bias.astype(np.float32) + delta).astype(np.float32)
            node.inputs[2] = new
        elif node.op in ("Conv", "Gemm"):
            new = graph.unique_name(node.name + "_bias")
            graph.constants[new] = delta
            node.inputs = node.inputs[:2] + [new]
    return graph.cleanup()
