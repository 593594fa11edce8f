"""Write the IR as an ncnn ``.param`` + ``.bin`` (fp32, fp16 weights, or int8 like ncnn2int8).

The host has already canonicalised the graph and fused activations into Conv/Gemm
(``write_passes``). This module matches a few patterns ncnn has single layers for (Swish, global
pooling + Flatten, MatMul + bias), runs the op table of ``write_ops``, inserts ``Split`` layers
for blobs read by several layers, applies ncnn2int8's requantize fusion (``8=10x``) and writes
both files atomically. Options: ``fp16=1`` (fp16 weight storage for float layers),
``requantize=0`` (no int8 output fusion), ``winograd_6bit=0`` (8-bit weights for 3x3 s1 convs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

import numpy as np

from ptqconv.core.atomic import atomic_outputs
from ptqconv.core.errors import PtqconvError, UnsupportedOpsError
from ptqconv.core.ir.graph import Graph
from ptqconv.formats.ncnn.int8 import plan_int8
from ptqconv.formats.ncnn.names import layer_names, unique
from ptqconv.formats.ncnn.param import ParamLayer, format_param_file, safe_token
from ptqconv.formats.ncnn.weights import BinWriter
from ptqconv.formats.ncnn.write_ops import WRITERS, Unsupported, w_swish

REQUANT_TYPES = ("Convolution", "ConvolutionDepthWise")


@dataclass
class OutLayer:
    """An ncnn layer being written: type, name, blobs, params and its weight blobs."""

    type: str
    name: str
    inputs: List[str]
    outputs: List[str]
    params: Dict[int, object] = field(default_factory=dict)
    weights: BinWriter = field(default_factory=BinWriter)
    int8_input: Optional[float] = None   # input multiplier of an int8 layer


def _flag(options, key, default):
    v = (options or {}).get(key, default)
    if isinstance(v, str):
        return v.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(v)


class WriteContext:
    """State while turning IR nodes into ncnn layers."""

    def __init__(self, graph: Graph, table, options):
        self.g = graph
        self.table = table
        self.fp16 = _flag(options, "fp16", False)
        self.winograd_6bit = _flag(options, "winograd_6bit", True)
        self.layers: List[OutLayer] = []
        self.shapes = _shapes(graph)
        self.names = layer_names(graph.nodes)
        self.used_names: Set[str] = set(self.names.values())
        self.used_blobs: Set[str] = set(graph.constants) | {t.name for t in graph.inputs} | \
            {o for n in graph.nodes for o in n.outputs}
        self.memdata: Dict[tuple, str] = {}
        self.swish: Dict[str, str] = {}          # Mul node -> x of x*sigmoid(x)
        self.flat_pool: Dict[str, str] = {}      # global pool node -> Flatten output it writes
        self.matmul_bias: Dict[str, np.ndarray] = {}
        self.skip: Set[str] = set()

    # ---- lookups ------------------------------------------------------------------------------
    def const(self, tensor: str) -> Optional[np.ndarray]:
        """The constant value of ``tensor`` or None."""
        return self.g.constants.get(tensor)

    def shape(self, tensor: str):
        """Static IR shape of ``tensor`` or None."""
        s = self.shapes.get(tensor)
        if s is None or any(not isinstance(d, int) or d < 0 for d in s):
            return None
        return tuple(s)

    def rank(self, tensor: str) -> int:
        """ncnn dims of ``tensor`` (IR rank - 1)."""
        s = self.shapes.get(tensor)
        if s is None:
            raise Unsupported(f"the rank of '{tensor}' is unknown")
        if len(s) < 2 or len(s) > 5:
            raise Unsupported(f"tensor '{tensor}' has {len(s)} dims (ncnn blobs are batch 1 "
                              f"plus 1 to 4 dims)")
        return len(s) - 1

    def int8_plan(self, node):
        """The int8 layout of ``node`` or None (float)."""
        return plan_int8(self.g, node, self.table, self.winograd_6bit)

    # ---- building -----------------------------------------------------------------------------
    def layer_name(self, node) -> str:
        """The ncnn layer name of ``node`` (what ``.table`` keys use)."""
        return self.names[node.name]

    def aux_name(self, node, suffix: str) -> str:
        """A fresh layer name for an extra layer written for ``node``."""
        return unique(safe_token(f"{node.name}_{suffix}", suffix), self.used_names)

    def new_blob(self, base: str) -> str:
        """A fresh blob name."""
        return unique(base, self.used_blobs)

    def add(self, ltype, name, inputs, outputs, params=None, weights=None) -> OutLayer:
        """Append a layer."""
        layer = OutLayer(ltype, name, list(inputs), list(outputs), dict(params or {}),
                         weights or BinWriter())
        self.layers.append(layer)
        return layer

    def memory_data(self, tensor: str, value: np.ndarray, rank: int) -> str:
        """A MemoryData blob holding constant ``value`` with ``rank`` ncnn dims (outer dims of
        size 1 added; a leading batch dim of 1 dropped)."""
        key = (tensor, rank)
        if key in self.memdata:
            return self.memdata[key]
        shape = list(value.shape)
        if len(shape) == rank + 1:
            if shape[0] != 1:
                raise Unsupported(f"constant '{tensor}' has a batch dim of {shape[0]}")
            shape = shape[1:]
        if len(shape) > rank:
            raise Unsupported(f"constant '{tensor}' has more dims than its use")
        shape = [1] * (rank - len(shape)) + shape
        dims = shape[::-1]   # w, h, (d), c
        ids = {1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [0, 1, 11, 2]}[rank]
        weights = BinWriter()
        weights.raw(value.astype(np.float32))
        blob = self.new_blob(f"{tensor}_data")
        self.add("MemoryData", unique(safe_token(tensor, "memorydata"), self.used_names), [],
                 [blob], dict(zip(ids, [int(d) for d in dims])), weights)
        self.memdata[key] = blob
        return blob


def _shapes(graph: Graph) -> Dict[str, tuple]:
    """Shapes of every tensor; runs shape inference (on a copy without the non-ONNX fused
    activation attributes) when some are missing."""
    def collect(g):
        found = {t.name: t.shape for t in g.inputs + g.outputs if t.shape is not None}
        found.update({k: v.shape for k, v in g.value_info.items() if v.shape is not None})
        found.update({k: tuple(v.shape) for k, v in g.constants.items()})
        return found
    shapes = collect(graph)
    if all(o in shapes for n in graph.nodes for o in n.outputs if o):
        return shapes
    probe = graph.copy()
    for n in probe.nodes:
        n.attrs.pop("fused_activation", None)
        n.attrs.pop("fused_activation_params", None)
    try:
        probe.infer_shapes()
    except PtqconvError:
        return shapes
    shapes.update(collect(probe))
    return shapes


def _match_patterns(ctx: WriteContext) -> None:
    """Find node groups ncnn writes as one layer (Swish, pool + Flatten, MatMul + bias)."""
    g = ctx.g
    consumers, producers = g.consumers(), g.producers()
    outputs = set(g.output_names())

    def sole(t):
        users = consumers.get(t, [])
        return users[0] if len(users) == 1 and t not in outputs else None

    for node in g.nodes:
        if node.op == "Mul" and len(node.inputs) == 2:
            for x, s in (node.inputs, node.inputs[::-1]):
                sig = producers.get(s)
                if sig is not None and sig.op == "Sigmoid" and sig.inputs[0] == x and \
                        sole(s) is node:
                    ctx.swish[node.name] = x
                    ctx.skip.add(sig.name)
                    break
        elif node.op in ("GlobalAveragePool", "GlobalMaxPool"):
            nxt = sole(node.outputs[0])
            if nxt is not None and nxt.op == "Flatten" and int(nxt.attr("axis", 1)) in (1, -3):
                ctx.flat_pool[node.name] = nxt.outputs[0]
                ctx.skip.add(nxt.name)
        elif node.op == "MatMul":
            nxt = sole(node.outputs[0])
            if nxt is not None and nxt.op == "Add" and not nxt.attr("fused_activation") and \
                    "fused_activation" not in node.attrs:
                other = [t for t in nxt.inputs if t != node.outputs[0]]
                b = g.constants.get(other[0]) if len(other) == 1 else None
                w = g.constants.get(node.inputs[1])
                if b is not None and w is not None and w.ndim == 2 and \
                        b.size == w.shape[1] and b.shape[-1] == w.shape[1]:
                    ctx.matmul_bias[node.name] = b.astype(np.float32).reshape(-1)
                    ctx.skip.add(nxt.name)
                    node.outputs = [nxt.outputs[0]]


def _input_layers(ctx: WriteContext) -> None:
    for t in ctx.g.inputs:
        shape = list(t.shape or [])
        if len(shape) < 2 or len(shape) > 5:
            raise PtqconvError(f"input '{t.name}' has shape {shape}; ncnn needs batch 1 plus "
                               f"1 to 4 dims")
        if isinstance(shape[0], int) and shape[0] not in (1, -1, 0):
            raise PtqconvError(f"input '{t.name}' has batch {shape[0]}; ncnn models are batch 1")
        dims = shape[1:][::-1]
        ids = {1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [0, 1, 11, 2]}[len(dims)]
        params = {pid: int(d) for pid, d in zip(ids, dims) if isinstance(d, int) and d > 0}
        ctx.add("Input", unique(safe_token(t.name, "input"), ctx.used_names), [], [t.name], params)


def _insert_splits(layers: List[OutLayer], used_names: Set[str]) -> List[OutLayer]:
    """Give every blob read by more than one layer a Split with one output per reader."""
    uses: Dict[str, int] = {}
    for layer in layers:
        for b in layer.inputs:
            uses[b] = uses.get(b, 0) + 1
    result, count = [], 0
    pending = {b: 0 for b, n in uses.items() if n > 1}
    for layer in layers:
        for k, b in enumerate(layer.inputs):
            if b in pending:
                layer.inputs[k] = f"{b}_splitncnn_{pending[b]}"
                pending[b] += 1
        result.append(layer)
        for b in layer.outputs:
            if uses.get(b, 0) > 1:
                outs = [f"{b}_splitncnn_{i}" for i in range(uses[b])]
                result.append(OutLayer("Split", unique(f"splitncnn_{count}", used_names), [b],
                                       outs))
                count += 1
    return result


def _fuse_requantize(layers: List[OutLayer], graph_outputs: Set[str]) -> None:
    """ncnn2int8's fusion: an int8 Convolution(DepthWise) whose output feeds only int8
    Convolution(DepthWise) layers (directly or through one Split) writes int8 output requantized
    with their input scale: ``8=`` +100 and a trailing top_blob_int8_scale."""
    readers: Dict[str, List[OutLayer]] = {}
    for layer in layers:
        for b in layer.inputs:
            readers.setdefault(b, []).append(layer)
    for layer in layers:
        if layer.type not in REQUANT_TYPES or layer.int8_input is None or \
                layer.outputs[0] in graph_outputs:
            continue
        users = readers.get(layer.outputs[0], [])
        if len(users) == 1 and users[0].type == "Split":
            users = [u for b in users[0].outputs for u in readers.get(b, [])]
        if not users or any(u.type not in REQUANT_TYPES or u.int8_input is None for u in users):
            continue
        top = {u.int8_input for u in users}
        if len(top) != 1:
            continue
        layer.params[8] = int(layer.params[8]) + 100
        layer.weights.raw(np.array([top.pop()], np.float32))


def _rename(layers: List[OutLayer], keep: List[str]) -> None:
    """Make every blob name a safe token (graph inputs/outputs keep theirs when possible)."""
    mapping: Dict[str, str] = {}
    used: Set[str] = set()
    for name in keep + [b for layer in layers for b in layer.inputs + layer.outputs]:
        if name not in mapping:
            mapping[name] = unique(safe_token(name, "blob"), used)
    for layer in layers:
        layer.inputs = [mapping[b] for b in layer.inputs]
        layer.outputs = [mapping[b] for b in layer.outputs]


def build_layers(graph: Graph, table=None, options=None) -> List[OutLayer]:
    """Translate the graph into ncnn layers (all unsupported nodes listed in one error)."""
    ctx = WriteContext(graph.copy(), table, options)   # pattern matching rewires the copy
    graph = ctx.g
    _match_patterns(ctx)
    _input_layers(ctx)
    problems = []
    for node in graph.nodes:
        if node.name in ctx.skip:
            continue
        fn = w_swish if node.name in ctx.swish else WRITERS.get(node.op)
        if fn is None:
            problems.append(node.op)
            continue
        try:
            fn(ctx, node)
        except Unsupported as exc:
            problems.append(f"{node.op} '{node.name}' ({exc})")
    if problems:
        raise UnsupportedOpsError("ncnn writer", problems)
    layers = _insert_splits(ctx.layers, ctx.used_names)
    if _flag(options, "requantize", True):
        _fuse_requantize(layers, set(graph.output_names()))
    _rename(layers, graph.input_names() + graph.output_names())
    return layers


def write_ncnn(graph: Graph, table, paths, options=None) -> List[str]:
    """Write ``paths[0]`` (.param) and ``paths[1]`` (.bin); int8 when ``table`` is given."""
    if len(paths) < 2:
        raise PtqconvError("the ncnn writer needs a .param and a .bin path")
    # table.bias_corrections are already in the graph's biases (the host applies them)
    layers = build_layers(graph, table, options)
    text = format_param_file([ParamLayer(x.type, x.name, x.inputs, x.outputs, x.params)
                              for x in layers])
    data = BinWriter()
    for layer in layers:
        data.extend(layer.weights)
    with atomic_outputs(paths[:2]) as (tmp_param, tmp_bin):
        with open(tmp_param, "w", encoding="utf-8") as f:
            f.write(text)
        with open(tmp_bin, "wb") as f:
            f.write(data.getvalue())
    return list(paths[:2])
