"""Write the IR as a ``.tnnproto`` + ``.tnnmodel`` pair: ``tnn`` (fp32, option ``fp16=1`` for
half weights) and ``tnn-int8`` (laid out as TNN's ``quantization_cmd`` writes it).

The float layers are emitted first (``ops_write``); with a table, :mod:`int8_plan` then decides
which layers become ``Quantized*``, folds the input scales into their weights and adds the
``<blob>_scale_data_`` resources. Records are packed in the order of tnn.md §3.5. Output is
deterministic: the same graph and table always give the same bytes.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional

import numpy as np

from ptqconv.core.atomic import atomic_outputs
from ptqconv.core.errors import PtqconvError, UnsupportedOpsError
from ptqconv.formats.tnn.binary import FLOAT, HALF, raw
from ptqconv.formats.tnn.int8_plan import apply_int8
from ptqconv.formats.tnn.model import BLOB_SCALE_SUFFIX, Resource, render_model
from ptqconv.formats.tnn.ops_write import WRITERS, flatten_source
from ptqconv.formats.tnn.proto import MAX_PIECE, ProtoInput, ProtoLayer, render_proto

INPUT_TYPES = {"float32": 0, "float16": 1, "int8": 2, "int32": 3, "int64": 5}
_BAD = re.compile(r'[,":\s]')


class WriteContext:
    """State of one write: name mapping, emitted layers and resources, unsupported nodes."""

    def __init__(self, graph, fp16: bool = False):
        self.graph, self.fp16, self.opset = graph, fp16, graph.opset or 13
        self.layers: List[ProtoLayer] = []
        self.resources: Dict[str, Resource] = {}
        self.info: Dict[str, dict] = {}  # layer name -> {"node", "weighted": {...}}
        self.absorbed = set()
        self.problems: List[str] = []
        self._producers, self._consumers = graph.producers(), graph.consumers()
        self.graph_outputs = set(graph.output_names())
        self.blob_of: Dict[str, str] = {}
        self._layer_of: Dict[str, str] = {}
        self._used_blobs, self._used_layers = set(), set()
        for name in graph.input_names() + [o for n in graph.nodes for o in n.outputs if o]:
            self.blob(name)
        for n in graph.nodes:
            self.layer_name(n)

    # ---- names -----------------------------------------------------------------------------
    @staticmethod
    def _unique(base: str, used: set) -> str:
        base = _BAD.sub("_", base) or "_"
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    def blob(self, tensor: str) -> str:
        """TNN blob name of IR tensor ``tensor`` (sanitized, unique, stable). A constant used
        as a layer's data input cannot be expressed (no constant layers are written)."""
        if tensor in self.graph.constants and tensor not in self.blob_of:
            self.problems.append(f"constant '{tensor}' used as a layer input")
        if tensor not in self.blob_of:
            self.blob_of[tensor] = self._unique(tensor, self._used_blobs)
        return self.blob_of[tensor]

    def temp_blob(self, base: str) -> str:
        """A fresh blob name for an intermediate result."""
        return self._unique(base, self._used_blobs)

    def layer_name(self, node) -> str:
        """TNN layer name of IR node ``node``."""
        if node.name not in self._layer_of:
            self._layer_of[node.name] = self._unique(node.name, self._used_layers)
        return self._layer_of[node.name]

    def temp_layer(self, base: str) -> str:
        """A fresh layer name for an extra layer (pads, unfused activations)."""
        return self._unique(base, self._used_layers)

    # ---- graph queries ---------------------------------------------------------------------
    def constant(self, tensor: str) -> Optional[np.ndarray]:
        """The constant value of ``tensor`` or None."""
        value = self.graph.constants.get(tensor)
        return None if value is None else np.asarray(value)

    def producer(self, tensor):
        """IR node producing ``tensor``."""
        return self._producers.get(tensor)

    def consumers(self, tensor):
        """IR nodes reading ``tensor``."""
        return self._consumers.get(tensor, [])

    def shape(self, tensor):
        """Static shape of ``tensor`` or None."""
        return self.graph.shape(tensor)

    def rank(self, tensor) -> Optional[int]:
        """Rank of ``tensor`` when known."""
        info = self.graph.tensor_info(tensor)
        return None if info is None or info.shape is None else len(info.shape)

    def axis(self, node, tensor, default) -> int:
        """The node's ``axis`` attribute, made non-negative when the rank is known."""
        axis = int(node.attrs.get("axis", default))
        rank = self.rank(tensor)
        return axis + rank if axis < 0 and rank is not None else axis

    # ---- emission --------------------------------------------------------------------------
    def unsupported(self, node, detail: str) -> None:
        """Record that ``node`` cannot be written (all are reported together)."""
        self.problems.append(f"{node.op} ({detail})")

    def float_weights(self, w: np.ndarray):
        """A raw buffer for conv/FC weights: HALF with the fp16 option, else FLOAT."""
        return raw(w.astype(np.float32), HALF if self.fp16 else FLOAT)

    @staticmethod
    def float_bias(b: np.ndarray):
        """A FLOAT raw buffer for a bias (kept fp32 even in fp16 mode)."""
        return raw(np.asarray(b, np.float32), FLOAT)

    float_param = staticmethod(lambda v, dims=None: raw(np.asarray(v, np.float32), FLOAT, dims))

    def layer(self, type_, name, inputs, outputs, params, node, fields=None, weighted=None):
        """Append a layer (and its resource when ``fields`` is given)."""
        self.layers.append(ProtoLayer(type_, name, list(inputs), list(outputs),
                                      [str(p) for p in params]))
        if fields is not None:
            self.resources[name] = Resource(type_, name, dict(fields))
        self.info[name] = {"node": node, "weighted": weighted}


def _inputs(ctx: WriteContext) -> List[ProtoInput]:
    result = []
    for t in ctx.graph.inputs:
        if t.name in ctx.graph.constants:
            continue
        if t.shape is None:
            raise PtqconvError(f"input '{t.name}' has no shape; TNN needs static input shapes "
                               "(set them in the source model)")
        dims = [d if isinstance(d, int) and d >= 0 else (1 if k == 0 else None)
                for k, d in enumerate(t.shape)]
        if None in dims:
            raise PtqconvError(f"input '{t.name}' has a dynamic dimension {tuple(t.shape)}; "
                               "TNN needs static input shapes")
        if t.dtype not in INPUT_TYPES:
            raise PtqconvError(f"input '{t.name}' has type {t.dtype}, which TNN inputs cannot be")
        result.append(ProtoInput(ctx.blob(t.name), tuple(dims), INPUT_TYPES[t.dtype]))
    return result


def _pack_order(ctx: WriteContext, scale_resources: Dict[str, Resource]) -> List[Resource]:
    """Records in the packer's order (tnn.md §3.5)."""
    ordered, done = [], set()

    def add_scales(blobs):
        for blob in blobs:
            res = scale_resources.get(blob)
            if res is not None and blob not in done:
                ordered.append(res)
                done.add(blob)

    for layer in ctx.layers:
        if layer.quantized:
            add_scales(layer.inputs)
        if layer.name in ctx.resources:
            ordered.append(ctx.resources[layer.name])
        if layer.quantized:
            add_scales(layer.outputs)
    return ordered


def build_tnn(graph, table=None, options=None):
    """Convert ``graph`` (and ``table`` for int8) to (proto text, model bytes)."""
    options = options or {}
    fp16 = str(options.get("fp16", 0)).lower() in ("1", "true", "yes")
    ctx = WriteContext(graph, fp16)
    for node in graph.nodes:
        if node.op in ("Gemm", "MatMul"):
            flat = flatten_source(ctx, node)
            if flat is not None:
                ctx.absorbed.add(flat.name)
    inputs = _inputs(ctx)
    for node in graph.nodes:
        if node.name in ctx.absorbed:
            continue
        writer = WRITERS.get(node.op)
        if writer is None:
            ctx.problems.append(node.op)
            continue
        writer(ctx, node)
    if ctx.problems:
        raise UnsupportedOpsError("TNN writer", ctx.problems)
    scale_resources = apply_int8(ctx, table) if table is not None else {}
    clash = set(ctx.resources) & {r.name for r in scale_resources.values()}
    if clash:
        raise PtqconvError(f"TNN writer: layer name(s) {sorted(clash)} collide with blob scale "
                           f"resources (names ending in '{BLOB_SCALE_SUFFIX}')")
    outputs = [ctx.blob(o) for o in graph.output_names()]
    text = render_proto(inputs, outputs, ctx.layers)
    for k, line in enumerate(text.splitlines()):
        if k != 2 and len(line) - 3 > MAX_PIECE:
            raise PtqconvError(f"TNN writer: proto line {k + 1} is {len(line)} characters long; "
                               f"TNN reads at most {MAX_PIECE}")
    return text, render_model(_pack_order(ctx, scale_resources))


def write_tnn(graph, table, paths, options=None):
    """Write ``paths`` = [x.tnnproto, x.tnnmodel]; int8 when ``table`` is given."""
    if len(paths) < 2:
        raise PtqconvError(f"{paths[0]}: TNN writes a .tnnproto and a .tnnmodel; give the "
                           ".tnnproto path")
    text, model = build_tnn(graph, table, options)
    with atomic_outputs(paths[:2]) as (tmp_proto, tmp_model):
        with open(tmp_proto, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        with open(tmp_model, "wb") as f:
            f.write(model)
    return list(paths[:2])
