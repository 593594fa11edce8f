"""The ``mnn`` reader: ``.mnn`` file -> validated op records -> float IR (+ QuantTable).

Parsing is pure Python on a bounds-checked FlatBuffers view (:mod:`fb`); any inconsistency in the
file becomes one :class:`ModelFormatError` naming the file and a byte offset.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ptqconv.core.errors import ModelFormatError, PtqconvError
from ptqconv.core.records import LoadedModel
from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.fb import Buffer, Table

# The parameter table each op type must carry (None = any, including NONE).
EXPECTED_PARAM = {
    "Input": "Input", "Const": "Blob", "Convolution": "Convolution2D",
    "ConvolutionDepthwise": "Convolution2D", "Deconvolution": "Convolution2D",
    "DeconvolutionDepthwise": "Convolution2D", "ConvInt8": "Convolution2D",
    "DepthwiseConvInt8": "Convolution2D", "Pooling": "Pool", "Pooling3D": "Pool3D",
    "ReLU": "Relu", "ReLU6": "Relu6", "Eltwise": "Eltwise", "BinaryOp": "BinaryOp",
    "UnaryOp": "UnaryOp", "Concat": "Axis", "Softmax": "Axis", "Reshape": "Reshape",
    "Permute": "Permute", "Flatten": "Flatten", "Interp": "Interp", "Padding": "PadParam",
    "ConvertTensor": "TensorConvertInfo", "Scale": "Scale", "InnerProduct": "InnerProduct",
    "FloatToInt8": "QuantizedFloatParam", "Int8ToFloat": "QuantizedFloatParam",
    "Slice": "Slice", "Squeeze": "SqueezeParam", "Unsqueeze": "SqueezeParam",
    "Reduction": "ReductionParam", "PReLU": "PRelu", "ELU": "ELU", "LRN": "LRN",
    "StridedSlice": "StridedSliceParam", "MatMul": "MatMul",
}
MAX_TENSORS = 1 << 24


@dataclass
class MnnOp:
    """One op of the file: type, name, tensor indexes, parameter table (None for NONE)."""

    type: str
    name: str
    inputs: List[int]
    outputs: List[int]
    param: Optional[Table]
    param_type: str
    pos: int
    dim_format: int = S.NHWC


@dataclass
class MnnNet:
    """A parsed ``.mnn`` file."""

    path: str
    buf: Buffer
    tensor_names: List[str]
    ops: List[MnnOp]
    outputs: List[str]
    source: int
    quant_info: Dict[int, Tuple[float, float, float, float, int]] = field(default_factory=dict)
    formats: Dict[int, int] = field(default_factory=dict)

    def fail(self, op: MnnOp, message: str):
        """Raise the format error for ``op``."""
        raise ModelFormatError(self.path, f"offset {op.pos}", f"op '{op.name}' ({op.type}): "
                                                             f"{message}")

    def input_names(self) -> List[str]:
        """Names of the Input ops' tensors."""
        return [self.tensor_names[op.outputs[0]] for op in self.ops if op.type == "Input"]

    def output_names(self) -> List[str]:
        """Declared outputs, or every produced and never consumed non-constant tensor."""
        produced = {}
        for op in self.ops:
            for t in op.outputs:
                produced[t] = op
        if self.outputs:
            return [n for n in self.outputs if n in self.tensor_names
                    and produced.get(self.tensor_names.index(n)) is not None
                    and produced[self.tensor_names.index(n)].type != "Const"]
        used = {t for op in self.ops for t in op.inputs}
        return [self.tensor_names[t] for t, op in produced.items()
                if t not in used and op.type not in ("Const", "Input")]


def sniff_mnn(path: str) -> bool:
    """True when ``path`` looks like an MNN Net: a FlatBuffers root whose table has the Net's
    tensorName and oplists fields (ONNX/ncnn/TNN files do not)."""
    if not path.lower().endswith(".mnn"):
        with open(path, "rb") as f:
            head = f.read(64)
        if len(head) < 8 or struct.unpack_from("<I", head)[0] >= os.path.getsize(path):
            return False
    try:
        with open(path, "rb") as f:
            net = Buffer(f.read(), path).root()
        return net.has(S.NET.oplists) and net.has(S.NET.tensorName)
    except (ModelFormatError, OSError):
        return False


def read_net(path: str) -> MnnNet:
    """Parse and validate ``path``; every offset/length is checked before use."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise PtqconvError(f"{path}: cannot read model file: {exc.strerror}") from None
    buf = Buffer(data, path)
    try:
        return _parse(buf, path)
    except (struct.error, ValueError, IndexError, OverflowError, UnicodeDecodeError) as exc:
        raise ModelFormatError(path, f"offset {buf.last}", f"malformed model ({exc})") from None


def _parse(buf: Buffer, path: str) -> MnnNet:
    net = buf.root()
    names = net.strings(S.NET.tensorName)
    if not names or len(names) > MAX_TENSORS:
        buf.fail(net.pos, "the Net has no tensor names (not an MNN model?)")
    op_tables = net.tables(S.NET.oplists, "Op")
    if not op_tables:
        buf.fail(net.pos, "the Net has no ops")
    ops = []
    for k, t in enumerate(op_tables):
        type_code = t.scalar(S.OP.type, "i", 0)
        type_name = S.OP_NAME.get(type_code, f"OpType{type_code}")
        ptype_code = t.scalar(S.OP.main_type, "B", 0)
        ptype = S.PARAM_NAME.get(ptype_code, f"param{ptype_code}")
        name = t.string(S.OP.name) or f"op{k}"
        expected = EXPECTED_PARAM.get(type_name)
        if expected is not None and ptype != expected:
            buf.fail(t.pos, f"op '{name}' ({type_name}) has parameter type {ptype}, "
                            f"expected {expected} (wrong union type)")
        param = t.table(S.OP.main, ptype) if ptype_code != 0 else None
        if ptype_code != 0 and param is None and expected is not None:
            buf.fail(t.pos, f"op '{name}' ({type_name}) lacks its {expected} parameters")
        ins = _indexes(t, S.OP.inputIndexes, len(names), name)
        outs = _indexes(t, S.OP.outputIndexes, len(names), name)
        if not outs:
            buf.fail(t.pos, f"op '{name}' ({type_name}) has no outputs")
        ops.append(MnnOp(type_name, name, ins, outs, param, ptype, t.pos,
                         t.scalar(S.OP.defaultDimentionFormat, "b", S.NHWC)))
    result = MnnNet(path, buf, names, ops, net.strings(S.NET.outputName),
                    net.scalar(S.NET.sourceType, "b", S.SOURCE_CAFFE))
    for d in net.tables(S.NET.extraTensorDescribe, "TensorDescribe"):
        index = d.scalar(S.TENSOR_DESCRIBE.index, "i", -1)
        if not 0 <= index < len(names):
            buf.fail(d.pos, f"tensor description refers to tensor {index} of {len(names)}")
        q = d.table(S.TENSOR_DESCRIBE.quantInfo, "TensorQuantInfo")
        if q is not None:
            result.quant_info[index] = (q.scalar(0, "f", 0.0), q.scalar(1, "f", 0.0),
                                        q.scalar(2, "f", -128.0), q.scalar(3, "f", 127.0),
                                        q.scalar(4, "i", 0))
        blob = d.table(S.TENSOR_DESCRIBE.blob, "Blob")
        if blob is not None:
            result.formats[index] = blob.scalar(S.BLOB.dataFormat, "b", S.NCHW)
    return result


def _indexes(t: Table, slot: int, count: int, name: str) -> List[int]:
    arr = t.array(slot, "i")
    if arr is None:
        return []
    values = [int(v) for v in arr]
    for v in values:
        if not 0 <= v < count:
            t.buf.fail(t.pos, f"op '{name}' refers to tensor {v}, the file has {count}")
    return values


def read_mnn(paths, options=None) -> LoadedModel:
    """``ModelFormat.read``: the float IR of ``paths[0]`` plus the QuantTable of an int8 model."""
    from ptqconv.formats.mnn.toir import net_to_ir
    net = read_net(paths[0])
    try:
        graph, table = net_to_ir(net)
    except (struct.error, ValueError, IndexError, OverflowError, AttributeError, TypeError,
            KeyError) as exc:  # a damaged file that passed the structural checks
        raise ModelFormatError(net.path, f"offset {net.buf.last}",
                               f"malformed model ({exc})") from None
    return LoadedModel(graph, table)
