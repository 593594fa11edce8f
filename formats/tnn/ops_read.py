"""TNN layer -> IR nodes: the reading half of the op table.

Each reader takes the :class:`ReadContext` (node/constant sink, resources, errors) and one
:class:`ProtoLayer` whose positional parameters are read with :class:`Params` (tnn.md §1.8:
missing trailing parameters take their defaults; required ones raise a ModelFormatError naming
the line). Weights come back as float32 whatever their storage (fp32, fp16, int8).
"""
from __future__ import annotations

import numpy as np

from ptqconv.formats.tnn.proto import ProtoLayer

REQUIRED = object()
FLT_MAX = 3.4028234663852886e38

# Known TNN layer types ptqconv cannot convert (they raise UnsupportedOpsError, not a format
# error). Types outside this set and the readers below are not TNN layers at all.
KNOWN_UNSUPPORTED = frozenset("""
Eltwise Const Gather MatMul Squeeze Unsqueeze Transpose LSTMONNX Convolution3D Deconvolution3D
Pooling1D Pooling3D Convolution1D LRN Normalize PriorBox DetectionOutput Reduce ReduceMean ReduceMax
ReduceMin ReduceSum ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare
InstanceNorm GroupNorm LayerNorm Slice StridedSlice StridedSliceV2 Shape ShuffleChannel
PixelShuffle Expand Cast Power Pow Exp Log Abs Neg Floor Ceil Sqrt Sin Cos Tan Asin Acos Atan
Reciprocal Sign Elu Selu LeakyReLU LeakyRelu Softplus Softsign Mish GELU Gelu Erf Not And Or Xor
Equal Greater Less Where ArgMaxOrArgMin Einsum ScatterND Range ConstantOfShape NonZero TopK
GridSample RoiAlign Histogram OneHot CumSum Dropout SignedMul BitShift HdrGuide InnerProductV2
DynamicRangeQuantizedConvolution DynamicRangeQuantizedInnerProduct DynamicRangeQuantizedMatMul
DynamicRangeQuantizedLSTMONNX DynamicRangeQuantizedGather
""".split())


class Params:
    """Positional parameters of one layer line with defaults."""

    def __init__(self, layer: ProtoLayer, ctx):
        self.layer, self.ctx = layer, ctx

    def __len__(self):
        return len(self.layer.params)

    def _token(self, i, name, default):
        if i < len(self.layer.params):
            return self.layer.params[i]
        if default is REQUIRED:
            self.ctx.fail(self.layer, f"layer '{self.layer.name}' ({self.layer.type}) has "
                          f"{len(self.layer.params)} parameter(s); parameter {i + 1} "
                          f"({name}) is required")
        return None

    def int(self, i, name, default=REQUIRED) -> int:
        """Integer parameter ``i`` (0-based)."""
        tok = self._token(i, name, default)
        if tok is None:
            return default
        try:
            return int(tok)
        except ValueError:
            self.ctx.fail(self.layer, f"layer '{self.layer.name}': parameter {i + 1} ({name}) "
                          f"'{tok}' is not an integer")

    def float(self, i, name, default=REQUIRED) -> float:
        """Float parameter ``i`` (0-based), rounded to float32 as TNN stores it."""
        tok = self._token(i, name, default)
        if tok is None:
            return default
        try:
            return float(np.float32(float(tok)))
        except ValueError:
            self.ctx.fail(self.layer, f"layer '{self.layer.name}': parameter {i + 1} ({name}) "
                          f"'{tok}' is not a number")

    def ints(self, start, count, name):
        """``count`` required integers from ``start``."""
        return [self.int(start + k, f"{name}[{k}]") for k in range(count)]


def _pads_attrs(pad_type, ph, pw, layer, ctx):
    if pad_type == -1:
        return {"pads": [ph, pw, ph, pw]}
    if pad_type == 0:
        return {"auto_pad": "SAME_UPPER"}
    if pad_type == 1:
        return {"auto_pad": "VALID"}
    ctx.unsupported_layer(layer, f"pad_type {pad_type}")
    return {"pads": [ph, pw, ph, pw]}


def _activation(ctx, layer, act, conv_out, out):
    """Append the fused activation ``act`` of a Convolution reading ``conv_out``."""
    if act == 1:
        ctx.node("Relu", ctx.new_name(layer.name + "_relu"), [conv_out], [out])
    elif act == 2:
        bounds = [ctx.scalar(layer.name + "_min", 0.0), ctx.scalar(layer.name + "_max", 6.0)]
        ctx.node("Clip", ctx.new_name(layer.name + "_relu6"), [conv_out] + bounds, [out])
    elif act == 256:  # SIGMOID_MUL (swish)
        sig = ctx.new_name(layer.name + "_sigmoid")
        ctx.node("Sigmoid", sig, [conv_out], [sig])
        ctx.node("Mul", ctx.new_name(layer.name + "_swish"), [conv_out, sig], [out])
    else:
        ctx.unsupported_layer(layer, f"activation_type {act}")


def read_conv(ctx, layer, p):
    """Convolution / Deconvolution -> Conv / ConvTranspose (+ fused activation)."""
    deconv = layer.type == "Deconvolution"
    group = p.int(0, "group")
    out_c = p.int(2, "output_channel")
    kh, kw = p.int(3, "kernel_h"), p.int(4, "kernel_w")
    sh, sw = p.int(5, "stride_h"), p.int(6, "stride_w")
    ph, pw = p.int(7, "pad_h"), p.int(8, "pad_w")
    pad_type = p.int(10, "pad_type", -1)
    dh, dw = p.int(11, "dilation_h", 1), p.int(12, "dilation_w", 1)
    act = p.int(13, "activation_type", 0)
    if min(group, out_c, kh, kw, sh, sw, dh, dw) <= 0 or out_c % group or ph < 0 or pw < 0:
        ctx.fail(layer, f"layer '{layer.name}': invalid convolution parameters "
                 f"{' '.join(layer.params[:13])}")
    res = ctx.resource(layer, ("Convolution", "Deconvolution"))
    filt = res.buffer("filter")
    per_out = (out_c // group) if deconv else out_c
    if filt.size == 0 or filt.size % (per_out * kh * kw):
        ctx.fail_resource(res, f"filter of '{layer.name}' holds {filt.size} values, not a "
                          f"multiple of {per_out}*{kh}*{kw}")
    other = filt.size // (per_out * kh * kw)
    shape = (other, per_out, kh, kw) if deconv else (out_c, other, kh, kw)
    weight = ctx.weights(layer, res, "filter", shape, group)
    inputs = [layer.inputs[0], weight]
    if res.fields.get("has_bias"):
        inputs.append(ctx.bias(layer, res, "bias", out_c))
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "dilations": [dh, dw], "group": group}
    attrs.update(_pads_attrs(pad_type, ph, pw, layer, ctx))
    out = layer.outputs[0]
    conv_out = out if act == 0 else ctx.new_name(out + "_preact")
    ctx.node("ConvTranspose" if deconv else "Conv", layer.name, inputs, [conv_out], attrs)
    if act:
        _activation(ctx, layer, act, conv_out, out)


def read_inner_product(ctx, layer, p):
    """InnerProduct -> Flatten(axis) + Gemm(transB=1)."""
    num_output = p.int(0, "num_output")
    p.int(1, "has_bias")
    transpose = p.int(2, "transpose")
    axis = p.int(3, "axis")
    if num_output <= 0:
        ctx.fail(layer, f"layer '{layer.name}': num_output {num_output} must be positive")
    res = ctx.resource(layer, ("InnerProduct",))
    wbuf = res.buffer("weight")
    if wbuf.size == 0 or wbuf.size % num_output:
        ctx.fail_resource(res, f"weight of '{layer.name}' holds {wbuf.size} values, not a "
                          f"multiple of num_output {num_output}")
    k = wbuf.size // num_output
    shape = (k, num_output) if transpose else (num_output, k)
    weight = ctx.weights(layer, res, "weight", shape, 1, transpose=bool(transpose))
    flat = ctx.new_name(layer.name + "_flatten")
    ctx.node("Flatten", flat, [layer.inputs[0]], [flat], {"axis": axis})
    inputs = [flat, weight]
    if res.buffer("bias") is not None and res.buffer("bias").size:
        inputs.append(ctx.bias(layer, res, "bias", num_output))
    ctx.node("Gemm", layer.name, inputs, [layer.outputs[0]], {"transB": 1})


def read_pooling(ctx, layer, p):
    """Pooling -> MaxPool / AveragePool / Global*Pool."""
    pool_type = p.int(0, "pool_type")
    kh, kw = p.int(1, "kernel_h"), p.int(2, "kernel_w")
    sh, sw = p.int(3, "stride_h"), p.int(4, "stride_w")
    ph, pw = p.int(5, "pad_h"), p.int(6, "pad_w")
    pad_type = p.int(9, "pad_type", -1)
    ceil_mode = p.int(10, "ceil_mode", 0)
    adaptive = p.int(11, "is_adaptive_pool", 0)
    oh, ow = p.int(12, "output_h", 0), p.int(13, "output_w", 0)
    if pool_type not in (0, 1):
        ctx.unsupported_layer(layer, f"pool_type {pool_type}")
        return
    kind = "Max" if pool_type == 0 else "Average"
    if (kh == 0 and kw == 0 and not adaptive) or (adaptive and oh == 1 and ow == 1):
        ctx.node(f"Global{kind}Pool", layer.name, [layer.inputs[0]], [layer.outputs[0]])
        return
    if adaptive:
        ctx.unsupported_layer(layer, f"adaptive pooling to {oh}x{ow}")
        return
    if min(kh, kw, sh, sw) <= 0 or ph < 0 or pw < 0:
        ctx.fail(layer, f"layer '{layer.name}': invalid pooling parameters "
                 f"{' '.join(layer.params[:7])}")
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "ceil_mode": ceil_mode}
    attrs.update(_pads_attrs(pad_type, ph, pw, layer, ctx))
    ctx.node(f"{kind}Pool", layer.name, [layer.inputs[0]], [layer.outputs[0]], attrs)


def _unary(op):
    def read(ctx, layer, p):
        ctx.node(op, layer.name, [layer.inputs[0]], [layer.outputs[0]])
    read.__doc__ = f"-> {op}"
    return read


def read_relu6(ctx, layer, p):
    """ReLU6 -> Clip(0, 6)."""
    ctx.node("Clip", layer.name, [layer.inputs[0], ctx.scalar(layer.name + "_min", 0.0),
                                  ctx.scalar(layer.name + "_max", 6.0)], [layer.outputs[0]])


def read_clip(ctx, layer, p):
    """Clip min max -> Clip with constant bounds."""
    lo, hi = p.float(0, "min"), p.float(1, "max")
    ctx.node("Clip", layer.name, [layer.inputs[0], ctx.scalar(layer.name + "_min", lo),
                                  ctx.scalar(layer.name + "_max", hi)], [layer.outputs[0]])


def read_prelu(ctx, layer, p):
    """PReLU -> PRelu with the slope shaped [C, 1, 1] (or [1] when shared)."""
    res = ctx.resource(layer, ("PReLU",))
    slope = res.buffer("slope").as_float()
    if slope.size == 0:
        ctx.fail_resource(res, f"PReLU '{layer.name}' has an empty slope")
    shape = (1,) if slope.size == 1 else (slope.size, 1, 1)
    ctx.node("PRelu", layer.name, [layer.inputs[0], ctx.const(layer.name + "_slope",
                                                              slope.reshape(shape))],
             [layer.outputs[0]])


def read_hard(op):
    def read(ctx, layer, p):
        default = (1.0 / 6, 0.5) if op == "HardSwish" else (0.2, 0.5)
        alpha = p.float(0, "alpha", default[0])
        beta = p.float(1, "beta", default[1])
        x = layer.inputs[-1]
        if op == "HardSwish" and len(layer.inputs) == 1 and \
                np.float32(alpha) == np.float32(1.0 / 6) and beta == 0.5:
            ctx.node("HardSwish", layer.name, [x], [layer.outputs[0]])
            return
        if op == "HardSigmoid":
            ctx.node("HardSigmoid", layer.name, [x], [layer.outputs[0]],
                     {"alpha": alpha, "beta": beta})
            return
        gate = ctx.new_name(layer.name + "_gate")
        ctx.node("HardSigmoid", gate, [x], [gate], {"alpha": alpha, "beta": beta})
        ctx.node("Mul", layer.name, [layer.inputs[0], gate], [layer.outputs[0]])
    read.__doc__ = f"{op} alpha beta -> {op} (or HardSigmoid * x for other coefficients)"
    return read


def read_binary(op):
    def read(ctx, layer, p):
        if len(layer.inputs) >= 2:
            ctx.node(op, layer.name, layer.inputs[:2], [layer.outputs[0]])
            return
        if len(layer.inputs) != 1:
            ctx.fail(layer, f"layer '{layer.name}' ({layer.type}) needs 1 or 2 inputs")
        index = p.int(0, "weight_input_index", 1)
        res = ctx.resource(layer, (layer.type,))
        buf = res.buffer("element")
        value = buf.as_float()
        if value.size == 0:
            ctx.fail_resource(res, f"constant operand of '{layer.name}' is empty")
        # Without dims, one value is a scalar and C values broadcast per channel (NCHW).
        shape = buf.dims if buf.dims else ((1,) if value.size == 1 else (1, value.size, 1, 1))
        c = ctx.const(layer.name + "_operand", value.reshape(shape))
        inputs = [c, layer.inputs[0]] if index == 0 else [layer.inputs[0], c]
        ctx.node(op, layer.name, inputs, [layer.outputs[0]])
    read.__doc__ = f"{op} (two blobs, or one blob and a constant operand) -> {op}"
    return read


def read_concat(ctx, layer, p):
    """Concat axis -> Concat."""
    ctx.node("Concat", layer.name, list(layer.inputs), [layer.outputs[0]],
             {"axis": p.int(0, "axis", 1)})


def read_split(ctx, layer, p):
    """Split (Caffe fan-out copy) -> one Identity per output."""
    for k, out in enumerate(layer.outputs):
        ctx.node("Identity", layer.name if k == 0 else ctx.new_name(f"{layer.name}_{k}"),
                 [layer.inputs[0]], [out])


def read_splitv(ctx, layer, p):
    """SplitV axis count slices... -> Split with explicit sizes."""
    axis = p.int(0, "axis")
    count = p.int(1, "slice_count")
    if count != len(layer.outputs) or count <= 0:
        ctx.fail(layer, f"layer '{layer.name}': slice_count {count} but "
                 f"{len(layer.outputs)} output(s)")
    sizes = p.ints(2, count, "slices")
    ctx.node("Split", layer.name, [layer.inputs[0], ctx.const(layer.name + "_split",
                                                              np.array(sizes, np.int64))],
             list(layer.outputs), {"axis": axis})


def read_softmax(ctx, layer, p):
    """Softmax / SoftmaxCaffe axis -> Softmax (opset 13: along one axis)."""
    ctx.node("Softmax", layer.name, [layer.inputs[0]], [layer.outputs[0]],
             {"axis": p.int(0, "axis", 1)})


def read_reshape(ctx, layer, p):
    """Reshape axis num_axes n shape... type -> Reshape with a constant shape."""
    axis, num_axes = p.int(0, "axis"), p.int(1, "num_axes")
    n = p.int(2, "shape_size")
    if n < 0 or n > 16:
        ctx.fail(layer, f"layer '{layer.name}': shape_size {n} is invalid")
    shape = p.ints(3, n, "shape")
    reshape_type = p.int(3 + n, "reshape_type", 0)
    if reshape_type != 0 or axis != 0 or num_axes != -1:
        ctx.unsupported_layer(layer, f"reshape_type {reshape_type} axis {axis} num_axes "
                              f"{num_axes}")
        return
    ctx.node("Reshape", layer.name, [layer.inputs[0], ctx.const(layer.name + "_shape",
                                                                np.array(shape, np.int64))],
             [layer.outputs[0]])


def read_flatten(ctx, layer, p):
    """Flatten axis -> Flatten."""
    ctx.node("Flatten", layer.name, [layer.inputs[0]], [layer.outputs[0]],
             {"axis": p.int(0, "axis")})


def read_permute(ctx, layer, p):
    """Permute n order... -> Transpose."""
    n = p.int(0, "n")
    if n <= 0 or n > 16:
        ctx.fail(layer, f"layer '{layer.name}': permute order size {n} is invalid")
    order = p.ints(1, n, "order")
    if sorted(order) != list(range(n)):
        ctx.fail(layer, f"layer '{layer.name}': {order} is not a permutation")
    ctx.node("Transpose", layer.name, [layer.inputs[0]], [layer.outputs[0]], {"perm": order})


def read_upsample(ctx, layer, p):
    """Upsample mode sh sw align [oh ow] -> Resize (scales, or sizes from the input shape)."""
    mode = p.int(0, "mode")
    sh, sw = p.float(1, "scale_h"), p.float(2, "scale_w")
    align = p.int(3, "align_corners", 0)
    oh = p.int(4, "output_h", 0) if len(p) >= 6 else 0
    ow = p.int(5, "output_w", 0) if len(p) >= 6 else 0
    attrs = {1: {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                 "nearest_mode": "floor"},
             2: {"mode": "linear", "coordinate_transformation_mode":
                 "align_corners" if align else "half_pixel"},
             3: {"mode": "cubic", "cubic_coeff_a": -0.75, "coordinate_transformation_mode":
                 "align_corners" if align else "half_pixel"}}.get(mode)
    if attrs is None:
        ctx.unsupported_layer(layer, f"mode {mode}")
        return
    x = layer.inputs[0]
    if oh > 0 and ow > 0:
        # sizes = [N, C] of the input + [oh, ow]; folded to a constant by canonicalize.
        shape = ctx.new_name(layer.name + "_in_shape")
        ctx.node("Shape", shape, [x], [shape])
        nc = ctx.new_name(layer.name + "_in_nc")
        ctx.node("Slice", nc, [shape, ctx.const(layer.name + "_nc_start", np.array([0], np.int64)),
                               ctx.const(layer.name + "_nc_end", np.array([2], np.int64))], [nc])
        sizes = ctx.new_name(layer.name + "_sizes")
        ctx.node("Concat", sizes, [nc, ctx.const(layer.name + "_hw",
                                                    np.array([oh, ow], np.int64))], [sizes],
                 {"axis": 0})
        ctx.node("Resize", layer.name, [x, "", "", sizes], [layer.outputs[0]], attrs)
        return
    if sh <= 0 or sw <= 0:
        ctx.fail(layer, f"layer '{layer.name}': Upsample needs positive scales or output sizes")
    scales = ctx.const(layer.name + "_scales", np.array([1, 1, sh, sw], np.float32))
    ctx.node("Resize", layer.name, [x, "", scales], [layer.outputs[0]], attrs)


def read_batchnorm(ctx, layer, p):
    """BatchNormCxx (scale, bias already folded) -> BatchNormalization(mean 0, var 1, eps 0)."""
    res = ctx.resource(layer, ("BatchNormCxx", "BatchNormalization"))
    _affine(ctx, layer, res.buffer("scale").as_float(), res.buffer("bias").as_float(), res)


def read_scale(ctx, layer, p):
    """Scale axis num_axes bias_term -> BatchNormalization (per-channel affine)."""
    p.int(0, "axis"), p.int(1, "num_axes"), p.int(2, "bias_term")
    res = ctx.resource(layer, ("Scale",))
    scale = res.buffer("scale").as_float()
    bias = res.buffer("bias").as_float() if res.buffer("bias") is not None else \
        np.zeros_like(scale)
    _affine(ctx, layer, scale, bias, res)


def _affine(ctx, layer, scale, bias, res):
    if scale.size == 0 or bias.size not in (scale.size, 0):
        ctx.fail_resource(res, f"'{layer.name}': scale has {scale.size} and bias {bias.size} "
                          "values")
    if bias.size == 0:
        bias = np.zeros_like(scale)
    n = scale.size
    ctx.node("BatchNormalization", layer.name,
             [layer.inputs[0], ctx.const(layer.name + "_scale", scale),
              ctx.const(layer.name + "_bias", bias),
              ctx.const(layer.name + "_mean", np.zeros(n, np.float32)),
              ctx.const(layer.name + "_var", np.ones(n, np.float32))],
             [layer.outputs[0]], {"epsilon": 0.0})


def read_pad(ctx, layer, p):
    """Pad n1 n2 t b l r c_begin c_end type value -> Pad (constant/reflect/edge)."""
    t, b, left, right = (p.int(k, name) for k, name in
                         ((2, "pad_top"), (3, "pad_bottom"), (4, "pad_left"), (5, "pad_right")))
    cb, ce = p.int(6, "pad_c_begin", 0), p.int(7, "pad_c_end", 0)
    kind = p.int(8, "type", 0)
    value = p.float(9, "value", 0.0)
    mode = {0: "constant", 1: "reflect", 2: "edge"}.get(kind)
    if mode is None:
        ctx.unsupported_layer(layer, f"pad type {kind}")
        return
    pads = ctx.const(layer.name + "_pads", np.array([0, cb, t, left, 0, ce, b, right], np.int64))
    inputs = [layer.inputs[0], pads]
    if mode == "constant":
        inputs.append(ctx.const(layer.name + "_value", np.array(value, np.float32)))
    ctx.node("Pad", layer.name, inputs, [layer.outputs[0]], {"mode": mode})


READERS = {
    "Convolution": read_conv, "Deconvolution": read_conv, "InnerProduct": read_inner_product,
    "Pooling": read_pooling, "ReLU": _unary("Relu"), "ReLU6": read_relu6, "Relu6": read_relu6,
    "Clip": read_clip, "PReLU": read_prelu, "Sigmoid": _unary("Sigmoid"),
    "Tanh": _unary("Tanh"), "HardSwish": read_hard("HardSwish"),
    "HardSigmoid": read_hard("HardSigmoid"), "Add": read_binary("Add"),
    "Sub": read_binary("Sub"), "Mul": read_binary("Mul"), "Div": read_binary("Div"),
    "Maximum": read_binary("Max"), "Minimum": read_binary("Min"), "Concat": read_concat,
    "Split": read_split, "SplitV": read_splitv, "Softmax": read_softmax,
    "SoftmaxCaffe": read_softmax, "Reshape": read_reshape, "Flatten": read_flatten,
    "Permute": read_permute, "Upsample": read_upsample, "BatchNormCxx": read_batchnorm,
    "BatchNormalization": read_batchnorm, "Scale": read_scale, "Pad": read_pad,
}

KNOWN_TYPES = frozenset(READERS) | KNOWN_UNSUPPORTED
