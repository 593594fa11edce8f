"""Importers of MNN's weighted and pooling ops: convolutions (float, MNN 3.x int8, legacy
ConvInt8), deconvolutions, InnerProduct, Pooling and the legacy FloatToInt8/Int8ToFloat pair."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ptqconv.core.qtable import INT8, ActQuant, WeightQuant
from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.idst import IdstError, decode_dense
from ptqconv.formats.mnn.imports import NCHW, Importer, Skip, imports
from ptqconv.formats.mnn.reader import MnnOp

CONV_TYPES = ("Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise",
              "ConvInt8", "DepthwiseConvInt8")
DEPTHWISE = ("ConvolutionDepthwise", "DeconvolutionDepthwise", "DepthwiseConvInt8")
LEGACY = ("ConvInt8", "DepthwiseConvInt8")


def _pads_attrs(table, pad_mode: int, pads, pad_x: int, pad_y: int) -> dict:
    """ONNX pads/auto_pad from MNN padMode + pads ([top, left, bottom, right]) or padX/padY."""
    if pad_mode == S.PAD_SAME:
        return {"auto_pad": "SAME_UPPER"}
    if pad_mode == S.PAD_VALID:
        return {"pads": [0, 0, 0, 0]}
    if pads is not None and len(pads) == 4:
        return {"pads": [int(p) for p in pads]}
    if pads is not None and len(pads) == 2:
        return {"pads": [int(pads[0]), int(pads[1]), int(pads[0]), int(pads[1])]}
    return {"pads": [pad_y, pad_x, pad_y, pad_x]}


def _dequant_idst(im: Importer, op: MnnOp, q) -> tuple:
    """(float weights flat, per-channel steps or None, bits) of an IDSTQuan table."""
    kind = q.scalar(S.IDST_QUAN.type, "i", 0)
    buf = q.array(S.IDST_QUAN.buffer, "b")
    alpha = q.array(S.IDST_QUAN.alpha, "f")
    bits = q.scalar(S.IDST_QUAN.aMaxOrBits, "i", 8) or 8
    if q.scalar(S.IDST_QUAN.has_scaleInt, "?", False):
        raise Skip(f"{op.type} with integer weight scales (has_scaleInt)")
    if buf is None or alpha is None or alpha.size == 0:
        im.net.fail(op, "quantized weights without buffer or alpha")
    if kind == 1:
        try:
            codes = decode_dense(buf, q.scalar(S.IDST_QUAN.shapeInt32, "?", False))
        except IdstError as exc:
            im.net.fail(op, f"quantized weights: {exc}")
    elif kind == 4:
        codes = np.asarray(buf, dtype=np.int16)
    else:
        raise Skip(f"{op.type} with IDSTQuan weight type {kind}")
    codes = codes.reshape(-1) if codes.ndim == 1 else codes
    rows = codes.shape[0] if codes.ndim == 2 else alpha.size
    flat = codes.reshape(rows, -1).astype(np.float32) if codes.size % max(rows, 1) == 0 else None
    if flat is None:
        im.net.fail(op, "quantized weight size does not match its scales")
    if alpha.size == rows:
        return (flat * alpha.reshape(-1, 1)).reshape(-1), np.array(alpha, np.float32), bits
    if alpha.size == 2 * rows:  # asymmetric: (min, step) pairs, codes offset by 2^(bits-1)
        mins, steps = alpha[0::2].reshape(-1, 1), alpha[1::2].reshape(-1, 1)
        return ((flat + 2 ** (bits - 1)) * steps + mins).reshape(-1), None, bits
    im.net.fail(op, f"{alpha.size} weight scale(s) for {rows} output channel(s)")
    return None


def _u_out(im: Importer, op: MnnOp) -> float:
    """Unit of a legacy int8 conv output: the dequantization step when every consumer is an
    Int8ToFloat with one uniform scale, else 1.0 (code units)."""
    users = im.consumers.get(op.outputs[0], [])
    steps = set()
    for u in users:
        if u.type != "Int8ToFloat" or u.param is None:
            return 1.0
        ts = u.param.array(S.QUANT_FLOAT.tensorScale, "f")
        if ts is None or ts.size == 0 or np.ptp(ts) > 1e-12 * max(abs(float(ts[0])), 1e-30):
            return 1.0
        steps.add(float(ts[0]))
    return steps.pop() if len(steps) == 1 else 1.0


@imports(*CONV_TYPES)
def _conv(im: Importer, op: MnnOp) -> None:
    if len(op.inputs) != 1:
        raise Skip(f"{op.type} with weights given as inputs")
    p = op.param
    c = p.table(S.CONV2D.common, "Convolution2DCommon")
    if c is None:
        im.net.fail(op, "convolution without its common parameters")
    if p.has(S.CONV2D.sparseParameter) or p.has(S.CONV2D.external):
        raise Skip(f"{op.type} with sparse or external weights")
    g = lambda slot, d: int(c.scalar(slot, "i", d))  # noqa: E731
    kx, ky = g(S.CONV2D_COMMON.kernelX, 1), g(S.CONV2D_COMMON.kernelY, 1)
    sx, sy = g(S.CONV2D_COMMON.strideX, 1), g(S.CONV2D_COMMON.strideY, 1)
    dx, dy = g(S.CONV2D_COMMON.dilateX, 1), g(S.CONV2D_COMMON.dilateY, 1)
    group, oc = max(g(S.CONV2D_COMMON.group, 1), 1), g(S.CONV2D_COMMON.outputCount, 0)
    if min(kx, ky, sx, sy, dx, dy) < 1 or oc < 1 or kx * ky > 1 << 20:
        im.net.fail(op, f"invalid geometry (kernel {ky}x{kx}, stride {sy}x{sx}, outputs {oc})")
    relu = c.scalar(S.CONV2D_COMMON.relu, "?", False)
    relu6 = c.scalar(S.CONV2D_COMMON.relu6, "?", False)
    legacy = op.type in LEGACY
    deconv = op.type.startswith("Deconvolution")
    bias = p.array(S.CONV2D.bias, "f")
    steps, bits, sym = None, 8, None
    if legacy:
        sym = p.table(S.CONV2D.symmetricQuan, "QuantizedFloatParam")
        if sym is None or sym.array(S.QUANT_FLOAT.weight, "b") is None:
            im.net.fail(op, "int8 convolution without int8 weights")
        w = sym.array(S.QUANT_FLOAT.weight, "b").astype(np.float32)
    else:
        w = p.array(S.CONV2D.weight, "f")
        quan = p.table(S.CONV2D.quanParameter, "IDSTQuan")
        if (w is None or w.size == 0) and quan is not None:
            w, steps, bits = _dequant_idst(im, op, quan)
        elif w is None or w.size == 0:
            im.net.fail(op, "convolution without weights")
    per_kernel = oc * kx * ky
    if w.size % per_kernel:
        im.net.fail(op, f"{w.size} weights do not fit {oc} outputs x {ky}x{kx} kernel")
    per = w.size // per_kernel
    if op.type in DEPTHWISE:
        if per != 1:
            im.net.fail(op, "depthwise weights must have one input channel per output")
        shape, group = [oc, 1, ky, kx], oc
    elif deconv:
        shape = [per * group, oc // group, ky, kx] if oc % group == 0 else None
        if shape is None or np.prod(shape) != w.size:
            im.net.fail(op, "deconvolution weights do not match outputCount/group")
    else:
        shape = [oc, per, ky, kx]
    x = im.nchw(im.input_name(op, 0))
    out = im.t(op.outputs[0])
    weights = np.asarray(w, np.float32).reshape(shape)
    if bias is None or bias.size == 0:
        bias = np.zeros(oc, np.float32)
    elif bias.size != oc and not legacy:
        im.net.fail(op, f"{bias.size} biases for {oc} outputs")
    attrs = {"kernel_shape": [ky, kx], "strides": [sy, sx], "dilations": [dy, dx],
             "group": group}
    attrs.update(_pads_attrs(c, c.scalar(S.CONV2D_COMMON.padMode, "b", 0),
                             c.array(S.CONV2D_COMMON.pads, "i"), g(S.CONV2D_COMMON.padX, 0),
                             g(S.CONV2D_COMMON.padY, 0)))
    if deconv:
        out_pads = c.array(S.CONV2D_COMMON.outPads, "i")
        if out_pads is not None and len(out_pads) == 2 and any(out_pads):
            attrs["output_padding"] = [int(v) for v in out_pads]
    lo_hi = None
    if legacy:
        weights, bias, lo_hi = _legacy_fold(im, op, sym, x, weights, relu or relu6)
        relu = relu6 = False
    wname = im.const(op.name + "_weight", weights)
    bname = im.const(op.name + "_bias", np.asarray(bias, np.float32).reshape(-1))
    pre = out if not (relu or relu6 or lo_hi) else im.fresh(out + "__conv")
    node = im.node("ConvTranspose" if deconv else "Conv", [x, wname, bname], [pre],
                   name=op.name, **attrs)
    if relu or relu6:
        _clip(im, pre, out, 0.0, 6.0 if relu6 else None)
    elif lo_hi:
        _clip(im, pre, out, *lo_hi)
    im.layout[out], im.rank[out] = NCHW, 4
    if legacy:
        im.unit[out] = _u_out(im, op)
        im.table.precision[node.name] = INT8
        im.table.weights[wname] = WeightQuant(_legacy_steps(im, op, sym, x), 0, 8)
        im.table.activations[x] = ActQuant(im.unit.get(x, 1.0),
                                           int(sym.scalar(S.QUANT_FLOAT.zeroPoint, "b", 0)))
        im.table.activations[out] = ActQuant(
            im.unit[out], int(sym.scalar(S.QUANT_FLOAT.outputZeroPoint, "b", 0)))
    elif steps is not None and not deconv:
        im.table.precision[node.name] = INT8
        im.table.weights[wname] = WeightQuant(steps, 0, int(bits))


def _legacy_scale(im: Importer, op: MnnOp, sym, oc: int) -> np.ndarray:
    scale = sym.array(S.QUANT_FLOAT.scale, "f")
    if scale is None or scale.size not in (1, oc):
        im.net.fail(op, "int8 convolution without one requantization scale per output")
    return np.broadcast_to(np.asarray(scale, np.float64), (oc,))


def _legacy_steps(im, op, sym, x):
    scale = sym.array(S.QUANT_FLOAT.scale, "f")
    u_out = im.unit[im.t(op.outputs[0])]
    return (np.asarray(scale, np.float64) * u_out / im.unit.get(x, 1.0)).astype(np.float32)


def _legacy_fold(im: Importer, op: MnnOp, sym, x: str, codes, relu: bool):
    """Float weights/bias/clip range of a legacy ConvInt8 in the units of its tensors:
    code_out = clamp(round(scale * (sum(q_w * code_in) + b_int)))."""
    oc = codes.shape[0]
    scale = _legacy_scale(im, op, sym, oc)
    b_int = sym.array(S.QUANT_FLOAT.bias, "i")
    b_int = np.zeros(oc) if b_int is None or b_int.size == 0 else np.asarray(b_int, np.float64)
    if b_int.size != oc:
        im.net.fail(op, f"{b_int.size} int32 biases for {oc} outputs")
    u_in = im.unit.get(x, 1.0)
    u_out = _u_out(im, op)
    w = codes.astype(np.float64) * (scale * u_out / u_in).reshape(-1, 1, 1, 1)
    b = b_int * scale * u_out
    zp_out = int(sym.scalar(S.QUANT_FLOAT.outputZeroPoint, "b", 0))
    lo = (int(sym.scalar(S.QUANT_FLOAT.clampMin, "b", -128)) - zp_out) * u_out
    hi = (int(sym.scalar(S.QUANT_FLOAT.clampMax, "b", 127)) - zp_out) * u_out
    return w.astype(np.float32), b.astype(np.float32), (max(lo, 0.0) if relu else lo, hi)


def _clip(im: Importer, src: str, dst: str, lo: Optional[float], hi: Optional[float]) -> None:
    """Relu (lo 0, no hi) or Clip(lo, hi) from ``src`` to ``dst``."""
    if lo == 0.0 and hi is None:
        im.node("Relu", [src], [dst])
        return
    ins = [src, im.const(dst + "_min", np.array(lo, np.float32)) if lo is not None else "",
           im.const(dst + "_max", np.array(hi, np.float32)) if hi is not None else ""]
    while ins and ins[-1] == "":
        ins.pop()
    im.node("Clip", ins, [dst])


@imports("FloatToInt8")
def _float_to_int8(im: Importer, op: MnnOp) -> None:
    p = op.param
    m = p.array(S.QUANT_FLOAT.tensorScale, "f")
    if m is None or m.size == 0 or not np.all(np.isfinite(m)) or np.any(m <= 0):
        im.net.fail(op, "FloatToInt8 needs positive multipliers (tensorScale)")
    zp = int(p.scalar(S.QUANT_FLOAT.zeroPoint, "b", 0))
    lo, hi = int(p.scalar(S.QUANT_FLOAT.clampMin, "b", -128)), int(p.scalar(S.QUANT_FLOAT.clampMax, "b", 127))
    x, out = im.input_name(op, 0), im.t(op.outputs[0])
    if np.ptp(m) <= 1e-6 * float(m[0]):
        unit, src = 1.0 / float(m[0]), x
    else:
        unit = 1.0
        src = im.fresh(out + "__scaled")
        im.node("Mul", [x, im.const(out + "_multiplier", _channel_const(im, x, m))], [src])
    _clip(im, src, out, (lo - zp) * unit, (hi - zp) * unit)
    im.follow(out, x)
    im.unit[out] = unit
    im.table.activations[out] = ActQuant(unit, zp)


@imports("Int8ToFloat")
def _int8_to_float(im: Importer, op: MnnOp) -> None:
    p = op.param
    ts = p.array(S.QUANT_FLOAT.tensorScale, "f")
    if ts is None or ts.size == 0 or not np.all(np.isfinite(ts)):
        im.net.fail(op, "Int8ToFloat needs its scales (tensorScale)")
    zp = int(p.scalar(S.QUANT_FLOAT.zeroPoint, "b", 0))
    x, out = im.input_name(op, 0), im.t(op.outputs[0])
    unit = im.unit.get(x, 1.0)
    ratio = np.asarray(ts, np.float64) / unit
    src = x
    if zp:
        src = im.fresh(out + "__centered")
        im.node("Sub", [x, im.const(out + "_zero", np.array(zp * unit, np.float32))], [src])
    if np.allclose(ratio, 1.0, rtol=1e-6):
        im.node("Identity", [src], [out], name=op.name)
    else:
        im.node("Mul", [src, im.const(out + "_scale", _channel_const(im, x, ratio))], [out],
                name=op.name)
    im.follow(out, x)
    im.unit.pop(out, None)


def _channel_const(im: Importer, x: str, values) -> np.ndarray:
    """Per-channel values shaped to broadcast over ``x`` (scalar when uniform)."""
    v = np.asarray(values, np.float32).reshape(-1)
    if v.size == 1 or np.ptp(v) == 0:
        return np.array(v[0], np.float32)
    if im.rank.get(x) == 4 and im.layout.get(x) == NCHW:
        return v.reshape(1, -1, 1, 1)
    return v


@imports("Pooling")
def _pool(im: Importer, op: MnnOp) -> None:
    p = op.param
    kind = p.scalar(S.POOL.type, "b", S.POOL_MAX)
    if kind not in (S.POOL_MAX, S.POOL_AVE):
        raise Skip(f"Pooling type {kind}")
    x = im.nchw(im.input_name(op, 0))
    out = im.t(op.outputs[0])
    if p.scalar(S.POOL.isGlobal, "?", False):
        im.node("GlobalMaxPool" if kind == S.POOL_MAX else "GlobalAveragePool", [x], [out],
                name=op.name)
    else:
        g = lambda slot, d: int(p.scalar(slot, "i", d))  # noqa: E731
        kx, ky = g(S.POOL.kernelX, 1), g(S.POOL.kernelY, 1)
        sx, sy = g(S.POOL.strideX, 1), g(S.POOL.strideY, 1)
        if min(kx, ky, sx, sy) < 1:
            im.net.fail(op, "invalid pooling kernel or stride")
        attrs = {"kernel_shape": [ky, kx], "strides": [sy, sx],
                 "ceil_mode": int(p.scalar(S.POOL.ceilModel, "?", True))}
        attrs.update(_pads_attrs(p, p.scalar(S.POOL.padType, "b", 0), p.array(S.POOL.pads, "i"),
                                 g(S.POOL.padX, 0), g(S.POOL.padY, 0)))
        if attrs.get("auto_pad"):
            attrs.pop("ceil_mode")
        if kind == S.POOL_AVE:
            attrs["count_include_pad"] = int(p.scalar(S.POOL.countType, "b", 0) ==
                                             S.COUNT_INCLUDE_PAD)
        im.node("MaxPool" if kind == S.POOL_MAX else "AveragePool", [x], [out], name=op.name,
                **attrs)
    im.follow(out, x, NCHW, 4)


@imports("Pooling3D")
def _pool3d(im: Importer, op: MnnOp) -> None:
    p = op.param
    if not p.scalar(S.POOL3D.isGlobal, "?", False):
        raise Skip("Pooling3D (non-global)")
    kind = p.scalar(S.POOL3D.type, "b", S.POOL_MAX)
    x = im.nchw(im.input_name(op, 0))
    out = im.t(op.outputs[0])
    im.node("GlobalMaxPool" if kind == S.POOL_MAX else "GlobalAveragePool", [x], [out],
            name=op.name)
    im.follow(out, x, NCHW)


@imports("InnerProduct")
def _inner_product(im: Importer, op: MnnOp) -> None:
    p = op.param
    if p.has(S.INNER_PRODUCT.quanParameter):
        raise Skip("InnerProduct with quantized weights")
    n = int(p.scalar(S.INNER_PRODUCT.outputCount, "i", 0))
    w = p.array(S.INNER_PRODUCT.weight, "f")
    if n < 1 or w is None or w.size % n:
        im.net.fail(op, "InnerProduct weights do not match outputCount")
    transpose = p.scalar(S.INNER_PRODUCT.transpose, "?", False)
    weights = np.asarray(w, np.float32).reshape((-1, n) if transpose else (n, -1))
    bias = p.array(S.INNER_PRODUCT.bias, "f")
    bias = np.zeros(n, np.float32) if bias is None or bias.size != n else np.asarray(bias)
    x = im.nchw(im.input_name(op, 0))
    flat = im.fresh(im.t(op.outputs[0]) + "__flat")
    im.node("Flatten", [x], [flat], axis=int(p.scalar(S.INNER_PRODUCT.axis, "i", 1)) or 1)
    out = im.t(op.outputs[0])
    im.node("Gemm", [flat, im.const(op.name + "_weight", weights),
                     im.const(op.name + "_bias", bias.astype(np.float32))], [out], name=op.name,
            transB=0 if transpose else 1)
    im.follow(out, x, NCHW, 2)
