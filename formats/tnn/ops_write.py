"""IR nodes -> TNN layers: the writing half of the op table.

Each writer takes the :class:`~ptqconv.formats.tnn.writer.WriteContext` and one IR node and
emits one or more :class:`ProtoLayer` (with their float resources). Activations fused by the
``fuse_activation`` pass become the Convolution ``activation_type`` when TNN has one for them
(ReLU, ReLU6), else a separate layer.
"""
from __future__ import annotations

import numpy as np

from ptqconv.formats.tnn.ops_read import FLT_MAX

ACT_TYPE = {"Relu": 1, "Relu6": 2}
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _f(v) -> str:
    """A float parameter as TNN reads it back (shortest float32 text)."""
    return str(np.float32(v))


def _ints(node, key, n, default):
    value = node.attrs.get(key)
    return [default] * n if value is None else [int(v) for v in value]


def clip_bounds(ctx, node):
    """(min, max) of a Clip node from its constant inputs or attributes; None if not constant."""
    bounds = []
    for k, key, default in ((1, "min", -FLT_MAX), (2, "max", FLT_MAX)):
        if len(node.inputs) > k and node.inputs[k]:
            value = ctx.constant(node.inputs[k])
            if value is None or value.size != 1:
                return None
            bounds.append(float(value.reshape(-1)[0]))
        else:
            bounds.append(float(node.attrs.get(key, default)))
    return tuple(bounds)


def activation_kind(op, params):
    """Map an ONNX activation (op + params dict) to ("Relu"|"Relu6"|op, params)."""
    if op == "Clip" and params.get("min") == 0.0 and params.get("max") == 6.0:
        return "Relu6", {}
    return op, params


def emit_activation(ctx, node, op, params, src, dst, name):
    """Emit a standalone activation layer ``op`` reading blob ``src`` writing ``dst``."""
    op, params = activation_kind(op, params)
    if op == "Relu":
        ctx.layer("ReLU", name, [src], [dst], [], node)
    elif op == "Relu6":
        ctx.layer("ReLU6", name, [src], [dst], [], node)
    elif op == "Clip":
        ctx.layer("Clip", name, [src], [dst], [_f(params["min"]), _f(params["max"])], node)
    elif op in ("Sigmoid", "Tanh"):
        ctx.layer(op, name, [src], [dst], [], node)
    elif op == "HardSwish":
        ctx.layer("HardSwish", name, [src], [dst], [_f(1.0 / 6), _f(0.5)], node)
    elif op == "HardSigmoid":
        ctx.layer("HardSigmoid", name, [src], [dst], [_f(params.get("alpha", 0.2)),
                                                     _f(params.get("beta", 0.5))], node)
    else:
        ctx.unsupported(node, f"fused {op}")


def _fused(ctx, node, out_blob):
    """(activation_type for the layer, blob the layer writes): a fused activation TNN cannot
    express in the layer is emitted afterwards as its own layer by :func:`_finish_fused`."""
    op = node.attrs.get("fused_activation")
    if op is None:
        return 0, out_blob
    kind, _ = activation_kind(op, node.attrs.get("fused_activation_params") or {})
    if node.op == "Conv" and kind in ACT_TYPE:
        return ACT_TYPE[kind], out_blob
    return 0, ctx.temp_blob(out_blob + "_preact")


def _finish_fused(ctx, node, act_type, written, out_blob):
    op = node.attrs.get("fused_activation")
    if op is not None and not act_type:
        emit_activation(ctx, node, op, node.attrs.get("fused_activation_params") or {},
                        written, out_blob, ctx.temp_layer(ctx.layer_name(node) + "_act"))


def _pad_fields(ctx, node, kernel_rank=2):
    """(pad_type, pad_h, pad_w, explicit [t, l, b, r] or None when symmetric)."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto == "SAME_UPPER":
        return 0, 0, 0, None
    if auto == "VALID":
        return 1, 0, 0, None
    if auto not in ("NOTSET", ""):
        ctx.unsupported(node, f"auto_pad {auto}")
        return -1, 0, 0, None
    t, left, b, r = _ints(node, "pads", 4, 0)
    if (t, left) == (b, r):
        return -1, t, left, None
    return -1, 0, 0, [t, left, b, r]


def write_conv(ctx, node):
    """Conv / ConvTranspose -> Convolution / Deconvolution (+ activation)."""
    w = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim != 4:
        ctx.unsupported(node, "non-2D or non-constant weights")
        return
    deconv = node.op == "ConvTranspose"
    if deconv and (any(_ints(node, "output_padding", 2, 0)) or "output_shape" in node.attrs):
        ctx.unsupported(node, "output_padding/output_shape")
        return
    group = int(node.attrs.get("group", 1))
    kh, kw = [int(v) for v in node.attrs.get("kernel_shape", w.shape[2:])]
    sh, sw = _ints(node, "strides", 2, 1)
    dh, dw = _ints(node, "dilations", 2, 1)
    pad_type, ph, pw, explicit = _pad_fields(ctx, node)
    src = ctx.blob(node.inputs[0])
    if explicit is not None:
        if deconv:
            ctx.unsupported(node, "asymmetric pads")
            return
        src = emit_pad(ctx, node, src, explicit, 0.0)
    bias = ctx.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and bias is None:
        ctx.unsupported(node, "non-constant bias")
        return
    out_c = w.shape[1] * group if deconv else w.shape[0]
    in_c = w.shape[0] if deconv else w.shape[1]  # conv: per group (tnn.md §1.8)
    out_blob = ctx.blob(node.outputs[0])
    act, written = _fused(ctx, node, out_blob)
    params = [group, in_c, out_c, kh, kw, sh, sw, ph, pw, int(bias is not None), pad_type, dh, dw,
              act]
    name = ctx.layer_name(node)
    fields = {"name": name, "has_bias": int(bias is not None), "filter": ctx.float_weights(w)}
    if bias is not None:
        fields["bias"] = ctx.float_bias(bias.reshape(-1))
    ctx.layer("Deconvolution" if deconv else "Convolution", name, [src], [written],
              [str(p) for p in params], node, fields,
              weighted={"weight": w, "bias": bias, "group": group, "kind": "conv"})
    _finish_fused(ctx, node, act, written, out_blob)


def emit_pad(ctx, node, src, tlbr, value):
    """Emit a Pad layer for explicit [top, left, bottom, right] pads; returns the padded blob."""
    t, left, b, r = tlbr
    out = ctx.temp_blob(src + "_padded")
    ctx.layer("Pad", ctx.temp_layer(ctx.layer_name(node) + "_pad"), [src], [out],
              ["0", "0", str(t), str(b), str(left), str(r), "0", "0", "0", _f(value)], node)
    return out


def flatten_source(ctx, node):
    """The Flatten node feeding a Gemm that the InnerProduct can absorb, or None."""
    prod = ctx.producer(node.inputs[0])
    if prod is None or prod.op != "Flatten" or len(ctx.consumers(prod.outputs[0])) != 1 or \
            prod.outputs[0] in ctx.graph_outputs:
        return None
    return prod


def write_gemm(ctx, node):
    """Gemm / MatMul with constant weights -> InnerProduct (absorbing a preceding Flatten)."""
    w = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or w.ndim != 2 or ctx.constant(node.inputs[0]) is not None:
        ctx.unsupported(node, "non-constant weights")
        return
    bias = None
    if node.op == "MatMul":
        rank = ctx.rank(node.inputs[0])
        if rank != 2:
            ctx.unsupported(node, "MatMul on a tensor that is not 2-D")
            return
        w = w.T
    else:
        if node.attrs.get("transA", 0):
            ctx.unsupported(node, "transA")
            return
        w = (w if node.attrs.get("transB", 0) else w.T) * np.float32(node.attrs.get("alpha", 1.0))
        if len(node.inputs) > 2 and node.inputs[2]:
            c = ctx.constant(node.inputs[2])
            if c is None or c.size not in (1, w.shape[0]):
                ctx.unsupported(node, "bias that is not a constant vector")
                return
            bias = np.broadcast_to(c.reshape(-1), (w.shape[0],)) * np.float32(
                node.attrs.get("beta", 1.0))
    w = np.ascontiguousarray(w, dtype=np.float32)
    flat = flatten_source(ctx, node)
    src, axis = (ctx.blob(flat.inputs[0]), int(flat.attrs.get("axis", 1))) if flat else \
        (ctx.blob(node.inputs[0]), 1)
    if flat is not None:
        ctx.absorbed.add(flat.name)
    out_blob = ctx.blob(node.outputs[0])
    act, written = _fused(ctx, node, out_blob)
    name = ctx.layer_name(node)
    fields = {"name": name, "weight": ctx.float_weights(w),
              "bias": ctx.float_bias(bias.astype(np.float32) if bias is not None else
                                     np.zeros(0, np.float32))}
    ctx.layer("InnerProduct", name, [src], [written],
              [str(w.shape[0]), str(int(bias is not None)), "0", str(axis)], node, fields,
              weighted={"weight": w, "bias": bias, "group": 1, "kind": "fc",
                        "act_tensor": node.inputs[0]})
    _finish_fused(ctx, node, act, written, out_blob)


def write_pool(ctx, node):
    """MaxPool / AveragePool / Global*Pool -> Pooling."""
    pool_type = 0 if "Max" in node.op else 1
    out = ctx.blob(node.outputs[0])
    if node.op.startswith("Global"):
        ctx.layer("Pooling", ctx.layer_name(node), [ctx.blob(node.inputs[0])], [out],
                  [str(pool_type)] + "0 0 1 1 0 0 -1 -1 -1 0 0 0 0".split(), node)
        return
    kernel = node.attrs.get("kernel_shape", [])
    if len(kernel) != 2 or any(_ints(node, "dilations", 2, 1)[k] != 1 for k in range(2)) or \
            int(node.attrs.get("storage_order", 0)) or len(node.outputs) > 1:
        ctx.unsupported(node, "non-2D, dilated or indexed pooling")
        return
    kh, kw = [int(v) for v in kernel]
    sh, sw = _ints(node, "strides", 2, 1)
    pad_type, ph, pw, explicit = _pad_fields(ctx, node)
    src = ctx.blob(node.inputs[0])
    include_pad = pool_type == 1 and int(node.attrs.get("count_include_pad", 0))
    if explicit is not None or (include_pad and (ph or pw)):
        if pool_type == 1 and not include_pad:
            ctx.unsupported(node, "asymmetric pads without count_include_pad")
            return
        tlbr = explicit or [ph, pw, ph, pw]
        src = emit_pad(ctx, node, src, tlbr, -FLT_MAX if pool_type == 0 else 0.0)
        ph = pw = 0
    params = [pool_type, kh, kw, sh, sw, ph, pw, -1, -1, pad_type,
              int(node.attrs.get("ceil_mode", 0)), 0, 0, 0]
    ctx.layer("Pooling", ctx.layer_name(node), [src], [out], [str(p) for p in params], node)


def write_activation(ctx, node):
    """Relu / Clip / Sigmoid / Tanh / HardSwish / HardSigmoid -> the TNN activation layer."""
    params = dict(node.attrs)
    if node.op == "Clip":
        bounds = clip_bounds(ctx, node)
        if bounds is None:
            ctx.unsupported(node, "non-constant bounds")
            return
        params = {"min": bounds[0], "max": bounds[1]}
    emit_activation(ctx, node, node.op, params, ctx.blob(node.inputs[0]),
                    ctx.blob(node.outputs[0]), ctx.layer_name(node))


def write_prelu(ctx, node):
    """PRelu with a constant slope -> PReLU."""
    slope = ctx.constant(node.inputs[1])
    if slope is None:
        ctx.unsupported(node, "non-constant slope")
        return
    slope = slope.astype(np.float32).reshape(-1)
    name = ctx.layer_name(node)
    ctx.layer("PReLU", name, [ctx.blob(node.inputs[0])], [ctx.blob(node.outputs[0])],
              [str(int(slope.size == 1)), "0"], node,
              {"name": name, "slope": ctx.float_param(slope)})


BINARY = {"Add": "Add", "Sub": "Sub", "Mul": "Mul", "Div": "Div", "Max": "Maximum",
          "Min": "Minimum"}


def write_binary(ctx, node):
    """Add/Sub/Mul/Div/Max/Min of two blobs, or of a blob and a constant (a resource; the
    Maximum/Minimum record header carries type id 0, which TNN resolves by the type string as
    its ONNX converter writes it)."""
    kind = BINARY[node.op]
    if len(node.inputs) != 2:
        ctx.unsupported(node, f"{len(node.inputs)} inputs")
        return
    consts = [ctx.constant(i) for i in node.inputs]
    out = ctx.blob(node.outputs[0])
    name = ctx.layer_name(node)
    if consts[0] is None and consts[1] is None:
        ctx.layer(kind, name, [ctx.blob(i) for i in node.inputs], [out], ["1"], node)
        return
    if consts[0] is not None and consts[1] is not None:
        ctx.unsupported(node, "two constant operands")
        return
    index = 0 if consts[0] is not None else 1
    value = consts[index].astype(np.float32)
    ctx.layer(kind, name, [ctx.blob(node.inputs[1 - index])], [out], [str(index)], node,
              {"element": ctx.float_param(value, dims=value.shape)})


def write_concat(ctx, node):
    """Concat -> Concat axis."""
    ctx.layer("Concat", ctx.layer_name(node), [ctx.blob(i) for i in node.inputs],
              [ctx.blob(node.outputs[0])], [str(ctx.axis(node, node.inputs[0], 1))], node)


def write_softmax(ctx, node):
    """Softmax -> Softmax axis (opset 13 semantics; older opsets only over the last axis)."""
    axis = ctx.axis(node, node.inputs[0], 1 if ctx.opset < 13 else -1)
    if ctx.opset < 13 and ctx.rank(node.inputs[0]) != axis + 1:
        ctx.unsupported(node, "opset < 13 Softmax over several axes")
        return
    ctx.layer("Softmax", ctx.layer_name(node), [ctx.blob(node.inputs[0])],
              [ctx.blob(node.outputs[0])], [str(axis)], node)


def write_split(ctx, node):
    """Split -> SplitV axis count sizes (sizes from the input, attribute or equal parts)."""
    axis = ctx.axis(node, node.inputs[0], 0)
    sizes = None
    if len(node.inputs) > 1 and node.inputs[1]:
        value = ctx.constant(node.inputs[1])
        sizes = None if value is None else [int(v) for v in value.reshape(-1)]
    elif "split" in node.attrs:
        sizes = [int(v) for v in node.attrs["split"]]
    else:
        shape = ctx.shape(node.inputs[0])
        if shape is not None and shape[axis] % len(node.outputs) == 0:
            sizes = [shape[axis] // len(node.outputs)] * len(node.outputs)
    if sizes is None or len(sizes) != len(node.outputs):
        ctx.unsupported(node, "unknown split sizes")
        return
    ctx.layer("SplitV", ctx.layer_name(node), [ctx.blob(node.inputs[0])],
              [ctx.blob(o) for o in node.outputs],
              [str(axis), str(len(sizes))] + [str(s) for s in sizes], node)


def write_reshape(ctx, node):
    """Reshape with a constant shape -> Reshape 0 -1 n shape... 0."""
    shape = ctx.constant(node.inputs[1])
    if shape is None or int(node.attrs.get("allowzero", 0)):
        ctx.unsupported(node, "non-constant shape or allowzero")
        return
    shape = [int(v) for v in shape.reshape(-1)]
    ctx.layer("Reshape", ctx.layer_name(node), [ctx.blob(node.inputs[0])],
              [ctx.blob(node.outputs[0])],
              ["0", "-1", str(len(shape))] + [str(s) for s in shape] + ["0"], node)


def write_flatten(ctx, node):
    """Flatten -> Flatten axis."""
    ctx.layer("Flatten", ctx.layer_name(node), [ctx.blob(node.inputs[0])],
              [ctx.blob(node.outputs[0])], [str(ctx.axis(node, node.inputs[0], 1))], node)


def write_transpose(ctx, node):
    """Transpose -> Permute n order."""
    perm = node.attrs.get("perm")
    if perm is None:
        rank = ctx.rank(node.inputs[0])
        if rank is None:
            ctx.unsupported(node, "no perm and unknown rank")
            return
        perm = list(range(rank))[::-1]
    ctx.layer("Permute", ctx.layer_name(node), [ctx.blob(node.inputs[0])],
              [ctx.blob(node.outputs[0])], [str(len(perm))] + [str(int(p)) for p in perm], node)


def _resize_mode(node):
    mode = node.attrs.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    coord = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    if node.op == "Upsample":
        return (1, 0) if mode == "nearest" else None
    if mode == "nearest":
        nearest = node.attrs.get("nearest_mode", "round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        return (1, 0) if coord == "asymmetric" and nearest == "floor" else None
    if mode == "linear" and coord in ("align_corners", "half_pixel", "pytorch_half_pixel"):
        return 2, int(coord == "align_corners")
    if mode == "cubic" and coord in ("align_corners", "half_pixel", "pytorch_half_pixel"):
        return 3, int(coord == "align_corners")
    return None


def write_resize(ctx, node):
    """Resize / Upsample (constant scales or sizes over H, W) -> Upsample."""
    mode = _resize_mode(node)
    if mode is None:
        ctx.unsupported(node, "interpolation mode")
        return
    scales = sizes = None
    if node.op == "Upsample":
        scales = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else \
            np.asarray(node.attrs.get("scales", []), np.float32)
    else:
        if len(node.inputs) > 2 and node.inputs[2]:
            scales = ctx.constant(node.inputs[2])
        if len(node.inputs) > 3 and node.inputs[3]:
            sizes = ctx.constant(node.inputs[3])
    params = None
    if scales is not None and scales.size == 4 and np.all(scales[:2] == 1):
        params = [_f(scales[2]), _f(scales[3]), str(mode[1])]
    elif sizes is not None and sizes.size == 4:
        shape = ctx.shape(node.inputs[0])
        if shape is not None and tuple(shape[:2]) == tuple(int(s) for s in sizes[:2]):
            params = ["0", "0", str(mode[1]), str(int(sizes[2])), str(int(sizes[3]))]
    if params is None:
        ctx.unsupported(node, "non-constant or batch/channel scales")
        return
    ctx.layer("Upsample", ctx.layer_name(node), [ctx.blob(node.inputs[0])],
              [ctx.blob(node.outputs[0])], [str(mode[0])] + params, node)


def write_batchnorm(ctx, node):
    """BatchNormalization (constants) -> BatchNormCxx with folded scale and bias."""
    values = [ctx.constant(i) for i in node.inputs[1:5]]
    if any(v is None for v in values) or len(node.outputs) > 1:
        ctx.unsupported(node, "non-constant statistics")
        return
    gamma, beta, mean, var = (v.astype(np.float64).reshape(-1) for v in values)
    scale = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    bias = beta - mean * scale
    name = ctx.layer_name(node)
    ctx.layer("BatchNormCxx", name, [ctx.blob(node.inputs[0])], [ctx.blob(node.outputs[0])], [],
              node, {"scale": ctx.float_param(scale.astype(np.float32)),
                     "bias": ctx.float_param(bias.astype(np.float32))})


def write_pad(ctx, node):
    """Pad (4-D, constant/reflect/edge, no padding of N) -> Pad."""
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else \
        np.asarray(node.attrs.get("pads", []))
    value = 0.0
    if len(node.inputs) > 2 and node.inputs[2]:
        v = ctx.constant(node.inputs[2])
        value = None if v is None else float(v.reshape(-1)[0])
    kind = {"constant": 0, "reflect": 1, "edge": 2}.get(mode)
    if pads is None or pads.size != 8 or kind is None or value is None or pads[0] or pads[4] or \
            (len(node.inputs) > 3 and node.inputs[3]):
        ctx.unsupported(node, "padding other than C/H/W of a 4-D tensor")
        return
    _, cb, t, left, _, ce, b, r = [int(p) for p in pads]
    ctx.layer("Pad", ctx.layer_name(node), [ctx.blob(node.inputs[0])],
              [ctx.blob(node.outputs[0])],
              ["0", "0", str(t), str(b), str(left), str(r), str(cb), str(ce), str(kind),
               _f(value)], node)


def write_identity(ctx, node):
    """Identity -> Split with one output (TNN's copy layer)."""
    ctx.layer("Split", ctx.layer_name(node), [ctx.blob(node.inputs[0])],
              [ctx.blob(node.outputs[0])], [], node)


WRITERS = {
    "Conv": write_conv, "ConvTranspose": write_conv, "Gemm": write_gemm, "MatMul": write_gemm,
    "MaxPool": write_pool, "AveragePool": write_pool, "GlobalMaxPool": write_pool,
    "GlobalAveragePool": write_pool, "Relu": write_activation, "Clip": write_activation,
    "Sigmoid": write_activation, "Tanh": write_activation, "HardSwish": write_activation,
    "HardSigmoid": write_activation, "PRelu": write_prelu, "Add": write_binary,
    "Sub": write_binary, "Mul": write_binary, "Div": write_binary, "Max": write_binary,
    "Min": write_binary, "Concat": write_concat, "Softmax": write_softmax, "Split": write_split,
    "Reshape": write_reshape, "Flatten": write_flatten, "Transpose": write_transpose,
    "Resize": write_resize, "Upsample": write_resize, "BatchNormalization": write_batchnorm,
    "Pad": write_pad, "Identity": write_identity,
}
