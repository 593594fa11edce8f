"""Cross-layer equalization (DFQ, Nagel et al. 2019; specs/algorithms.md §4.3): an optional
pre-pass (``quantize.equalize: true``) that leaves the float function unchanged.

For a layer ``A`` whose output reaches layers ``B1..Bn`` only through channel-wise positively
homogeneous ops (Relu, LeakyRelu, PRelu, max/average pooling, a per-channel Min bound, Flatten of
a 1x1 map, a channel Concat of several such layers, as in SqueezeNet's fire modules), output channel ``i`` of ``A`` is divided by ``s_i = sqrt(r1_i / r2_i)`` and input
channel ``i`` of every ``B`` multiplied by it, where ``r1_i`` is the max-abs of ``A``'s channel
``i`` and ``r2_i`` the largest max-abs of input channel ``i`` over the ``B``s. Both ranges then
equal ``sqrt(r1_i r2_i)``, which suits per-tensor weight quantization. Sweeps repeat until the
scales stop changing. With ``clip=True``, ``Clip(0, b)`` (ReLU6) is rewritten as a per-channel
``Min`` whose bounds are scaled too, then ``Relu`` (exact, but the graph then holds a Min with a
per-channel constant, which not every writer can store). High-bias absorption is not done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ptqconv.core import log
from ptqconv.core.ir.graph import Graph, Node
from ptqconv.core.quantize import weight_axis

LAYERS = ("Conv", "Gemm", "MatMul")
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
               "GlobalMaxPool", "Identity")
MAX_SWEEPS = 50
TOLERANCE = 1e-4


@dataclass
class Pair:
    """Producer layers (several when their outputs are concatenated on the channel axis, in
    concat order), the per-channel Min bounds on the way as (constant, first channel), and the
    consuming layers."""

    producers: List[Node]
    bounds: List[Tuple[str, int]]
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
    """Rewrite ``Clip(0, b)`` as a per-channel ``Min(x, b)`` followed by ``Relu`` (the Relu keeps
    the Clip's name and output, so the tensor still reads as non-negative); return the bound."""
    info = graph.tensor_info(node.inputs[0])
    rank = len(info.shape) if info is not None and info.shape is not None else 4
    bound = graph.unique_name(node.name + "_bound")
    graph.constants[bound] = np.full([channels] + [1] * max(rank - 2, 0),
                                     _clip_bound(graph, node), np.float32)
    mid = graph.unique_name(node.outputs[0] + "_min")
    mn = Node("Min", graph.unique_name(node.name + "_min"), [node.inputs[0], bound], [mid])
    relu = Node("Relu", node.name, [mid], list(node.outputs))
    k = graph.nodes.index(node)
    graph.nodes[k:k + 1] = [mn, relu]
    return bound


def _is_flat_1x1(graph: Graph, tensor: str, out: str) -> bool:
    shape, flat = graph.shape(tensor), graph.shape(out)
    return shape is not None and len(shape) >= 2 and all(d == 1 for d in shape[2:]) and \
        flat is not None and len(flat) == 2


def _step(graph: Graph, node: Node, tensor: str, channels: int, clip: bool):
    """Classify one op on a chain: "ok", ("clip", node), ("bound", name) or None (stop)."""
    if node.op == "Clip":
        return ("clip", node) if clip and _clip_bound(graph, node) is not None else None
    if node.op == "Min":
        if len(node.inputs) == 2 and node.inputs[1] in graph.constants and \
                graph.constants[node.inputs[1]].shape[:1] == (channels,):
            return ("bound", node.inputs[1])
        return None
    if node.op in ("Flatten", "Reshape"):
        return "ok" if _is_flat_1x1(graph, tensor, node.outputs[0]) else None
    return "ok" if node.op == "PRelu" or node.op in HOMOGENEOUS else None


def _forward(graph: Graph, tensor: str, channels: int, clip: bool, outputs, consumers):
    """Follow ``tensor`` through channel-wise homogeneous ops. Returns (consumers at the end:
    layers, or a single Concat; bounds; Clips to rewrite) or None."""
    bounds, clips = [], []
    while True:
        users = consumers.get(tensor, [])
        if tensor in outputs or not users:
            return None
        if len(users) > 1 or users[0].op in LAYERS or users[0].op == "Concat":
            return users, bounds, clips
        kind = _step(graph, users[0], tensor, channels, clip)
        if kind is None:
            return None
        if kind != "ok":
            (clips if kind[0] == "clip" else bounds).append(kind[1])
        tensor = users[0].outputs[0]


def _layer_channels(graph: Graph, node: Node):
    axis = weight_axis(graph, node)
    if node.op not in LAYERS or axis is None or node.inputs[0] in graph.constants:
        return None
    return graph.constants[node.inputs[1]].shape[axis]


def _consumers_ok(graph: Graph, users, tensor: str) -> bool:
    return bool(users) and all(u.op in LAYERS and u.inputs[0] == tensor and
                               _layer_channels(graph, u) is not None for u in users)


def _concat_axis_ok(graph: Graph, node: Node) -> bool:
    rank = len(graph.shape(node.outputs[0]) or ())
    return rank >= 2 and int(node.attr("axis", 1)) in (1, 1 - rank)


def _groups(graph: Graph, clip: bool):
    """Candidate groups: (producers, their (bounds, clips, first channel), consumers)."""
    outputs = set(graph.output_names())
    consumers = graph.consumers()
    found = []
    concats = {}
    for node in graph.nodes:
        channels = _layer_channels(graph, node)
        if channels is None:
            continue
        chain = _forward(graph, node.outputs[0], channels, clip, outputs, consumers)
        if chain is None:
            continue
        users, bounds, clips = chain
        if len(users) == 1 and users[0].op == "Concat":
            concats.setdefault(users[0].name, {})[node.name] = (node, bounds, clips)
        elif _consumers_ok(graph, users, users[0].inputs[0]):
            found.append(([node], [(bounds, clips, 0)], users))
    for cat in graph.nodes:
        parts = concats.get(cat.name)
        if cat.op != "Concat" or not parts or not _concat_axis_ok(graph, cat):
            continue
        # every input must come from a layer's chain, in order
        order = []
        for tensor in cat.inputs:
            match = [v for v in parts.values() if _ends_at(graph, v[0], tensor, consumers)]
            if len(match) != 1:
                order = None
                break
            order.append(match[0])
        if not order:
            continue
        total = sum(_layer_channels(graph, n) for n, _, _ in order)
        chain = _forward(graph, cat.outputs[0], total, clip, outputs, consumers)
        if chain is None or not _consumers_ok(graph, chain[0], chain[0][0].inputs[0]):
            continue
        users, bounds, clips = chain
        starts = np.cumsum([0] + [_layer_channels(graph, n) for n, _, _ in order])
        found.append(([n for n, _, _ in order],
                      [(b, c, int(k)) for (_, b, c), k in zip(order, starts)] +
                      [(bounds, clips, 0)], users))
    return found


def _ends_at(graph: Graph, node: Node, tensor: str, consumers) -> bool:
    """True when ``tensor`` is reached from ``node``'s output through single-consumer ops."""
    t = node.outputs[0]
    while t != tensor:
        users = consumers.get(t, [])
        if len(users) != 1 or users[0].op == "Concat":
            return False
        t = users[0].outputs[0]
    return True


def find_pairs(graph: Graph, clip: bool = False) -> List[Pair]:
    """Producer/consumer layer groups that can be equalized (rewriting their Clips when
    ``clip``). Layers whose weight or bias constant is shared with another node are left out."""
    uses = {}
    for node in graph.nodes:
        for name in node.inputs:
            if name in graph.constants:
                uses[name] = uses.get(name, 0) + 1
    pairs = []
    for producers, chains, users in _groups(graph, clip):
        if any(uses.get(n, 0) > 1 for u in producers + users for n in u.inputs[1:3]):
            continue
        total = sum(_layer_channels(graph, n) for n in producers)
        bounds = []
        for k, (names, clips, start) in enumerate(chains):
            width = _layer_channels(graph, producers[k]) if k < len(producers) else total
            bounds += [(b, start) for b in names]
            bounds += [(_split_clip(graph, c, width), start) for c in clips]
        pairs.append(Pair(producers, bounds, users))
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
    r1 = []
    for a in pair.producers:
        axis = weight_axis(graph, a)
        w1 = graph.constants[a.inputs[1]]
        r1.append(np.abs(np.moveaxis(w1, axis, 0).reshape(w1.shape[axis], -1)).max(axis=1))
    r1 = np.concatenate(r1)
    channels = r1.size
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
    start = 0
    for a in pair.producers:
        width = graph.constants[a.inputs[1]].shape[weight_axis(graph, a)]
        _scale_output(graph, a, 1.0 / s[start:start + width])
        start += width
    for bound, first in pair.bounds:
        c = graph.constants[bound]
        part = s[first:first + c.shape[0]]
        graph.constants[bound] = (c / part.reshape([-1] + [1] * (c.ndim - 1))).astype(c.dtype)
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
