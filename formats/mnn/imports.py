"""MNN ops -> IR nodes (the reader's op table).

IR arrays are MNN's *logical* tensors: an NCHW or NC4HW4 tensor is an NCHW array, an NHWC tensor
(TensorFlow-converted models) an NHWC array. Every tensor's MNN layout family is tracked so that
``ConvertTensor``, convolutions and layout-sensitive reshapes become explicit ``Transpose`` nodes.

int8 models: MNN 3.x files (IDSTQuan weights + quantInfo) are dequantized with their own scales.
Legacy files (FloatToInt8 -> ConvInt8 -> Int8ToFloat) store only the combined requantization
scale of each layer, so an int8 tensor between two int8 layers is represented in *code units*
(scale 1.0): the graph computes exactly what the int8 model computes (up to rounding), including
the int8 saturation as a Clip, and the QuantTable records those units.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np

from ptqconv.core.errors import ModelFormatError, UnsupportedOpsError
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.qtable import ActQuant, QuantTable
from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.fb import Table
from ptqconv.formats.mnn.reader import MnnNet, MnnOp

IMPORTERS: Dict[str, Callable] = {}
NCHW, NHWC = "NCHW", "NHWC"
UNARY = {0: "Abs", 1: "Neg", 2: "Floor", 3: "Ceil", 5: "Sqrt", 7: "Exp", 8: "Log", 9: "Sin",
         10: "Cos", 11: "Tan", 12: "Asin", 13: "Acos", 14: "Atan", 15: "Reciprocal",
         22: "Sign", 23: "Round", 25: "Erf", 29: "Sigmoid", 30: "Tanh", 31: "HardSwish"}
BINARY = {0: "Add", 1: "Sub", 2: "Mul", 3: "Div", 6: "Pow", 7: "Div", 8: "Min", 9: "Max",
          10: "Greater", 11: "GreaterOrEqual", 12: "Less", 15: "Equal", 16: "LessOrEqual",
          4: "Max", 5: "Min"}
INT_TYPES = (S.DT_INT32, S.DT_INT64, S.DT_INT16, S.DT_BOOL)


class Skip(Exception):
    """This op cannot be imported; the message is the item listed in the error."""


def imports(*types):
    """Register the decorated method as the importer of MNN op ``types``."""
    def deco(fn):
        for t in types:
            IMPORTERS[t] = fn
        return fn
    return deco


class Importer:
    """Builds the IR graph and QuantTable of one parsed :class:`MnnNet`."""

    def __init__(self, net: MnnNet):
        self.net = net
        self.nodes: List[Node] = []
        self.constants: Dict[str, np.ndarray] = {}
        self.inputs: List[TensorInfo] = []
        self.layout: Dict[str, str] = {}
        self.rank: Dict[str, Optional[int]] = {}
        self.unit: Dict[str, float] = {}      # legacy int8 tensors: real value = IR value
        self.table = QuantTable(meta={"source": "mnn"})
        self._used: set = set()
        self._cache: Dict[tuple, str] = {}
        self.consumers: Dict[int, List[MnnOp]] = {}
        for op in net.ops:
            for t in op.inputs:
                self.consumers.setdefault(t, []).append(op)
        self.names = _unique(net.tensor_names)
        self._used.update(self.names)

    # ---- names, nodes, constants ---------------------------------------------------------------
    def t(self, index: int) -> str:
        """IR name of MNN tensor ``index``."""
        return self.names[index]

    def fresh(self, base: str) -> str:
        """An unused IR name derived from ``base``."""
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name

    def node(self, op_type: str, inputs, outputs, name=None, **attrs) -> Node:
        """Append an IR node."""
        n = Node(op_type, self.fresh(name or outputs[0]), list(inputs), list(outputs), attrs)
        self.nodes.append(n)
        return n

    def const(self, base: str, value) -> str:
        """Add a new constant and return its name."""
        name = self.fresh(base)
        self.constants[name] = np.asarray(value)
        self.layout[name], self.rank[name] = NCHW, np.asarray(value).ndim
        return name

    def follow(self, dst: str, src: str, layout: Optional[str] = None, rank=-1) -> None:
        """Give ``dst`` the layout/rank/unit of ``src`` (overridable)."""
        self.layout[dst] = layout or self.layout.get(src, NCHW)
        self.rank[dst] = self.rank.get(src) if rank == -1 else rank
        if src in self.unit:
            self.unit[dst] = self.unit[src]

    def transpose(self, name: str, perm, layout: str) -> str:
        """``name`` transposed by ``perm`` (cached), labelled ``layout``."""
        key = (name, tuple(perm))
        if key not in self._cache:
            out = self.fresh(f"{name}__{layout.lower()}")
            self.node("Transpose", [name], [out], perm=list(perm))
            self.follow(out, name, layout)
            self._cache[key] = out
        return self._cache[key]

    def nchw(self, name: str) -> str:
        """``name`` as an NCHW-ordered array (transposed when it is a 4-D NHWC tensor)."""
        if self.layout.get(name) == NHWC and self.rank.get(name) == 4:
            return self.transpose(name, (0, 3, 1, 2), NCHW)
        return name

    def nhwc(self, name: str) -> str:
        """``name`` as an NHWC-ordered array."""
        if self.layout.get(name, NCHW) == NCHW and self.rank.get(name) == 4:
            return self.transpose(name, (0, 2, 3, 1), NHWC)
        return name

    def input_name(self, op: MnnOp, k: int) -> str:
        """IR name of input ``k`` of ``op`` (format error if missing)."""
        if k >= len(op.inputs):
            self.net.fail(op, f"needs at least {k + 1} input(s)")
        return self.t(op.inputs[k])

    def const_value(self, op: MnnOp, k: int) -> np.ndarray:
        """The constant behind input ``k`` (Skip when it is computed at run time)."""
        name = self.input_name(op, k)
        if name not in self.constants:
            raise Skip(f"{op.type} with a computed input {k}")
        return self.constants[name]

    # ---- driver ----------------------------------------------------------------------------
    def run(self):
        """Import every op; returns (Graph, QuantTable or None)."""
        problems: List[str] = []
        for op in self.net.ops:
            fn = IMPORTERS.get(op.type)
            if fn is None:
                problems.append(op.type)
                continue
            try:
                fn(self, op)
            except Skip as exc:
                problems.append(str(exc))
        if problems:
            raise UnsupportedOpsError(self.net.path, problems)
        outputs = [TensorInfo(n) for n in self.net.output_names()]
        if not outputs:
            raise ModelFormatError(self.net.path, None, "the model has no outputs")
        opset = 14 if any(n.op == "HardSwish" for n in self.nodes) else 13
        graph = Graph(_graph_name(self.net.path), self.inputs, outputs, self.nodes,
                      self.constants, opset=opset)
        produced = set(self.constants) | set(graph.input_names())
        for n in self.nodes:
            produced.update(n.outputs)
        missing = sorted({i for n in self.nodes for i in n.inputs if i and i not in produced})
        if missing:
            raise ModelFormatError(self.net.path, None, f"tensor(s) used but never produced: "
                                                        f"{', '.join(missing[:5])}")
        graph.toposort()
        self._quant_table(graph)
        table = self.table if self.table.precision else None
        return graph, table

    def _quant_table(self, graph) -> None:
        """Add the activation scales of MNN 3.x ``quantInfo`` entries."""
        known = {o for n in graph.nodes for o in n.outputs} | set(graph.input_names())
        for index, (scale, zero, lo, hi, _dtype) in self.net.quant_info.items():
            name = self.t(index)
            if scale > 0 and name in known and name not in self.table.activations:
                bits = 8 if hi - lo <= 255 else 16
                if zero == lo and zero != 0 and hi > 0:
                    # one-sided range [0, (hi - lo) * scale] (ReLU outputs): the same threshold
                    # as a symmetric entry, which every int8 writer can use
                    scale, zero = scale * (hi - lo) / hi, 0
                self.table.activations[name] = ActQuant(float(scale), int(round(zero)), bits, True)
        # Identity nodes (ConvertTensor, Dropout) disappear in canonicalization: their input
        # must carry the scale its output had.
        for n in reversed(graph.nodes):
            if n.op == "Identity" and n.outputs[0] in self.table.activations:
                self.table.activations.setdefault(n.inputs[0], self.table.activations[n.outputs[0]])


def _unique(names: List[str]) -> List[str]:
    seen, out = set(), []
    for k, n in enumerate(names):
        name = n or f"tensor{k}"
        while name in seen:
            name = f"{name}_{k}"
        seen.add(name)
        out.append(name)
    return out


def _graph_name(path: str) -> str:
    import os
    return os.path.splitext(os.path.basename(path))[0] or "mnn"


# ---- blobs -------------------------------------------------------------------------------------
def blob_array(net: MnnNet, blob: Table, where: MnnOp) -> np.ndarray:
    """The numpy value of a ``Blob`` table (int32 widened to int64 for shape arithmetic)."""
    dims = blob.array(S.BLOB.dims, "i")
    dims = [] if dims is None else [int(d) for d in dims]
    dtype = blob.scalar(S.BLOB.dataType, "i", S.DT_FLOAT)
    slots = {S.DT_FLOAT: (S.BLOB.float32s, "f"), S.DT_INT32: (S.BLOB.int32s, "i"),
             S.DT_INT8: (S.BLOB.int8s, "b"), S.DT_UINT8: (S.BLOB.uint8s, "B"),
             S.DT_INT64: (S.BLOB.int64s, "q"), S.DT_BOOL: (S.BLOB.int32s, "i"),
             S.DT_QINT8: (S.BLOB.int8s, "b"), S.DT_QUINT8: (S.BLOB.uint8s, "B")}
    if dtype not in slots:
        raise Skip(f"Const of data type {dtype}")
    if blob.has(S.BLOB.external):
        raise Skip("Const stored in an external file")
    slot, fmt = slots[dtype]
    data = blob.array(slot, fmt)
    if data is None and dtype == S.DT_INT64:
        data = blob.array(S.BLOB.int32s, "i")
    data = np.zeros(0, np.float32) if data is None else data
    if any(d < 0 for d in dims):
        net.fail(where, f"constant has negative dimension {dims}")
    count = math.prod(dims) if dims else 1
    if data.size != count:
        net.fail(where, f"constant holds {data.size} value(s) for dims {dims}")
    arr = np.array(data).reshape(dims)
    if dtype in INT_TYPES:
        arr = arr.astype(np.int64)
    elif dtype == S.DT_FLOAT:
        arr = arr.astype(np.float32)
    return arr


@imports("Input")
def _input(im: Importer, op: MnnOp) -> None:
    p = op.param
    dims = p.array(S.INPUT.dims, "i") if p is not None else None
    dims = [] if dims is None else [int(d) for d in dims]
    fmt = p.scalar(S.INPUT.dformat, "b", S.NC4HW4) if p is not None else S.NC4HW4
    dtype = S.DT_TO_NUMPY.get(p.scalar(S.INPUT.dtype, "i", S.DT_FLOAT) if p else S.DT_FLOAT,
                              "float32")
    name = im.t(op.outputs[0])
    shape = tuple(d if d >= 0 else None for d in dims) if dims else None
    im.inputs.append(TensorInfo(name, "float32" if dtype.startswith("float") else dtype, shape))
    im.layout[name] = NHWC if fmt == S.NHWC else NCHW
    im.rank[name] = len(dims) if dims else None


@imports("Const")
def _const(im: Importer, op: MnnOp) -> None:
    name = im.t(op.outputs[0])
    im.constants[name] = blob_array(im.net, op.param, op)
    fmt = op.param.scalar(S.BLOB.dataFormat, "b", S.NCHW)
    im.layout[name] = NHWC if fmt == S.NHWC else NCHW
    im.rank[name] = im.constants[name].ndim


@imports("ConvertTensor")
def _convert(im: Importer, op: MnnOp) -> None:
    x = im.input_name(op, 0)
    dest = op.param.scalar(S.TENSOR_CONVERT.dest, "b", S.NCHW)
    y = im.nhwc(x) if dest == S.NHWC else im.nchw(x)
    out = im.t(op.outputs[0])
    im.node("Identity", [y], [out], name=op.name)
    im.follow(out, y)


@imports("Dropout")
def _identity(im: Importer, op: MnnOp) -> None:
    x, out = im.input_name(op, 0), im.t(op.outputs[0])
    im.node("Identity", [x], [out], name=op.name)
    im.follow(out, x)
