"""Layer-output check of activation thresholds (ptqconv's guard against over-clipping).

A histogram criterion such as KL judges a tensor alone; it cannot see that the consuming layer
needs the clipped tail (a ReLU6 output saturated at 6 is the classic case). For each quantized
activation, this pass compares a few candidate thresholds - the calibrator's own, the observed
absmax and their geometric mean - by the cosine similarity of the consuming layers' outputs to fp32 (as ncnn's EQ does) (each
layer run in fp32 and fake-quantized on the same fp32 input, layer-local). The candidate with the
largest summed cosine wins. It is one streamed pass over at most ``max_inputs`` calibration inputs:
onnxruntime returns only one scalar per candidate, so memory does not grow with the data.
"""
from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from ptqconv.core import log
from ptqconv.core.ir.graph import Node
from ptqconv.core.numeric import act_from_range, act_from_threshold
from ptqconv.core.corrections import fake_quant_weight
from ptqconv.core.qtable import INT8
from ptqconv.core.runtime import make_session

REFINABLE = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def candidate_thresholds(aq, stats):
    """The thresholds compared for one tensor: calibrator's, absmax, and their geometric mean."""
    t = aq.threshold if aq.threshold is not None else aq.scale * aq.qmax
    top = stats.absmax
    if t <= 0 or top <= t * 1.0001:
        return [t]
    return [t, float(np.sqrt(t * top)), top]


def _requantize(aq, threshold, stats, spec):
    if aq.zero_point == 0 and aq.signed:
        return act_from_threshold(threshold, spec)
    if aq.zero_point == 0:  # unsigned codes for a non-negative tensor
        return replace(aq, scale=threshold / aq.qmax, threshold=threshold)
    return act_from_range(max(stats.min, -threshold), min(stats.max, threshold), spec)


def _add_qdq(g, tensor, aq, tag):
    scale, zp = g.unique_name(f"{tensor}_{tag}_s"), g.unique_name(f"{tensor}_{tag}_zp")
    g.constants[scale] = np.float32(aq.scale)
    g.constants[zp] = (np.int8 if aq.signed else np.uint8)(aq.zero_point)
    q, dq = g.unique_name(f"{tensor}_{tag}_q"), g.unique_name(f"{tensor}_{tag}_dq")
    g.nodes.append(Node("QuantizeLinear", g.unique_name(q + "_op"), [tensor, scale, zp], [q]))
    g.nodes.append(Node("DequantizeLinear", g.unique_name(dq + "_op"), [q, scale, zp], [dq]))
    return dq


def _cosine_parts(g, ref, y):
    """Add nodes computing dot(ref, y), |ref|^2 and |y|^2 (scalars); return their names."""
    prod = g.unique_name(y + "_prod")
    g.nodes.append(Node("Mul", g.unique_name(prod + "_op"), [ref, y], [prod]))
    names = []
    for src, op in ((prod, "ReduceSum"), (ref, "ReduceSumSquare"), (y, "ReduceSumSquare")):
        out = g.unique_name(f"{y}_{op}")
        g.nodes.append(Node(op, g.unique_name(out + "_op"), [src], [out], {"keepdims": 0}))
        names.append(out)
    return tuple(names)


def refine_thresholds(graph, table, stats, data, spec, threads=0, max_inputs=32):
    """Return a copy of ``table`` whose activation thresholds won the layer-output check."""
    g = graph.copy()
    g.opset = max(g.opset, 13)
    consumers = {}
    for node in graph.nodes:
        if node.op in REFINABLE and table.precision.get(node.name) == INT8 and \
                node.inputs[0] in table.activations and node.inputs[1] in table.weights:
            consumers.setdefault(node.inputs[0], []).append(node)
    options, errors = {}, {}
    for tensor, nodes in consumers.items():
        aq = table.activations[tensor]
        # asymmetric ranges (zero point, e.g. EMA) are kept: the candidates are symmetric
        cands = candidate_thresholds(aq, stats[tensor]) if tensor in stats and \
            aq.zero_point == 0 else []
        if len(cands) < 2:
            continue
        options[tensor] = [_requantize(aq, t, stats[tensor], spec) for t in cands]
        errors[tensor] = []
        for k, cand in enumerate(options[tensor]):
            dq = _add_qdq(g, tensor, cand, f"cand{k}")
            total = []
            for node in nodes:
                w = g.unique_name(node.inputs[1] + "_fq")
                g.constants[w] = fake_quant_weight(graph, node.inputs[1], table.weights[node.inputs[1]])
                y = g.unique_name(f"{node.outputs[0]}_cand{k}")
                g.nodes.append(Node(node.op, g.unique_name(node.name + f"_cand{k}"),
                                    [dq, w] + node.inputs[2:], [y], dict(node.attrs)))
                total.append(_cosine_parts(g, node.outputs[0], y))
            errors[tensor].append(total)
    if not options:
        return table
    g.toposort()
    parts = [p for per_cand in errors.values() for errs in per_cand for p in errs]
    fetch = list(itertools.chain.from_iterable(parts))
    session = make_session(g, extra_outputs=fetch, threads=threads, batch=data.batch_size)
    sums = dict.fromkeys(parts, 0.0)  # summed cosine similarity per (candidate, layer)
    seen = 0
    with log.progress(min(len(data), max_inputs), "layer-output check") as bar:
        for feed in data.batches():
            values = dict(zip(fetch, session.run(fetch, feed)))
            for dot, n_ref, n_y in parts:
                denom = float(np.sqrt(values[n_ref] * values[n_y]))
                sums[(dot, n_ref, n_y)] += float(values[dot]) / denom if denom > 0 else 1.0
            n = next(iter(feed.values())).shape[0]
            seen += n
            bar.update(n)
            if seen >= max_inputs:
                break
    refined = replace(table, activations=dict(table.activations))
    changed = 0
    for tensor, per_cand in errors.items():
        score = [sum(sums[e] for e in errs) for errs in per_cand]
        best = int(np.argmax(score))
        if best != 0:
            refined.activations[tensor] = options[tensor][best]
            changed += 1
    log.step(f"layer-output check: {changed} of {len(options)} threshold(s) widened "
             f"({seen} input(s))")
    return refined
