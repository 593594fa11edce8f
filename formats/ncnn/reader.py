"""Read an ncnn model (text ``.param`` + ``.bin``) into the float IR.

int8 layers (``8=int8_scale_term``, as written by ``ncnn2int8``) are dequantized; their scales go
into a :class:`QuantTable` returned with the graph, so the model can be re-written by any
``-int8`` writer without calibration. Unsupported layer types are listed in one error; malformed
files raise :class:`ModelFormatError` naming the file and the line or byte offset.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from ptqconv.core.errors import ModelFormatError, PtqconvError, UnsupportedOpsError, did_you_mean
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.qtable import QuantTable
from ptqconv.core.records import LoadedModel
from ptqconv.formats.ncnn.param import MAGIC, ParamFile, ParamLayer, parse_param
from ptqconv.formats.ncnn.read_layers import READERS
from ptqconv.formats.ncnn.weights import BinReader

MAX_PARAM_BYTES = 64 * 1024 * 1024
# layers whose 3-D input lets an Input without a declared shape be given a rank (and channels)
SPATIAL_LAYERS = {"Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise",
                  "Pooling", "Interp", "ShuffleChannel"}


class Params:
    """Typed access to one layer's ``{id: value}`` with errors naming the file and line."""

    def __init__(self, layer: ParamLayer, path: str):
        self.layer, self.path = layer, path

    def _bad(self, pid, what):
        raise ModelFormatError(self.path, f"line {self.layer.line}", f"layer '{self.layer.name}' "
                               f"({self.layer.type}): parameter {pid} {what}")

    def i(self, pid: int, default: int) -> int:
        """Integer parameter (a float token with an integral value is accepted)."""
        v = self.layer.params.get(pid, default)
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if not isinstance(v, int):
            self._bad(pid, f"must be an integer, got {v!r}")
        return v

    def f(self, pid: int, default: float) -> float:
        """Float parameter (an int token is read as its value, like the ncnn pip runtime)."""
        v = self.layer.params.get(pid, default)
        if isinstance(v, (list, str)):
            self._bad(pid, f"must be a number, got {v!r}")
        return float(v)

    def arr(self, pid: int) -> list:
        """Array parameter (empty if absent; a single value becomes a one-element list)."""
        v = self.layer.params.get(pid, [])
        if isinstance(v, str):
            self._bad(pid, f"must be an array, got {v!r}")
        return list(v) if isinstance(v, list) else [v]


class ReadContext:
    """State while turning ncnn layers into IR nodes (blob -> tensor map, ranks, table)."""

    def __init__(self, pf: ParamFile, binr: BinReader, options: dict):
        self.pf, self.bin, self.path = pf, binr, pf.path
        self.options = options or {}
        self.nodes: List[Node] = []
        self.constants: Dict[str, np.ndarray] = {}
        self.inputs: List[TensorInfo] = []
        self.blob: Dict[str, str] = {}          # ncnn blob -> IR tensor
        self.ranks: Dict[str, int] = {}         # IR tensor -> ncnn dims
        self.alias_of: Dict[str, str] = {}      # ncnn blob made by Split/Noop -> IR tensor
        self.table = QuantTable(meta={"source": "ncnn", "method": "ncnn2table"})
        self.opset = 13
        self._node_names = {layer.name for layer in pf.layers}
        self._tensor_names = {b for layer in pf.layers for b in layer.inputs + layer.outputs}
        self._shape_cache: Dict[str, Optional[tuple]] = {}
        self.consumers: Dict[str, List[ParamLayer]] = {}
        for layer in pf.layers:
            for b in layer.inputs:
                self.consumers.setdefault(b, []).append(layer)

    # ---- errors -------------------------------------------------------------------------------
    def fail(self, layer: ParamLayer, message: str):
        """Raise a ModelFormatError for ``layer``'s line."""
        raise ModelFormatError(self.path, f"line {layer.line}",
                               f"layer '{layer.name}' ({layer.type}): {message}")

    def unsupported(self, layer: ParamLayer, message: str):
        """Raise an UnsupportedOpsError for a feature of ``layer`` ptqconv cannot convert."""
        raise UnsupportedOpsError(self.path, [f"{layer.type} '{layer.name}' (line {layer.line}): "
                                              f"{message}"])

    # ---- names --------------------------------------------------------------------------------
    def node_name(self, base: str) -> str:
        """A node name not used yet."""
        return self._fresh(base, self._node_names)

    def tensor_name(self, base: str) -> str:
        """A tensor name not used yet."""
        return self._fresh(base, self._tensor_names)

    @staticmethod
    def _fresh(base, used):
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    # ---- graph building -----------------------------------------------------------------------
    def node(self, op: str, name: str, inputs, outputs, **attrs) -> Node:
        """Append an IR node."""
        n = Node(op, name, list(inputs), list(outputs), dict(attrs))
        self.nodes.append(n)
        return n

    def const(self, base: str, value: np.ndarray) -> str:
        """Add a constant and return its (unique) name."""
        name = self.tensor_name(base)
        self.constants[name] = np.asarray(value)
        return name

    def need_opset(self, version: int) -> None:
        """Raise the graph's opset to at least ``version``."""
        self.opset = max(self.opset, version)

    def inp(self, layer: ParamLayer, k: int) -> str:
        """IR tensor of the layer's ``k``-th bottom blob."""
        if k >= len(layer.inputs):
            self.fail(layer, f"needs at least {k + 1} input blob(s)")
        return self.blob[layer.inputs[k]]

    def rank(self, layer: ParamLayer, k: int) -> int:
        """ncnn dims of the layer's ``k``-th bottom blob."""
        return self.ranks[self.inp(layer, k)]

    def out(self, layer: ParamLayer, k: int, rank: int) -> str:
        """IR tensor for the layer's ``k``-th top blob (named like the blob)."""
        if k >= len(layer.outputs):
            self.fail(layer, f"needs at least {k + 1} output blob(s)")
        name = layer.outputs[k]
        self.blob[name] = name
        self.ranks[name] = rank
        return name

    def alias(self, layer: ParamLayer, k: int, tensor: str, rank: int) -> None:
        """Make top blob ``k`` another name of ``tensor`` (Split, Noop)."""
        if k >= len(layer.outputs):
            self.fail(layer, f"needs at least {k + 1} output blob(s)")
        self.blob[layer.outputs[k]] = tensor
        self.alias_of[layer.outputs[k]] = tensor
        self.ranks.setdefault(tensor, rank)

    def set_constant(self, layer: ParamLayer, value: np.ndarray, rank: int) -> None:
        """Make top blob 0 a constant (MemoryData)."""
        name = self.tensor_name(layer.outputs[0] + "_data") if layer.outputs[0] in \
            self.constants else layer.outputs[0]
        self.constants[name] = value.astype(np.float32)
        self.blob[layer.outputs[0]] = name
        self.alias_of[layer.outputs[0]] = name
        self.ranks[name] = rank

    def broadcastable(self, layer, a: str, ra: int, b: str, rb: int):
        """Reshape the lower-rank operand of a two-input op the way ncnn broadcasts it: aligned
        with the higher-rank blob's outer dims (a 1-D blob of size c is per channel), unless it
        is 1-D and matches the innermost dim (then numpy-style)."""
        if ra == rb:
            return a, b
        low, rl, high, rh = (b, rb, a, ra) if rb < ra else (a, ra, b, rb)
        sl, sh = self.shape(low), self.shape(high)
        if sl is not None and sh is not None and rl == 1 and sl[1] == sh[-1] and \
                sl[1] != sh[1]:
            return a, b
        target = self.const(f"{layer.name}_bshape", np.array([1, -1] + [1] * (rh - rl) if rl == 1
                                                             else [1] + [0] * rl + [1] * (rh - rl),
                                                             np.int64))
        shaped = self.tensor_name(f"{low}_bcast")
        self.node("Reshape", self.node_name(f"{layer.name}_bcast"), [low, target], [shaped])
        return (shaped, b) if low == a else (a, shaped)

    # ---- inputs and shapes --------------------------------------------------------------------
    def add_input(self, layer: ParamLayer, p: Params) -> None:
        """Declare an Input layer's blob as a graph input (shape from params or options)."""
        blob = layer.outputs[0] if layer.outputs else self.fail(layer, "has no output blob")
        w, h, d, c = p.i(0, 0), p.i(1, 0), p.i(11, 0), p.i(2, 0)
        shape = _option_shape(self.options, blob, len(self.inputs), self.path)
        if shape is None:
            if c > 0 or d > 0:
                shape = [1, c] + ([d] if d > 0 else []) + [h or None, w or None]
            elif h > 0:
                shape = [1, h, w or None]
            elif w > 0:
                shape = [1, w]
            else:
                shape = self._guess_input_shape(layer, blob)
        shape = [s if isinstance(s, int) and s > 0 else None for s in shape]
        self.inputs.append(TensorInfo(blob, "float32", tuple(shape)))
        self.blob[blob] = blob
        self.ranks[blob] = len(shape) - 1

    def _guess_input_shape(self, layer: ParamLayer, blob: str):
        users = self.consumers.get(blob, [])
        if users and users[0].type in SPATIAL_LAYERS:
            return [1, _input_channels(users[0]), None, None]
        raise PtqconvError(f"{self.path} (line {layer.line}): Input '{blob}' declares no shape; "
                           f"pass --option input_shape=1,C,H,W")

    def shape(self, tensor: str) -> Optional[tuple]:
        """Static IR shape of ``tensor`` (ONNX shape inference on the graph so far) or None."""
        if tensor in self.constants:
            return tuple(self.constants[tensor].shape)
        if tensor not in self._shape_cache:
            self._shape_cache[tensor] = self._infer(tensor)
        return self._shape_cache[tensor]

    def _infer(self, tensor: str) -> Optional[tuple]:
        small = {k: v for k, v in self.constants.items() if v.size <= 64}
        big = [TensorInfo(k, str(v.dtype), tuple(v.shape)) for k, v in self.constants.items()
               if v.size > 64]
        probe = Graph("probe", self.inputs + big, [TensorInfo(tensor)], list(self.nodes), small,
                      opset=self.opset)
        try:
            probe.cleanup().infer_shapes()
        except PtqconvError:
            return None
        return probe.shape(tensor)


def _input_channels(layer: ParamLayer) -> Optional[int]:
    """Input channels implied by a conv layer's weight size (None for other layers)."""
    p = layer.params
    try:
        out_c, kw = int(p.get(0, 0)), int(p.get(1, 0))
        kh, count, group = int(p.get(11, kw)), int(p.get(6, 0)), int(p.get(7, 1))
    except (TypeError, ValueError):
        return None
    if "Convolution" not in layer.type or out_c <= 0 or kw <= 0 or kh <= 0:
        return None
    per_group = count // (out_c * kw * kh)
    return per_group * (group if layer.type == "ConvolutionDepthWise" else 1) or None


def _option_shape(options, blob, index, path):
    """Shape for input ``blob`` from option ``input_shape`` ("1,3,224,224", a list, or
    "name:1,3,224,224;name2:...")."""
    spec = options.get("input_shape")
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        return [int(v) for v in spec]
    entries = [e for e in str(spec).split(";") if e.strip()]
    try:
        named = dict(e.split(":", 1) for e in entries if ":" in e)
        if named:
            if blob not in named:
                return None
            return [int(v) for v in named[blob].split(",")]
        if index == 0 and entries:
            return [int(v) for v in entries[0].split(",")]
    except ValueError:
        raise PtqconvError(f"option input_shape={spec!r}: expected comma-separated integers") \
            from None
    return None


def _check_supported(pf: ParamFile) -> None:
    bad = [f"{layer.type} (line {layer.line}){did_you_mean(layer.type, READERS)}"
           for layer in pf.layers if layer.type not in READERS]
    for layer in pf.layers:
        if layer.type in ("Convolution", "ConvolutionDepthWise") and layer.params.get(19):
            bad.append(f"{layer.type} with dynamic weight (line {layer.line})")
        if "Deconvolution" in layer.type and (layer.params.get(28) or layer.params.get(20)
                                              or layer.params.get(21)):
            bad.append(f"{layer.type} with dynamic weight or output size (line {layer.line})")
    if bad:
        raise UnsupportedOpsError(pf.path, bad)


def _read_text(path: str, limit: int) -> str:
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise ModelFormatError(path, None, f"{size} bytes is too large for an ncnn param file")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PtqconvError(f"{path}: model file not found") from None
    except OSError as exc:
        raise PtqconvError(f"{path}: cannot read: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if data[:4] == MAGIC.to_bytes(4, "little"):
            raise ModelFormatError(path, None, "binary .param.bin files are not supported; use "
                                   "the text .param") from None
        raise ModelFormatError(path, f"offset {exc.start}", "not a text ncnn param file "
                               "(invalid UTF-8)") from None


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PtqconvError(f"{path}: weight file not found (an ncnn model needs its .bin "
                           f"beside the .param)") from None
    except OSError as exc:
        raise PtqconvError(f"{path}: cannot read: {exc}") from None


def build_graph(pf: ParamFile, binr: BinReader, options=None) -> LoadedModel:
    """Convert parsed layers plus their weights into a :class:`LoadedModel`."""
    _check_supported(pf)
    ctx = ReadContext(pf, binr, options)
    for layer in pf.layers:
        READERS[layer.type](ctx, layer, Params(layer, pf.path))
    if binr.remaining:
        raise ModelFormatError(binr.path, f"offset {binr.offset}", f"{binr.remaining} bytes left "
                               f"after the last layer's weights (the .param does not match "
                               f"this .bin)")
    outputs = _graph_outputs(ctx)
    graph = Graph(os.path.splitext(os.path.basename(pf.path))[0], ctx.inputs, outputs, ctx.nodes,
                  ctx.constants, opset=ctx.opset)
    try:
        graph.validate()
        graph.cleanup()
    except PtqconvError as exc:
        raise ModelFormatError(pf.path, None, str(exc)) from None
    table = ctx.table if ctx.table.precision else None
    if table is not None:
        live = {n.name for n in graph.nodes}
        table.precision = {k: v for k, v in table.precision.items() if k in live}
    return LoadedModel(graph, table)


def _graph_outputs(ctx: ReadContext) -> List[TensorInfo]:
    consumed = {b for layer in ctx.pf.layers for b in layer.inputs}
    outputs = []
    for layer in ctx.pf.layers:
        if layer.type == "Split":
            continue
        for blob in layer.outputs:
            if blob in consumed:
                continue
            tensor = ctx.blob.get(blob)
            if tensor is None:
                continue
            if tensor != blob:   # an alias (Noop, Dropout, MemoryData): give it the blob's name
                ctx.node("Identity", ctx.node_name(f"{layer.name}_out"), [tensor], [blob])
            outputs.append(TensorInfo(blob, "float32", None))
    if not outputs:
        raise ModelFormatError(ctx.path, None, "the model has no output blob")
    return outputs


def load_param_file(path) -> ParamFile:
    """Read and parse a text ``.param`` (size-limited; binary params are refused)."""
    return parse_param(_read_text(str(path), MAX_PARAM_BYTES), str(path))


def read_ncnn(paths, options=None) -> LoadedModel:
    """Read ``[model.param, model.bin]`` into a :class:`LoadedModel` (graph + table for int8)."""
    param_path = str(paths[0])
    bin_path = str(paths[1]) if len(paths) > 1 else os.path.splitext(param_path)[0] + ".bin"
    pf = load_param_file(param_path)
    binr = BinReader(_read_bytes(bin_path), bin_path)
    return build_graph(pf, binr, options)


def sniff_ncnn(path) -> bool:
    """True if ``path`` is a text ncnn param (first token is the magic 7767517)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return head.split(b"\n", 1)[0].strip() == str(MAGIC).encode()
