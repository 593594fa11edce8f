"""Importers of MNN's element-wise, shape and layout ops."""
from __future__ import annotations

import math

import numpy as np

from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.imports import BINARY, NCHW, NHWC, UNARY, Importer, Skip, imports
from ptqconv.formats.mnn.imports_conv import _clip
from ptqconv.formats.mnn.reader import MnnOp

INT64_MAX = np.iinfo(np.int64).max


def _x(im: Importer, op: MnnOp):
    return im.input_name(op, 0), im.t(op.outputs[0])


@imports("ReLU")
def _relu(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    slope = float(op.param.scalar(S.RELU.slope, "f", 0.0)) if op.param else 0.0
    if slope:
        im.node("LeakyRelu", [x], [out], name=op.name, alpha=slope)
    else:
        im.node("Relu", [x], [out], name=op.name)
    im.follow(out, x)


@imports("ReLU6")
def _relu6(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    p = op.param
    lo = float(p.scalar(S.RELU6.minValue, "f", 0.0)) if p else 0.0
    hi = float(p.scalar(S.RELU6.maxValue, "f", 6.0)) if p else 6.0
    _clip(im, x, out, lo, hi)
    im.follow(out, x)


@imports("Sigmoid", "TanH")
def _sigmoid(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    im.node("Sigmoid" if op.type == "Sigmoid" else "Tanh", [x], [out], name=op.name)
    im.follow(out, x)


@imports("ELU")
def _elu(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    im.node("Elu", [x], [out], name=op.name, alpha=float(op.param.scalar(0, "f", 1.0)))
    im.follow(out, x)


@imports("PReLU")
def _prelu(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    slope = op.param.array(1, "f")
    if slope is None or slope.size == 0:
        im.net.fail(op, "PReLU without slopes")
    x = im.nchw(x)
    rank = im.rank.get(x) or 4   # MNN's PReLU is a per-channel (axis 1) op
    shape = (-1,) + (1,) * (rank - 2) if slope.size > 1 and rank >= 2 else (-1,)
    im.node("PRelu", [x, im.const(op.name + "_slope", np.asarray(slope, np.float32)
                                  .reshape(shape))], [out], name=op.name)
    im.follow(out, x)


@imports("UnaryOp")
def _unary(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    code = int(op.param.scalar(S.UNARY.opType, "i", 0))
    im.follow(out, x)
    if code in UNARY:
        im.node(UNARY[code], [x], [out], name=op.name)
        return
    if code == 4:       # SQUARE
        im.node("Mul", [x, x], [out], name=op.name)
    elif code == 6:     # RSQRT
        mid = im.fresh(out + "__sqrt")
        im.node("Sqrt", [x], [mid])
        im.node("Reciprocal", [mid], [out], name=op.name)
    elif code in (16, 17, 28):  # LOG1P, BNLL (softplus), EXPM1
        one = im.const(out + "_one", np.array(1.0, np.float32))
        mid = im.fresh(out + "__mid")
        if code == 28:
            im.node("Exp", [x], [mid])
            im.node("Sub", [mid, one], [out], name=op.name)
        else:
            src = x
            if code == 17:
                src = im.fresh(out + "__exp")
                im.node("Exp", [x], [src])
            im.node("Add", [src, one], [mid])
            im.node("Log", [mid], [out], name=op.name)
    elif code == 34:    # SILU
        mid = im.fresh(out + "__sigmoid")
        im.node("Sigmoid", [x], [mid])
        im.node("Mul", [x, mid], [out], name=op.name)
    elif code in (32, 33):  # GELU: 0.5 x (1 + erf(x / sqrt 2))
        names = [im.fresh(out + s) for s in ("__scaled", "__erf", "__plus", "__half")]
        im.node("Mul", [x, im.const(out + "_rsqrt2", np.array(1 / math.sqrt(2), np.float32))],
                [names[0]])
        im.node("Erf", [names[0]], [names[1]])
        im.node("Add", [names[1], im.const(out + "_one", np.array(1.0, np.float32))], [names[2]])
        im.node("Mul", [x, im.const(out + "_half", np.array(0.5, np.float32))], [names[3]])
        im.node("Mul", [names[2], names[3]], [out], name=op.name)
    else:
        raise Skip(f"UnaryOp {code}")


def _same_layout(im: Importer, names):
    """Bring 4-D operands of an element-wise op to the layout of the first computed one."""
    computed = [n for n in names if n not in im.constants]
    target = im.layout.get(computed[0], NCHW) if computed else NCHW
    convert = im.nhwc if target == NHWC else im.nchw
    return [convert(n) for n in names], (computed[0] if computed else names[0])


@imports("BinaryOp")
def _binary(im: Importer, op: MnnOp) -> None:
    code = int(op.param.scalar(S.BINARY.opType, "i", 0))
    act = int(op.param.scalar(S.BINARY.activationType, "i", 0))
    (a, b), ref = _same_layout(im, [im.input_name(op, 0), im.input_name(op, 1)])
    out = im.t(op.outputs[0])
    dst = out if not act else im.fresh(out + "__preact")
    if code in BINARY:
        im.node(BINARY[code], [a, b], [dst], name=op.name)
    elif code == 14:    # SquaredDifference
        mid = im.fresh(out + "__diff")
        im.node("Sub", [a, b], [mid])
        im.node("Mul", [mid, mid], [dst], name=op.name)
    elif code == 13:    # FLOORDIV
        mid = im.fresh(out + "__div")
        im.node("Div", [a, b], [mid])
        im.node("Floor", [mid], [dst], name=op.name)
    else:
        raise Skip(f"BinaryOp {code}")
    if act == 1:
        im.node("Relu", [dst], [out])
    elif act:
        raise Skip(f"BinaryOp with activation {act}")
    im.follow(out, ref)


@imports("Eltwise")
def _eltwise(im: Importer, op: MnnOp) -> None:
    kind = op.param.scalar(S.ELTWISE.type, "b", S.ELTWISE_SUM)
    coeff = op.param.array(S.ELTWISE.coeff, "f")
    names, ref = _same_layout(im, [im.input_name(op, k) for k in range(len(op.inputs))])
    out = im.t(op.outputs[0])
    if kind == S.ELTWISE_SUM and coeff is not None and coeff.size and np.any(coeff != 1):
        if coeff.size != len(names):
            im.net.fail(op, "Eltwise has a coefficient count different from its inputs")
        scaled = []
        for k, (n, c) in enumerate(zip(names, coeff)):
            s = im.fresh(f"{out}__coeff{k}")
            im.node("Mul", [n, im.const(s + "_c", np.array(c, np.float32))], [s])
            scaled.append(s)
        names = scaled
    onnx_op = {S.ELTWISE_PROD: "Mul", S.ELTWISE_SUM: "Add", S.ELTWISE_MAX: "Max",
               S.ELTWISE_SUB: "Sub"}.get(kind)
    if onnx_op is None:
        raise Skip(f"Eltwise type {kind}")
    acc = names[0]
    for k, n in enumerate(names[1:], start=1):
        dst = out if k == len(names) - 1 else im.fresh(f"{out}__{k}")
        im.node(onnx_op, [acc, n], [dst], name=op.name if dst == out else None)
        acc = dst
    if len(names) == 1:
        im.node("Identity", [acc], [out], name=op.name)
    im.follow(out, ref)


@imports("Concat")
def _concat(im: Importer, op: MnnOp) -> None:
    names = [im.t(i) for i in op.inputs]
    if not names:
        im.net.fail(op, "Concat without inputs")
    layouts = {im.layout.get(n, NCHW) for n in names if im.rank.get(n) == 4}
    if len(layouts) > 1:
        names = [im.nchw(n) for n in names]
    out = im.t(op.outputs[0])
    im.node("Concat", names, [out], name=op.name, axis=int(op.param.scalar(S.AXIS.axis, "i", 0)))
    im.follow(out, names[0])


@imports("Softmax")
def _softmax(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    im.node("Softmax", [x], [out], name=op.name, axis=int(op.param.scalar(S.AXIS.axis, "i", 1)))
    im.follow(out, x)


@imports("Reshape")
def _reshape(im: Importer, op: MnnOp) -> None:
    """Reshape of MNN's logical tensor. MNN 3.x reshapes an NC4HW4 tensor in NCHW order even
    when ``dimType`` says NHWC (checked on the TensorFlow-converted golden files), so the
    reshape is a plain one on the IR array; the output keeps the input's layout family."""
    x, out = _x(im, op)
    if len(op.inputs) > 1:
        shape_name = im.t(op.inputs[1])
        dims = im.constants.get(shape_name)
    else:
        dims = op.param.array(S.RESHAPE.dims, "i")
        if dims is None:
            im.net.fail(op, "Reshape without a target shape")
        shape_name = im.const(out + "_shape", np.asarray(dims, np.int64))
    out_rank = int(np.size(dims)) if dims is not None else None
    im.node("Reshape", [x, shape_name], [out], name=op.name)
    im.follow(out, x, im.layout.get(x, NCHW) if out_rank == 4 else NCHW, out_rank)


@imports("Flatten")
def _flatten(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    ax = int(op.param.scalar(S.FLATTEN.axis, "i", 1))
    end = int(op.param.scalar(S.FLATTEN.endAxis, "i", 0))
    rank = im.rank.get(x)
    if end not in (0, -1) and not (rank and end == rank - 1):
        raise Skip("Flatten with an end axis")
    x = im.nchw(x)
    im.node("Flatten", [x], [out], name=op.name, axis=ax)
    im.follow(out, x, NCHW, 2)


@imports("Permute", "Transpose")
def _permute(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    if op.type == "Permute":
        perm = op.param.array(S.PERMUTE.dims, "i")
        perm = [] if perm is None else [int(p) for p in perm]
    else:
        perm = [int(p) for p in im.const_value(op, 1).reshape(-1)]
    if sorted(perm) != list(range(len(perm))):
        im.net.fail(op, f"invalid permutation {perm}")
    im.node("Transpose", [x], [out], name=op.name, perm=perm)
    im.follow(out, x)


@imports("Squeeze", "Unsqueeze")
def _squeeze(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    dims = op.param.array(S.SQUEEZE.squeezeDims, "i")
    dims = [] if dims is None else [int(d) for d in dims]
    rank = im.rank.get(x)
    if op.type == "Squeeze":
        ins = [x] + ([im.const(out + "_axes", np.asarray(dims, np.int64))] if dims else [])
        new_rank = rank - len(dims) if rank is not None and dims else None
    else:
        if not dims:
            im.net.fail(op, "Unsqueeze without axes")
        ins = [x, im.const(out + "_axes", np.asarray(dims, np.int64))]
        new_rank = rank + len(dims) if rank is not None else None
    im.node(op.type, ins, [out], name=op.name)
    im.follow(out, x, NCHW if new_rank != 4 else None, new_rank)


@imports("Scale")
def _scale(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    s = op.param.array(S.SCALE.scaleData, "f")
    b = op.param.array(S.SCALE.biasData, "f")
    if s is None or s.size == 0:
        im.net.fail(op, "Scale without scale data")
    x = im.nchw(x)
    shape = (1, -1, 1, 1) if im.rank.get(x) == 4 else (-1,)
    mid = out if b is None or b.size == 0 else im.fresh(out + "__scaled")
    im.node("Mul", [x, im.const(op.name + "_scale", np.asarray(s, np.float32).reshape(shape))],
            [mid], name=op.name)
    if mid != out:
        if b.size != s.size:
            im.net.fail(op, "Scale bias and scale sizes differ")
        im.node("Add", [mid, im.const(op.name + "_bias", np.asarray(b, np.float32)
                                      .reshape(shape))], [out])
    im.follow(out, x)


@imports("Interp")
def _interp(im: Importer, op: MnnOp) -> None:
    p = op.param
    x, out = _x(im, op)
    x = im.nchw(x)
    rtype = int(p.scalar(S.INTERP.resizeType, "i", 1))
    modes = {1: ("nearest", "floor"), 2: ("linear", None), 3: ("cubic", None),
             4: ("nearest", "round_prefer_floor")}
    if rtype not in modes:
        raise Skip(f"Interp resizeType {rtype}")
    mode, nearest = modes[rtype]
    ctm_code = int(p.scalar(S.INTERP.ctm, "b", 0))
    ctm = {1: "align_corners", 2: "half_pixel", 3: "pytorch_half_pixel", 4: "asymmetric",
           5: "tf_half_pixel_for_nn"}.get(ctm_code)
    if ctm is None:
        if p.scalar(S.INTERP.alignCorners, "?", False):
            ctm = "align_corners"
        elif p.scalar(S.INTERP.halfPixelCenters, "?", False):
            ctm = "half_pixel"
        else:
            ctm = "asymmetric"
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if nearest:
        attrs["nearest_mode"] = nearest
    if mode == "cubic":
        attrs["cubic_coeff_a"] = float(p.scalar(S.INTERP.cubicCoeffA, "f", -0.75))
    if len(op.inputs) > 1:
        v = im.const_value(op, 1)
        key = "scales" if v.dtype.kind == "f" else "sizes"
        extra = im.const(out + "_" + key, v.astype(np.float32 if key == "scales" else np.int64))
    else:
        oh, ow = int(p.scalar(S.INTERP.outputHeight, "i", 0)), int(p.scalar(S.INTERP.outputWidth, "i", 0))
        hs, ws = float(p.scalar(S.INTERP.heightScale, "f", 0)), float(p.scalar(S.INTERP.widthScale, "f", 0))
        if oh > 0 and ow > 0:
            key, extra = "sizes", _sizes_like(im, x, out, [oh, ow])
        elif hs > 0 and ws > 0:
            key, extra = "scales", im.const(out + "_scales", np.asarray([1, 1, hs, ws], np.float32))
        else:
            im.net.fail(op, "Interp without output size or scale")
    ins = [x, "", extra] if key == "scales" else [x, "", "", extra]
    im.node("Resize", ins, [out], name=op.name, **attrs)
    im.follow(out, x, NCHW, 4)


def _sizes_like(im: Importer, x: str, out: str, hw) -> str:
    """Sizes [N, C, h, w] computed from ``x``'s shape (folded later by constant folding)."""
    shape, nc, sizes = (im.fresh(out + s) for s in ("__shape", "__nc", "__sizes"))
    im.node("Shape", [x], [shape])
    im.node("Slice", [shape, im.const(out + "_s0", np.array([0], np.int64)),
                      im.const(out + "_s2", np.array([2], np.int64))], [nc])
    im.node("Concat", [nc, im.const(out + "_hw", np.asarray(hw, np.int64))], [sizes], axis=0)
    return sizes


@imports("Padding")
def _padding(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    mode = int(op.param.scalar(S.PAD_PARAM.mode, "b", 0))
    names = {0: "constant", 1: "reflect", 3: "edge"}
    if mode not in names:
        raise Skip(f"Padding mode {mode}")
    pads = im.const_value(op, 1).reshape(-1).astype(np.int64)
    if pads.size % 2:
        im.net.fail(op, "Padding needs (begin, end) pairs")
    onnx_pads = np.concatenate([pads[0::2], pads[1::2]])
    ins = [x, im.const(out + "_pads", onnx_pads)]
    if len(op.inputs) > 2:
        ins.append(im.t(op.inputs[2]))
    im.node("Pad", ins, [out], name=op.name, mode=names[mode])
    im.follow(out, x)


@imports("Slice")
def _slice(im: Importer, op: MnnOp) -> None:
    x = im.input_name(op, 0)
    p = op.param
    ax = int(p.scalar(S.SLICE.axis, "i", 1))
    n = len(op.outputs)
    if len(op.inputs) > 1:
        sizes = [int(v) for v in im.const_value(op, 1).reshape(-1)]
        if len(sizes) != n:
            im.net.fail(op, "Slice sizes do not match its outputs")
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    else:
        points = p.array(S.SLICE.slicePoints, "i")
        points = [] if points is None else [int(v) for v in points]
        if len(points) != n - 1:
            raise Skip("Slice with slicePoints not matching its outputs")
        bounds = [0] + points + [INT64_MAX]
    axes = im.const(op.name + "_axis", np.array([ax], np.int64))
    for k, o in enumerate(op.outputs):
        out = im.t(o)
        im.node("Slice", [x, im.const(out + "_start", np.array([bounds[k]], np.int64)),
                          im.const(out + "_end", np.array([bounds[k + 1]], np.int64)), axes],
                [out], name=op.name if k == 0 else None)
        im.follow(out, x)


@imports("SliceTf")
def _slice_tf(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    begin, size = im.input_name(op, 1), im.input_name(op, 2)
    if begin in im.constants and size in im.constants:
        b = im.constants[begin].reshape(-1).astype(np.int64)
        s = im.constants[size].reshape(-1).astype(np.int64)
        if b.size != s.size:
            im.net.fail(op, "SliceTf begin and size differ in length")
        e = np.where(s < 0, INT64_MAX, b + s)
        ins = [x, im.const(out + "_start", b), im.const(out + "_end", e),
               im.const(out + "_axes", np.arange(b.size, dtype=np.int64))]
    else:
        end = im.fresh(out + "__end")
        im.node("Add", [begin, size], [end])
        ins = [x, begin, end]
    im.node("Slice", ins, [out], name=op.name)
    im.follow(out, x)


@imports("Shape")
def _shape(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    im.node("Shape", [x], [out], name=op.name)
    im.layout[out], im.rank[out] = NCHW, 1


@imports("Rank")
def _rank(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    mid = im.fresh(out + "__shape")
    im.node("Shape", [x], [mid])
    im.node("Size", [mid], [out], name=op.name)
    im.layout[out], im.rank[out] = NCHW, 0


@imports("Reduction")
def _reduction(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    code = int(op.param.scalar(S.REDUCTION.operation, "b", 0))
    if code not in S.REDUCE_OPS:
        raise Skip(f"Reduction operation {code}")
    dims = op.param.array(S.REDUCTION.dim, "i")
    if len(op.inputs) > 1:
        dims = im.const_value(op, 1)
    keep = int(op.param.scalar(S.REDUCTION.keepDims, "?", False))
    onnx_op = S.REDUCE_OPS[code]
    axes = None if dims is None or np.size(dims) == 0 else [int(d) for d in np.ravel(dims)]
    if onnx_op == "ReduceSum":
        ins = [x] + ([im.const(out + "_axes", np.asarray(axes, np.int64))] if axes else [])
        im.node(onnx_op, ins, [out], name=op.name, keepdims=keep)
    else:
        attrs = {"keepdims": keep}
        if axes:
            attrs["axes"] = axes
        im.node(onnx_op, [x], [out], name=op.name, **attrs)
    rank = im.rank.get(x)
    im.follow(out, x, None, rank if keep or rank is None else
              (rank - len(axes) if axes else 0))


@imports("Gather", "GatherV2")
def _gather(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    idx = im.input_name(op, 1)
    ax = 0
    if len(op.inputs) > 2:
        ax = int(im.const_value(op, 2).reshape(-1)[0])
    elif op.param is not None and op.param_type == "Axis":
        ax = int(op.param.scalar(S.AXIS.axis, "i", 0))
    im.node("Gather", [x, idx], [out], name=op.name, axis=ax)
    im.layout[out], im.rank[out] = NCHW, None


@imports("LRN")
def _lrn(im: Importer, op: MnnOp) -> None:
    x, out = _x(im, op)
    p = op.param
    if int(p.scalar(0, "i", 0)) != 0:
        raise Skip("LRN within a channel")
    x = im.nchw(x)
    im.node("LRN", [x], [out], name=op.name, size=int(p.scalar(1, "i", 5)),
            alpha=float(p.scalar(2, "f", 1e-4)), beta=float(p.scalar(3, "f", 0.75)),
            bias=float(p.scalar(4, "f", 1.0)))
    im.follow(out, x)


@imports("Select")
def _select(im: Importer, op: MnnOp) -> None:
    cond, a, b = (im.input_name(op, k) for k in range(3))
    out = im.t(op.outputs[0])
    im.node("Where", [cond, a, b], [out], name=op.name)
    im.follow(out, a if a not in im.constants else cond)


@imports("StridedSlice")
def _strided_slice(im: Importer, op: MnnOp) -> None:
    """StridedSlice: ONNX-style (fromType 1: begin, end, axes[, steps]) or TensorFlow-style
    (begin, end, strides with begin/end/shrink masks; ellipsis and new-axis masks unsupported)."""
    x, out = _x(im, op)
    p = op.param
    masks = [int(p.scalar(k, "i", 0)) if p is not None else 0 for k in range(2, 7)]
    begin_mask, end_mask, ellipsis, new_axis, shrink = masks
    from_onnx = p is not None and int(p.scalar(7, "i", 0)) == 1
    if ellipsis or new_axis:
        raise Skip("StridedSlice with ellipsis/new-axis masks")
    begin = im.const_value(op, 1).reshape(-1).astype(np.int64)
    end = im.const_value(op, 2).reshape(-1).astype(np.int64)
    if from_onnx:
        axes = (im.const_value(op, 3).reshape(-1).astype(np.int64) if len(op.inputs) > 3
                else np.arange(begin.size, dtype=np.int64))
        steps = (im.const_value(op, 4).reshape(-1).astype(np.int64) if len(op.inputs) > 4
                 else np.ones(begin.size, np.int64))
    else:
        axes = np.arange(begin.size, dtype=np.int64)
        steps = (im.const_value(op, 3).reshape(-1).astype(np.int64) if len(op.inputs) > 3
                 else np.ones(begin.size, np.int64))
        for k in range(begin.size):
            if begin_mask >> k & 1:
                begin[k] = 0 if steps[k] > 0 else INT64_MAX
            if end_mask >> k & 1:
                end[k] = INT64_MAX if steps[k] > 0 else -INT64_MAX
    ins = [x] + [im.const(out + s, v) for s, v in (("_start", begin), ("_end", end),
                                                     ("_axes", axes), ("_steps", steps))]
    dst = out if not shrink else im.fresh(out + "__full")
    im.node("Slice", ins, [dst], name=op.name)
    im.follow(dst, x)
    if shrink:
        dims = [k for k in range(begin.size) if shrink >> k & 1]
        im.node("Squeeze", [dst, im.const(out + "_axes", np.asarray(dims, np.int64))], [out])
        rank = im.rank.get(x)
        im.follow(out, x, NCHW, rank - len(dims) if rank is not None else None)


@imports("MatMul")
def _matmul(im: Importer, op: MnnOp) -> None:
    a, b = im.input_name(op, 0), im.input_name(op, 1)
    out = im.t(op.outputs[0])
    p = op.param
    flags = [p.scalar(S.MATMUL.transposeA, "?", False), p.scalar(S.MATMUL.transposeB, "?", False)]
    ins = []
    for name, flip in zip((a, b), flags):
        if flip:
            rank = im.rank.get(name)
            if rank is None or rank < 2:
                raise Skip("MatMul with a transposed operand of unknown rank")
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            t = im.fresh(name + "__t")
            im.node("Transpose", [name], [t], perm=perm)
            im.follow(t, name, NCHW)
            name = t
        ins.append(name)
    dst = out if len(op.inputs) < 3 else im.fresh(out + "__mm")
    im.node("MatMul", ins, [dst], name=op.name)
    if dst != out:
        im.node("Add", [dst, im.input_name(op, 2)], [out])
    ranks = [im.rank.get(n) for n in ins]
    im.follow(out, a, NCHW, max(ranks) if None not in ranks else None)
