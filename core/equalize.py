"""Cross-layer equalization (DFQ, Nagel et al. 2019; specs/algorithms.md §4.3): an optional
pre-pass (``quantize.equalize: true``) that leaves the float function unchanged.

For a layer ``A`` whose output reaches layers ``B1..Bn`` only through channel-wise positively
homogeneous ops (Relu, LeakyRelu, PRelu, max/average pooling, a per-channel Min bound, Flatten of
a 1x1 map), output channel ``i`` of ``A`` is divided by ``s_i = sqrt(r1_i / r2_i)`` and input
channel ``i`` of every ``B`` multiplied by it, where ``r1_i`` is the max-abs of ``A``'s channel
``i`` and ``r2_i`` the largest max-abs of input channel ``i`` over the ``B``s. Both ranges then
equal ``sqrt(r1_i r2_i)``, which suits per-tensor weight quantization. Sweeps repeat until the
scales stop changing. With ``clip=True``, ``Clip(0, b)`` (ReLU6) is rewritten as ``Relu`` and a
per-channel ``Min`` whose bounds are scaled too (exact, but the graph then holds a Min with a
per-channel constant, which not every writer can store). High-bias absorption is not done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ptqconv.core import log
from ptqconv.core.ir.graph import Graph, Node
from ptqconv.core.quantize import weight_axis

LAYERS = ("Conv", "Gemm", "MatMul")
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
               "GlobalMaxPool", "Identity")
MAX_SWEEPS = 20
TOLERANCE = 1e-4


@dataclass
class Pair:
    """A producer layer, the per-channel Min bounds on the way, and the consuming layers."""

    producer: Node
    bounds: List[str]
    consumers: List[Node]


def _clip_bound(graph: Graph, node: Node) -> Optional[float]:
    """The upper bound ``b`` of a ``Clip(0, b)`` node with constant bounds, else None."""
    def value(idx, attr):
        if len(node.inputs) > idx and node.inputs[idx]:
            v = graph.constants.get(node.inputs[idx])
            return None if v is None or np.size(v) != 1 else float(np.asarray(v).reshape(-1)[0])
        return node.attr(attr)
    lo, hi = value(1, "min"), value(2, "max")
    return hi if lo == 0.0 and hi is not None and hi > 0 else None


def _split_clip(graph: Graph, node: Node, channels: int) -> str:
    """Rewrite ``Clip(0, b)`` as Relu + Min with a per-channel bound; return the bound's name."""
    info = graph.tensor_info(node.inputs[0])
    rank = len(info.shape) if info is not None and info.shape is not None else 4
    bound = graph.unique_name(node.name + "_bound")
    graph.constants[bound] = np.full([channels] + [1] * max(rank - 2, 0),
                                     _clip_bound(graph, node), np.float32)
    mid = graph.unique_name(node.outputs[0] + "_relu")
    relu = Node("Relu", node.name, [node.inputs[0]], [mid])
    mn = Node("Min", graph.unique_name(node.name + "_min"), [mid, bound], list(node.outputs))
    k = graph.nodes.index(node)
    graph.nodes[k:k + 1] = [relu, mn]
    return bound


def _is_flat_1x1(graph: Graph, tensor: str, out: str) -> bool:
    shape, flat = graph.shape(tensor), graph.shape(out)
    return shape is not None and len(shape) >= 2 and all(d == 1 for d in shape[2:]) and \
        flat is not None and len(flat) == 2


def _chain(graph: Graph, node: Node, channels: int, clip: bool, outputs, consumers):
    """Follow ``node``'s output through channel-wise homogeneous ops. Returns (consuming
    layers, bound constants, Clip nodes to rewrite) or None when the chain cannot be scaled."""
    tensor, bounds, clips = node.outputs[0], [], []
    while True:
        users = consumers.get(tensor, [])
        if tensor in outputs or not users:
            return None
        if len(users) > 1 or users[0].op in LAYERS:
            break
        nxt = users[0]
        if nxt.op == "Clip":
            if not clip or _clip_bound(graph, nxt) is None:
                return None
            clips.append(nxt)
        elif nxt.op == "Min":
            if len(nxt.inputs) != 2 or nxt.inputs[1] not in graph.constants or \
                    graph.constants[nxt.inputs[1]].shape[:1] != (channels,):
                return None
            bounds.append(nxt.inputs[1])
        elif nxt.op in ("Flatten", "Reshape"):
            if not _is_flat_1x1(graph, tensor, nxt.outputs[0]):
                return None
        elif nxt.op != "PRelu" and nxt.op not in HOMOGENEOUS:
            return None
        tensor = nxt.outputs[0]
    users = consumers.get(tensor, [])
    if not all(u.op in LAYERS and u.inputs[0] == tensor and weight_axis(graph, u) is not None
               for u in users):
        return None
    return users, bounds, clips


def find_pairs(graph: Graph, clip: bool = False) -> List[Pair]:
    """Producer/consumer layer groups that can be equalized (rewriting their Clips when
    ``clip``). Layers whose weight or bias constant is shared with another node are left out."""
    outputs = set(graph.output_names())
    uses = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name in graph.constants:
                uses[name] = uses.get(name, 0) + 1
    pairs = []
    for node in list(graph.nodes):
        if node.op not in LAYERS or weight_axis(graph, node) is None \
                or node.inputs[0] in graph.constants:
            continue
        channels = graph.constants[node.inputs[1]].shape[weight_axis(graph, node)]
        found = _chain(graph, node, channels, clip, outputs, graph.consumers())
        if found is None:
            continue
        users, bounds, clips = found
        if any(uses.get(n, 0) > 1 for u in [node] + users for n in u.inputs[1:3]):
            continue
        bounds += [_split_clip(graph, c, channels) for c in clips]
        pairs.append(Pair(node, bounds, users))
    return pairs


def _input_axis_view(graph: Graph, node: Node, channels: int):
    """Return (weights reshaped so that axis 0 is the consumer's input channel, restore fn)."""
    w = graph.constants[node.inputs[1]]
    if node.op == "Conv":
        group = int(node.attr("group", 1))
        o, ipg = w.shape[0], w.shape[1]
        if ipg * group != channels:
            return None
        og = o // group
        view = w.reshape(group, og, ipg, -1).transpose(0, 2, 1, 3).reshape(channels, -1)

        def restore(v):
            return v.reshape(group, ipg, og, -1).transpose(0, 2, 1, 3).reshape(w.shape)
        return view, restore
    in_axis = 1 - weight_axis(graph, node)
    if w.ndim != 2 or w.shape[in_axis] != channels:
        return None
    view = np.moveaxis(w, in_axis, 0)
    return view, lambda v: np.ascontiguousarray(np.moveaxis(v, 0, in_axis))


def _scale_output(graph: Graph, node: Node, inv: np.ndarray) -> None:
    """Multiply output channels of ``node`` (weights and bias) by ``inv``."""
    axis = weight_axis(graph, node)
    w = graph.constants[node.inputs[1]]
    shape = [1] * w.ndim
    shape[axis] = -1
    graph.constants[node.inputs[1]] = (w * inv.reshape(shape)).astype(w.dtype)
    if len(node.inputs) > 2 and node.inputs[2] in graph.constants:
        b = graph.constants[node.inputs[2]]
        if b.size == inv.size:
            graph.constants[node.inputs[2]] = (b * inv.reshape(b.shape)).astype(b.dtype)


def equalize_pair(graph: Graph, pair: Pair) -> float:
    """Equalize one group in place; returns the largest ``|log s|`` applied."""
    a = pair.producer
    axis = weight_axis(graph, a)
    w1 = graph.constants[a.inputs[1]]
    channels = w1.shape[axis]
    r1 = np.abs(np.moveaxis(w1, axis, 0).reshape(channels, -1)).max(axis=1)
    views = []
    for b in pair.consumers:
        v = _input_axis_view(graph, b, channels)
        if v is None:
            return 0.0
        views.append(v)
    r2 = np.max([np.abs(v).reshape(channels, -1).max(axis=1) for v, _ in views], axis=0)
    s = np.ones(channels)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    _scale_output(graph, a, 1.0 / s)
    for bound in pair.bounds:
        c = graph.constants[bound]
        graph.constants[bound] = (c / s.reshape([-1] + [1] * (c.ndim - 1))).astype(c.dtype)
    for b, (view, restore) in zip(pair.consumers, views):
        scaled = view * s.reshape([-1] + [1] * (view.ndim - 1))
        graph.constants[b.inputs[1]] = restore(scaled).astype(graph.constants[b.inputs[1]].dtype)
    return float(np.max(np.abs(np.log(s)))) if channels else 0.0


def equalize(graph: Graph, clip: bool = False, sweeps: int = MAX_SWEEPS,
             tolerance: float = TOLERANCE) -> Graph:
    """Cross-layer equalize ``graph`` in place (see module doc); returns it."""
    if not graph.value_info:
        graph.infer_shapes()
    pairs = find_pairs(graph, clip)
    change, done = 0.0, 0
    for done in range(1, sweeps + 1):
        change = max([equalize_pair(graph, p) for p in pairs] or [0.0])
        if change < tolerance:
            break
    log.step(f"cross-layer equalization: {len(pairs)} layer group(s), {done} sweep(s) "
             f"(last change {change:.2g})")
    return graph
