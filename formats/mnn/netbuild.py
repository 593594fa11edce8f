"""Building an MNN ``Net``: tensor table, ops, constants, data layouts and quantInfo entries.

The writer follows MNN's converter conventions (specs/mnn.md §4.1): the graph input is NCHW,
convolution-type ops read and write NC4HW4, and explicit ``ConvertTensor`` ops are inserted where
an NC4HW4 tensor meets an op that wants NCHW (and back).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.fbwrite import T, f32, flag, i8, i32, serialize, u8

NCHW, NC4HW4 = "NCHW", "NC4HW4"
_FORMAT_CODE = {NCHW: S.NCHW, NC4HW4: S.NC4HW4}


@dataclass
class OpRecord:
    """One op to write: MNN type name, name, tensor names and its parameter table."""

    type: str
    name: str
    inputs: List[str]
    outputs: List[str]
    param_type: str = "NONE"
    param: Optional[T] = None


@dataclass(frozen=True)
class QuantInfo:
    """Per-tensor activation quantization as MNN stores it (``real = (q - zero) * scale``)."""

    scale: float
    zero: float = 0.0
    min: float = -127.0
    max: float = 127.0


def blob(array: np.ndarray) -> T:
    """A ``Blob`` table holding ``array`` (float32, int32, int8 or uint8 storage)."""
    a = np.asarray(array)
    kind = a.dtype.kind
    if kind == "f":
        dtype, slot, data = S.DT_FLOAT, S.BLOB.float32s, a.astype("<f4")
    elif a.dtype == np.int8:
        dtype, slot, data = S.DT_INT8, S.BLOB.int8s, a
    elif a.dtype == np.uint8:
        dtype, slot, data = S.DT_UINT8, S.BLOB.uint8s, a
    else:  # int64 shapes and bools are stored as int32, as MNN's converter does
        dtype, slot, data = S.DT_INT32, S.BLOB.int32s, np.clip(a, -2**31, 2**31 - 1).astype("<i4")
    table = T({S.BLOB.dataFormat: i8(S.NCHW), S.BLOB.dataType: i32(dtype), slot: data.reshape(-1)})
    if a.ndim:
        table.set(S.BLOB.dims, np.asarray(a.shape, dtype="<i4"))
    return table


class NetBuilder:
    """Collects ops and tensors, then serializes the ``Net``."""

    def __init__(self):
        self.index: Dict[str, int] = {}
        self.ops: List[OpRecord] = []
        self.layout: Dict[str, str] = {}
        self.quant: Dict[str, QuantInfo] = {}
        self._converted: Dict[tuple, str] = {}
        self._names: set = set()

    # ---- tensors and ops ---------------------------------------------------------------------
    def tensor(self, name: str) -> int:
        """Index of tensor ``name`` (allocated on first use)."""
        if name not in self.index:
            self.index[name] = len(self.index)
        return self.index[name]

    def fresh(self, base: str) -> str:
        """A tensor name not used (or reserved) yet, derived from ``base``."""
        name, k = base, 1
        while name in self.index or name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def add(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
            param_type: str = "NONE", param: Optional[T] = None, name: Optional[str] = None,
            layout: str = NCHW) -> OpRecord:
        """Append an op; its outputs get ``layout``."""
        for t in list(inputs) + list(outputs):
            self.tensor(t)
        rec = OpRecord(op_type, name or outputs[0], list(inputs), list(outputs), param_type, param)
        self.ops.append(rec)
        for t in outputs:
            self.layout[t] = layout
        return rec

    def const(self, name: str, array: np.ndarray) -> str:
        """Emit a ``Const`` op for ``array`` called ``name`` once; return the tensor name."""
        if name not in self.layout:
            self.add("Const", [], [name], "Blob", blob(array))
        return name

    def new_const(self, base: str, array: np.ndarray) -> str:
        """Emit a fresh ``Const`` (a helper constant of the writer, e.g. a reshape target)."""
        return self.const(self.fresh(base), array)

    def as_layout(self, name: str, layout: str) -> str:
        """Return ``name`` in ``layout``, inserting (once) a ``ConvertTensor`` op if needed."""
        if self.layout.get(name, NCHW) == layout:
            return name
        key = (name, layout)
        if key not in self._converted:
            out = self.fresh(f"{name}___tr4{layout.lower()}")
            src = self.layout.get(name, NCHW)
            param = T({S.TENSOR_CONVERT.source: i8(_FORMAT_CODE[src]),
                       S.TENSOR_CONVERT.dest: i8(_FORMAT_CODE[layout])})
            self.add("ConvertTensor", [name], [out], "TensorConvertInfo", param, layout=layout)
            if name in self.quant:
                self.quant[out] = self.quant[name]
            self._converted[key] = out
        return self._converted[key]

    # ---- serialization ----------------------------------------------------------------------
    def input_op(self, name: str, shape: Sequence[int], dtype: int = S.DT_FLOAT) -> None:
        """Emit the ``Input`` op of a graph input (NCHW, dims as given; -1 for unknown)."""
        dims = np.asarray([d if isinstance(d, int) and d >= 0 else -1 for d in shape], dtype="<i4")
        param = T({S.INPUT.dims: dims, S.INPUT.dtype: i32(dtype), S.INPUT.dformat: i8(S.NCHW)})
        self.add("Input", [], [name], "Input", param)

    def _op_table(self, rec: OpRecord) -> T:
        table = T({S.OP.type: i32(S.OP_TYPE[rec.type]), S.OP.name: rec.name,
                   S.OP.outputIndexes: np.asarray([self.index[t] for t in rec.outputs], "<i4"),
                   S.OP.main_type: u8(S.PARAM[rec.param_type]),
                   S.OP.defaultDimentionFormat: i8(S.NCHW)})
        if rec.inputs:
            table.set(S.OP.inputIndexes, np.asarray([self.index[t] for t in rec.inputs], "<i4"))
        if rec.param is not None:
            table.set(S.OP.main, rec.param)
        return table

    def _describes(self) -> List[T]:
        out = []
        for name, q in self.quant.items():
            if name not in self.index:
                continue
            info = T({S.TENSOR_QUANT_INFO.scale: f32(q.scale), S.TENSOR_QUANT_INFO.zero: f32(q.zero),
                      S.TENSOR_QUANT_INFO.min: f32(q.min), S.TENSOR_QUANT_INFO.max: f32(q.max),
                      S.TENSOR_QUANT_INFO.type: i32(S.DT_INT8)})
            out.append(T({S.TENSOR_DESCRIBE.index: i32(self.index[name]),
                          S.TENSOR_DESCRIBE.name: name, S.TENSOR_DESCRIBE.quantInfo: info}))
        return out

    def serialize(self, outputs: Sequence[str], biz_code: str = "ptqconv") -> bytes:
        """Serialize the net whose graph outputs are ``outputs``."""
        names = [None] * len(self.index)
        for name, k in self.index.items():
            names[k] = name
        net = T({S.NET.bizCode: biz_code,
                 S.NET.oplists: [self._op_table(r) for r in self.ops],
                 S.NET.outputName: list(outputs),
                 S.NET.preferForwardType: i8(0),
                 S.NET.sourceType: i8(S.SOURCE_ONNX),
                 S.NET.tensorName: names,
                 S.NET.tensorNumber: i32(0),
                 S.NET.usage: i8(0)})
        describes = self._describes()
        if describes:
            net.set(S.NET.extraTensorDescribe, describes)
        size = sum(_approx_size(r.param) for r in self.ops) + 4096
        return serialize(net, size)


def _approx_size(table: Optional[T]) -> int:
    if table is None:
        return 64
    total = 64
    for v in table.fields.values():
        if isinstance(v, np.ndarray):
            total += v.nbytes + 8
        elif isinstance(v, T):
            total += _approx_size(v)
    return total


def relu(slope: float = 0.0) -> T:
    """``Relu`` parameter table (leaky when ``slope`` is nonzero)."""
    return T({S.RELU.slope: f32(slope)})


def relu6(lo: float, hi: float) -> T:
    """``Relu6`` parameter table (a clip to ``[lo, hi]``)."""
    return T({S.RELU6.minValue: f32(lo), S.RELU6.maxValue: f32(hi)})


def axis(value: int) -> T:
    """``Axis`` parameter table."""
    return T({S.AXIS.axis: i32(value)})


def binary(op: str) -> T:
    """``BinaryOp`` parameter table for opType ``op`` (float)."""
    return T({S.BINARY.opType: i32(S.BINARY_OPS[op]), S.BINARY.T: i32(S.DT_FLOAT),
              S.BINARY.activationType: i32(0)})


def unary(op: str) -> T:
    """``UnaryOp`` parameter table for opType ``op``."""
    return T({S.UNARY.opType: i32(S.UNARY_OPS[op]), S.UNARY.T: i32(S.DT_FLOAT)})


def conv_common(kernel, strides, dilations, pads, group, out_ch, in_ch, relu_flag=False,
                relu6_flag=False, out_pads=None) -> T:
    """``Convolution2DCommon``; ``pads`` = [top, left, bottom, right] (ONNX order)."""
    table = T({S.CONV2D_COMMON.padX: i32(pads[1]), S.CONV2D_COMMON.padY: i32(pads[0]),
               S.CONV2D_COMMON.kernelX: i32(kernel[1]), S.CONV2D_COMMON.kernelY: i32(kernel[0]),
               S.CONV2D_COMMON.strideX: i32(strides[1]), S.CONV2D_COMMON.strideY: i32(strides[0]),
               S.CONV2D_COMMON.dilateX: i32(dilations[1]),
               S.CONV2D_COMMON.dilateY: i32(dilations[0]),
               S.CONV2D_COMMON.padMode: i8(S.PAD_CAFFE), S.CONV2D_COMMON.group: i32(group),
               S.CONV2D_COMMON.outputCount: i32(out_ch), S.CONV2D_COMMON.inputCount: i32(in_ch),
               S.CONV2D_COMMON.relu: flag(relu_flag), S.CONV2D_COMMON.relu6: flag(relu6_flag),
               S.CONV2D_COMMON.pads: np.asarray(pads, dtype="<i4"),
               S.CONV2D_COMMON.hasOutputShape: flag(False)})
    if out_pads is not None and any(out_pads):
        table.set(S.CONV2D_COMMON.outPads, np.asarray(out_pads, dtype="<i4"))
    return table
