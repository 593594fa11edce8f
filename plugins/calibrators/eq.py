"""ncnn's EQ search (specs/algorithms.md §2.4) as two streamed passes over the calibration data.

Starting from the KL thresholds and the per-channel weight steps, each int8 Conv/Gemm/MatMul is
searched layer-locally (fp32 input, fake-quantized by the current table): first every weight
channel's multiplier over ``m * (0.5 + 1.5 k / K)``, ``k = 0..K-1`` (ncnn: K = 100, ``0.5 +
0.015 k``), greedily channel by channel; then the layer input's multiplier over the same factors.
The criterion is the cosine similarity between the layer's fp32 output and its fake-quantized
output; ncnn keeps a candidate only when its score is strictly above the best so far, starting
from 0.

Streaming: changing one channel's weight step changes only that output channel, so a single
pass evaluates every candidate of every channel at once (the weights of all ``K`` candidates are
built inside the onnxruntime model from a runtime factor vector) and keeps, per layer, the sums
over the data of ``<y_c, y^k_c>`` and ``|y^k_c|^2`` (``K x channels`` numbers, independent of the
number of inputs); the greedy channel search then runs on those sums. A second pass does the
same for the input multipliers with the searched weights. Documented difference from ncnn: the
score is the cosine of the outputs of all inputs taken together instead of the sum of one cosine
per input (the same ranking up to how inputs are weighted), and at most ``eq_inputs`` inputs
(default 50, as ncnn) are used.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ptqconv.core import log
from ptqconv.core.corrections import fake_quant_weight
from ptqconv.core.ir.graph import Node, TensorInfo
from ptqconv.core.qtable import INT8, WeightQuant
from ptqconv.core.quantize import weight_axis
from ptqconv.core.refine import _add_qdq
from ptqconv.core.runtime import make_session

SEARCHED = ("Conv", "Gemm", "MatMul")
DEFAULT_INPUTS = 50
DEFAULT_CANDIDATES = 100
CHUNK_ELEMENTS = 1 << 22  # floats per stacked output or weight in one onnxruntime node
FACTORS = "eq_factors"


def eq_factors(candidates: int = DEFAULT_CANDIDATES) -> np.ndarray:
    """Multiplier factors ``0.5 + 1.5 k / K`` for ``k = 0..K-1`` (ncnn: 0.5 to 1.985)."""
    return 0.5 + 1.5 * np.arange(candidates) / candidates


def greedy_channels(dots, norms, ref_norm):
    """ncnn's greedy coordinate search on streamed sums.

    ``dots[k, c]`` and ``norms[k, c]`` hold ``<y_c, y^k_c>`` and ``|y^k_c|^2`` for candidate
    ``k`` of channel ``c``; the LAST row is the current (unsearched) state. Channels are visited
    in order; a channel takes the first candidate with the largest cosine of the whole output if
    that cosine is above 0, and keeps it for the next channels. Returns the chosen row per channel.
    """
    k_all, channels = dots.shape
    current = np.full(channels, k_all - 1)
    dsum = float(dots[-1].sum())
    nsum = float(norms[-1].sum())
    for c in range(channels):
        d = dsum - dots[current[c], c] + dots[:-1, c]
        n = nsum - norms[current[c], c] + norms[:-1, c]
        denom = np.sqrt(np.maximum(n, 0.0) * ref_norm)
        score = np.divide(d, denom, out=np.zeros_like(d), where=denom > 0)
        best = int(np.argmax(score))
        if score[best] > 0:
            dsum, nsum = d[best], n[best]
            current[c] = best
    return current


def best_joint(dots, norms, ref_norm) -> int:
    """Index of the first candidate (rows of ``dots``/``norms`` summed over their channels)
    with the largest cosine above 0, or -1 when none is above 0."""
    d = np.asarray(dots).reshape(len(dots), -1).sum(axis=1)
    n = np.asarray(norms).reshape(len(norms), -1).sum(axis=1)
    denom = np.sqrt(np.maximum(n, 0.0) * ref_norm)
    score = np.divide(d, denom, out=np.zeros_like(d), where=denom > 0)
    best = int(np.argmax(score))
    return best if score[best] > 0 else -1


class _Builder:
    """Adds the search nodes to a copy of the graph and remembers which outputs to fetch."""

    def __init__(self, graph):
        self.g = graph.copy()
        self.g.opset = max(self.g.opset or 13, 13)
        self.g.inputs.append(TensorInfo(FACTORS, "float32", (None,)))
        self.fetch = []

    def const(self, base, value):
        name = self.g.unique_name(base)
        self.g.constants[name] = np.asarray(value)
        return name

    def op(self, op, inputs, base, **attrs):
        out = self.g.unique_name(base)
        self.g.nodes.append(Node(op, self.g.unique_name(out + "_op"), list(inputs), [out], attrs))
        return out

    def factors(self, start, stop, rank):
        """The slice ``[start, stop)`` of the runtime factor vector, shaped ``[n, 1, ...]``."""
        part = self.op("Slice", [FACTORS, self.const("eq_s", np.array([start], np.int64)),
                                 self.const("eq_e", np.array([stop], np.int64))], "eq_f")
        shape = self.const("eq_fs", np.array([-1] + [1] * (rank - 1), np.int64))
        return self.op("Reshape", [part, shape], "eq_fr")

    def fake_quant(self, x, steps, lo, hi):
        """``steps * clip(round(x / steps), lo, hi)`` (ONNX Round: ties to even; a search only)."""
        q = self.op("Round", [self.op("Div", [x, steps], "eq_div")], "eq_round")
        q = self.op("Clip", [q, self.const("eq_lo", np.float32(lo)),
                             self.const("eq_hi", np.float32(hi))], "eq_clip")
        return self.op("Mul", [q, steps], "eq_fq")

    def sums(self, ref, out, axes):
        """Fetch ``sum(ref*out)`` and ``sum(out*out)`` over ``axes``; returns their names."""
        ax = self.const("eq_axes", np.array(axes, np.int64))
        dot = self.op("ReduceSum", [self.op("Mul", [ref, out], "eq_prod"), ax], "eq_dot",
                      keepdims=0)
        sq = self.op("ReduceSum", [self.op("Mul", [out, out], "eq_sq"), ax], "eq_norm",
                     keepdims=0)
        self.fetch += [dot, sq]
        return dot, sq

    def ref_norm(self, y):
        """Fetch ``sum(y*y)`` (all axes)."""
        out = self.op("ReduceSum", [self.op("Mul", [y, y], "eq_ysq")], "eq_ynorm", keepdims=0)
        self.fetch.append(out)
        return out


def _chunk(total, per_candidate):
    return max(1, min(total, CHUNK_ELEMENTS // max(int(per_candidate), 1)))


def _dims(g, name):
    info = g.tensor_info(name)
    return list(info.shape) if info is not None and info.shape is not None else None


def _numel(g, name):
    """Elements per input of a tensor (unknown dimensions count as 1)."""
    dims = _dims(g, name) or []
    return int(np.prod([d for d in dims[1:] if isinstance(d, int) and d > 0] or [1]))


def _weight_candidates(b, node, table, n_cand, x_dq):
    """Add the pass-1 nodes of one layer; returns [(dot, norm), ...] per chunk and the ref norm."""
    g = b.g
    wname = node.inputs[1]
    w = g.constants[wname].astype(np.float32)
    wq = table.weights[wname]
    out_axis = weight_axis(g, node)
    channels = w.shape[out_axis]
    steps = np.asarray(wq.scales, np.float32).reshape(-1)
    shape = [1] * w.ndim
    if steps.size > 1:
        shape[out_axis] = -1
    steps_name = b.const(wname + "_eq_steps", steps.reshape(shape)[None])
    w_name = b.const(wname + "_eq_w", w[None])
    y = node.outputs[0]
    per = max(_numel(g, y), w.size)
    chunk = _chunk(n_cand, per)
    qmax = wq.qmax
    bias = g.constants.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    parts = []
    for start in range(0, n_cand, chunk):
        kc = min(chunk, n_cand - start)
        s = b.op("Div", [steps_name, b.factors(start, start + kc, w.ndim + 1)], "eq_wsteps")
        wk = b.fake_quant(w_name, s, -qmax, qmax)  # [kc, *w.shape]
        inputs = [x_dq]
        if node.op == "Conv":
            group = int(node.attr("group", 1))
            og = channels // group
            wk = b.op("Reshape", [wk, b.const("eq_shape", np.array(
                [kc, group, og] + list(w.shape[1:]), np.int64))], "eq_wr")
            wk = b.op("Transpose", [wk], "eq_wt", perm=[1, 0] + list(range(2, w.ndim + 2)))
            wk = b.op("Reshape", [wk, b.const("eq_shape", np.array(
                [group * kc * og] + list(w.shape[1:]), np.int64))], "eq_wf")
            inputs.append(wk)
            if bias is not None:
                inputs.append(b.const("eq_bias", np.broadcast_to(
                    bias.reshape(group, 1, og), (group, kc, og)).reshape(-1).astype(np.float32)))
            yk = b.op("Conv", inputs, node.outputs[0] + "_eq", **dict(node.attrs))
            yk = b.op("Reshape", [yk, b.const("eq_shape", np.array([0, group, kc, og, -1],
                                                                   np.int64))], "eq_yr")
            yk = b.op("Transpose", [yk], "eq_yt", perm=[0, 2, 1, 3, 4])
            yk = b.op("Reshape", [yk, b.const("eq_shape", np.array([0, kc, channels, -1],
                                                                   np.int64))], "eq_yf")
            ref = b.op("Reshape", [y, b.const("eq_shape", np.array([0, 1, channels, -1],
                                                                   np.int64))], "eq_ref")
        else:
            if out_axis == 0:  # Gemm transB: [kc, O, in] -> [kc*O, in]
                wk = b.op("Reshape", [wk, b.const("eq_shape", np.array(
                    [kc * channels, w.shape[1]], np.int64))], "eq_wf")
            else:  # [kc, in, O] -> [in, kc*O]
                wk = b.op("Transpose", [wk], "eq_wt", perm=[1, 0, 2])
                wk = b.op("Reshape", [wk, b.const("eq_shape", np.array(
                    [w.shape[0], kc * channels], np.int64))], "eq_wf")
            inputs.append(wk)
            if bias is not None and node.op == "Gemm":
                inputs.append(b.const("eq_bias", np.concatenate([bias] * kc, axis=-1)))
            yk = b.op(node.op, inputs + list(node.inputs[len(inputs):]), y + "_eq",
                      **dict(node.attrs))
            yk = b.op("Reshape", [yk, b.const("eq_shape", np.array([-1, kc, channels, 1],
                                                                   np.int64))], "eq_yf")
            ref = b.op("Reshape", [y, b.const("eq_shape", np.array([-1, 1, channels, 1],
                                                                   np.int64))], "eq_ref")
        parts.append(b.sums(ref, yk, [0, 3]))
    return parts, b.ref_norm(y)


def _input_candidates(b, tensor, aq, consumers, weights_fq, n_cand):
    """Add the pass-2 nodes of one activation: every consumer run on the input fake-quantized
    with each candidate step. Returns {consumer: ([(dot, norm) per chunk], ref norm)}."""
    g = b.g
    rank = len(_dims(g, tensor) or [0] * 4)
    shape_x = b.op("Shape", [tensor], "eq_xshape")
    rest = b.op("Slice", [shape_x, b.const("eq_s", np.array([1], np.int64)),
                          b.const("eq_e", np.array([rank], np.int64))], "eq_xrest")
    per = max([_numel(g, n.outputs[0]) for n in consumers] + [_numel(g, tensor)])
    chunk = _chunk(n_cand, per)
    x1 = b.op("Unsqueeze", [tensor, b.const("eq_axes", np.array([0], np.int64))], "eq_x1")
    result = {n.name: ([], b.ref_norm(n.outputs[0])) for n in consumers}
    for start in range(0, n_cand, chunk):
        kc = min(chunk, n_cand - start)
        steps = b.op("Div", [b.const("eq_xstep", np.float32(aq.scale)),
                             b.factors(start, start + kc, rank + 1)], "eq_xsteps")
        xk = b.fake_quant(x1, steps, aq.qmin, aq.qmax)  # [kc, N, ...]
        new_shape = b.op("Concat", [b.const("eq_m1", np.array([-1], np.int64)), rest],
                         "eq_xs", axis=0)
        xk = b.op("Reshape", [xk, new_shape], "eq_xk")  # [kc*N, ...]
        for node in consumers:
            yk = b.op(node.op, [xk, weights_fq[node.name]] + node.inputs[2:],
                      node.outputs[0] + "_eqx", **dict(node.attrs))
            yk = b.op("Reshape", [yk, b.const("eq_shape", np.array([kc, -1], np.int64))],
                      "eq_yk")
            ref = b.op("Reshape", [node.outputs[0], b.const("eq_shape", np.array(
                [1, -1], np.int64))], "eq_ref")
            result[node.name][0].append(b.sums(ref, yk, [1]))
    return result


def _stream(b, data, max_inputs, factors, label, threads):
    """Run the builder's graph over at most ``max_inputs`` inputs; return summed fetches."""
    b.g.toposort()
    session = make_session(b.g, extra_outputs=b.fetch, threads=threads, batch=data.batch_size)
    sums = dict.fromkeys(b.fetch, 0.0)
    seen = 0
    with log.progress(min(len(data), max_inputs), label) as bar:
        for feed in data.batches():
            feed = dict(feed)
            feed[FACTORS] = factors
            for name, value in zip(b.fetch, session.run(b.fetch, feed)):
                sums[name] = sums[name] + np.asarray(value, np.float64)
            n = next(iter(feed.values())).shape[0]
            seen += n
            bar.update(n)
            if seen >= max_inputs:
                break
    return sums, seen


def _layers(graph, table):
    by_tensor = {}
    for node in graph.nodes:
        if node.op not in SEARCHED or table.precision.get(node.name) != INT8:
            continue
        aq = table.activations.get(node.inputs[0])
        wq = table.weights.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if aq is None or wq is None or aq.scale <= 0 or node.inputs[1] not in graph.constants \
                or weight_axis(graph, node) is None:
            continue
        by_tensor.setdefault(node.inputs[0], []).append(node)
    return by_tensor


def eq_refine(graph, table, data, spec, params, cfg=None):
    """Return a copy of ``table`` with EQ-searched weight steps and input steps.

    params: ``eq_inputs`` (max inputs, default 50), ``eq_candidates`` (K, default 100)."""
    max_inputs = int(params.get("eq_inputs", DEFAULT_INPUTS))
    n_cand = int(params.get("eq_candidates", DEFAULT_CANDIDATES))
    by_tensor = _layers(graph, table)
    if not by_tensor:
        return table
    f = eq_factors(n_cand).astype(np.float32)
    threads = cfg.calibration.threads if cfg is not None else 0

    # pass 1: weight multipliers (the last factor, 1.0, is the current state)
    b = _Builder(graph)
    plan = {}
    for tensor, nodes in by_tensor.items():
        x_dq = _add_qdq(b.g, tensor, table.activations[tensor], "eq")
        for node in nodes:
            plan[node.name] = _weight_candidates(b, node, table, n_cand + 1, x_dq)
    sums, seen = _stream(b, data, max_inputs, np.append(f, np.float32(1.0)), "EQ weights", threads)
    weights = dict(table.weights)
    changed = 0
    for tensor, nodes in by_tensor.items():
        for node in nodes:
            parts, ref = plan[node.name]
            dots = np.concatenate([np.atleast_2d(sums[d]) for d, _ in parts])
            norms = np.concatenate([np.atleast_2d(sums[n]) for _, n in parts])
            wq = table.weights[node.inputs[1]]
            steps = np.asarray(wq.scales, np.float64).reshape(-1)
            if steps.size > 1:
                pick = greedy_channels(dots, norms, float(sums[ref]))
                factor = np.append(f, 1.0)[pick]
            else:
                best = best_joint(dots[:-1], norms[:-1], float(sums[ref]))
                factor = np.array([f[best] if best >= 0 else 1.0])
            changed += int(np.count_nonzero(factor != 1.0))
            weights[node.inputs[1]] = WeightQuant((steps / factor).astype(np.float32),
                                                  wq.axis, wq.bits)
    searched = replace(table, weights=weights, activations=dict(table.activations))

    # pass 2: input multipliers with the searched weights
    b = _Builder(graph)
    plan = {}
    for tensor, nodes in by_tensor.items():
        aq = table.activations[tensor]
        if aq.zero_point != 0:
            continue
        fq = {n.name: b.const(n.inputs[1] + "_eq_fq",
                              fake_quant_weight(graph, n.inputs[1], weights[n.inputs[1]]))
              for n in nodes}
        plan[tensor] = _input_candidates(b, tensor, aq, nodes, fq, n_cand)
    moved = 0
    if plan:
        sums, _ = _stream(b, data, max_inputs, f, "EQ inputs", threads)
        for tensor, per_node in plan.items():
            score = np.zeros(n_cand)
            for parts, ref in per_node.values():
                d = np.concatenate([np.atleast_1d(sums[p]) for p, _ in parts])
                n = np.concatenate([np.atleast_1d(sums[q]) for _, q in parts])
                denom = np.sqrt(np.maximum(n, 0.0) * float(sums[ref]))
                score += np.divide(d, denom, out=np.zeros_like(d), where=denom > 0)
            best = int(np.argmax(score))
            if score[best] > 0:
                aq = table.activations[tensor]
                t = None if aq.threshold is None else aq.threshold / float(f[best])
                searched.activations[tensor] = replace(aq, scale=aq.scale / float(f[best]),
                                                       threshold=t)
                moved += 1
    log.step(f"EQ: {changed} weight channel step(s) and {moved} input step(s) searched on "
             f"{seen} input(s)")
    return searched
