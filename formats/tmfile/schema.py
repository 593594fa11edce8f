"""tm2 enumerations and operator param-struct layouts, written from specs/tmfile.md §3-§9.

A param struct is a list of ``(field, code)``: ``i`` int32, ``I`` uint32, ``f`` binary32, ``B`` u8,
``x`` one padding byte, ``V`` a u32 offset of a ``TM2_Vector_dims`` (read as a list of ints, written
before the struct). ``min_size`` is how many bytes a reader may rely on (older writers wrote shorter
structs for Eltwise and Reshape).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

# TM2_OPTYPE_* (tmfile.md §8). 104 is unused.
OP_NAMES: Tuple[str, ...] = (
    "Accuracy", "BatchNormalization", "BilinearResize", "Concat", "Const", "Convolution",
    "Deconvolution", "DetectionOutput", "Dropout", "Eltwise", "Flatten", "FullyConnected",
    "InputOp", "LRN", "Normalize", "Permute", "Pooling", "PReLU", "PriorBox", "Region", "ReLU",
    "ReLU6", "Reorg", "Reshape", "ROIPooling", "RPN", "Scale", "Slice", "Softmax", "Split",
    "DetectionPostProcess", "Gemm", "Generic", "Logistic", "LSTM", "RNN", "Tanh", "Sigmoid",
    "Squeeze", "FusedBNScaleReLu", "Pad", "StridedSlice", "ArgMax", "ArgMin", "TopKV2",
    "Reduction", "Maximum", "Minimum", "GRU", "Addn", "SwapAxis", "Upsample", "SpaceToBatchND",
    "BatchToSpaceND", "Resize", "ShuffleChannel", "Crop", "Roialign", "Psroipooling", "Unary",
    "Expanddims", "Bias", "Noop", "Threshold", "Hardsigmoid", "Embedding", "InstanceNorm", "MVN",
    "Absval", "Cast", "HardSwish", "Interp", "Selu", "Elu", "BroadMul", "Logical", "Gather",
    "Transpose", "Comparison", "SpaceToDepth", "DepthToSpace", "Reverse", "SparseToDense", "Ceil",
    "SquaredDifference", "Round", "ZerosLike", "Clip", "Unsqueeze", "ReduceL2", "Mean", "MatMul",
    "Expand", "Scatter", "Shape", "Where", "Tile", "Mish", "L2Pool", "LogSoftmax", "ReLU1",
    "L2Normalization", "Softplus", "Reciprocal", None, "SpatialTransformer", "Gelu", "LayerNorm",
)
OP_IDS: Dict[str, int] = {name: k for k, name in enumerate(OP_NAMES) if name}

# Data types (TM2_Tensor.data_type) and their numpy element types.
FP32, FP16, INT8, UINT8, INT32, INT16 = range(6)
DTYPES = {FP32: "<f4", FP16: "<f2", INT8: "i1", UINT8: "u1", INT32: "<i4", INT16: "<i2"}
DTYPE_NAMES = {FP32: "FP32", FP16: "FP16", INT8: "INT8", UINT8: "UINT8", INT32: "INT32",
               INT16: "INT16"}

# Tensor types (TM2_Tensor.type).
T_UNKNOWN, T_VAR, T_CONST, T_INPUT, T_DEP = range(5)

# Conv/Deconv ``activation`` field.
ACT_NONE, ACT_RELU, ACT_RELU1, ACT_RELU6 = -1, 0, 1, 6

# Eltwise ``type`` (tmfile.md §9).
ELT_PROD, ELT_SUM, ELT_SUB, ELT_MAX, ELT_DIV = 0, 2, 4, 6, 10

# Fixed-size records: (struct format, size).
HEADER = "<HHHHI"
MODEL = "<iiII"
SUBGRAPH = "<IiiIIIIIII"
NODE = "<IIIIIIB3x"
OPERATOR = "<III"
TENSOR = "<IIIIIiii"
QUANT_PARAM = "<ifi"
PAIR = "<II"  # TM2_String and TM2_Buffer


@dataclass(frozen=True)
class ParamStruct:
    """Layout of one operator's param struct."""

    fields: Tuple[Tuple[str, str], ...]
    min_size: int = -1  # -1: the whole struct

    @property
    def fmt(self) -> str:
        """``struct`` format of the whole struct (vectors are u32 offsets)."""
        return "<" + "".join("I" if code == "V" else code for _, code in self.fields)

    @property
    def size(self) -> int:
        """Size in bytes of the whole struct."""
        return struct.calcsize(self.fmt)

    def read_size(self) -> int:
        """Bytes a reader needs."""
        return self.size if self.min_size < 0 else self.min_size

    def names(self) -> List[str]:
        """Field names, padding excluded."""
        return [name for name, code in self.fields if code != "x"]


def _ints(*names):
    return tuple((n, "i") for n in names)


PARAMS: Dict[str, ParamStruct] = {
    "BatchNormalization": ParamStruct((("rescale_factor", "f"), ("eps", "f"),
                                       ("caffe_flavor", "i"))),
    "BilinearResize": ParamStruct((("scale_x", "f"), ("scale_y", "f"), ("type", "i"))),
    "Resize": ParamStruct((("scale_x", "f"), ("scale_y", "f"), ("type", "i"))),
    "Concat": ParamStruct(_ints("axis")),
    "Convolution": ParamStruct(_ints("kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h",
                                     "dilation_w", "input_channel", "output_channel", "group",
                                     "activation", "pad_h0", "pad_w0", "pad_h1", "pad_w1")),
    "Deconvolution": ParamStruct(_ints("num_output", "kernel_h", "kernel_w", "stride_h",
                                       "stride_w", "pad_w0", "pad_h0", "pad_w1", "pad_h1",
                                       "dilation_h", "dilation_w", "group", "activation",
                                       "output_pad_h0", "output_pad_w0")),
    # Older files hold only type and caffe_flavor (8 bytes); the floats are often garbage.
    "Eltwise": ParamStruct((("type", "I"), ("caffe_flavor", "i"), ("shift", "f"), ("power", "f"),
                            ("scale", "f")), min_size=8),
    "Flatten": ParamStruct(_ints("axis", "end_axis")),
    "FullyConnected": ParamStruct(_ints("num_output")),
    "Permute": ParamStruct(_ints("flag", "order0", "order1", "order2", "order3")),
    "Pooling": ParamStruct((("alg", "I"),) + _ints("kernel_h", "kernel_w", "stride_h", "stride_w",
                                                   "global", "caffe_flavor", "pad_h0", "pad_w0",
                                                   "pad_h1", "pad_w1")),
    "ReLU": ParamStruct((("negative_slope", "f"),)),
    # The current writer adds is_onnx (16 bytes); older structs stop after re_shape.
    "Reshape": ParamStruct(_ints("is_mxnet", "reverse") + (("re_shape", "V"), ("is_onnx", "i")),
                           min_size=12),
    "Scale": ParamStruct(_ints("axis", "num_axes", "bias_term")),
    "Slice": ParamStruct((("axis", "i"), ("slice_points", "V"), ("begins", "V"), ("sizes", "V"))
                         + _ints("iscaffe", "ismxnet", "isonnx", "begin", "end", "step")),
    "Softmax": ParamStruct(_ints("axis")),
    "Split": ParamStruct(_ints("axis", "split_dim") + (("is_caffe", "B"), ("is_onnx", "B"),
                                                       ("pad0", "x"), ("pad1", "x"),
                                                       ("split_sizes", "V"))),
    "Gemm": ParamStruct((("alpha", "f"), ("beta", "f"), ("transA", "i"), ("transB", "i"))),
    "Pad": ParamStruct(_ints("pad_n_0", "pad_n_1", "pad_c_0", "pad_c_1", "pad_h_0", "pad_h_1",
                             "pad_w_0", "pad_w_1", "mode") + (("value", "f"),)),
    "Upsample": ParamStruct((("scale", "f"),)),
    "HardSwish": ParamStruct((("alpha", "f"), ("beta", "f"))),
    "Interp": ParamStruct((("resize_type", "i"), ("width_scale", "f"), ("height_scale", "f"),
                           ("output_width", "i"), ("output_height", "i"))),
    "Transpose": ParamStruct((("tr_shape", "V"),)),
    "Clip": ParamStruct((("max", "f"), ("min", "f"))),
}

# Ops written with offset_t_param = 0.
NO_PARAM = frozenset({"Const", "InputOp", "ReLU6", "Sigmoid", "Tanh", "Dropout", "PReLU", "Mish",
                      "Logistic"})

# ptqconv naming convention for a Conv/Deconv activation field split into its own IR node: the
# node is ``<conv name>__act`` and the tensor between them ``<output>__preact``. The writer folds
# exactly this pattern back into the activation field, so files round-trip byte for byte.
ACT_SUFFIX = "__act"
PREACT_SUFFIX = "__preact"
