"""The ncnn reader's op table: one function per ncnn layer type, emitting IR nodes.

Each function takes the reading context (``formats/ncnn/reader.py``) and one
:class:`ParamLayer`, reads that layer's weight blobs from the ``.bin`` in ncnn's order, and adds
ONNX-style nodes. ncnn blobs have no batch axis: a blob with ``dims`` dimensions is an IR tensor of
rank ``dims + 1`` (batch 1 in front), and ncnn axes (outer to inner, over the blob's own dims)
become ``axis + 1``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np

from ptqconv.core.qtable import INT8, ActQuant, WeightQuant

FLT_MAX = 3.4028235e38
INT_MAX = 2 ** 31 - 1
ABSENT = -233


# ---- helpers ------------------------------------------------------------------------------------
def _ir_axis(ctx, layer, axis: int, rank: int) -> int:
    if axis < 0:
        axis += rank
    if not 0 <= axis < rank:
        ctx.fail(layer, f"axis {axis} is out of range for a {rank}-D blob")
    return axis + 1


def _activation(ctx, layer, x: str, out: str, act: int, params) -> None:
    """Emit the IR node(s) of ncnn's fused ``activation_type`` from ``x`` to ``out``."""
    name = ctx.node_name(f"{layer.name}_act")
    need = {2: 1, 3: 2, 6: 2}.get(act, 0)
    if len(params) < need:
        ctx.fail(layer, f"activation_type {act} needs {need} activation_params, got {len(params)}")
    if act == 1:
        ctx.node("Relu", name, [x], [out])
    elif act == 2:
        ctx.node("LeakyRelu", name, [x], [out], alpha=float(params[0]))
    elif act == 3:
        lo = ctx.const(f"{layer.name}_clip_min", np.array(params[0], np.float32))
        hi = ctx.const(f"{layer.name}_clip_max", np.array(params[1], np.float32))
        ctx.node("Clip", name, [x, lo, hi], [out])
    elif act == 4:
        ctx.node("Sigmoid", name, [x], [out])
    elif act == 5:
        ctx.need_opset(18)
        ctx.node("Mish", name, [x], [out])
    elif act == 6:
        _hardswish(ctx, name, x, out, float(params[0]), float(params[1]))
    else:
        ctx.fail(layer, f"unknown activation_type {act}")


def _hardswish(ctx, name, x, out, alpha, beta):
    if abs(alpha - 1.0 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        ctx.need_opset(14)
        ctx.node("HardSwish", name, [x], [out])
        return
    gate = ctx.tensor_name(f"{out}_gate")
    ctx.node("HardSigmoid", ctx.node_name(name + "_gate"), [x], [gate], alpha=alpha, beta=beta)
    ctx.node("Mul", name, [x, gate], [out])


def _with_activation(ctx, layer, p, op, inputs, out_rank, **attrs):
    """Add the main node (named after the layer) and its fused activation, if any."""
    out = ctx.out(layer, 0, out_rank)
    act = p.i(9, 0)
    if act == 0:
        ctx.node(op, layer.name, inputs, [out], **attrs)
        return
    mid = ctx.tensor_name(f"{out}_preact")
    ctx.node(op, layer.name, inputs, [mid], **attrs)
    _activation(ctx, layer, mid, out, act, p.arr(10))


def _channel_shape(rank: int, n: int):
    """Shape of a per-channel constant for an ncnn blob of ``rank`` dims (c, h or w axis)."""
    return (n,) + (1,) * (rank - 1) if rank > 1 else (n,)


def _record_int8(ctx, layer, x: str, w_name: str, steps: np.ndarray, bottom: float,
                 axis: int = 0) -> None:
    if bottom <= 0:
        return
    ctx.table.precision[layer.name] = INT8
    # float64 steps: 1/step gives back ncnn's float32 multipliers exactly when re-written
    ctx.table.weights[w_name] = WeightQuant(np.asarray(steps, np.float64), axis, 8)
    if x not in ctx.table.activations:
        ctx.table.activations[x] = ActQuant(scale=1.0 / bottom, threshold=127.0 / bottom)


def _inverse(scales: np.ndarray) -> np.ndarray:
    s = np.asarray(scales, np.float64)
    return np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)


def _weights_and_int8(ctx, layer, p, count: int, n_out: int, n_scales: int):
    """Read a tagged weight blob, bias and int8 extras; returns (weights, bias, steps, bottom)
    with int8 weights dequantized per output channel."""
    what = f"layer '{layer.name}' ({layer.type})"
    w, kind = ctx.bin.tagged(count, what + " weight")
    bias = ctx.bin.raw(n_out, what + " bias") if p.i(5 if layer.type != "InnerProduct" else 1, 0) \
        else None
    term = p.i(8, 0)
    steps, bottom = None, 0.0
    if term:
        wscales = ctx.bin.raw(n_scales, what + " weight scales")
        bottom = float(ctx.bin.raw(1, what + " input scale")[0])
        if term > 100:
            ctx.bin.raw(1, what + " output scale")
        per_out = np.repeat(wscales, n_out // n_scales) if n_scales != n_out else wscales
        steps = _inverse(per_out)
        if kind == "int8":
            per_w = np.repeat(steps, count // n_out).astype(np.float32)
            w = (w.astype(np.float32) * per_w).astype(np.float32)
    elif kind == "int8":
        ctx.fail(layer, "int8 weights without int8_scale_term (8=)")
    return w, bias, steps, bottom


# ---- layers -------------------------------------------------------------------------------------
def read_input(ctx, layer, p):
    """Input: ``0=w 1=h 11=d 2=c``; becomes a graph input."""
    ctx.add_input(layer, p)


def read_memorydata(ctx, layer, p):
    """MemoryData: a constant blob ``(w, h, d, c)``, raw fp32 unless ``21=0`` (tagged)."""
    w, h, d, c = p.i(0, 0), p.i(1, 0), p.i(11, 0), p.i(2, 0)
    dims = 4 if d else 3 if c else 2 if h else 1
    shape = {1: (w,), 2: (h, w), 3: (c, h, w), 4: (c, d, h, w)}[dims]
    shape = tuple(max(s, 1) for s in shape)
    n = int(np.prod(shape))
    what = f"layer '{layer.name}' (MemoryData)"
    data = ctx.bin.raw(n, what) if p.i(21, 1) else ctx.bin.tagged(n, what)[0]
    ctx.set_constant(layer, data.reshape((1,) + shape), dims)


def _conv_common(ctx, layer, p, depthwise: bool):
    if ctx.rank(layer, 0) != 3:
        ctx.fail(layer, f"expects a 3-D (c,h,w) input, got {ctx.rank(layer, 0)}-D")
    out_c, kw = p.i(0, 0), p.i(1, 0)
    kh = p.i(11, kw)
    count = p.i(6, 0)
    group = p.i(7, 1) if depthwise else 1
    if out_c <= 0 or kw <= 0 or kh <= 0 or count <= 0 or group <= 0 or out_c % group:
        ctx.fail(layer, f"bad sizes num_output={out_c} kernel={kw}x{kh} "
                        f"weight_data_size={count} group={group}")
    if count % (out_c * kw * kh):
        ctx.fail(layer, f"weight_data_size {count} is not num_output*kernel ({out_c}*{kw}*{kh}) "
                        f"times the input channels")
    in_per_group = count // (out_c * kw * kh)
    term = p.i(8, 0)
    n_scales = out_c
    if depthwise and term:
        n_scales = group if term in (1, 101) else 1
    w, bias, steps, bottom = _weights_and_int8(ctx, layer, p, count, out_c, n_scales)
    w = w.reshape(out_c, in_per_group, kh, kw)
    x = ctx.inp(layer, 0)
    pads = [p.i(14, p.i(4, 0)), p.i(4, 0)]
    pads = [pads[0], pads[1], p.i(16, pads[0]), p.i(15, pads[1])]   # top, left, bottom, right
    attrs = dict(kernel_shape=[kh, kw], strides=[p.i(13, p.i(3, 1)), p.i(3, 1)],
                 dilations=[p.i(12, p.i(2, 1)), p.i(2, 1)], group=group)
    if all(v == -233 for v in pads):
        attrs["auto_pad"] = "SAME_UPPER"
    elif all(v == -234 for v in pads):
        attrs["auto_pad"] = "SAME_LOWER"
    elif min(pads) < 0:
        ctx.fail(layer, f"unsupported padding {pads}")
    else:
        pad_value = p.f(18, 0.0)
        if pad_value != 0.0 and any(pads):
            padded = ctx.tensor_name(f"{x}_padded")
            pv = ctx.const(f"{layer.name}_pads", np.array([0, 0, pads[0], pads[1], 0, 0, pads[2],
                                                           pads[3]], np.int64))
            value = ctx.const(f"{layer.name}_pad_value", np.array(pad_value, np.float32))
            ctx.node("Pad", ctx.node_name(f"{layer.name}_pad"), [x, pv, value], [padded])
            x, pads = padded, [0, 0, 0, 0]
        attrs["pads"] = pads
    w_name = ctx.const(f"{layer.name}_weight", w)
    inputs = [x, w_name]
    if bias is not None:
        inputs.append(ctx.const(f"{layer.name}_bias", bias))
    if steps is not None:
        _record_int8(ctx, layer, x, w_name, steps, bottom)
    _with_activation(ctx, layer, p, "Conv", inputs, 3, **attrs)


def read_convolution(ctx, layer, p):
    """Convolution: weight ``[out][in][kh][kw]`` (tagged), bias, int8 scales; fused activation."""
    _conv_common(ctx, layer, p, depthwise=False)


def read_convolutiondepthwise(ctx, layer, p):
    """ConvolutionDepthWise: grouped Conv (``7=group``); int8 weight scales per group."""
    _conv_common(ctx, layer, p, depthwise=True)


def _deconv_common(ctx, layer, p, depthwise: bool):
    if ctx.rank(layer, 0) != 3:
        ctx.fail(layer, f"expects a 3-D (c,h,w) input, got {ctx.rank(layer, 0)}-D")
    out_c, kw = p.i(0, 0), p.i(1, 0)
    kh = p.i(11, kw)
    count = p.i(6, 0)
    group = p.i(7, 1) if depthwise else 1
    if out_c <= 0 or kw <= 0 or kh <= 0 or count <= 0 or group <= 0 or out_c % group or \
            count % (out_c * kw * kh):
        ctx.fail(layer, f"bad sizes num_output={out_c} kernel={kw}x{kh} "
                        f"weight_data_size={count} group={group}")
    in_per_group = count // (out_c * kw * kh)
    w, _ = ctx.bin.tagged(count, f"layer '{layer.name}' ({layer.type}) weight")
    bias = ctx.bin.raw(out_c, f"layer '{layer.name}' ({layer.type}) bias") if p.i(5, 0) else None
    # ncnn: per group [out/g][in/g][kh][kw]; ONNX ConvTranspose: [in][out/g][kh][kw]
    w = w.reshape(group, out_c // group, in_per_group, kh, kw).transpose(0, 2, 1, 3, 4)
    w = np.ascontiguousarray(w.reshape(group * in_per_group, out_c // group, kh, kw))
    pads = [p.i(14, p.i(4, 0)), p.i(4, 0)]
    pads = [pads[0], pads[1], p.i(16, pads[0]), p.i(15, pads[1])]
    if min(pads) < 0:
        ctx.fail(layer, f"unsupported padding {pads}")
    opad_w = p.i(18, 0)
    attrs = dict(kernel_shape=[kh, kw], strides=[p.i(13, p.i(3, 1)), p.i(3, 1)],
                 dilations=[p.i(12, p.i(2, 1)), p.i(2, 1)], group=group, pads=pads)
    if opad_w or p.i(19, opad_w):
        attrs["output_padding"] = [p.i(19, opad_w), opad_w]
    inputs = [ctx.inp(layer, 0), ctx.const(f"{layer.name}_weight", w)]
    if bias is not None:
        inputs.append(ctx.const(f"{layer.name}_bias", bias))
    _with_activation(ctx, layer, p, "ConvTranspose", inputs, 3, **attrs)


def read_deconvolution(ctx, layer, p):
    """Deconvolution: weight ``[out][in][kh][kw]`` transposed into ConvTranspose's layout."""
    _deconv_common(ctx, layer, p, depthwise=False)


def read_deconvolutiondepthwise(ctx, layer, p):
    """DeconvolutionDepthWise: grouped ConvTranspose."""
    _deconv_common(ctx, layer, p, depthwise=True)


def read_innerproduct(ctx, layer, p):
    """InnerProduct: Gemm(transB=1) on the flattened input; a 2-D input whose rows have
    ``num_input`` values is multiplied row by row (MatMul + Add), as the runtime does."""
    out_n, count = p.i(0, 0), p.i(2, 0)
    if out_n <= 0 or count <= 0 or count % out_n:
        ctx.fail(layer, f"weight_data_size {count} is not a multiple of num_output {out_n}")
    n_in = count // out_n
    w, bias, steps, bottom = _weights_and_int8(ctx, layer, p, count, out_n, out_n)
    w = w.reshape(out_n, n_in)
    x, rank = ctx.inp(layer, 0), ctx.rank(layer, 0)
    if rank == 2:
        shape = ctx.shape(x)
        if shape is None:
            ctx.fail(layer, "needs the input shape (pass --option input_shape=...)")
        if shape[2] == n_in:   # ncnn multiplies each row (even a single one)
            wt = ctx.const(f"{layer.name}_weight_t", np.ascontiguousarray(w.T))
            if steps is not None:
                _record_int8(ctx, layer, x, wt, steps, bottom, axis=1)
            if bias is None:
                _with_activation(ctx, layer, p, "MatMul", [x, wt], 2)
                return
            mid = ctx.tensor_name(f"{layer.name}_matmul")
            ctx.node("MatMul", layer.name, [x, wt], [mid])
            out = ctx.out(layer, 0, 2)
            b = ctx.const(f"{layer.name}_bias", bias)
            act = p.i(9, 0)
            summed = ctx.tensor_name(f"{out}_preact") if act else out
            ctx.node("Add", ctx.node_name(f"{layer.name}_bias"), [mid, b], [summed])
            if act:
                _activation(ctx, layer, summed, out, act, p.arr(10))
            return
    if rank != 1:
        flat = ctx.tensor_name(f"{x}_flatten")
        ctx.node("Flatten", ctx.node_name(f"{layer.name}_flatten"), [x], [flat], axis=1)
        x = flat
    w_name = ctx.const(f"{layer.name}_weight", w)
    inputs = [x, w_name] + ([ctx.const(f"{layer.name}_bias", bias)] if bias is not None else [])
    if steps is not None:
        _record_int8(ctx, layer, x, w_name, steps, bottom)
    _with_activation(ctx, layer, p, "Gemm", inputs, 1, transB=1)


def read_pooling(ctx, layer, p):
    """Pooling: max/avg, global, adaptive 1x1, pad modes full (ceil), valid, SAME."""
    if ctx.rank(layer, 0) != 3:
        ctx.fail(layer, f"expects a 3-D (c,h,w) input, got {ctx.rank(layer, 0)}-D")
    ptype = p.i(0, 0)
    if ptype not in (0, 1):
        ctx.fail(layer, f"unknown pooling_type {ptype}")
    x = ctx.inp(layer, 0)
    if p.i(4, 0) or (p.i(7, 0) and p.i(8, 0) == 1 and p.i(18, p.i(8, 0)) == 1):
        op = "GlobalMaxPool" if ptype == 0 else "GlobalAveragePool"
        if p.i(4, 0):   # global pooling gives a 1-D blob (c)
            mid = ctx.tensor_name(f"{x}_{op.lower()}")
            ctx.node(op, layer.name, [x], [mid])
            ctx.node("Flatten", ctx.node_name(f"{layer.name}_flatten"), [mid],
                     [ctx.out(layer, 0, 1)], axis=1)
        else:
            ctx.node(op, layer.name, [x], [ctx.out(layer, 0, 3)])
        return
    if p.i(7, 0):
        ctx.unsupported(layer, "adaptive pooling to a size other than 1x1 is not supported")
    kw = p.i(1, 0)
    kh = p.i(11, kw)
    sw = p.i(2, 1)
    sh = p.i(12, sw)
    left = p.i(3, 0)
    right, top = p.i(14, left), p.i(13, left)
    bottom = p.i(15, top)
    mode = p.i(5, 0)
    if kw <= 0 or kh <= 0 or sw <= 0 or sh <= 0 or min(left, right, top, bottom) < 0:
        ctx.fail(layer, f"bad kernel/stride/pad {kw}x{kh}/{sw}x{sh}/{[left, right, top, bottom]}")
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw])
    if mode in (0, 1):
        attrs["pads"] = [top, left, bottom, right]
        attrs["ceil_mode"] = 1 if mode == 0 else 0
    elif mode in (2, 3):
        attrs["auto_pad"] = "SAME_UPPER" if mode == 2 else "SAME_LOWER"
    else:
        ctx.fail(layer, f"unknown pad_mode {mode}")
    if ptype == 1:   # ncnn counts the padding of SAME modes in the average
        attrs["count_include_pad"] = 1 if mode in (2, 3) else p.i(6, 0)
    ctx.node("MaxPool" if ptype == 0 else "AveragePool", layer.name, [x],
             [ctx.out(layer, 0, 3)], **attrs)


def _simple(op, **fixed):
    def read(ctx, layer, p):
        if op == "Mish":
            ctx.need_opset(18)
        ctx.node(op, layer.name, [ctx.inp(layer, 0)], [ctx.out(layer, 0, ctx.rank(layer, 0))],
                 **fixed)
    read.__doc__ = f"{op}: element-wise, no weights."
    return read


def read_relu(ctx, layer, p):
    """ReLU: ``0=slope`` (non-zero: LeakyRelu)."""
    slope = p.f(0, 0.0)
    out = ctx.out(layer, 0, ctx.rank(layer, 0))
    if slope == 0.0:
        ctx.node("Relu", layer.name, [ctx.inp(layer, 0)], [out])
    else:
        ctx.node("LeakyRelu", layer.name, [ctx.inp(layer, 0)], [out], alpha=slope)


def read_clip(ctx, layer, p):
    """Clip: ``0=min 1=max``."""
    lo = ctx.const(f"{layer.name}_min", np.array(p.f(0, -FLT_MAX), np.float32))
    hi = ctx.const(f"{layer.name}_max", np.array(p.f(1, FLT_MAX), np.float32))
    ctx.node("Clip", layer.name, [ctx.inp(layer, 0), lo, hi],
             [ctx.out(layer, 0, ctx.rank(layer, 0))])


def read_swish(ctx, layer, p):
    """Swish: ``x * sigmoid(x)``."""
    x = ctx.inp(layer, 0)
    s = ctx.tensor_name(f"{x}_sigmoid")
    ctx.node("Sigmoid", ctx.node_name(f"{layer.name}_sigmoid"), [x], [s])
    ctx.node("Mul", layer.name, [x, s], [ctx.out(layer, 0, ctx.rank(layer, 0))])


def read_hardsigmoid(ctx, layer, p):
    """HardSigmoid: ``0=alpha (0.2) 1=beta (0.5)``."""
    ctx.node("HardSigmoid", layer.name, [ctx.inp(layer, 0)],
             [ctx.out(layer, 0, ctx.rank(layer, 0))], alpha=p.f(0, 0.2), beta=p.f(1, 0.5))


def read_hardswish(ctx, layer, p):
    """HardSwish: ``x * clamp(alpha*x + beta, 0, 1)``, ``0=alpha (0.2) 1=beta (0.5)``."""
    _hardswish(ctx, layer.name, ctx.inp(layer, 0), ctx.out(layer, 0, ctx.rank(layer, 0)),
               p.f(0, 0.2), p.f(1, 0.5))


def read_elu(ctx, layer, p):
    """ELU: ``0=alpha (0.1)``."""
    ctx.node("Elu", layer.name, [ctx.inp(layer, 0)], [ctx.out(layer, 0, ctx.rank(layer, 0))],
             alpha=p.f(0, 0.1))


def read_prelu(ctx, layer, p):
    """PReLU: ``0=num_slope`` raw slopes, per channel (or one)."""
    n = p.i(0, 0)
    if n <= 0:
        ctx.fail(layer, f"num_slope {n} must be positive")
    slope = ctx.bin.raw(n, f"layer '{layer.name}' (PReLU) slope")
    rank = ctx.rank(layer, 0)
    slope = slope.reshape(_channel_shape(rank, n) if n > 1 else (1,))
    ctx.node("PRelu", layer.name, [ctx.inp(layer, 0), ctx.const(f"{layer.name}_slope", slope)],
             [ctx.out(layer, 0, rank)])


def read_batchnorm(ctx, layer, p):
    """BatchNorm: raw slope, mean, var, bias (``0=channels 1=eps``)."""
    c = p.i(0, 0)
    if c <= 0:
        ctx.fail(layer, f"channels {c} must be positive")
    what = f"layer '{layer.name}' (BatchNorm)"
    slope, mean, var, bias = (ctx.bin.raw(c, f"{what} {k}")
                              for k in ("slope", "mean", "var", "bias"))
    names = [ctx.const(f"{layer.name}_{k}", v) for k, v in
             (("scale", slope), ("bias", bias), ("mean", mean), ("var", var))]
    ctx.node("BatchNormalization", layer.name, [ctx.inp(layer, 0)] + names,
             [ctx.out(layer, 0, ctx.rank(layer, 0))], epsilon=p.f(1, 0.0))


def read_scale(ctx, layer, p):
    """Scale: per-channel multiply (raw scale), optional raw bias; ``0=-233`` takes the scale
    from a second input blob."""
    n, rank = p.i(0, 0), ctx.rank(layer, 0)
    x = ctx.inp(layer, 0)
    if n == ABSENT:
        if len(layer.inputs) != 2:
            ctx.fail(layer, "scale_data_size=-233 needs two inputs")
        s = ctx.inp(layer, 1)
        srank = ctx.rank(layer, 1)
        if srank != rank:
            shaped = ctx.tensor_name(f"{s}_reshaped")
            shape = ctx.const(f"{layer.name}_scale_shape",
                              np.array([1, -1] + [1] * (rank - 1), np.int64))
            ctx.node("Reshape", ctx.node_name(f"{layer.name}_scale_reshape"), [s, shape], [shaped])
            s = shaped
        bias = None
    else:
        if n <= 0:
            ctx.fail(layer, f"scale_data_size {n} must be positive")
        s = ctx.const(f"{layer.name}_scale", ctx.bin.raw(n, f"layer '{layer.name}' (Scale) scale")
                      .reshape(_channel_shape(rank, n)))
        bias = ctx.bin.raw(n, f"layer '{layer.name}' (Scale) bias") if p.i(1, 0) else None
    out = ctx.out(layer, 0, rank)
    if bias is None:
        ctx.node("Mul", layer.name, [x, s], [out])
        return
    mid = ctx.tensor_name(f"{out}_scaled")
    ctx.node("Mul", layer.name, [x, s], [mid])
    b = ctx.const(f"{layer.name}_bias", bias.reshape(_channel_shape(rank, n)))
    ctx.node("Add", ctx.node_name(f"{layer.name}_bias"), [mid, b], [out])


def read_bias(ctx, layer, p):
    """Bias: per-channel add (``0=bias_data_size``, raw)."""
    n, rank = p.i(0, 0), ctx.rank(layer, 0)
    if n <= 0:
        ctx.fail(layer, f"bias_data_size {n} must be positive")
    b = ctx.const(f"{layer.name}_bias", ctx.bin.raw(n, f"layer '{layer.name}' (Bias) bias")
                  .reshape(_channel_shape(rank, n)))
    ctx.node("Add", layer.name, [ctx.inp(layer, 0), b], [ctx.out(layer, 0, rank)])


def read_eltwise(ctx, layer, p):
    """Eltwise: ``0=op`` (0 prod, 1 sum with optional ``1=coeffs``, 2 max) over n inputs."""
    op_type, coeffs = p.i(0, 0), p.arr(1)
    xs = [ctx.inp(layer, k) for k in range(len(layer.inputs))]
    if len(xs) < 2:
        ctx.fail(layer, "needs at least two inputs")
    rank = max(ctx.rank(layer, k) for k in range(len(xs)))
    if op_type == 1 and coeffs:
        if len(coeffs) != len(xs):
            ctx.fail(layer, f"{len(coeffs)} coeffs for {len(xs)} inputs")
        scaled = []
        for k, (x, c) in enumerate(zip(xs, coeffs)):
            if float(c) == 1.0:
                scaled.append(x)
                continue
            t = ctx.tensor_name(f"{layer.name}_in{k}_scaled")
            cc = ctx.const(f"{layer.name}_coeff{k}", np.array(c, np.float32))
            ctx.node("Mul", ctx.node_name(f"{layer.name}_coeff{k}"), [x, cc], [t])
            scaled.append(t)
        xs = scaled
    op = {0: "Mul", 1: "Add", 2: "Max"}.get(op_type)
    if op is None:
        ctx.fail(layer, f"unknown op_type {op_type}")
    out = ctx.out(layer, 0, rank)
    if op == "Max" or len(xs) == 2:
        ctx.node(op, layer.name, xs, [out])
        return
    acc = xs[0]
    for k, x in enumerate(xs[1:], 1):
        dst = out if k == len(xs) - 1 else ctx.tensor_name(f"{layer.name}_acc{k}")
        ctx.node(op, layer.name if k == len(xs) - 1 else ctx.node_name(f"{layer.name}_{k}"),
                 [acc, x], [dst])
        acc = dst


BINARY = {0: ("Add", False), 1: ("Sub", False), 2: ("Mul", False), 3: ("Div", False),
          4: ("Max", False), 5: ("Min", False), 6: ("Pow", False), 7: ("Sub", True),
          8: ("Div", True), 9: ("Pow", True)}


def read_binaryop(ctx, layer, p):
    """BinaryOp: ``0=op 1=with_scalar 2=b``; two-input broadcasting over ncnn dims."""
    op_type = p.i(0, 0)
    if op_type not in BINARY:
        ctx.unsupported(layer, f"op_type {op_type} (atan2) is not supported")
    op, swap = BINARY[op_type]
    a = ctx.inp(layer, 0)
    if p.i(1, 0):
        b = ctx.const(f"{layer.name}_b", np.array(p.f(2, 0.0), np.float32))
        rank = ctx.rank(layer, 0)
    else:
        if len(layer.inputs) != 2:
            ctx.fail(layer, "needs two inputs (or 1=1 with a scalar)")
        b = ctx.inp(layer, 1)
        ra, rb = ctx.rank(layer, 0), ctx.rank(layer, 1)
        rank = max(ra, rb)
        a, b = ctx.broadcastable(layer, a, ra, b, rb)
    ctx.node(op, layer.name, [b, a] if swap else [a, b], [ctx.out(layer, 0, rank)])


UNARY = {0: "Abs", 1: "Neg", 2: "Floor", 3: "Ceil", 5: "Sqrt", 7: "Exp", 8: "Log", 9: "Sin",
         10: "Cos", 11: "Tan", 12: "Asin", 13: "Acos", 14: "Atan", 15: "Reciprocal", 16: "Tanh",
         18: "Round"}


def read_unaryop(ctx, layer, p):
    """UnaryOp: ``0=op`` (abs, neg, floor, ceil, square, sqrt, rsqrt, exp, log, trig, ...)."""
    op_type = p.i(0, 0)
    x, rank = ctx.inp(layer, 0), ctx.rank(layer, 0)
    out = ctx.out(layer, 0, rank)
    if op_type in UNARY:
        ctx.node(UNARY[op_type], layer.name, [x], [out])
    elif op_type == 4:
        ctx.node("Mul", layer.name, [x, x], [out])
    elif op_type == 6:
        mid = ctx.tensor_name(f"{x}_sqrt")
        ctx.node("Sqrt", ctx.node_name(f"{layer.name}_sqrt"), [x], [mid])
        ctx.node("Reciprocal", layer.name, [mid], [out])
    elif op_type == 17:
        mid = ctx.tensor_name(f"{x}_log")
        ctx.node("Log", ctx.node_name(f"{layer.name}_log"), [x], [mid])
        k = ctx.const(f"{layer.name}_inv_ln10", np.array(1.0 / math.log(10.0), np.float32))
        ctx.node("Mul", layer.name, [mid, k], [out])
    else:
        ctx.fail(layer, f"unknown op_type {op_type}")


def read_split(ctx, layer, p):
    """Split: every output is the input blob (no IR node)."""
    for k in range(len(layer.outputs)):
        ctx.alias(layer, k, ctx.inp(layer, 0), ctx.rank(layer, 0))


def read_noop(ctx, layer, p):
    """Noop: pass-through (no IR node)."""
    for k in range(min(len(layer.inputs), len(layer.outputs))):
        ctx.alias(layer, k, ctx.inp(layer, k), ctx.rank(layer, k))


def read_dropout(ctx, layer, p):
    """Dropout: identity, or a multiply when ``0=scale`` is not 1."""
    scale = p.f(0, 1.0)
    if scale == 1.0:
        ctx.alias(layer, 0, ctx.inp(layer, 0), ctx.rank(layer, 0))
        return
    k = ctx.const(f"{layer.name}_scale", np.array(scale, np.float32))
    ctx.node("Mul", layer.name, [ctx.inp(layer, 0), k], [ctx.out(layer, 0, ctx.rank(layer, 0))])


def read_concat(ctx, layer, p):
    """Concat: ``0=axis`` in ncnn dims."""
    rank = ctx.rank(layer, 0)
    axis = _ir_axis(ctx, layer, p.i(0, 0), rank)
    xs = [ctx.inp(layer, k) for k in range(len(layer.inputs))]
    ctx.node("Concat", layer.name, xs, [ctx.out(layer, 0, rank)], axis=axis)


def read_softmax(ctx, layer, p):
    """Softmax: ``0=axis`` in ncnn dims."""
    rank = ctx.rank(layer, 0)
    axis = _ir_axis(ctx, layer, p.i(0, 0), rank)
    ctx.node("Softmax", layer.name, [ctx.inp(layer, 0)], [ctx.out(layer, 0, rank)], axis=axis)


def read_slice(ctx, layer, p):
    """Slice: ``0=slices`` (sizes, -233 = the rest) or ``2=indices`` along ``1=axis``; one ONNX
    Slice per output."""
    rank = ctx.rank(layer, 0)
    axis = _ir_axis(ctx, layer, p.i(1, 0), rank)
    x, n = ctx.inp(layer, 0), len(layer.outputs)
    indices, slices = p.arr(2), p.arr(0)
    if indices:
        if len(indices) != n - 1:
            ctx.fail(layer, f"{len(indices)} indices for {n} outputs")
        bounds = [0] + [int(v) for v in indices] + [INT_MAX]
    else:
        if len(slices) != n:
            ctx.fail(layer, f"{len(slices)} slices for {n} outputs")
        sizes = [int(v) for v in slices]
        if ABSENT in sizes[:-1]:
            shape = ctx.shape(x)
            if shape is None:
                ctx.fail(layer, "needs the input shape (pass --option input_shape=...)")
            total = shape[axis]
            known = sum(s for s in sizes if s != ABSENT)
            rest = sizes.count(ABSENT)
            sizes = [s if s != ABSENT else (total - known) // rest for s in sizes]
        bounds = [0]
        for s in sizes:
            bounds.append(INT_MAX if s == ABSENT else bounds[-1] + s)
    for k in range(n):
        starts = ctx.const(f"{layer.name}_starts{k}", np.array([bounds[k]], np.int64))
        ends = ctx.const(f"{layer.name}_ends{k}", np.array([bounds[k + 1]], np.int64))
        axes = ctx.const(f"{layer.name}_axes{k}", np.array([axis], np.int64))
        name = layer.name if k == 0 else ctx.node_name(f"{layer.name}_{k}")
        ctx.node("Slice", name, [x, starts, ends, axes], [ctx.out(layer, k, rank)])


def read_crop(ctx, layer, p):
    """Crop: ONNX-Slice style ``9=starts 10=ends 11=axes``, or offsets ``0,1,13,2`` with sizes
    ``3,4,14,5`` (-233 = up to the end minus ``6,7,15,8``; the runtime rejects size 0)."""
    rank = ctx.rank(layer, 0)
    x = ctx.inp(layer, 0)
    starts, ends, axes = p.arr(9), p.arr(10), p.arr(11)
    if len(layer.inputs) > 1:
        ctx.unsupported(layer, "cropping to a reference blob is not supported")
    if starts:
        if not axes:
            axes = list(range(len(starts)))
        if not (len(starts) == len(ends) == len(axes)):
            ctx.fail(layer, "starts, ends and axes differ in length")
        ir_axes = [_ir_axis(ctx, layer, int(a), rank) for a in axes]
        ends = [min(int(e), INT_MAX) for e in ends]
    else:
        names = {1: ["w"], 2: ["w", "h"], 3: ["w", "h", "c"], 4: ["w", "h", "d", "c"]}[rank]
        ids = {"w": (0, 3, 6), "h": (1, 4, 7), "d": (13, 14, 15), "c": (2, 5, 8)}
        shape = ctx.shape(x)
        starts, ends, ir_axes = [], [], []
        for k, dim in enumerate(names):
            off_id, size_id, off2_id = ids[dim]
            off, size, off2 = p.i(off_id, 0), p.i(size_id, 0), p.i(off2_id, 0)
            if off == 0 and size == ABSENT and off2 == 0:
                continue
            ir_axis = rank - k   # w is the last IR axis
            if size > 0:
                end = off + size
            elif size != ABSENT:
                ctx.fail(layer, f"crop size {size} for {dim} (sizes are > 0, or -233 for the rest)")
            elif off2 == 0:
                end = INT_MAX
            else:
                if shape is None:
                    ctx.fail(layer, "needs the input shape (pass --option input_shape=...)")
                end = shape[ir_axis] - off2
            starts.append(off)
            ends.append(end)
            ir_axes.append(ir_axis)
    if not ir_axes:
        ctx.alias(layer, 0, x, rank)
        return
    inputs = [x] + [ctx.const(f"{layer.name}_{k}", np.array(v, np.int64))
                    for k, v in (("starts", starts), ("ends", ends), ("axes", ir_axes))]
    ctx.node("Slice", layer.name, inputs, [ctx.out(layer, 0, rank)])


def read_reshape(ctx, layer, p):
    """Reshape: ``0=w 1=h 11=d 2=c`` (-233 absent, 0 copy, -1 infer) to 1..4 dims."""
    if p.i(3, 0):
        ctx.unsupported(layer, "Reshape with permute=1 is not supported")
    w, h, d, c = p.i(0, ABSENT), p.i(1, ABSENT), p.i(11, ABSENT), p.i(2, ABSENT)
    if w == ABSENT:
        ctx.fail(layer, "Reshape needs at least 0=w")
    dims = 1 if h == ABSENT else 2 if c == ABSENT else 3 if d == ABSENT else 4
    target = {1: [w], 2: [h, w], 3: [c, h, w], 4: [c, d, h, w]}[dims]
    names = {1: ["w"], 2: ["h", "w"], 3: ["c", "h", "w"], 4: ["c", "d", "h", "w"]}
    x, rank = ctx.inp(layer, 0), ctx.rank(layer, 0)
    if 0 in target and rank != dims:
        shape = ctx.shape(x)
        if shape is None:
            ctx.fail(layer, "needs the input shape (pass --option input_shape=...)")
        src = dict(zip(names[rank], shape[1:]))
        target = [src.get(n, 1) if v == 0 else v for n, v in zip(names[dims], target)]
    shape_c = ctx.const(f"{layer.name}_shape", np.array([1] + target, np.int64))
    ctx.node("Reshape", layer.name, [x, shape_c], [ctx.out(layer, 0, dims)])


def read_flatten(ctx, layer, p):
    """Flatten: to a 1-D blob."""
    ctx.node("Flatten", layer.name, [ctx.inp(layer, 0)], [ctx.out(layer, 0, 1)], axis=1)


def permute_orders(rank: int):
    """ncnn Permute order types for a blob of ``rank`` dims, as IR perms (batch axis first).

    For each order type ncnn lists the source of the output's dims from innermost to outermost
    (e.g. 3-D type 3 ``CWH``: out w = in c, out h = in w, out c = in h). Types enumerate the
    permutations grouped by the outermost source, inner ones varying first.
    """
    letters = {1: "W", 2: "WH", 3: "WHC", 4: "WHDC"}[rank]
    orders = _orders(letters)
    ir_index = {ch: rank - k for k, ch in enumerate(letters)}   # W is the last IR axis
    perms = []
    for order in orders:
        inner_to_outer = [ir_index[ch] for ch in order]
        perms.append([0] + inner_to_outer[::-1])
    return perms


def _orders(letters: str):
    if len(letters) == 1:
        return [letters]
    result = []
    for last in reversed(letters):
        rest = letters.replace(last, "")
        result += [o + last for o in _orders(rest)]
    return result


def read_permute(ctx, layer, p):
    """Permute: ``0=order_type`` (ncnn dims) to an IR Transpose."""
    rank = ctx.rank(layer, 0)
    perms = permute_orders(rank)
    order = p.i(0, 0)
    if not 0 <= order < len(perms):
        ctx.fail(layer, f"order_type {order} is out of range for a {rank}-D blob")
    ctx.node("Transpose", layer.name, [ctx.inp(layer, 0)], [ctx.out(layer, 0, rank)],
             perm=perms[order])


def read_interp(ctx, layer, p):
    """Interp: nearest / bilinear / bicubic resize by scale or to a size (3-D blobs)."""
    if ctx.rank(layer, 0) != 3:
        ctx.fail(layer, f"expects a 3-D (c,h,w) input, got {ctx.rank(layer, 0)}-D")
    if p.i(5, 0) or len(layer.inputs) > 1:
        ctx.unsupported(layer, "dynamic target size is not supported")
    rtype, align = p.i(0, 2), p.i(6, 0)
    x = ctx.inp(layer, 0)
    attrs = {1: dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor"),
             2: dict(mode="linear", coordinate_transformation_mode="align_corners" if align
                     else "half_pixel"),
             3: dict(mode="cubic", cubic_coeff_a=-0.75,
                     coordinate_transformation_mode="align_corners" if align else "half_pixel")}
    if rtype not in attrs:
        ctx.fail(layer, f"unknown resize_type {rtype}")
    oh, ow = p.i(3, 0), p.i(4, 0)
    shape = ctx.shape(x)
    roi = ctx.const(f"{layer.name}_roi", np.zeros(0, np.float32))
    if shape is not None:
        h, w = shape[2], shape[3]
        if not (oh and ow):
            oh, ow = int(h * p.f(1, 1.0)), int(w * p.f(2, 1.0))
        sizes = ctx.const(f"{layer.name}_sizes", np.array([1, shape[1], oh, ow], np.int64))
        inputs = [x, roi, ctx.const(f"{layer.name}_scales", np.zeros(0, np.float32)), sizes]
    elif oh or ow:
        ctx.fail(layer, "needs the input shape (pass --option input_shape=...)")
    else:
        scales = np.array([1, 1, p.f(1, 1.0), p.f(2, 1.0)], np.float32)
        inputs = [x, roi, ctx.const(f"{layer.name}_scales", scales)]
    ctx.node("Resize", layer.name, inputs, [ctx.out(layer, 0, 3)], **attrs[rtype])


def read_padding(ctx, layer, p):
    """Padding: ``0=top 1=bottom 2=left 3=right 7=front 8=behind``, constant/replicate/reflect."""
    rank = ctx.rank(layer, 0)
    if p.i(6, 0) or len(layer.inputs) > 1:
        ctx.unsupported(layer, "per-channel or dynamic padding is not supported")
    if rank > 3:
        ctx.unsupported(layer, "padding a 4-D blob is not supported")
    top, bottom, left, right = p.i(0, 0), p.i(1, 0), p.i(2, 0), p.i(3, 0)
    front, behind = p.i(7, 0), p.i(8, 0)
    begin = {1: [left], 2: [top, left], 3: [front, top, left]}[rank]
    end = {1: [right], 2: [bottom, right], 3: [behind, bottom, right]}[rank]
    mode = {0: "constant", 1: "edge", 2: "reflect"}.get(p.i(4, 0))
    if mode is None:
        ctx.fail(layer, f"unknown padding type {p.i(4, 0)}")
    pads = ctx.const(f"{layer.name}_pads", np.array([0] + begin + [0] + end, np.int64))
    value = ctx.const(f"{layer.name}_value", np.array(p.f(5, 0.0), np.float32))
    ctx.node("Pad", layer.name, [ctx.inp(layer, 0), pads, value], [ctx.out(layer, 0, rank)],
             mode=mode)


def read_shufflechannel(ctx, layer, p):
    """ShuffleChannel: ``0=group 1=reverse`` as Reshape-Transpose-Reshape."""
    if ctx.rank(layer, 0) != 3:
        ctx.fail(layer, f"expects a 3-D (c,h,w) input, got {ctx.rank(layer, 0)}-D")
    group = p.i(0, 1)
    x = ctx.inp(layer, 0)
    shape = ctx.shape(x)
    if shape is None:
        ctx.fail(layer, "needs the input shape (pass --option input_shape=...)")
    _, c, h, w = shape
    if group <= 0 or c % group:
        ctx.fail(layer, f"group {group} does not divide {c} channels")
    a, b = (c // group, group) if p.i(1, 0) else (group, c // group)
    s1 = ctx.const(f"{layer.name}_shape5", np.array([1, a, b, h, w], np.int64))
    s2 = ctx.const(f"{layer.name}_shape4", np.array([1, c, h, w], np.int64))
    t1, t2 = ctx.tensor_name(f"{x}_grouped"), ctx.tensor_name(f"{x}_shuffled")
    ctx.node("Reshape", ctx.node_name(f"{layer.name}_split"), [x, s1], [t1])
    ctx.node("Transpose", layer.name, [t1], [t2], perm=[0, 2, 1, 3, 4])
    ctx.node("Reshape", ctx.node_name(f"{layer.name}_merge"), [t2, s2], [ctx.out(layer, 0, 3)])


def _scale_blob(ctx, layer, n, what, rank):
    data = ctx.bin.raw(n, f"layer '{layer.name}' ({layer.type}) {what}")
    return data.reshape(_channel_shape(rank, n) if n > 1 else ())


def _to_int8(ctx, layer, x, out, scale_name):
    """round(x * scale) clamped to [-127, 127], in float."""
    mul, rnd = ctx.tensor_name(f"{out}_scaled"), ctx.tensor_name(f"{out}_rounded")
    ctx.node("Mul", ctx.node_name(f"{layer.name}_scale"), [x, scale_name], [mul])
    ctx.node("Round", ctx.node_name(f"{layer.name}_round"), [mul], [rnd])
    lo = ctx.const(f"{layer.name}_qmin", np.array(-127.0, np.float32))
    hi = ctx.const(f"{layer.name}_qmax", np.array(127.0, np.float32))
    ctx.node("Clip", layer.name, [rnd, lo, hi], [out])


def read_quantize(ctx, layer, p):
    """Quantize: ``round(x * scale)`` clamped to int8 codes, kept as float values."""
    rank = ctx.rank(layer, 0)
    s = ctx.const(f"{layer.name}_scale", _scale_blob(ctx, layer, p.i(0, 1), "scale", rank))
    _to_int8(ctx, layer, ctx.inp(layer, 0), ctx.out(layer, 0, rank), s)


def read_dequantize(ctx, layer, p):
    """Dequantize: ``x * scale + bias`` (raw scale and bias blobs)."""
    rank = ctx.rank(layer, 0)
    s = ctx.const(f"{layer.name}_scale", _scale_blob(ctx, layer, p.i(0, 1), "scale", rank))
    nb = p.i(1, 0)
    out = ctx.out(layer, 0, rank)
    if not nb:
        ctx.node("Mul", layer.name, [ctx.inp(layer, 0), s], [out])
        return
    b = ctx.const(f"{layer.name}_bias", _scale_blob(ctx, layer, nb, "bias", rank))
    mid = ctx.tensor_name(f"{out}_scaled")
    ctx.node("Mul", ctx.node_name(f"{layer.name}_scale"), [ctx.inp(layer, 0), s], [mid])
    ctx.node("Add", layer.name, [mid, b], [out])


def read_requantize(ctx, layer, p):
    """Requantize: ``int8(act(x * scale_in + bias) * scale_out)``, kept as float values."""
    rank = ctx.rank(layer, 0)
    n_in, n_out, nb = p.i(0, 1), p.i(1, 1), p.i(2, 0)
    s_in = ctx.const(f"{layer.name}_scale_in", _scale_blob(ctx, layer, n_in, "scale_in", rank))
    s_out = ctx.const(f"{layer.name}_scale_out", _scale_blob(ctx, layer, n_out, "scale_out", rank))
    x = ctx.inp(layer, 0)
    out = ctx.out(layer, 0, rank)
    t = ctx.tensor_name(f"{out}_dequantized")
    ctx.node("Mul", ctx.node_name(f"{layer.name}_scale_in"), [x, s_in], [t])
    if nb:
        b = ctx.const(f"{layer.name}_bias", _scale_blob(ctx, layer, nb, "bias", rank))
        tb = ctx.tensor_name(f"{out}_biased")
        ctx.node("Add", ctx.node_name(f"{layer.name}_bias"), [t, b], [tb])
        t = tb
    act = p.i(3, 0)
    if act:
        ta = ctx.tensor_name(f"{out}_activated")
        _activation(ctx, layer, t, ta, act, p.arr(4))
        t = ta
    _to_int8(ctx, layer, t, out, s_out)


READERS: Dict[str, Callable] = {
    "Input": read_input, "MemoryData": read_memorydata,
    "Convolution": read_convolution, "ConvolutionDepthWise": read_convolutiondepthwise,
    "Deconvolution": read_deconvolution, "DeconvolutionDepthWise": read_deconvolutiondepthwise,
    "InnerProduct": read_innerproduct, "Pooling": read_pooling,
    "ReLU": read_relu, "Clip": read_clip, "Sigmoid": _simple("Sigmoid"), "Swish": read_swish,
    "HardSigmoid": read_hardsigmoid, "HardSwish": read_hardswish, "Mish": _simple("Mish"),
    "TanH": _simple("Tanh"), "ELU": read_elu, "PReLU": read_prelu, "AbsVal": _simple("Abs"),
    "BatchNorm": read_batchnorm, "Scale": read_scale, "Bias": read_bias,
    "Eltwise": read_eltwise, "BinaryOp": read_binaryop, "UnaryOp": read_unaryop,
    "Split": read_split, "Concat": read_concat, "Slice": read_slice, "Crop": read_crop,
    "Reshape": read_reshape, "Flatten": read_flatten, "Permute": read_permute,
    "Softmax": read_softmax, "Interp": read_interp, "Padding": read_padding,
    "Dropout": read_dropout, "Noop": read_noop, "ShuffleChannel": read_shufflechannel,
    "Quantize": read_quantize, "Dequantize": read_dequantize, "Requantize": read_requantize,
}
