"""tm2 operators -> IR nodes: one small function per tm op, in the table ``READ_OPS``.

Each function receives the :class:`ReadContext` and a :class:`TmNode` and emits ONNX-style IR
nodes. Params that ONNX passes as inputs (Reshape shape, Clip bounds, Resize scales, ...) become
constants named after the node, so a read -> write -> read cycle reproduces the same names.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np

from ptqconv.core.errors import ModelFormatError
from ptqconv.core.ir.graph import Node
from ptqconv.formats.tmfile import schema as S
from ptqconv.formats.tmfile.container import TmModel, TmNode

INT64_MAX = np.iinfo(np.int64).max
INT32_MAX = np.iinfo(np.int32).max
MAX_RANK = 8


class ReadContext:
    """State shared by the op readers: tensor names, constants, emitted nodes, tensor ranks."""

    def __init__(self, model: TmModel, path: str, names: List[str],
                 constants: Dict[str, np.ndarray]):
        self.model, self.path = model, path
        self.names = names  # IR name of each tm tensor
        self.constants = constants
        self.nodes: List[Node] = []
        self.node_names = set()
        self.tensor_names = set(names)
        self.rank: Dict[str, int] = {}
        self.unsupported: List[str] = []
        self.claimed: Dict[str, np.ndarray] = {}
        self.derived: Dict[str, str] = {}  # tensors the reader adds -> tensor with the same scale
        for name, t in zip(names, model.tensors):
            if t.dims is not None:
                self.rank[name] = len(t.dims)

    # ---- names and errors -------------------------------------------------------------------
    def error(self, node: TmNode, message: str) -> ModelFormatError:
        """A format error located at ``node``."""
        return ModelFormatError(self.path, f"offset {node.offset}",
                                f"node '{node.name}' ({node.op}): {message}")

    def fresh(self, base: str) -> str:
        """A tensor name starting with ``base`` not used yet (deterministic)."""
        name, k = base, 1
        while name in self.tensor_names or name in self.constants:
            name, k = f"{base}_{k}", k + 1
        self.tensor_names.add(name)
        return name

    def node_name(self, base: str) -> str:
        """A node name starting with ``base`` not used yet (deterministic)."""
        name, k = base, 1
        while name in self.node_names:
            name, k = f"{base}_{k}", k + 1
        self.node_names.add(name)
        return name

    def inp(self, node: TmNode, k: int) -> str:
        """IR name of input ``k`` of ``node`` (error if missing)."""
        if k >= len(node.inputs):
            raise self.error(node, f"expects at least {k + 1} input(s), has {len(node.inputs)}")
        return self.names[node.inputs[k]]

    def out(self, node: TmNode, k: int = 0) -> str:
        """IR name of output ``k`` of ``node``."""
        if k >= len(node.outputs):
            raise self.error(node, f"expects at least {k + 1} output(s), has {len(node.outputs)}")
        return self.names[node.outputs[k]]

    def const(self, node: TmNode, k: int) -> Optional[np.ndarray]:
        """The constant value of input ``k`` (None if it is not a constant)."""
        return self.constants.get(self.inp(node, k)) if k < len(node.inputs) else None

    def param(self, node: TmNode, key: str):
        """Param field ``key`` of ``node`` (error if the param struct is absent)."""
        if node.params is None or key not in node.params:
            raise self.error(node, f"has no param '{key}'")
        return node.params[key]

    # ---- emitting ----------------------------------------------------------------------------
    def emit(self, op: str, name: str, inputs: List[str], outputs: List[str], **attrs) -> Node:
        """Append an IR node (the name is made unique)."""
        node = Node(op, self.node_name(name), list(inputs), list(outputs), dict(attrs))
        self.nodes.append(node)
        return node

    def add_const(self, base: str, value, reuse: Optional[str] = None) -> str:
        """Add constant ``value`` named from ``base``.

        ``reuse`` names a constant of the file that the op only carries along (a Reshape's shape
        tensor, an Interp's scales): its stored bytes are not trusted (Tengine's converter writes
        truncated int64 data there), so it takes ``value`` unless another node claimed it with a
        different value.
        """
        value = np.asarray(value)
        if reuse and reuse in self.constants:
            old = self.claimed.get(reuse)
            if old is None or (old.dtype == value.dtype and old.shape == value.shape
                               and np.array_equal(old, value)):
                self.claimed[reuse] = value
                self.constants[reuse] = value
                return reuse
        name = self.fresh(base)
        self.constants[name] = value
        return name

    def set_rank(self, tensor: str, rank: Optional[int]) -> None:
        """Record the rank of ``tensor`` when known."""
        if rank is not None:
            self.rank[tensor] = rank


Reader = Callable[[ReadContext, TmNode], None]
READ_OPS: Dict[str, Reader] = {}


def reads(*ops):
    """Register the decorated function as the reader of tm ``ops``."""
    def deco(fn):
        for op in ops:
            READ_OPS[op] = fn
        return fn
    return deco


# ---- activations shared by Convolution / Deconvolution --------------------------------------

def _conv_output(ctx: ReadContext, node: TmNode, act: int) -> str:
    """The tensor the conv itself writes: its output, or a new one when an activation follows."""
    if act == S.ACT_NONE:
        return ctx.out(node)
    if act not in (S.ACT_RELU, S.ACT_RELU1, S.ACT_RELU6):
        raise ctx.error(node, f"unknown activation {act}")
    return ctx.fresh(ctx.out(node) + S.PREACT_SUFFIX)


def _activation(ctx: ReadContext, node: TmNode, act: int, pre: str) -> None:
    """Emit the activation field of a conv as its own node (named by the ACT_SUFFIX rule)."""
    out = ctx.out(node)
    ctx.set_rank(pre, 4)
    ctx.set_rank(out, 4)
    if act == S.ACT_NONE:
        return
    name = node.name + S.ACT_SUFFIX
    if act == S.ACT_RELU:
        ctx.emit("Relu", name, [pre], [out])
    else:
        lo, hi = (-1.0, 1.0) if act == S.ACT_RELU1 else (0.0, 6.0)
        _clip(ctx, name, pre, out, lo, hi)


def _clip(ctx, name, x, out, lo, hi):
    lo_c = ctx.add_const(name + "_min", np.float32(lo))
    hi_c = ctx.add_const(name + "_max", np.float32(hi))
    ctx.emit("Clip", name, [x, lo_c, hi_c], [out])


def _conv_inputs(ctx, node, what):
    x = ctx.inp(node, 0)
    w = ctx.inp(node, 1)
    if w not in ctx.constants:
        ctx.unsupported.append(f"{what} with a non-constant weight")
    inputs = [x, w]
    if len(node.inputs) > 2:
        inputs.append(ctx.inp(node, 2))
    return inputs


@reads("Convolution")
def read_conv(ctx, node):
    p = node.params or {}
    if not p:
        raise ctx.error(node, "has no ConvParam")
    inputs = _conv_inputs(ctx, node, "Convolution")
    out = _conv_output(ctx, node, p["activation"])
    ctx.emit("Conv", node.name, inputs, [out], kernel_shape=[p["kernel_h"], p["kernel_w"]],
             strides=[p["stride_h"], p["stride_w"]],
             dilations=[p["dilation_h"], p["dilation_w"]],
             pads=[p["pad_h0"], p["pad_w0"], p["pad_h1"], p["pad_w1"]], group=p["group"])
    _activation(ctx, node, p["activation"], out)


@reads("Deconvolution")
def read_deconv(ctx, node):
    p = node.params or {}
    if not p:
        raise ctx.error(node, "has no DeconvParam")
    inputs = _conv_inputs(ctx, node, "Deconvolution")
    out = _conv_output(ctx, node, p["activation"])
    attrs = dict(kernel_shape=[p["kernel_h"], p["kernel_w"]],
                 strides=[p["stride_h"], p["stride_w"]],
                 dilations=[p["dilation_h"], p["dilation_w"]],
                 pads=[p["pad_h0"], p["pad_w0"], p["pad_h1"], p["pad_w1"]], group=p["group"])
    if p.get("output_pad_h0") or p.get("output_pad_w0"):
        attrs["output_padding"] = [p["output_pad_h0"], p["output_pad_w0"]]
    ctx.emit("ConvTranspose", node.name, inputs, [out], **attrs)
    _activation(ctx, node, p["activation"], out)


@reads("Pooling")
def read_pool(ctx, node):
    p = node.params or {}
    if not p:
        raise ctx.error(node, "has no PoolParam")
    if p["alg"] not in (0, 1):
        ctx.unsupported.append(f"Pooling algorithm {p['alg']}")
        return
    x, out = ctx.inp(node, 0), ctx.out(node)
    ctx.set_rank(out, 4)
    if p["global"]:
        ctx.emit("GlobalMaxPool" if p["alg"] == 0 else "GlobalAveragePool", node.name, [x], [out])
        return
    attrs = dict(kernel_shape=[p["kernel_h"], p["kernel_w"]],
                 strides=[p["stride_h"], p["stride_w"]],
                 pads=[p["pad_h0"], p["pad_w0"], p["pad_h1"], p["pad_w1"]],
                 ceil_mode=1 if p["caffe_flavor"] else 0)
    if p["alg"] == 1:
        # Caffe average pooling divides by the padded window; the ONNX flavour does not.
        attrs["count_include_pad"] = 1 if p["caffe_flavor"] else 0
    ctx.emit("MaxPool" if p["alg"] == 0 else "AveragePool", node.name, [x], [out], **attrs)


@reads("FullyConnected")
def read_fc(ctx, node):
    x, w = ctx.inp(node, 0), ctx.inp(node, 1)
    if w not in ctx.constants:
        ctx.unsupported.append("FullyConnected with a non-constant weight")
        return
    weight = ctx.constants[w]
    if weight.ndim == 0:
        raise ctx.error(node, "has a scalar weight")
    if weight.ndim != 2:
        ctx.constants[w] = weight.reshape(weight.shape[0], -1)
    if ctx.rank.get(x) != 2:
        # Tengine's FC flattens its input like Caffe's InnerProduct; ONNX Gemm needs 2-D.
        flat = ctx.fresh(x + "_flatten")
        ctx.emit("Flatten", node.name + "_flatten", [x], [flat], axis=1)
        ctx.derived[flat] = x
        x = flat
    inputs = [x, w]
    if len(node.inputs) > 2:
        inputs.append(ctx.inp(node, 2))
    ctx.emit("Gemm", node.name, inputs, [ctx.out(node)], transB=1)
    ctx.set_rank(ctx.out(node), 2)


@reads("Gemm")
def read_gemm(ctx, node):
    p = node.params or {}
    inputs = [ctx.inp(node, k) for k in range(len(node.inputs))]
    ctx.emit("Gemm", node.name, inputs, [ctx.out(node)], alpha=float(p.get("alpha", 1.0)),
             beta=float(p.get("beta", 1.0)), transA=int(p.get("transA", 0)),
             transB=int(p.get("transB", 0)))
    ctx.set_rank(ctx.out(node), 2)


def _same_rank(ctx, node, out=None):
    ctx.set_rank(out or ctx.out(node), ctx.rank.get(ctx.inp(node, 0)))


@reads("ReLU")
def read_relu(ctx, node):
    slope = float((node.params or {}).get("negative_slope", 0.0))
    x, out = ctx.inp(node, 0), ctx.out(node)
    if slope == 0.0:
        ctx.emit("Relu", node.name, [x], [out])
    else:
        ctx.emit("LeakyRelu", node.name, [x], [out], alpha=slope)
    _same_rank(ctx, node)


@reads("ReLU6")
def read_relu6(ctx, node):
    _clip(ctx, node.name, ctx.inp(node, 0), ctx.out(node), 0.0, 6.0)
    _same_rank(ctx, node)


@reads("ReLU1")
def read_relu1(ctx, node):
    _clip(ctx, node.name, ctx.inp(node, 0), ctx.out(node), -1.0, 1.0)
    _same_rank(ctx, node)


@reads("Clip")
def read_clip(ctx, node):
    _clip(ctx, node.name, ctx.inp(node, 0), ctx.out(node), float(ctx.param(node, "min")),
          float(ctx.param(node, "max")))
    _same_rank(ctx, node)


UNARY = {"Sigmoid": "Sigmoid", "Logistic": "Sigmoid", "Tanh": "Tanh", "Mish": "Mish",
         "HardSwish": "HardSwish", "Dropout": "Dropout"}


@reads(*UNARY)
def read_unary(ctx, node):
    # HardSwish: the reference kernel ignores alpha/beta and computes x*relu6(x+3)/6 (ONNX's).
    ctx.emit(UNARY[node.op], node.name, [ctx.inp(node, 0)], [ctx.out(node)])
    _same_rank(ctx, node)


@reads("PReLU")
def read_prelu(ctx, node):
    x, slope = ctx.inp(node, 0), ctx.inp(node, 1)
    value = ctx.constants.get(slope)
    if value is not None and value.ndim == 1 and ctx.rank.get(x, 4) == 4:
        ctx.constants[slope] = value.reshape(-1, 1, 1)  # per channel of NCHW
    ctx.emit("PRelu", node.name, [x, slope], [ctx.out(node)])
    _same_rank(ctx, node)


ELTWISE = {S.ELT_PROD: "Mul", S.ELT_SUM: "Add", S.ELT_SUB: "Sub", S.ELT_MAX: "Max",
           S.ELT_DIV: "Div"}


@reads("Eltwise")
def read_eltwise(ctx, node):
    kind = int(ctx.param(node, "type"))
    op = ELTWISE.get(kind)
    inputs = [ctx.inp(node, k) for k in range(len(node.inputs))]
    if op is None or len(inputs) < 2:
        ctx.unsupported.append(f"Eltwise type {kind} with {len(inputs)} input(s)")
        return
    if len(inputs) > 2:
        if op not in ("Add", "Max"):
            ctx.unsupported.append(f"Eltwise type {kind} with {len(inputs)} inputs")
            return
        op = "Sum" if op == "Add" else "Max"
    ctx.emit(op, node.name, inputs, [ctx.out(node)])
    ctx.set_rank(ctx.out(node), max((ctx.rank.get(i, -1) for i in inputs), default=-1) if
                 all(i in ctx.rank for i in inputs) else None)


@reads("Concat")
def read_concat(ctx, node):
    inputs = [ctx.inp(node, k) for k in range(len(node.inputs))]
    ctx.emit("Concat", node.name, inputs, [ctx.out(node)], axis=int(ctx.param(node, "axis")))
    _same_rank(ctx, node)


@reads("Softmax")
def read_softmax(ctx, node):
    ctx.emit("Softmax", node.name, [ctx.inp(node, 0)], [ctx.out(node)],
             axis=int(ctx.param(node, "axis")))
    _same_rank(ctx, node)


@reads("Split")
def read_split(ctx, node):
    p = node.params or {}
    x = ctx.inp(node, 0)
    outs = [ctx.out(node, k) for k in range(len(node.outputs))]
    if p.get("is_caffe"):
        # Caffe's Split copies its input to every output.
        for k, out in enumerate(outs):
            ctx.emit("Identity", node.name if k == 0 else f"{node.name}_{k}", [x], [out])
            ctx.set_rank(out, ctx.rank.get(x))
        return
    inputs = [x]
    sizes = p.get("split_sizes")
    if sizes:
        inputs.append(ctx.add_const(node.name + "_split", np.array(sizes, np.int64)))
    ctx.emit("Split", node.name, inputs, outs, axis=int(p.get("axis", 0)))
    for out in outs:
        ctx.set_rank(out, ctx.rank.get(x))


@reads("Slice")
def read_slice(ctx, node):
    p = node.params or {}
    x = ctx.inp(node, 0)
    axis = int(p.get("axis", 0))
    if p.get("iscaffe"):
        points = list(p.get("slice_points") or [])
        if len(points) + 1 != len(node.outputs):
            ctx.unsupported.append("Caffe Slice without one slice point per output boundary")
            return
        bounds = [0] + points + [INT64_MAX]
        for k in range(len(node.outputs)):
            _slice(ctx, node.name if k == 0 else f"{node.name}_{k}", x, ctx.out(node, k),
                   [bounds[k]], [bounds[k + 1]], [axis], [1])
        return
    if p.get("ismxnet"):
        begins, sizes = list(p.get("begins") or []), list(p.get("sizes") or [])
        if len(begins) != len(sizes) or not begins:
            ctx.unsupported.append("MXNet Slice without begins/sizes")
            return
        ends = [INT64_MAX if s < 0 else b + s for b, s in zip(begins, sizes)]
        _slice(ctx, node.name, x, ctx.out(node), begins, ends, list(range(len(begins))),
               [1] * len(begins))
        return
    end = int(p.get("end", 0))
    _slice(ctx, node.name, x, ctx.out(node), [int(p.get("begin", 0))],
           [INT64_MAX if end >= INT32_MAX else end], [axis], [int(p.get("step", 1)) or 1])


def _slice(ctx, name, x, out, starts, ends, axes, steps):
    consts = [ctx.add_const(f"{name}_{key}", np.array(v, np.int64))
              for key, v in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
    ctx.emit("Slice", name, [x] + consts, [out])
    ctx.set_rank(out, ctx.rank.get(x))


@reads("Reshape")
def read_reshape(ctx, node):
    p = node.params or {}
    shape = p.get("re_shape")
    if shape is None:
        value = ctx.const(node, 1)
        if value is None:
            ctx.unsupported.append("Reshape without a target shape")
            return
        shape = [int(v) for v in value.reshape(-1)]
    if p.get("is_mxnet") and any(d < -1 for d in shape) or p.get("reverse"):
        ctx.unsupported.append("MXNet-style Reshape")
        return
    reuse = ctx.inp(node, 1) if len(node.inputs) > 1 else None
    const = ctx.add_const(node.name + "_shape", np.array(shape, np.int64), reuse=reuse)
    ctx.emit("Reshape", node.name, [ctx.inp(node, 0), const], [ctx.out(node)])
    ctx.set_rank(ctx.out(node), len(shape))


@reads("Flatten")
def read_flatten(ctx, node):
    p = node.params or {}
    x, out = ctx.inp(node, 0), ctx.out(node)
    axis, end = int(p.get("axis", 1)), int(p.get("end_axis", -1))
    if not 0 <= axis < MAX_RANK:
        raise ctx.error(node, f"axis {axis} is out of range")
    rank = ctx.rank.get(x)
    to_last = end == -1 or (rank is not None and end >= rank - 1) or (rank is None and end >= 3)
    if not to_last:
        ctx.unsupported.append(f"Flatten of axes {axis}..{end}")
        return
    if axis == 1:
        ctx.emit("Flatten", node.name, [x], [out], axis=1)
        ctx.set_rank(out, 2)
        return
    const = ctx.add_const(node.name + "_shape", np.array([0] * axis + [-1], np.int64))
    ctx.emit("Reshape", node.name, [x, const], [out])
    ctx.set_rank(out, axis + 1)


@reads("Permute")
def read_permute(ctx, node):
    p = node.params or {}
    perm = [int(p.get(f"order{k}", k)) for k in range(4)]
    ctx.emit("Transpose", node.name, [ctx.inp(node, 0)], [ctx.out(node)], perm=perm)
    ctx.set_rank(ctx.out(node), 4)


@reads("Transpose")
def read_transpose(ctx, node):
    perm = (node.params or {}).get("tr_shape")
    if not perm:
        raise ctx.error(node, "has no permutation")
    ctx.emit("Transpose", node.name, [ctx.inp(node, 0)], [ctx.out(node)], perm=list(perm))
    ctx.set_rank(ctx.out(node), len(perm))


def _resize(ctx, node, scale_h, scale_w, mode):
    x, out = ctx.inp(node, 0), ctx.out(node)
    reuse = ctx.inp(node, len(node.inputs) - 1) if len(node.inputs) > 1 else None
    scales = ctx.add_const(node.name + "_scales", np.array([1, 1, scale_h, scale_w], np.float32),
                           reuse=reuse)
    if mode == "nearest":
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
    else:
        attrs = dict(mode="linear", coordinate_transformation_mode="half_pixel")
    ctx.emit("Resize", node.name, [x, "", scales], [out], **attrs)
    ctx.set_rank(out, 4)


@reads("Interp")
def read_interp(ctx, node):
    p = node.params or {}
    kind = int(p.get("resize_type", 1))
    if kind not in (1, 2):
        ctx.unsupported.append(f"Interp resize_type {kind}")
        return
    hs, ws = float(p.get("height_scale", 0)), float(p.get("width_scale", 0))
    if hs <= 0 or ws <= 0:
        dims = ctx.model.tensors[node.inputs[0]].dims
        oh, ow = int(p.get("output_height", 0)), int(p.get("output_width", 0))
        if not dims or len(dims) != 4 or min(dims[2:]) <= 0 or oh <= 0 or ow <= 0:
            ctx.unsupported.append("Interp by output size on an input of unknown shape")
            return
        hs, ws = oh / dims[2], ow / dims[3]
    _resize(ctx, node, hs, ws, "nearest" if kind == 1 else "linear")


@reads("Upsample")
def read_upsample(ctx, node):
    s = float(ctx.param(node, "scale"))
    _resize(ctx, node, s, s, "nearest")


@reads("Resize", "BilinearResize")
def read_bilinear(ctx, node):
    p = node.params or {}
    _resize(ctx, node, float(p.get("scale_y", 1)), float(p.get("scale_x", 1)),
            "nearest" if int(p.get("type", 0)) == 0 else "linear")


@reads("BatchNormalization")
def read_batchnorm(ctx, node):
    p = node.params or {}
    if len(node.inputs) != 5:
        ctx.unsupported.append(f"BatchNormalization with {len(node.inputs)} inputs")
        return
    inputs = [ctx.inp(node, k) for k in range(5)]
    factor = float(p.get("rescale_factor", 1.0))
    if p.get("caffe_flavor") and factor not in (0.0, 1.0):
        # Caffe stores mean and variance multiplied by a moving-average factor.
        for k in (3, 4):
            value = ctx.constants.get(inputs[k])
            if value is not None:
                inputs[k] = ctx.add_const(f"{inputs[k]}_rescaled",
                                          (value / factor).astype(np.float32))
    ctx.emit("BatchNormalization", node.name, inputs, [ctx.out(node)],
             epsilon=float(p.get("eps", 1e-5)))
    _same_rank(ctx, node)


@reads("Scale")
def read_scale(ctx, node):
    p = node.params or {}
    x, out = ctx.inp(node, 0), ctx.out(node)
    gamma = ctx.inp(node, 1)
    value = ctx.constants.get(gamma)
    if value is None or int(p.get("axis", 1)) != 1:
        ctx.unsupported.append("Scale with a non-constant scale or axis other than 1")
        return
    ctx.constants[gamma] = value.reshape(-1, 1, 1)
    has_bias = len(node.inputs) > 2 and p.get("bias_term", 1)
    scaled = ctx.fresh(out + "_scaled") if has_bias else out
    ctx.emit("Mul", node.name, [x, gamma], [scaled])
    if has_bias:
        beta = ctx.inp(node, 2)
        if beta in ctx.constants:
            ctx.constants[beta] = ctx.constants[beta].reshape(-1, 1, 1)
        ctx.emit("Add", node.name + "_bias", [scaled, beta], [out])
    _same_rank(ctx, node)


PAD_MODES = {0: "constant", 1: "reflect", 2: "edge"}


@reads("Pad")
def read_pad(ctx, node):
    p = node.params or {}
    mode = PAD_MODES.get(int(p.get("mode", 0)))
    if mode is None:
        ctx.unsupported.append(f"Pad mode {p.get('mode')}")
        return
    order = ("n_0", "c_0", "h_0", "w_0", "n_1", "c_1", "h_1", "w_1")
    pads = ctx.add_const(node.name + "_pads", np.array([p.get("pad_" + k, 0) for k in order],
                                                        np.int64))
    inputs = [ctx.inp(node, 0), pads]
    if mode == "constant":
        inputs.append(ctx.add_const(node.name + "_value", np.float32(p.get("value", 0.0))))
    ctx.emit("Pad", node.name, inputs, [ctx.out(node)], mode=mode)
    ctx.set_rank(ctx.out(node), 4)
