"""IR nodes -> tm2 operators: one small function per IR op, in the table ``WRITE_OPS``.

Each function receives the :class:`WriteContext` and an IR node and emits tm nodes (by IR tensor
name). Activations fused by the host's ``fuse_activation`` pass, or split by the reader under the
``__act`` naming rule, go into the Convolution/Deconvolution ``activation`` field when Tengine has
one for them (ReLU, ReLU1, ReLU6) and become their own node otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from ptqconv.core.ir.graph import Graph, Node
from ptqconv.formats.tmfile import schema as S

INT32_MAX = np.iinfo(np.int32).max
INT32_MIN = np.iinfo(np.int32).min


@dataclass
class TmSpec:
    """A tm node to write, with tensors still named as in the IR."""

    name: str
    op: str
    params: Optional[Dict[str, object]]
    inputs: List[str]
    outputs: List[str]


@dataclass
class QuantLayer:
    """A Convolution/Deconvolution/FullyConnected the int8 writer may quantize.

    ``ir_weight`` is the table key; ``weight``/``bias`` the tm const names (weights already in tm
    layout: output channels on axis 0); ``ir_axis`` is the output-channel axis of the IR weight.
    """

    node: str
    kind: str
    activation: str
    ir_weight: str
    weight: str
    bias: Optional[str]
    ir_axis: Optional[int]
    ir_bias: Optional[str] = None


@dataclass
class WriteContext:
    """State shared by the op writers."""

    graph: Graph
    specs: List[TmSpec] = field(default_factory=list)
    consts: Dict[str, np.ndarray] = field(default_factory=dict)  # tm consts in first-use order
    layers: List[QuantLayer] = field(default_factory=list)
    unsupported: List[str] = field(default_factory=list)
    absorbed: set = field(default_factory=set)

    def __post_init__(self):
        self.consumers = self.graph.consumers()
        self.outputs = set(self.graph.output_names())
        self.used = set(self.graph.constants) | set(self.graph.input_names())
        for n in self.graph.nodes:
            self.used.update(n.outputs)

    def fresh(self, base: str) -> str:
        """A tensor name starting with ``base`` not used anywhere yet."""
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, name: str) -> Optional[np.ndarray]:
        """The IR constant ``name`` (None if the tensor is not constant or absent)."""
        return self.graph.constants.get(name) if name else None

    def shape(self, name: str):
        """Static shape of IR tensor ``name`` or None."""
        return self.graph.shape(name)

    def rank(self, name: str) -> Optional[int]:
        """Rank of ``name`` when its shape is known."""
        info = self.graph.tensor_info(name)
        return len(info.shape) if info is not None and info.shape is not None else None

    def use_const(self, name: str, value=None) -> str:
        """Write IR constant ``name`` as a tm Const, optionally as ``value`` (the same data in tm
        layout or type). A value that differs from what ``name`` already holds in the file gets
        its own name, the same one for equal values, so the choice is deterministic."""
        want = self.graph.constants[name] if value is None else np.asarray(value)
        have = self.consts.get(name)
        if have is None:
            self.consts[name] = want
            return name
        if _same(have, want):
            return name
        for other, arr in self.consts.items():
            if other.startswith(name + "_tm") and _same(arr, want):
                return other
        new = self.fresh(name + "_tm")
        self.consts[new] = want
        return new

    def tensor_input(self, name: str) -> str:
        """Reference IR tensor ``name`` as a tm input (constants become Const nodes)."""
        if name in self.consts:
            return name
        if name in self.graph.constants:
            return self.use_const(name)
        return name

    def emit(self, name: str, op: str, params, inputs: List[str], outputs: List[str]) -> None:
        """Add a tm node."""
        self.specs.append(TmSpec(name, op, params, [self.tensor_input(i) for i in inputs],
                                 list(outputs)))

    def skip(self, node: Node, reason: str) -> None:
        """Record that ``node`` cannot be written."""
        self.unsupported.append(f"{node.op} ({reason})" if reason else node.op)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


Writer = Callable[[WriteContext, Node], None]
WRITE_OPS: Dict[str, Writer] = {}


def writes(*ops):
    """Register the decorated function as the writer of IR ``ops``."""
    def deco(fn):
        for op in ops:
            WRITE_OPS[op] = fn
        return fn
    return deco


def _scalar(ctx, node, k, attr, default):
    """Input ``k`` as a python float when it is a constant, else attribute ``attr``."""
    if len(node.inputs) > k and node.inputs[k]:
        value = ctx.const(node.inputs[k])
        return None if value is None else float(np.asarray(value).reshape(-1)[0])
    return float(node.attr(attr, default))


def _ints(node, key, default):
    return [int(v) for v in node.attr(key, default)]


def _axis(ctx, node, tensor, axis):
    """A non-negative axis (needs the rank for negative ones)."""
    if axis >= 0:
        return axis
    rank = ctx.rank(tensor)
    return axis + rank if rank is not None else None


# ---- activations -----------------------------------------------------------------------------

FLT_MAX = float(np.finfo(np.float32).max)


def _act_code(op: str, params: dict) -> Optional[int]:
    """The Conv activation field for activation ``op`` (None when there is none for it)."""
    if op == "Relu":
        return S.ACT_RELU
    if op == "Clip":
        lo, hi = params.get("min"), params.get("max")
        if (lo, hi) == (0.0, 6.0):
            return S.ACT_RELU6
        if (lo, hi) == (-1.0, 1.0):
            return S.ACT_RELU1
    return None


def emit_activation(ctx: WriteContext, name: str, op: str, params: dict, x: str, out: str,
                    node: Node) -> None:
    """Write activation ``op`` (with ONNX-style ``params``) as its own tm node."""
    if op == "Relu":
        ctx.emit(name, "ReLU", {"negative_slope": 0.0}, [x], [out])
    elif op == "LeakyRelu":
        ctx.emit(name, "ReLU", {"negative_slope": float(params.get("alpha", 0.01))}, [x], [out])
    elif op == "Clip":
        lo, hi = params.get("min"), params.get("max")
        lo = -FLT_MAX if lo is None else float(lo)
        hi = FLT_MAX if hi is None else float(hi)
        if (lo, hi) == (0.0, 6.0):
            ctx.emit(name, "ReLU6", None, [x], [out])
        else:
            ctx.emit(name, "Clip", {"max": hi, "min": lo}, [x], [out])
    elif op in ("Sigmoid", "Tanh", "Mish"):
        ctx.emit(name, op, None, [x], [out])
    elif op == "HardSwish":
        ctx.emit(name, "HardSwish", {"alpha": 1.0, "beta": 0.0}, [x], [out])
    else:
        ctx.skip(node, f"activation {op}")


def _act_params(ctx, node: Node) -> Optional[dict]:
    """ONNX-style params of a standalone activation node (None if its bounds are not constant)."""
    if node.op == "Clip":
        lo = _scalar(ctx, node, 1, "min", -FLT_MAX)
        hi = _scalar(ctx, node, 2, "max", FLT_MAX)
        if lo is None or hi is None:
            return None
        return {"min": lo, "max": hi}
    return dict(node.attrs)


def conv_activation(ctx: WriteContext, node: Node, fusable: bool):
    """Decide how the layer's activation is written.

    Returns ``(code, conv_output, finish)``: the activation field, the tensor the layer writes,
    and a callable emitting a separate activation node (or None).
    """
    out = node.outputs[0]
    if "fused_activation" in node.attrs:
        op, params = node.attrs["fused_activation"], node.attrs.get("fused_activation_params", {})
        code = _act_code(op, params) if fusable else None
        if code is not None:
            return code, out, None
        pre = ctx.fresh(out + S.PREACT_SUFFIX)
        return S.ACT_NONE, pre, lambda: emit_activation(ctx, node.name + S.ACT_SUFFIX, op, params,
                                                         pre, out, node)
    users = ctx.consumers.get(out, [])
    if fusable and len(users) == 1 and out not in ctx.outputs:
        act = users[0]
        if act.name == node.name + S.ACT_SUFFIX and act.op in ("Relu", "Clip"):
            params = _act_params(ctx, act)
            code = _act_code(act.op, params) if params is not None else None
            if code is not None:
                ctx.absorbed.add(act.name)
                return code, act.outputs[0], None
    return S.ACT_NONE, out, None


@writes("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Mish", "HardSwish")
def write_activation(ctx, node):
    params = _act_params(ctx, node)
    if params is None:
        ctx.skip(node, "non-constant bounds")
        return
    emit_activation(ctx, node.name, node.op, params, node.inputs[0], node.outputs[0], node)


@writes("PRelu")
def write_prelu(ctx, node):
    slope = ctx.const(node.inputs[1])
    if slope is None:
        ctx.skip(node, "non-constant slope")
        return
    name = ctx.use_const(node.inputs[1], slope.reshape(-1) if slope.ndim > 1 else None)
    ctx.emit(node.name, "PReLU", None, [node.inputs[0], name], node.outputs[:1])


# ---- layers with weights ---------------------------------------------------------------------

def _pads(ctx, node, kernel, strides, dilations):
    """[top, left, bottom, right] from ``pads`` or ``auto_pad`` (None if not computable)."""
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", "") or auto is None:
        pads = _ints(node, "pads", [0, 0, 0, 0])
        return pads if len(pads) == 4 else None
    if auto == "VALID":
        return [0, 0, 0, 0]
    shape = ctx.shape(node.inputs[0])
    if shape is None or len(shape) != 4:
        return None
    pads = [0, 0, 0, 0]
    for k in range(2):
        size = shape[2 + k]
        out = -(-size // strides[k])
        total = max(0, (out - 1) * strides[k] + (kernel[k] - 1) * dilations[k] + 1 - size)
        small, big = total // 2, total - total // 2
        pads[k], pads[k + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    return pads


@writes("Conv")
def write_conv(ctx, node):
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 4:
        ctx.skip(node, "only 2-D convolutions with constant weights")
        return
    kernel = _ints(node, "kernel_shape", list(w.shape[2:]))
    strides, dilations = _ints(node, "strides", [1, 1]), _ints(node, "dilations", [1, 1])
    group = int(node.attr("group", 1))
    pads = _pads(ctx, node, kernel, strides, dilations)
    if pads is None:
        ctx.skip(node, "padding needs the input shape")
        return
    code, out, finish = conv_activation(ctx, node, fusable=True)
    params = dict(kernel_h=kernel[0], kernel_w=kernel[1], stride_h=strides[0], stride_w=strides[1],
                  dilation_h=dilations[0], dilation_w=dilations[1],
                  input_channel=int(w.shape[1]) * group, output_channel=int(w.shape[0]),
                  group=group, activation=code, pad_h0=pads[0], pad_w0=pads[1], pad_h1=pads[2],
                  pad_w1=pads[3])
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if bias is not None and ctx.const(bias) is None:
        ctx.skip(node, "non-constant bias")
        return
    ctx.emit(node.name, "Convolution", params, [node.inputs[0], node.inputs[1]] +
             ([bias] if bias else []), [out])
    ctx.layers.append(QuantLayer(node.name, "conv", node.inputs[0], node.inputs[1],
                                 node.inputs[1], bias, 0, bias))
    if finish:
        finish()


@writes("ConvTranspose")
def write_deconv(ctx, node):
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 4 or node.attr("output_shape") is not None:
        ctx.skip(node, "only 2-D with constant weights and no output_shape")
        return
    kernel = _ints(node, "kernel_shape", list(w.shape[2:]))
    strides, dilations = _ints(node, "strides", [1, 1]), _ints(node, "dilations", [1, 1])
    group = int(node.attr("group", 1))
    auto = node.attr("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", "", None):
        ctx.skip(node, f"auto_pad {auto}")
        return
    pads = _ints(node, "pads", [0, 0, 0, 0]) if auto != "VALID" else [0, 0, 0, 0]
    out_pad = _ints(node, "output_padding", [0, 0])
    code, out, finish = conv_activation(ctx, node, fusable=True)
    params = dict(num_output=int(w.shape[1]) * group, kernel_h=kernel[0], kernel_w=kernel[1],
                  stride_h=strides[0], stride_w=strides[1], pad_w0=pads[1], pad_h0=pads[0],
                  pad_w1=pads[3], pad_h1=pads[2], dilation_h=dilations[0],
                  dilation_w=dilations[1], group=group, activation=code,
                  output_pad_h0=out_pad[0], output_pad_w0=out_pad[1])
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if bias is not None and ctx.const(bias) is None:
        ctx.skip(node, "non-constant bias")
        return
    ctx.emit(node.name, "Deconvolution", params, [node.inputs[0], node.inputs[1]] +
             ([bias] if bias else []), [out])
    ctx.layers.append(QuantLayer(node.name, "deconv", node.inputs[0], node.inputs[1],
                                 node.inputs[1], bias, 1 if group == 1 else None, bias))
    if finish:
        finish()


def _fc(ctx, node, x, weight_name, weight_nk, transposed, bias_name, ir_axis):
    """Emit a FullyConnected (weight given as [N, K]) and its unfused activation."""
    _, out, finish = conv_activation(ctx, node, fusable=False)
    w_tm = ctx.use_const(weight_name, weight_nk if transposed else None)
    inputs = [x, w_tm]
    b_tm = None
    if bias_name:
        b = ctx.const(bias_name)
        b_tm = ctx.use_const(bias_name, b.reshape(-1) if b.ndim != 1 else None)
        inputs.append(b_tm)
    ctx.emit(node.name, "FullyConnected", {"num_output": int(weight_nk.shape[0])}, inputs, [out])
    ctx.layers.append(QuantLayer(node.name, "fc", x, weight_name, w_tm, b_tm, ir_axis, bias_name))
    if finish:
        finish()


@writes("Gemm")
def write_gemm(ctx, node):
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    w = ctx.const(b)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    trans_a, trans_b = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    bias = ctx.const(c) if c else None
    if w is not None and w.ndim == 2 and not trans_a and alpha == 1.0 and \
            (c is None or (bias is not None and beta == 1.0 and bias.size == (w.shape[0] if trans_b
                                                                              else w.shape[1]))):
        _fc(ctx, node, a, b, w if trans_b else w.T.copy(), not trans_b, c, 0 if trans_b else 1)
        return
    if "fused_activation" in node.attrs:
        ctx.skip(node, "general Gemm with a fused activation")
        return
    ctx.emit(node.name, "Gemm", {"alpha": alpha, "beta": beta, "transA": trans_a,
                                 "transB": trans_b}, [i for i in node.inputs if i], node.outputs)


@writes("MatMul")
def write_matmul(ctx, node):
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 2 or ctx.rank(node.inputs[0]) != 2:
        ctx.skip(node, "only a 2-D input times a constant 2-D weight")
        return
    _fc(ctx, node, node.inputs[0], node.inputs[1], w.T.copy(), True, None, 1)


# ---- pooling ---------------------------------------------------------------------------------

@writes("MaxPool", "AveragePool")
def write_pool(ctx, node):
    kernel = _ints(node, "kernel_shape", [])
    if len(kernel) != 2 or any(d != 1 for d in _ints(node, "dilations", [1, 1])):
        ctx.skip(node, "only 2-D pooling without dilation")
        return
    strides = _ints(node, "strides", [1, 1])
    pads = _pads(ctx, node, kernel, strides, [1, 1])
    ceil = int(node.attr("ceil_mode", 0))
    if pads is None:
        ctx.skip(node, "padding needs the input shape")
        return
    if node.op == "AveragePool" and any(pads) and int(node.attr("count_include_pad", 0)) != ceil:
        ctx.skip(node, "count_include_pad differs from ceil_mode with padding")
        return
    params = dict(alg=0 if node.op == "MaxPool" else 1, kernel_h=kernel[0], kernel_w=kernel[1],
                  stride_h=strides[0], stride_w=strides[1], caffe_flavor=ceil, pad_h0=pads[0],
                  pad_w0=pads[1], pad_h1=pads[2], pad_w1=pads[3])
    params["global"] = 0
    ctx.emit(node.name, "Pooling", params, node.inputs[:1], node.outputs[:1])


@writes("GlobalMaxPool", "GlobalAveragePool")
def write_global_pool(ctx, node):
    shape = ctx.shape(node.inputs[0])
    kh, kw = (shape[2], shape[3]) if shape is not None and len(shape) == 4 else (0, 0)
    params = dict(alg=0 if node.op == "GlobalMaxPool" else 1, kernel_h=kh, kernel_w=kw,
                  stride_h=1, stride_w=1, caffe_flavor=0, pad_h0=0, pad_w0=0, pad_h1=0, pad_w1=0)
    params["global"] = 1
    ctx.emit(node.name, "Pooling", params, node.inputs[:1], node.outputs[:1])


# ---- element-wise and shape ops --------------------------------------------------------------

ELTWISE = {"Add": S.ELT_SUM, "Sum": S.ELT_SUM, "Mul": S.ELT_PROD, "Sub": S.ELT_SUB,
           "Max": S.ELT_MAX, "Div": S.ELT_DIV}


@writes(*ELTWISE)
def write_eltwise(ctx, node):
    if len(node.inputs) < 2 or (len(node.inputs) > 2 and node.op not in ("Sum", "Max")):
        ctx.skip(node, f"{len(node.inputs)} inputs")
        return
    ctx.emit(node.name, "Eltwise", {"type": ELTWISE[node.op], "caffe_flavor": 0, "shift": 0.0,
                                    "power": 1.0, "scale": 1.0}, node.inputs, node.outputs[:1])


@writes("Concat")
def write_concat(ctx, node):
    axis = _axis(ctx, node, node.inputs[0], int(node.attr("axis", 1)))
    if axis is None:
        ctx.skip(node, "negative axis on an input of unknown rank")
        return
    ctx.emit(node.name, "Concat", {"axis": axis}, node.inputs, node.outputs[:1])


@writes("Softmax")
def write_softmax(ctx, node):
    x = node.inputs[0]
    default = -1 if (ctx.graph.opset or 13) >= 13 else 1
    axis = _axis(ctx, node, x, int(node.attr("axis", default)))
    rank = ctx.rank(x)
    if axis is None or ((ctx.graph.opset or 13) < 13 and rank not in (None, axis + 1)):
        ctx.skip(node, "axis needs the input rank")
        return
    ctx.emit(node.name, "Softmax", {"axis": axis}, [x], node.outputs[:1])


@writes("Dropout")
def write_dropout(ctx, node):
    ctx.emit(node.name, "Dropout", None, node.inputs[:1], node.outputs[:1])


@writes("Identity")
def write_identity(ctx, node):
    # Tengine has no Identity; a Caffe-style Split copies its input (the reader maps it back).
    ctx.emit(node.name, "Split", {"axis": 0, "split_dim": 0, "is_caffe": 1, "is_onnx": 0,
                                  "split_sizes": None}, node.inputs[:1], node.outputs[:1])


@writes("Split")
def write_split(ctx, node):
    sizes = None
    if len(node.inputs) > 1 and node.inputs[1]:
        value = ctx.const(node.inputs[1])
        if value is None:
            ctx.skip(node, "non-constant split sizes")
            return
        sizes = [int(v) for v in value.reshape(-1)]
    elif node.attr("split") is not None:
        sizes = [int(v) for v in node.attr("split")]
    axis = _axis(ctx, node, node.inputs[0], int(node.attr("axis", 0)))
    if axis is None:
        ctx.skip(node, "negative axis on an input of unknown rank")
        return
    ctx.emit(node.name, "Split", {"axis": axis, "split_dim": 0, "is_caffe": 0, "is_onnx": 1,
                                  "split_sizes": sizes}, node.inputs[:1], node.outputs)


def _clamp32(v: int) -> int:
    return int(min(max(v, INT32_MIN), INT32_MAX))


@writes("Slice")
def write_slice(ctx, node):
    values = [ctx.const(node.inputs[k]) if len(node.inputs) > k and node.inputs[k] else None
              for k in range(1, 5)]
    if values[0] is None or values[1] is None or any(
            len(node.inputs) > k + 1 and node.inputs[k + 1] and values[k] is None for k in (2, 3)):
        ctx.skip(node, "non-constant starts/ends")
        return
    starts, ends = values[0].reshape(-1), values[1].reshape(-1)
    axes = values[2].reshape(-1) if values[2] is not None else np.arange(len(starts))
    steps = values[3].reshape(-1) if values[3] is not None else np.ones(len(starts), np.int64)
    if len(starts) != 1:
        ctx.skip(node, "more than one sliced axis")
        return
    axis = _axis(ctx, node, node.inputs[0], int(axes[0]))
    if axis is None:
        ctx.skip(node, "negative axis on an input of unknown rank")
        return
    ctx.emit(node.name, "Slice", dict(axis=axis, slice_points=None, begins=None, sizes=None,
                                      iscaffe=0, ismxnet=0, isonnx=1, begin=_clamp32(starts[0]),
                                      end=_clamp32(ends[0]), step=int(steps[0])),
             node.inputs[:1], node.outputs[:1])


@writes("Reshape")
def write_reshape(ctx, node):
    shape = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None:
        ctx.skip(node, "non-constant shape")
        return
    dims = [int(v) for v in shape.reshape(-1)]
    if int(node.attr("allowzero", 0)) and 0 in dims:
        ctx.skip(node, "allowzero with a zero dimension")
        return
    # Tengine's ONNX converter keeps the shape as an int32 Const input and copies it into re_shape.
    shape_tm = ctx.use_const(node.inputs[1], np.array(dims, np.int32))
    ctx.emit(node.name, "Reshape", {"is_mxnet": 0, "reverse": 0, "re_shape": dims, "is_onnx": 1},
             [node.inputs[0], shape_tm], node.outputs[:1])


@writes("Flatten")
def write_flatten(ctx, node):
    if int(node.attr("axis", 1)) != 1:
        ctx.skip(node, "axis other than 1")
        return
    rank = ctx.rank(node.inputs[0])
    ctx.emit(node.name, "Flatten", {"axis": 1, "end_axis": (rank - 1) if rank else 3},
             node.inputs[:1], node.outputs[:1])


@writes("Transpose")
def write_transpose(ctx, node):
    perm = node.attr("perm")
    if perm is None:
        rank = ctx.rank(node.inputs[0])
        if rank is None:
            ctx.skip(node, "no perm and unknown rank")
            return
        perm = list(range(rank))[::-1]
    ctx.emit(node.name, "Transpose", {"tr_shape": [int(p) for p in perm]}, node.inputs[:1],
             node.outputs[:1])


@writes("Resize", "Upsample")
def write_resize(ctx, node):
    mode = node.attr("mode", "nearest")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in ("nearest", "linear", "bilinear"):
        ctx.skip(node, f"mode {mode}")
        return
    x, out = node.inputs[0], node.outputs[0]
    scales_idx = 2 if node.op == "Resize" and len(node.inputs) > 2 else 1
    scales = ctx.const(node.inputs[scales_idx]) if len(node.inputs) > scales_idx and \
        node.inputs[scales_idx] else (np.asarray(node.attr("scales"), np.float32)
                                      if node.attr("scales") is not None else None)
    in_shape, out_shape = ctx.shape(x), ctx.shape(out)
    if scales is None or scales.size != 4:
        sizes = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
        if sizes is not None and in_shape is not None and len(in_shape) == 4 and sizes.size == 4:
            scales = np.array([1, 1, sizes[2] / in_shape[2], sizes[3] / in_shape[3]], np.float32)
        else:
            ctx.skip(node, "output size needs known shapes")
            return
    scales = np.asarray(scales, np.float32).reshape(-1)
    oh, ow = (int(out_shape[2]), int(out_shape[3])) if out_shape is not None and \
        len(out_shape) == 4 else (0, 0)
    scales_tm = ctx.fresh(node.name + "_scales") if len(node.inputs) <= scales_idx or \
        not node.inputs[scales_idx] or node.inputs[scales_idx] not in ctx.graph.constants \
        else node.inputs[scales_idx]
    ctx.consts.setdefault(scales_tm, scales)
    ctx.emit(node.name, "Interp", {"resize_type": 1 if mode == "nearest" else 2,
                                   "width_scale": float(scales[3]),
                                   "height_scale": float(scales[2]), "output_width": ow,
                                   "output_height": oh}, [x, scales_tm], [out])


@writes("BatchNormalization")
def write_batchnorm(ctx, node):
    if len(node.inputs) != 5 or any(ctx.const(i) is None for i in node.inputs[1:]):
        ctx.skip(node, "non-constant statistics")
        return
    ctx.emit(node.name, "BatchNormalization", {"rescale_factor": 1.0,
                                               "eps": float(node.attr("epsilon", 1e-5)),
                                               "caffe_flavor": 0}, node.inputs, node.outputs[:1])


PAD_MODES = {"constant": 0, "reflect": 1, "edge": 2}


@writes("Pad")
def write_pad(ctx, node):
    mode = node.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if len(node.inputs) > 1 and node.inputs[1]:
        pads = ctx.const(node.inputs[1])
    else:
        pads = node.attr("pads")
    value = _scalar(ctx, node, 2, "value", 0.0)
    if pads is None or value is None or np.size(pads) != 8 or mode not in PAD_MODES or \
            (len(node.inputs) > 3 and node.inputs[3]):
        ctx.skip(node, "only constant 4-D pads")
        return
    p = [int(v) for v in np.asarray(pads).reshape(-1)]
    ctx.emit(node.name, "Pad", dict(pad_n_0=p[0], pad_n_1=p[4], pad_c_0=p[1], pad_c_1=p[5],
                                    pad_h_0=p[2], pad_h_1=p[6], pad_w_0=p[3], pad_w_1=p[7],
                                    mode=PAD_MODES[mode], value=value), node.inputs[:1],
             node.outputs[:1])
