"""The ncnn writer's op table: one function per IR op, emitting ncnn layers.

Each function takes the write context (``formats/ncnn/writer.py``) and one IR node. IR tensors of
rank ``r`` (batch first, batch 1) are ncnn blobs of ``r - 1`` dims; IR axis ``a`` is ncnn axis
``a - 1``. Parameters equal to ncnn's defaults are left out; floats always carry ``.``/``e``.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from ptqconv.formats.ncnn.int8 import weight_rows
from ptqconv.formats.ncnn.read_layers import BINARY, UNARY, permute_orders
from ptqconv.formats.ncnn.weights import BinWriter

INT_MAX = 2 ** 31 - 1
FLT_MAX = 3.4028235e38
# fused activation -> ncnn activation_type (Convolution*, Deconvolution*, InnerProduct)
FUSABLE = {"Relu": 1, "LeakyRelu": 2, "Clip": 3, "Sigmoid": 4, "Mish": 5, "HardSwish": 6}
BINARY_OPS = {op: code for code, (op, swap) in BINARY.items() if not swap}
SWAPPED = {"Sub": 7, "Div": 8, "Pow": 9}
UNARY_OPS = {op: code for code, op in UNARY.items() if op != "Tanh"}


class Unsupported(Exception):
    """Raised by an op function for a node ncnn (or this writer) cannot express."""


# ---- activations --------------------------------------------------------------------------------
def activation_params(op: str, params: dict):
    """(activation_type, activation_params) for a fusable activation, else (0, None)."""
    code = FUSABLE.get(op, 0)
    if code == 2:
        return code, [float(params.get("alpha", 0.01))]
    if code == 3:
        return code, [float(params.get("min", -FLT_MAX)), float(params.get("max", FLT_MAX))]
    if code == 6:
        return code, [1.0 / 6.0, 0.5]
    return code, None


def emit_activation(ctx, op: str, params: dict, x: str, out: str, name: str) -> None:
    """Write one activation layer (ONNX ``op`` with attribute ``params``) from ``x`` to ``out``."""
    if op == "Relu":
        ctx.add("ReLU", name, [x], [out])
    elif op == "LeakyRelu":
        ctx.add("ReLU", name, [x], [out], {0: float(params.get("alpha", 0.01))})
    elif op == "Clip":
        ctx.add("Clip", name, [x], [out], {0: float(params.get("min", -FLT_MAX)),
                                           1: float(params.get("max", FLT_MAX))})
    elif op == "Sigmoid":
        ctx.add("Sigmoid", name, [x], [out])
    elif op == "Tanh":
        ctx.add("TanH", name, [x], [out])
    elif op == "Mish":
        ctx.add("Mish", name, [x], [out])
    elif op == "HardSwish":
        ctx.add("HardSwish", name, [x], [out], {0: 1.0 / 6.0, 1: 0.5})
    elif op == "HardSigmoid":
        ctx.add("HardSigmoid", name, [x], [out], {0: float(params.get("alpha", 0.2)),
                                                  1: float(params.get("beta", 0.5))})
    elif op == "Elu":
        ctx.add("ELU", name, [x], [out], {0: float(params.get("alpha", 1.0))})
    elif op == "Selu":
        ctx.add("SELU", name, [x], [out], {0: float(params.get("alpha", 1.6732632)),
                                           1: float(params.get("gamma", 1.0507010))})
    else:
        raise Unsupported(f"activation {op}")


def _weighted_layer(ctx, node, ltype, params, weights: BinWriter, plan):
    """Append a Convolution/Deconvolution/InnerProduct layer with its fused activation (as
    ``9=``/``10=`` when ncnn can fuse it, else as a separate layer)."""
    act = node.attr("fused_activation")
    act_params = node.attr("fused_activation_params") or {}
    out = node.outputs[0]
    code, values = activation_params(act, act_params) if act else (0, None)
    if code:
        params[9] = code
        if values is not None:
            params[10] = values
    layer_out = ctx.new_blob(f"{out}_preact") if act and not code else out
    layer = ctx.add(ltype, ctx.layer_name(node), [node.inputs[0]], [layer_out], params, weights)
    if plan is not None:
        layer.int8_input = plan.input_multiplier
    if act and not code:
        emit_activation(ctx, act, act_params, layer_out, out, ctx.aux_name(node, act.lower()))
    return layer


def _bias(ctx, node, index=2):
    if len(node.inputs) <= index or not node.inputs[index]:
        return None
    b = ctx.const(node.inputs[index])
    if b is None:
        raise Unsupported("bias is not a constant")
    return b.astype(np.float32).reshape(-1)


def _int8_extras(weights: BinWriter, plan):
    weights.raw(plan.scales)
    weights.raw(np.array([plan.input_multiplier], np.float32))


def _spatial(node, key, default):
    v = node.attr(key, default)
    if len(v) != 2:
        raise Unsupported(f"{key} {v} (only 2-D spatial ops are supported)")
    return [int(x) for x in v]


def _conv_pads(node, params):
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        v = -233 if auto == "SAME_UPPER" else -234
        params.update({4: v, 15: v, 14: v, 16: v})
        return
    if auto == "VALID":
        return
    top, left, bottom, right = [int(x) for x in node.attr("pads", [0, 0, 0, 0])]
    if min(top, left, bottom, right) < 0:
        raise Unsupported("negative pads")
    _put_hw(params, 4, left, 14, top, 0)
    if right != left:
        params[15] = right
    if bottom != top:
        params[16] = bottom


def _put_hw(params, id_w, w, id_h, h, default):
    """Write the w id (unless default) and the h id when it differs from w."""
    if w != default:
        params[id_w] = w
    if h != w:
        params[id_h] = h


def _kernel_params(node, kh, kw):
    params = {}
    sh, sw = _spatial(node, "strides", [1, 1])
    dh, dw = _spatial(node, "dilations", [1, 1])
    params[1] = kw
    if kh != kw:
        params[11] = kh
    _put_hw(params, 2, dw, 12, dh, 1)
    _put_hw(params, 3, sw, 13, sh, 1)
    return params


# ---- layers -------------------------------------------------------------------------------------
def w_conv(ctx, node):
    """Conv -> Convolution (group 1) or ConvolutionDepthWise (group > 1), int8 when planned."""
    if ctx.rank(node.inputs[0]) != 3:
        raise Unsupported("only 2-D convolutions (NCHW input) are supported")
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 4:
        raise Unsupported("weight is not a constant 4-D tensor")
    out_c, _, kh, kw = w.shape
    group = int(node.attr("group", 1))
    bias = _bias(ctx, node)
    params = {0: int(out_c)}
    params.update(_kernel_params(node, kh, kw))
    _conv_pads(node, params)
    plan = ctx.int8_plan(node)
    weights = BinWriter()
    if plan is not None:
        weights.tagged_int8(plan.codes())
    else:
        weights.tagged_float(w, ctx.fp16)
    if bias is not None:
        weights.raw(bias)
        params[5] = 1
    params[6] = int(w.size)
    ltype = "Convolution"
    if group != 1:
        ltype = "ConvolutionDepthWise"
        params[7] = group
    if plan is not None:
        params[8] = 1 if group != 1 else 2
        _int8_extras(weights, plan)
    _weighted_layer(ctx, node, ltype, params, weights, plan)


def w_convtranspose(ctx, node):
    """ConvTranspose -> Deconvolution / DeconvolutionDepthWise (weight per group
    ``[out/g][in/g][kh][kw]``)."""
    if ctx.rank(node.inputs[0]) != 3:
        raise Unsupported("only 2-D transposed convolutions are supported")
    w = ctx.const(node.inputs[1])
    if w is None or w.ndim != 4:
        raise Unsupported("weight is not a constant 4-D tensor")
    if node.attr("output_shape") is not None:
        raise Unsupported("output_shape is not supported (give pads and output_padding)")
    auto = node.attr("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        raise Unsupported(f"auto_pad {auto}")
    group = int(node.attr("group", 1))
    cin, opg, kh, kw = w.shape
    out_c = opg * group
    rows = w.reshape(group, cin // group, opg, kh, kw).transpose(0, 2, 1, 3, 4)
    bias = _bias(ctx, node)
    params = {0: int(out_c)}
    params.update(_kernel_params(node, kh, kw))
    _conv_pads(node, params)
    oph, opw = [int(v) for v in node.attr("output_padding", [0, 0])]
    _put_hw(params, 18, opw, 19, oph, 0)
    weights = BinWriter()
    weights.tagged_float(rows, ctx.fp16)
    if bias is not None:
        weights.raw(bias)
        params[5] = 1
    params[6] = int(w.size)
    ltype = "Deconvolution"
    if group != 1:
        ltype = "DeconvolutionDepthWise"
        params[7] = group
    _weighted_layer(ctx, node, ltype, params, weights, None)


def _inner_product(ctx, node, rows, bias):
    plan = ctx.int8_plan(node)
    params = {0: int(rows.shape[0])}
    weights = BinWriter()
    if plan is not None:
        weights.tagged_int8(plan.codes())
    else:
        weights.tagged_float(rows, ctx.fp16)
    if bias is not None:
        if bias.size == 1:
            bias = np.full(rows.shape[0], bias[0], np.float32)
        if bias.size != rows.shape[0]:
            raise Unsupported(f"bias of {bias.size} values for {rows.shape[0]} outputs")
        weights.raw(bias)
        params[1] = 1
    params[2] = int(rows.size)
    if plan is not None:
        params[8] = 2
        _int8_extras(weights, plan)
    _weighted_layer(ctx, node, "InnerProduct", params, weights, plan)


def w_gemm(ctx, node):
    """Gemm (A of shape [1, K], constant B) -> InnerProduct."""
    if node.attr("transA", 0):
        raise Unsupported("transA=1")
    if ctx.rank(node.inputs[0]) != 1:
        raise Unsupported("input must be [1, K]")
    if ctx.const(node.inputs[1]) is None:
        raise Unsupported("B is not a constant")
    bias = _bias(ctx, node)
    if bias is not None:
        bias = bias * np.float32(node.attr("beta", 1.0))
    _inner_product(ctx, node, weight_rows(ctx.g, node), bias)


def w_matmul(ctx, node):
    """MatMul by a constant [K, N] -> InnerProduct (1-D input, or row by row on a 2-D blob);
    an Add of a constant [N] that only follows it becomes the bias."""
    b = ctx.const(node.inputs[1])
    if b is None or b.ndim != 2 or ctx.rank(node.inputs[0]) not in (1, 2):
        raise Unsupported("only [1, K] or [1, M, K] times a constant [K, N] is supported")
    bias = ctx.matmul_bias.get(node.name)
    _inner_product(ctx, node, weight_rows(ctx.g, node), bias)


def _pool_sizes(ctx, node):
    """(kernel, strides, pads, ceil) after checking what ncnn Pooling can express."""
    if len(node.outputs) > 1 and node.outputs[1]:
        raise Unsupported("the indices output is not supported")
    if ctx.rank(node.inputs[0]) != 3:
        raise Unsupported("only 2-D pooling is supported")
    kh, kw = _spatial(node, "kernel_shape", [1, 1])
    if any(d != 1 for d in node.attr("dilations", [1, 1])):
        raise Unsupported("dilated pooling")
    return kh, kw


def w_pool(ctx, node):
    """MaxPool / AveragePool -> Pooling (ceil mode as pad_mode full, floor as valid, SAME)."""
    kh, kw = _pool_sizes(ctx, node)
    avg = node.op == "AveragePool"
    include = int(node.attr("count_include_pad", 0)) if avg else 0
    params = {0: 1} if avg else {}
    params[1] = kw
    if kh != kw:
        params[11] = kh
    sh, sw = _spatial(node, "strides", [1, 1])
    _put_hw(params, 2, sw, 12, sh, 1)
    auto = node.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    x_shape, y_shape = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if auto in ("SAME_UPPER", "SAME_LOWER") and (not avg or include):
        params[5] = 2 if auto == "SAME_UPPER" else 3
    else:
        if auto in ("SAME_UPPER", "SAME_LOWER"):   # ncnn's SAME averages count the padding
            if x_shape is None or y_shape is None:
                raise Unsupported("SAME average pooling needs static shapes")
            top, left, bottom, right = _same_pads(x_shape, y_shape, (kh, kw), (sh, sw),
                                                  auto == "SAME_LOWER")
            ceil = 0
        else:
            top, left, bottom, right = [int(v) for v in node.attr("pads", [0, 0, 0, 0])]
            ceil = int(node.attr("ceil_mode", 0))
        mode = 0 if ceil else 1
        if ceil and x_shape is not None and y_shape is not None:
            full = [-(-(x_shape[2 + i] + p0 + p1 - k) // s) + 1 for i, (p0, p1, k, s) in
                    enumerate(((top, bottom, kh, sh), (left, right, kw, sw)))]
            if full != list(y_shape[2:]):   # ONNX drops a last window that starts in the padding
                mode = 1
                bottom = max(bottom, (y_shape[2] - 1) * sh + kh - x_shape[2] - top)
                right = max(right, (y_shape[3] - 1) * sw + kw - x_shape[3] - left)
        if mode != 0:
            params[5] = mode
        _put_hw(params, 3, left, 13, top, 0)
        if right != left:
            params[14] = right
        if bottom != top:
            params[15] = bottom
        if include:
            params[6] = 1
    ctx.add("Pooling", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]], params)


def _same_pads(x_shape, y_shape, kernel, strides, lower):
    pads = []
    for i in range(2):
        total = max((y_shape[2 + i] - 1) * strides[i] + kernel[i] - x_shape[2 + i], 0)
        small, big = total // 2, total - total // 2
        pads.append((big, small) if lower else (small, big))
    (top, bottom), (left, right) = pads
    return top, left, bottom, right


def w_global_pool(ctx, node):
    """GlobalAveragePool / GlobalMaxPool -> Pooling global (1-D blob), reshaped back to
    (1, 1, c) unless a Flatten follows (then the Flatten is absorbed)."""
    if ctx.rank(node.inputs[0]) != 3:
        raise Unsupported("only 2-D global pooling is supported")
    params = {0: 1, 4: 1} if node.op in ("GlobalAveragePool", "ReduceMean") else {4: 1}
    flat = ctx.flat_pool.get(node.name)
    name = ctx.layer_name(node)
    if flat is not None:
        ctx.add("Pooling", name, [node.inputs[0]], [flat], params)
        return
    mid = ctx.new_blob(f"{node.outputs[0]}_flat")
    ctx.add("Pooling", name, [node.inputs[0]], [mid], params)
    ctx.add("Reshape", ctx.aux_name(node, "reshape"), [mid], [node.outputs[0]],
            {0: 1, 1: 1, 2: -1})


def w_reduce(ctx, node):
    """ReduceMean / ReduceMax over the spatial axes of a 4-D tensor -> global Pooling."""
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ctx.const(node.inputs[1])
    rank = ctx.rank(node.inputs[0]) + 1
    if axes is None or sorted(int(a) % rank for a in np.ravel(axes)) != [2, 3] or rank != 4:
        raise Unsupported("only a reduction over H and W of an NCHW tensor is supported")
    if node.attr("keepdims", 1):
        w_global_pool(ctx, node)
        return
    params = {0: 1, 4: 1} if node.op == "ReduceMean" else {4: 1}
    ctx.add("Pooling", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]], params)


def w_activation(ctx, node):
    """Relu, LeakyRelu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish, Mish, Elu, Selu."""
    params = dict(node.attrs)
    if node.op == "Clip" and len(node.inputs) > 1:
        for k, key in ((1, "min"), (2, "max")):
            if len(node.inputs) > k and node.inputs[k]:
                v = ctx.const(node.inputs[k])
                if v is None:
                    raise Unsupported("Clip bounds are not constants")
                params[key] = float(v)
    emit_activation(ctx, node.op, params, node.inputs[0], node.outputs[0], ctx.layer_name(node))


def w_prelu(ctx, node):
    """PRelu with a constant slope (one value or one per channel) -> PReLU."""
    slope = ctx.const(node.inputs[1])
    if slope is None:
        raise Unsupported("slope is not a constant")
    slope = slope.astype(np.float32).reshape(-1)
    shape = ctx.shape(node.inputs[0])
    if slope.size != 1 and (shape is None or slope.size != shape[1]):
        raise Unsupported("slope must be one value or one per channel")
    weights = BinWriter()
    weights.raw(slope)
    ctx.add("PReLU", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]],
            {0: int(slope.size)}, weights)


def w_swish(ctx, node):
    """x * Sigmoid(x) -> Swish (matched before writing)."""
    ctx.add("Swish", ctx.layer_name(node), [ctx.swish[node.name]], [node.outputs[0]])


def w_batchnorm(ctx, node):
    """BatchNormalization (not folded into a conv) -> BatchNorm."""
    vals = [ctx.const(i) for i in node.inputs[1:5]]
    if any(v is None for v in vals) or len(node.outputs) > 1 and any(node.outputs[1:]):
        raise Unsupported("statistics must be constants (inference mode)")
    scale, bias, mean, var = (v.astype(np.float32).reshape(-1) for v in vals)
    weights = BinWriter()
    for v in (scale, mean, var, bias):
        weights.raw(v)
    ctx.add("BatchNorm", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]],
            {0: int(scale.size), 1: float(node.attr("epsilon", 1e-5))}, weights)


def w_binary(ctx, node):
    """Add, Sub, Mul, Div, Max, Min, Pow -> BinaryOp (a scalar constant as ``2=b``; other
    constants as MemoryData; operands of lower rank reshaped to the output's rank)."""
    if len(node.inputs) != 2:
        if node.op in ("Max", "Min", "Sum") and len(node.inputs) > 2:
            return _chain(ctx, node)
        if node.op in ("Max", "Min", "Sum") and len(node.inputs) == 1:
            return w_identity(ctx, node)
        raise Unsupported(f"{len(node.inputs)} inputs")
    a, b = node.inputs
    op = "Add" if node.op == "Sum" else node.op
    if a == b and node.op == "Mul":
        ctx.add("UnaryOp", ctx.layer_name(node), [a], [node.outputs[0]], {0: 4})
        return
    ca, cb = ctx.const(a), ctx.const(b)
    code = BINARY_OPS[op]
    out_rank = ctx.rank(node.outputs[0])
    if cb is not None and cb.size == 1 or ca is not None and ca.size == 1:
        if cb is not None and cb.size == 1:
            x, value = a, float(cb.reshape(-1)[0])
        else:
            x, value = b, float(ca.reshape(-1)[0])
            code = SWAPPED.get(op, code)
        if ctx.rank(x) != out_rank:
            x = _expand_rank(ctx, node, x, out_rank)
        ctx.add("BinaryOp", ctx.layer_name(node), [x], [node.outputs[0]],
                _binary_params(code, with_scalar=True, b=value))
        return
    inputs = [_operand(ctx, node, t, out_rank) for t in (a, b)]
    ctx.add("BinaryOp", ctx.layer_name(node), inputs, [node.outputs[0]], _binary_params(code))


def _binary_params(code, with_scalar=False, b=0.0):
    params = {0: code} if code else {}
    if with_scalar:
        params[1] = 1
        if b != 0.0:
            params[2] = float(b)
    return params


def _chain(ctx, node):
    op = "Add" if node.op == "Sum" else node.op
    acc = node.inputs[0]
    out_rank = ctx.rank(node.outputs[0])
    for k, x in enumerate(node.inputs[1:], 1):
        dst = node.outputs[0] if k == len(node.inputs) - 1 else ctx.new_blob(f"{node.name}_{k}")
        ctx.shapes.setdefault(dst, ctx.shapes.get(node.outputs[0]))
        name = ctx.layer_name(node) if k == len(node.inputs) - 1 else ctx.aux_name(node, str(k))
        ctx.add("BinaryOp", name, [_operand(ctx, node, acc, out_rank),
                                   _operand(ctx, node, x, out_rank)], [dst],
                _binary_params(BINARY_OPS[op]))
        acc = dst


def _operand(ctx, node, tensor, out_rank):
    """Blob for a binary operand with ``out_rank`` ncnn dims (constants become MemoryData)."""
    c = ctx.const(tensor)
    if c is not None:
        return ctx.memory_data(tensor, c, out_rank)
    if ctx.rank(tensor) == out_rank:
        return tensor
    return _expand_rank(ctx, node, tensor, out_rank)


def _expand_rank(ctx, node, tensor, out_rank):
    """Reshape a lower-rank blob by adding outer dims of 1 (numpy alignment; ncnn would align
    a lower-rank operand with the outer dims instead)."""
    rank = ctx.rank(tensor)
    if rank > out_rank:
        raise Unsupported("an operand has more dims than the result")
    order = {1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [0, 1, 11, 2]}[out_rank]   # w, h, (d), c
    params = {pid: (0 if k < rank else 1) for k, pid in enumerate(order)}
    out = ctx.new_blob(f"{tensor}_expanded")
    ctx.add("Reshape", ctx.aux_name(node, "expand"), [tensor], [out], params)
    return out


def w_unary(ctx, node):
    """Abs, Neg, Floor, Ceil, Sqrt, Exp, Log, trig, Reciprocal, Round -> UnaryOp."""
    ctx.add("UnaryOp", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]],
            {0: UNARY_OPS[node.op]} if UNARY_OPS[node.op] else {})


def _ncnn_axis(ctx, node, axis, tensor):
    rank = ctx.rank(tensor) + 1
    axis = int(axis) + rank if int(axis) < 0 else int(axis)
    if not 1 <= axis < rank:
        raise Unsupported(f"axis {axis} (the batch axis cannot be used)")
    return axis - 1


def w_concat(ctx, node):
    """Concat -> Concat (``0=axis`` in ncnn dims; constants as MemoryData)."""
    rank = ctx.rank(node.outputs[0])
    inputs = [_operand(ctx, node, t, rank) if ctx.const(t) is not None else t
              for t in node.inputs if t]
    axis = _ncnn_axis(ctx, node, node.attr("axis", 1), node.outputs[0])
    ctx.add("Concat", ctx.layer_name(node), inputs, [node.outputs[0]], {0: axis} if axis else {})


def w_softmax(ctx, node):
    """Softmax -> Softmax with ``1=1`` (fixbug0)."""
    x = node.inputs[0]
    rank = ctx.rank(x) + 1
    axis = int(node.attr("axis", -1 if ctx.g.opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    if ctx.g.opset < 13 and axis != rank - 1:
        shape = ctx.shape(x)
        if shape is None or any(d != 1 for d in shape[axis + 1:]):
            raise Unsupported("opset < 13 Softmax over several axes")
    ax = _ncnn_axis(ctx, node, axis, x)
    ctx.add("Softmax", ctx.layer_name(node), [x], [node.outputs[0]],
            ({0: ax} if ax else {}) | {1: 1})


def w_flatten(ctx, node):
    """Flatten -> Flatten (axis 0/1) or Reshape."""
    axis = int(node.attr("axis", 1))
    if axis in (0, 1) or axis == -(ctx.rank(node.inputs[0]) + 1):
        ctx.add("Flatten", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]])
        return
    w_reshape(ctx, node)


def w_reshape(ctx, node):
    """Reshape / Squeeze / Unsqueeze / Flatten -> Reshape to the static output shape."""
    shape = ctx.shape(node.outputs[0])
    if shape is None:
        raise Unsupported("needs a static output shape")
    if shape[0] != 1 or not 2 <= len(shape) <= 5:
        raise Unsupported(f"output shape {list(shape)} (batch must stay 1, at most 4 dims)")
    dims = list(shape[1:])[::-1]      # w, h, (d), c
    ids = {1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [0, 1, 11, 2]}[len(dims)]
    params = dict(zip(ids, [int(d) for d in dims]))
    ctx.add("Reshape", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]], params)


def w_transpose(ctx, node):
    """Transpose keeping the batch axis first -> Permute."""
    rank = ctx.rank(node.inputs[0])
    perm = [int(v) for v in node.attr("perm", list(range(rank, -1, -1)))]
    if perm[0] != 0:
        raise Unsupported(f"perm {perm} moves the batch axis")
    if rank == 1:
        ctx.add("Noop", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]])
        return
    if rank > 4:
        raise Unsupported("more than 4 dims")
    order = permute_orders(rank).index(perm)
    ctx.add("Permute", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]],
            {0: order} if order else {})


def w_pad(ctx, node):
    """Pad (constant / edge / reflect) -> Padding."""
    pads = node.attr("pads")
    if pads is None:
        pads = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None or (len(node.inputs) > 3 and node.inputs[3]):
        raise Unsupported("pads must be a constant (and no axes input)")
    pads = [int(v) for v in np.ravel(pads)]
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if begin[0] or end[0] or min(pads) < 0 or rank > 4:
        raise Unsupported(f"pads {pads}")
    value = node.attr("value", 0.0)
    if len(node.inputs) > 2 and node.inputs[2]:
        v = ctx.const(node.inputs[2])
        if v is None:
            raise Unsupported("pad value is not a constant")
        value = float(np.ravel(v)[0]) if v.size else 0.0
    mode = node.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    types = {"constant": 0, "edge": 1, "reflect": 2}
    if mode not in types:
        raise Unsupported(f"mode {mode}")
    names = {2: ["left"], 3: ["top", "left"], 4: ["front", "top", "left"]}[rank]
    b = dict(zip(names, begin[1:]))
    e = dict(zip([{"left": "right", "top": "bottom", "front": "behind"}[n] for n in names],
                 end[1:]))
    vals = {0: b.get("top", 0), 1: e.get("bottom", 0), 2: b.get("left", 0), 3: e.get("right", 0),
            4: types[mode], 5: float(value), 7: b.get("front", 0), 8: e.get("behind", 0)}
    params = {k: v for k, v in vals.items() if v not in (0, 0.0)}
    ctx.add("Padding", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]], params)


def w_slice(ctx, node):
    """Slice with step 1 -> Crop ``9=starts 10=ends 11=axes`` (ncnn axes)."""
    x = node.inputs[0]
    rank = ctx.rank(x) + 1
    def ints(k):   # inputs 1..4: starts, ends, axes, steps (constants; opset >= 10)
        if len(node.inputs) <= k or not node.inputs[k]:
            return None
        v = ctx.const(node.inputs[k])
        if v is None:
            raise Unsupported("starts/ends/axes/steps must be constants")
        return [int(a) for a in np.ravel(v)]
    starts, ends, axes, steps = (ints(k) for k in range(1, 5))
    if starts is None:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
    if starts is None or ends is None:
        raise Unsupported("starts/ends must be constants")
    axes = axes if axes is not None else list(range(len(starts)))
    if steps is not None and any(s != 1 for s in steps):
        raise Unsupported("steps other than 1")
    s_out, e_out, a_out = [], [], []
    for s, e, a in zip(starts, ends, axes):
        a = a + rank if a < 0 else a
        if a == 0:
            if s != 0 or e < 1:
                raise Unsupported("slicing the batch axis")
            continue
        s_out.append(max(min(s, INT_MAX), -INT_MAX))
        e_out.append(max(min(e, INT_MAX), -INT_MAX))
        a_out.append(a - 1)
    ctx.add("Crop", ctx.layer_name(node), [x], [node.outputs[0]], {9: s_out, 10: e_out, 11: a_out})


def w_split(ctx, node):
    """Split -> Slice ``0=sizes 1=axis``."""
    x = node.inputs[0]
    axis = _ncnn_axis(ctx, node, node.attr("axis", 0), x)
    sizes = node.attr("split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1]:
        sizes = ctx.const(node.inputs[1])
    if sizes is None:
        sizes = [-233] * len(node.outputs)
    sizes = [int(v) for v in np.ravel(sizes)]
    params = {0: sizes}
    if axis:
        params[1] = axis
    ctx.add("Slice", ctx.layer_name(node), [x], list(node.outputs), params)


def w_resize(ctx, node):
    """Resize / Upsample of H and W -> Interp (nearest, bilinear, bicubic)."""
    if ctx.rank(node.inputs[0]) != 3:
        raise Unsupported("only NCHW resizing is supported")
    mode = node.attr("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ct = node.attr("coordinate_transformation_mode", "half_pixel" if node.op == "Resize"
                   else "asymmetric")
    ct = ct.decode() if isinstance(ct, bytes) else ct
    x_shape, y_shape = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if x_shape is None or y_shape is None or list(x_shape[:2]) != list(y_shape[:2]):
        raise Unsupported("needs static shapes and an unchanged batch and channel count")
    params = {}
    if mode == "nearest":
        params[0] = 1
        integer = y_shape[2] % x_shape[2] == 0 and y_shape[3] % x_shape[3] == 0
        if not (ct == "asymmetric" and node.attr("nearest_mode", "round_prefer_floor")
                in ("floor", b"floor")) and not integer:
            raise Unsupported(f"nearest with {ct} at a non-integer scale")
    elif mode in ("linear", "cubic"):
        params[0] = 2 if mode == "linear" else 3
        if ct == "align_corners":
            params[6] = 1
        elif ct not in ("half_pixel", "pytorch_half_pixel"):
            raise Unsupported(f"coordinate_transformation_mode {ct}")
        if mode == "cubic" and abs(float(node.attr("cubic_coeff_a", -0.75)) + 0.75) > 1e-6:
            raise Unsupported("cubic_coeff_a other than -0.75")
    else:
        raise Unsupported(f"mode {mode}")
    params[3], params[4] = int(y_shape[2]), int(y_shape[3])
    ctx.add("Interp", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]], params)


def w_identity(ctx, node):
    """Identity -> Noop."""
    ctx.add("Noop", ctx.layer_name(node), [node.inputs[0]], [node.outputs[0]])


WRITERS: Dict[str, Callable] = {
    "Conv": w_conv, "ConvTranspose": w_convtranspose, "Gemm": w_gemm, "MatMul": w_matmul,
    "MaxPool": w_pool, "AveragePool": w_pool, "GlobalAveragePool": w_global_pool,
    "GlobalMaxPool": w_global_pool, "ReduceMean": w_reduce, "ReduceMax": w_reduce,
    "Relu": w_activation, "LeakyRelu": w_activation, "Clip": w_activation,
    "Sigmoid": w_activation, "Tanh": w_activation, "HardSigmoid": w_activation,
    "HardSwish": w_activation, "Mish": w_activation, "Elu": w_activation, "Selu": w_activation,
    "PRelu": w_prelu, "BatchNormalization": w_batchnorm,
    "Add": w_binary, "Sub": w_binary, "Mul": w_binary, "Div": w_binary, "Max": w_binary,
    "Min": w_binary, "Pow": w_binary, "Sum": w_binary,
    "Concat": w_concat, "Softmax": w_softmax, "Flatten": w_flatten, "Reshape": w_reshape,
    "Squeeze": w_reshape, "Unsqueeze": w_reshape, "Transpose": w_transpose, "Pad": w_pad,
    "Slice": w_slice, "Split": w_split, "Resize": w_resize, "Upsample": w_resize,
    "Identity": w_identity,
}
WRITERS.update({op: w_unary for op in UNARY_OPS})
