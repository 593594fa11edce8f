"""IR graph -> MNN ops (the writer's op table).

Each ``@emits("OnnxOp", ...)`` function turns one IR node into MNN ops on a :class:`NetBuilder`.
Weighted ops ask the :class:`Exporter` for their int8 plan (None writes float weights).
Unsupported nodes raise :class:`Unsupported`; the exporter collects them all and raises one
:class:`UnsupportedOpsError`.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np

from ptqconv.core.errors import UnsupportedOpsError
from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.fbwrite import T, f32, flag, i8, i32
from ptqconv.formats.mnn.netbuild import (NC4HW4, NCHW, NetBuilder, axis, binary, conv_common,
                                          relu, relu6, unary)

EMITTERS: Dict[str, Callable] = {}
# ONNX element-wise ops that become MNN UnaryOp
UNARY = {"Abs": "ABS", "Neg": "NEG", "Floor": "FLOOR", "Ceil": "CEIL", "Sqrt": "SQRT",
         "Exp": "EXP", "Log": "LOG", "Sin": "SIN", "Cos": "COS", "Tan": "TAN", "Asin": "ASIN",
         "Acos": "ACOS", "Atan": "ATAN", "Reciprocal": "RECIPROCAL", "Sign": "SIGN",
         "Round": "ROUND", "Erf": "ERF", "Sigmoid": "SIGMOID", "Tanh": "TANH",
         "HardSwish": "HARDSWISH"}
BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "REALDIV", "Pow": "POW",
          "Max": "MAXIMUM", "Min": "MINIMUM", "Sum": "ADD", "Equal": "EQUAL",
          "Greater": "GREATER", "Less": "LESS", "GreaterOrEqual": "GREATER_EQUAL",
          "LessOrEqual": "LESS_EQUAL", "Mod": "FLOORMOD"}
REDUCE = {"ReduceSum": 0, "ReduceMean": 3, "ReduceMax": 4, "ReduceMin": 5, "ReduceProd": 6}
F32_MAX = 3.4028234663852886e38


class Unsupported(Exception):
    """This node cannot be written; the message names what is missing."""


def emits(*ops):
    """Register the decorated function as the emitter of ``ops``."""
    def deco(fn):
        for op in ops:
            EMITTERS[op] = fn
        return fn
    return deco


class Exporter:
    """Writes one IR graph; ``plan`` maps a node name to its int8 conv plan (see int8plan)."""

    def __init__(self, graph, plan=None, quant=None, source="graph", weight_only=False):
        self.g, self.plan, self.source = graph, plan or {}, source
        self.weight_only = weight_only
        self.nb = NetBuilder()
        self.alias: Dict[str, str] = {}
        self.outputs = set(graph.output_names())
        # reserve every IR tensor name so that helper tensors never take one
        self.nb._names.update(graph.constants)
        self.nb._names.update(graph.input_names())
        for n in graph.nodes:
            self.nb._names.update(o for o in n.outputs if o)
        if quant:
            self.nb.quant.update(quant)

    # ---- tensors -----------------------------------------------------------------------------
    def const(self, node, k: int) -> np.ndarray:
        """The constant value of input ``k`` of ``node`` (Unsupported if not a constant)."""
        if k >= len(node.inputs) or not node.inputs[k]:
            raise Unsupported(f"{node.op} without input {k}")
        name = node.inputs[k]
        if name not in self.g.constants:
            raise Unsupported(f"{node.op} with a non-constant input {k}")
        return np.asarray(self.g.constants[name])

    def opt_const(self, node, k: int) -> Optional[np.ndarray]:
        """Constant input ``k`` or None when it is omitted."""
        if k >= len(node.inputs) or not node.inputs[k]:
            return None
        return self.const(node, k)

    def value(self, name: str, layout: str = NCHW) -> str:
        """The MNN tensor holding IR tensor ``name`` in ``layout`` (constants become Const ops)."""
        if name in self.g.constants and name not in self.alias:
            self.alias[name] = self.nb.const(name, self.g.constants[name])
        return self.nb.as_layout(self.alias.get(name, name), layout)

    def layout_of(self, name: str) -> str:
        """Current layout of IR tensor ``name``."""
        return self.nb.layout.get(self.alias.get(name, name), NCHW)

    def out(self, name: str, layout: str = NCHW) -> str:
        """The MNN name an op should write IR tensor ``name`` to in ``layout``."""
        if layout != NCHW and name in self.outputs:
            mnn = self.nb.fresh(name + "__before_tr")
        else:
            mnn = name
            self.nb._names.add(name)
        self.alias[name] = mnn
        return mnn

    def finish_outputs(self, node) -> None:
        """Bring graph outputs written by ``node`` back to NCHW under their own name."""
        for name in node.outputs:
            mnn = self.alias.get(name, name)
            if name in self.outputs and mnn != name:
                src = self.nb.layout.get(mnn, NCHW)
                param = T({S.TENSOR_CONVERT.source: i8(S.NC4HW4 if src == NC4HW4 else S.NCHW),
                           S.TENSOR_CONVERT.dest: i8(S.NCHW)})
                self.nb.add("ConvertTensor", [mnn], [name], "TensorConvertInfo", param)
                if mnn in self.nb.quant:
                    self.nb.quant[name] = self.nb.quant[mnn]
                self.alias[name] = name

    def shape(self, name: str):
        """Static shape of IR tensor ``name`` or None."""
        return self.g.shape(name)

    # ---- driver ------------------------------------------------------------------------------
    def run(self) -> bytes:
        """Emit every node and serialize; all unsupported nodes are reported at once."""
        for t in self.g.inputs:
            shape = t.shape or ()
            self.nb.input_op(t.name, shape)
            self.nb._names.add(t.name)
        problems: List[str] = []
        for node in self.g.nodes:
            fn = EMITTERS.get(node.op)
            if fn is None or node.domain not in ("", "ai.onnx"):
                problems.append(node.op if not node.domain else f"{node.domain}::{node.op}")
                continue
            try:
                fn(self, node)
                self.finish_outputs(node)
            except Unsupported as exc:
                problems.append(f"{node.op} ('{node.name}': {exc})")
        if problems:
            raise UnsupportedOpsError(self.source, problems)
        for name in self.g.output_names():
            if self.alias.get(name, name) != name:
                raise UnsupportedOpsError(self.source, [f"output '{name}' written twice"])
        if self.weight_only:  # no activation quantInfo: MNN computes in float
            self.nb.quant.clear()
        return self.nb.serialize(self.g.output_names())

    # ---- shared pieces -------------------------------------------------------------------------
    def activation(self, op: str, params: dict, src: str, dst: str, layout: str) -> None:
        """Emit activation ``op`` (ONNX name) from MNN tensor ``src`` to ``dst``."""
        nb = self.nb
        if op == "Relu":
            nb.add("ReLU", [src], [dst], "Relu", relu(0.0), layout=layout)
        elif op == "LeakyRelu":
            nb.add("ReLU", [src], [dst], "Relu", relu(float(params.get("alpha", 0.01))),
                   layout=layout)
        elif op == "Clip":
            nb.add("ReLU6", [src], [dst], "Relu6",
                   relu6(float(params.get("min", -F32_MAX)), float(params.get("max", F32_MAX))),
                   layout=layout)
        elif op in UNARY:
            nb.add("UnaryOp", [src], [dst], "UnaryOp", unary(UNARY[op]), layout=layout)
        elif op == "HardSigmoid":
            a = nb.new_const(dst + "_alpha", np.array(params.get("alpha", 0.2), np.float32))
            b = nb.new_const(dst + "_beta", np.array(params.get("beta", 0.5), np.float32))
            t1, t2 = nb.fresh(dst + "_mul"), nb.fresh(dst + "_add")
            nb.add("BinaryOp", [src, a], [t1], "BinaryOp", binary("MUL"), layout=layout)
            nb.add("BinaryOp", [t1, b], [t2], "BinaryOp", binary("ADD"), layout=layout)
            nb.add("ReLU6", [t2], [dst], "Relu6", relu6(0.0, 1.0), layout=layout)
        elif op == "Elu":
            nb.add("ELU", [src], [dst], "ELU", T({0: f32(params.get("alpha", 1.0))}),
                   layout=layout)
        else:
            raise Unsupported(f"activation {op}")


def _fused(node):
    return node.attrs.get("fused_activation"), dict(node.attrs.get("fused_activation_params") or {})


def _conv_pads(ex, node, kernel, strides, dilations) -> List[int]:
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", ""):
        pads = list(node.attr("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise Unsupported("pads of a 2-D op must have 4 values")
        return [int(p) for p in pads]
    if auto == "VALID":
        return [0, 0, 0, 0]
    shape = ex.shape(node.inputs[0])
    if shape is None:
        raise Unsupported(f"auto_pad {auto} needs a static input shape")
    begin, end = [], []
    for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _split_fused(ex, node, layout):
    """(MNN name the weighted op writes, relu flag, relu6 flag, pending activation or None)."""
    act, params = _fused(node)
    out = node.outputs[0]
    if act is None:
        return ex.out(out, layout), False, False, None
    if act == "Relu":
        return ex.out(out, layout), True, False, None
    if act == "Clip" and params.get("min") == 0.0 and params.get("max") == 6.0:
        return ex.out(out, layout), False, True, None
    return ex.nb.fresh(out + "__preact"), False, False, (act, params)


def _finish_activation(ex, node, pre, pending, layout):
    if pending is not None:
        ex.activation(pending[0], pending[1], pre, ex.out(node.outputs[0], layout), layout)


def conv2d_table(common: T, weight, bias, qparams=None) -> T:
    """A ``Convolution2D`` table: float ``weight`` or the int8 tables in ``qparams``."""
    table = T({S.CONV2D.common: common, S.CONV2D.bias: np.asarray(bias, "<f4").reshape(-1)})
    if qparams is None:
        table.set(S.CONV2D.weight, np.asarray(weight, "<f4").reshape(-1))
    else:
        table.set(S.CONV2D.quanParameter, qparams[0]).set(S.CONV2D.symmetricQuan, qparams[1])
    return table


@emits("Conv")
def _conv(ex: Exporter, node) -> None:
    w = ex.const(node, 1)
    if w.ndim != 4:
        raise Unsupported("only 2-D convolutions")
    bias = ex.opt_const(node, 2)
    bias = np.zeros(w.shape[0], np.float32) if bias is None else bias.reshape(-1)
    kernel = [int(k) for k in node.attr("kernel_shape", w.shape[2:])]
    strides = [int(s) for s in node.attr("strides", [1, 1])]
    dil = [int(d) for d in node.attr("dilations", [1, 1])]
    pads = _conv_pads(ex, node, kernel, strides, dil)
    group = int(node.attr("group", 1))
    cout, cin = w.shape[0], w.shape[1] * group
    plan = ex.plan.get(node.name)
    x = ex.value(node.inputs[0], NC4HW4)
    dst, r, r6, pending = _split_fused(ex, node, NC4HW4)
    if plan is not None:
        ex.nb.quant.setdefault(dst, plan.out_quant)
    depthwise = group > 1 and group == cin and w.shape[1] == 1 and cout == cin
    if group == 1 or depthwise:
        common = conv_common(kernel, strides, dil, pads, group, cout, cin, r, r6)
        q = plan.tables() if plan is not None else None
        ex.nb.add("ConvolutionDepthwise" if depthwise else "Convolution", [x], [dst],
                  "Convolution2D", conv2d_table(common, w, bias, q), name=node.outputs[0],
                  layout=NC4HW4)
    else:
        _grouped(ex, node, x, dst, w, bias, kernel, strides, dil, pads, group, r, r6, plan,
                 deconv=False)
    _finish_activation(ex, node, dst, pending, NC4HW4)


def _grouped(ex, node, x, dst, w, bias, kernel, strides, dil, pads, group, r, r6, plan, deconv,
             out_pads=None):
    """A grouped (de)convolution as MNN's converter writes it: Slice, one op per group, Concat."""
    nb = ex.nb
    in_per = w.shape[0] // group if deconv else w.shape[1]
    out_per = w.shape[1] if deconv else w.shape[0] // group
    points = np.asarray([in_per * k for k in range(1, group)], dtype="<i4")
    parts = [nb.fresh(f"{node.outputs[0]}___input___{k}") for k in range(group)]
    nb.add("Slice", [x], parts, "Slice",
           T({S.SLICE.axis: i32(1), S.SLICE.slicePoints: points,
              S.SLICE.sourceType: i8(S.SOURCE_CAFFE)}), name=parts[0], layout=NC4HW4)
    if x in nb.quant:
        for p in parts:
            nb.quant[p] = nb.quant[x]
    outs = []
    for k in range(group):
        o = nb.fresh(f"{node.outputs[0]}___output___{k}")
        if deconv:
            wk = w[k * in_per:(k + 1) * in_per]
        else:
            wk = w[k * out_per:(k + 1) * out_per]
        bk = bias[k * out_per:(k + 1) * out_per]
        common = conv_common(kernel, strides, dil, pads, 1, out_per, in_per, r, r6, out_pads)
        q = plan.tables(k * out_per, (k + 1) * out_per) if plan is not None else None
        if plan is not None:
            nb.quant[o] = plan.out_quant
        nb.add("Deconvolution" if deconv else "Convolution", [parts[k]], [o], "Convolution2D",
               conv2d_table(common, wk, bk, q), layout=NC4HW4)
        outs.append(o)
    nb.add("Concat", outs, [dst], "Axis", axis(1), layout=NC4HW4)


@emits("ConvTranspose")
def _deconv(ex: Exporter, node) -> None:
    w = ex.const(node, 1)
    if w.ndim != 4:
        raise Unsupported("only 2-D transposed convolutions")
    if node.attr("output_shape") is not None or node.attr("auto_pad", "NOTSET") not in (
            "NOTSET", b"NOTSET", ""):
        raise Unsupported("output_shape/auto_pad")
    group = int(node.attr("group", 1))
    cout = w.shape[1] * group
    bias = ex.opt_const(node, 2)
    bias = np.zeros(cout, np.float32) if bias is None else bias.reshape(-1)
    kernel = [int(k) for k in node.attr("kernel_shape", w.shape[2:])]
    strides = [int(s) for s in node.attr("strides", [1, 1])]
    dil = [int(d) for d in node.attr("dilations", [1, 1])]
    pads = [int(p) for p in node.attr("pads", [0, 0, 0, 0])]
    out_pads = [int(p) for p in node.attr("output_padding", [0, 0])]
    plan = ex.plan.get(node.name)
    x = ex.value(node.inputs[0], NC4HW4)
    dst, r, r6, pending = _split_fused(ex, node, NC4HW4)
    if plan is not None:
        ex.nb.quant.setdefault(dst, plan.out_quant)
    if group == 1:
        common = conv_common(kernel, strides, dil, pads, 1, cout, w.shape[0], r, r6, out_pads)
        q = plan.tables() if plan is not None else None
        ex.nb.add("Deconvolution", [x], [dst], "Convolution2D", conv2d_table(common, w, bias, q),
                  name=node.outputs[0], layout=NC4HW4)
    else:
        _grouped(ex, node, x, dst, w, bias, kernel, strides, dil, pads, group, r, r6, plan,
                 deconv=True, out_pads=out_pads)
    _finish_activation(ex, node, dst, pending, NC4HW4)


def _fc_weight(ex, node):
    """(W [N, K], bias [N]) of a Gemm or MatMul with a constant right-hand side."""
    b = ex.const(node, 1)
    if b.ndim != 2:
        raise Unsupported("weight must be 2-D")
    if node.op == "MatMul":
        return b.T, np.zeros(b.shape[1], np.float32)
    if node.attr("transA", 0):
        raise Unsupported("transA")
    w = (b if node.attr("transB", 0) else b.T) * float(node.attr("alpha", 1.0))
    c = ex.opt_const(node, 2)
    n = w.shape[0]
    if c is None:
        bias = np.zeros(n, np.float32)
    elif c.size in (1, n):
        bias = np.broadcast_to(c.reshape(-1), (n,)) * float(node.attr("beta", 1.0))
    else:
        raise Unsupported("bias must be a vector")
    return w.astype(np.float32), np.asarray(bias, np.float32)


@emits("Gemm", "MatMul")
def _fc(ex: Exporter, node) -> None:
    """Fully connected layers become Reshape -> 1x1 Convolution -> Reshape (as MNN's converter);
    a MatMul of two computed tensors is MNN's MatMul op."""
    if node.op == "MatMul" and node.inputs[1] not in ex.g.constants:
        table = T({S.MATMUL.T: i32(S.DT_FLOAT), S.MATMUL.transposeA: flag(False),
                   S.MATMUL.transposeB: flag(False)})
        ex.nb.add("MatMul", [ex.value(node.inputs[0]), ex.value(node.inputs[1])],
                  [ex.out(node.outputs[0])], "MatMul", table)
        return
    w, bias = _fc_weight(ex, node)
    n, k = w.shape
    out_shape = ex.shape(node.outputs[0])
    in_shape = ex.shape(node.inputs[0])
    if node.op == "Gemm" and in_shape is not None and len(in_shape) != 2:
        raise Unsupported("Gemm input must be 2-D")
    nb = ex.nb
    x = ex.value(node.inputs[0], NCHW)
    x4 = nb.fresh(node.outputs[0] + "__as4d")
    nb.add("Reshape", [x], [x4], "Reshape", _reshape_table([-1, k, 1, 1]))
    if x in nb.quant:
        nb.quant[x4] = nb.quant[x]
    plan = ex.plan.get(node.name)
    act, params = _fused(node)
    r = act == "Relu"
    r6 = act == "Clip" and params.get("min") == 0.0 and params.get("max") == 6.0
    pending = None if (act is None or r or r6) else (act, params)
    y4 = nb.fresh(node.outputs[0] + "__conv")
    if plan is not None:
        nb.quant[y4] = plan.out_quant
    common = conv_common([1, 1], [1, 1], [1, 1], [0, 0, 0, 0], 1, n, k, r, r6)
    nb.add("Convolution", [nb.as_layout(x4, NC4HW4)], [y4], "Convolution2D",
           conv2d_table(common, w.reshape(n, k, 1, 1), bias,
                        plan.tables() if plan is not None else None), layout=NC4HW4)
    if out_shape is not None:
        dims = [-1] + list(out_shape[1:])
    elif in_shape is not None and len(in_shape) == 2:
        dims = [-1, n]
    else:
        raise Unsupported("output shape unknown")
    y4n = nb.as_layout(y4, NCHW)
    if pending is None:
        nb.add("Reshape", [y4n], [ex.out(node.outputs[0])], "Reshape", _reshape_table(dims))
    else:
        pre = nb.fresh(node.outputs[0] + "__preact")
        nb.add("Reshape", [y4n], [pre], "Reshape", _reshape_table(dims))
        ex.activation(pending[0], pending[1], pre, ex.out(node.outputs[0]), NCHW)


@emits("Relu", "LeakyRelu", "Clip", "HardSigmoid", "Elu", *UNARY)
def _activation(ex: Exporter, node) -> None:
    params = dict(node.attrs)
    if node.op == "Clip":
        lo, hi = ex.opt_const(node, 1), ex.opt_const(node, 2)
        params = {"min": float(lo) if lo is not None else float(node.attr("min", -F32_MAX)),
                  "max": float(hi) if hi is not None else float(node.attr("max", F32_MAX))}
    layout = ex.layout_of(node.inputs[0])
    src = ex.value(node.inputs[0], layout)
    ex.activation(node.op, params, src, ex.out(node.outputs[0], layout), layout)


@emits("PRelu")
def _prelu(ex: Exporter, node) -> None:
    """Per-channel PReLU of a 4-D tensor is MNN's PReLU op (NC4HW4); any other slope shape
    becomes max(x, 0) + slope * min(x, 0) with broadcasting BinaryOps."""
    nb = ex.nb
    slope = ex.const(node, 1).astype(np.float32)
    shape = ex.shape(node.inputs[0])
    if shape is not None and len(shape) == 4 and slope.size in (1, shape[1]) and \
            (slope.ndim <= 1 or all(d == 1 for d in slope.shape[1:])):
        values = np.broadcast_to(slope.reshape(-1), (shape[1],)).astype("<f4")
        ex.nb.add("PReLU", [ex.value(node.inputs[0], NC4HW4)], [ex.out(node.outputs[0], NC4HW4)],
                  "PRelu", T({S.PRELU.slopeCount: i32(values.size), S.PRELU.slope: values}),
                  layout=NC4HW4)
        return
    x = ex.value(node.inputs[0], NCHW)
    zero = nb.new_const(node.outputs[0] + "_zero", np.array(0.0, np.float32))
    s = ex.value(node.inputs[1], NCHW)
    pos, neg, scaled = (nb.fresh(node.outputs[0] + sfx) for sfx in ("_pos", "_neg", "_scaled"))
    nb.add("BinaryOp", [x, zero], [pos], "BinaryOp", binary("MAXIMUM"))
    nb.add("BinaryOp", [x, zero], [neg], "BinaryOp", binary("MINIMUM"))
    nb.add("BinaryOp", [neg, s], [scaled], "BinaryOp", binary("MUL"))
    nb.add("BinaryOp", [pos, scaled], [ex.out(node.outputs[0])], "BinaryOp", binary("ADD"))


@emits(*BINARY)
def _binary(ex: Exporter, node) -> None:
    names = [i for i in node.inputs if i]
    if len(names) < 2:
        layout = ex.layout_of(names[0])
        # a one-input Sum/Max/Min is the identity
        ex.nb.add("ReLU6", [ex.value(names[0], layout)], [ex.out(node.outputs[0], layout)],
                  "Relu6", relu6(-F32_MAX, F32_MAX), layout=layout)
        return
    keep4 = all((i in ex.g.constants and np.size(ex.g.constants[i]) == 1) or
                (i not in ex.g.constants and ex.layout_of(i) == NC4HW4) for i in names)
    layout = NC4HW4 if keep4 else NCHW
    kind = BINARY[node.op]
    info = ex.g.tensor_info(names[0])
    if kind == "REALDIV" and info is not None and info.dtype.startswith(("int", "uint")):
        kind = "DIV"  # MNN's DIV is the integer division; float division is REALDIV
    acc = ex.value(names[0], layout)
    for k, name in enumerate(names[1:], start=1):
        last = k == len(names) - 1
        dst = ex.out(node.outputs[0], layout) if last else ex.nb.fresh(node.outputs[0] + f"_{k}")
        ex.nb.add("BinaryOp", [acc, ex.value(name, layout)], [dst], "BinaryOp", binary(kind),
                  layout=layout)
        acc = dst


def _pool_table(kind, kernel, strides, pads, ceil, count_type, is_global=False) -> T:
    return T({S.POOL.padX: i32(pads[1]), S.POOL.padY: i32(pads[0]),
              S.POOL.isGlobal: flag(is_global), S.POOL.kernelX: i32(kernel[1]),
              S.POOL.kernelY: i32(kernel[0]), S.POOL.strideX: i32(strides[1]),
              S.POOL.strideY: i32(strides[0]), S.POOL.type: i8(kind),
              S.POOL.padType: i8(S.PAD_CAFFE), S.POOL.dataType: i32(S.DT_FLOAT),
              S.POOL.ceilModel: flag(ceil), S.POOL.pads: np.asarray(pads, "<i4"),
              S.POOL.countType: i8(count_type)})


@emits("MaxPool", "AveragePool")
def _pool(ex: Exporter, node) -> None:
    kernel = [int(k) for k in node.attr("kernel_shape", [])]
    if len(kernel) != 2:
        raise Unsupported("only 2-D pooling")
    if len(node.outputs) > 1 and node.outputs[1]:
        raise Unsupported("MaxPool indices output")
    dil = [int(d) for d in node.attr("dilations", [1, 1])]
    if dil != [1, 1]:
        raise Unsupported("dilated pooling")
    strides = [int(s) for s in node.attr("strides", [1, 1])]
    pads = _conv_pads(ex, node, kernel, strides, dil)
    kind = S.POOL_MAX if node.op == "MaxPool" else S.POOL_AVE
    count = S.COUNT_INCLUDE_PAD if node.attr("count_include_pad", 0) else S.COUNT_DEFAULT
    x = ex.value(node.inputs[0], NC4HW4)
    ex.nb.add("Pooling", [x], [ex.out(node.outputs[0], NC4HW4)], "Pool",
              _pool_table(kind, kernel, strides, pads, bool(node.attr("ceil_mode", 0)), count),
              layout=NC4HW4)


@emits("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ex: Exporter, node) -> None:
    kind = S.POOL_MAX if node.op == "GlobalMaxPool" else S.POOL_AVE
    x = ex.value(node.inputs[0], NC4HW4)
    ex.nb.add("Pooling", [x], [ex.out(node.outputs[0], NC4HW4)], "Pool",
              _pool_table(kind, [1, 1], [1, 1], [0, 0, 0, 0], False, S.COUNT_DEFAULT, True),
              layout=NC4HW4)


def _axis(node, rank, default=1):
    a = int(node.attr("axis", default))
    return a + rank if a < 0 else a


def _rank(ex, name):
    shape = ex.shape(name)
    if shape is None:
        raise Unsupported("needs a known input rank")
    return len(shape)


@emits("Concat")
def _concat(ex: Exporter, node) -> None:
    names = [i for i in node.inputs if i]
    rank = _rank(ex, node.outputs[0]) if ex.shape(node.outputs[0]) else _rank(ex, names[0])
    keep4 = rank == 4 and all(i not in ex.g.constants and ex.layout_of(i) == NC4HW4
                              for i in names)
    layout = NC4HW4 if keep4 else NCHW
    ex.nb.add("Concat", [ex.value(i, layout) for i in names], [ex.out(node.outputs[0], layout)],
              "Axis", axis(_axis(node, rank)), layout=layout)


@emits("Softmax", "LogSoftmax")
def _softmax(ex: Exporter, node) -> None:
    shape = ex.shape(node.inputs[0])
    rank = _rank(ex, node.inputs[0])
    a = _axis(node, rank, -1 if ex.g.opset >= 13 else 1)
    if ex.g.opset < 13 and any(d != 1 for d in shape[a + 1:]):
        raise Unsupported("opset < 13 softmax over several axes")
    x = ex.value(node.inputs[0], NCHW)
    if node.op == "Softmax":
        ex.nb.add("Softmax", [x], [ex.out(node.outputs[0])], "Axis", axis(a))
    else:
        mid = ex.nb.fresh(node.outputs[0] + "_softmax")
        ex.nb.add("Softmax", [x], [mid], "Axis", axis(a))
        ex.nb.add("UnaryOp", [mid], [ex.out(node.outputs[0])], "UnaryOp", unary("LOG"))


def _reshape_table(dims) -> T:
    return T({S.RESHAPE.dims: np.asarray(dims, "<i4"), S.RESHAPE.dimType: i8(S.NCHW)})


@emits("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
def _reshape(ex: Exporter, node) -> None:
    out_shape = ex.shape(node.outputs[0])
    in_shape = ex.shape(node.inputs[0])
    if out_shape is None:
        raise Unsupported("output shape unknown (run shape inference / give static input shapes)")
    dims = list(out_shape)
    if in_shape and dims and in_shape[0] == dims[0] and len(dims) > 1:
        dims[0] = -1  # keep the batch free
    src = ex.value(node.inputs[0], NCHW)
    dst = ex.out(node.outputs[0])
    ex.nb.add("Reshape", [src], [dst], "Reshape", _reshape_table(dims))
    if src in ex.nb.quant:
        ex.nb.quant.setdefault(dst, ex.nb.quant[src])


@emits("Transpose")
def _transpose(ex: Exporter, node) -> None:
    rank = _rank(ex, node.inputs[0])
    perm = node.attr("perm", list(range(rank))[::-1])
    ex.nb.add("Permute", [ex.value(node.inputs[0], NCHW)], [ex.out(node.outputs[0])], "Permute",
              T({S.PERMUTE.dims: np.asarray(perm, "<i4")}))


@emits("Pad")
def _pad(ex: Exporter, node) -> None:
    mode = node.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    codes = {"constant": 0, "reflect": 1, "edge": 3}
    if mode not in codes:
        raise Unsupported(f"mode {mode}")
    pads = ex.opt_const(node, 1)
    pads = np.asarray(node.attr("pads", []) if pads is None else pads).reshape(-1)
    value = ex.opt_const(node, 2)
    if value is not None and float(np.asarray(value).reshape(-1)[0]) != 0.0:
        raise Unsupported("nonzero constant value")
    if len(node.inputs) > 3 and node.inputs[3]:
        raise Unsupported("axes input")
    rank = pads.size // 2
    pairs = np.stack([pads[:rank], pads[rank:]], axis=1).reshape(-1).astype(np.int32)
    p = ex.nb.new_const(node.outputs[0] + "_pads", pairs)
    ex.nb.add("Padding", [ex.value(node.inputs[0], NCHW), p], [ex.out(node.outputs[0])],
              "PadParam", T({S.PAD_PARAM.mode: i8(codes[mode])}))


@emits("Resize", "Upsample")
def _resize(ex: Exporter, node) -> None:
    mode = node.attr("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if node.op == "Upsample":
        ctm, nearest_mode = "asymmetric", "floor"
        scales, sizes = ex.const(node, 1), None
    else:
        ctm = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
        scales, sizes = ex.opt_const(node, 2), ex.opt_const(node, 3)
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    nearest_mode = nearest_mode.decode() if isinstance(nearest_mode, bytes) else nearest_mode
    ctm_codes = {"align_corners": 1, "half_pixel": 2, "pytorch_half_pixel": 3, "asymmetric": 4,
                 "tf_half_pixel_for_nn": 5}
    if ctm not in ctm_codes or mode not in ("nearest", "linear", "cubic"):
        raise Unsupported(f"mode {mode} / {ctm}")
    if mode == "nearest":
        rtype = 1 if nearest_mode == "floor" else 4
    else:
        rtype = 2 if mode == "linear" else 3
    if sizes is not None and sizes.size:
        extra = ex.nb.new_const(node.outputs[0] + "_sizes", sizes.astype(np.int32))
    elif scales is not None and scales.size:
        extra = ex.nb.new_const(node.outputs[0] + "_scales", scales.astype(np.float32))
    else:
        raise Unsupported("needs constant scales or sizes")
    table = T({S.INTERP.widthScale: f32(0), S.INTERP.heightScale: f32(0),
               S.INTERP.outputWidth: i32(0), S.INTERP.outputHeight: i32(0),
               S.INTERP.resizeType: i32(rtype), S.INTERP.alignCorners: flag(ctm == "align_corners"),
               S.INTERP.halfPixelCenters: flag(ctm in ("half_pixel", "pytorch_half_pixel")),
               S.INTERP.widthOffset: f32(0), S.INTERP.heightOffset: f32(0),
               S.INTERP.cubicCoeffA: f32(node.attr("cubic_coeff_a", -0.75)),
               S.INTERP.ctm: i8(ctm_codes[ctm])})
    ex.nb.add("Interp", [ex.value(node.inputs[0], NC4HW4), extra],
              [ex.out(node.outputs[0], NC4HW4)], "Interp", table, layout=NC4HW4)


@emits("Slice")
def _slice(ex: Exporter, node) -> None:
    """Step-1 slices become SliceTf(x, begin, size) with static sizes."""
    shape = ex.shape(node.inputs[0])
    if shape is None:
        raise Unsupported("needs a static input shape")
    starts, ends = ex.const(node, 1).reshape(-1), ex.const(node, 2).reshape(-1)
    axes = ex.opt_const(node, 3)
    steps = ex.opt_const(node, 4)
    axes = list(range(len(starts))) if axes is None else [int(a) % len(shape) for a in axes]
    if steps is not None and np.any(steps != 1):
        raise Unsupported("steps other than 1")
    begin, size = [0] * len(shape), list(shape)
    for a, s, e in zip(axes, starts, ends):
        dim = shape[a]
        s = int(min(max(s + dim if s < 0 else s, 0), dim))
        e = int(min(max(e + dim if e < 0 else e, 0), dim))
        begin[a], size[a] = s, max(e - s, 0)
    nb = ex.nb
    b = nb.new_const(node.outputs[0] + "_begin", np.asarray(begin, np.int32))
    z = nb.new_const(node.outputs[0] + "_size", np.asarray(size, np.int32))
    nb.add("SliceTf", [ex.value(node.inputs[0], NCHW), b, z], [ex.out(node.outputs[0])])


@emits("Split")
def _split(ex: Exporter, node) -> None:
    shape = ex.shape(node.inputs[0])
    if shape is None:
        raise Unsupported("needs a static input shape")
    a = _axis(node, len(shape), 0)
    sizes = ex.opt_const(node, 1) if len(node.inputs) > 1 else None
    if sizes is None:
        sizes = node.attr("split")
    n = len(node.outputs)
    if sizes is None:
        if shape[a] % n:
            raise Unsupported("uneven split")
        sizes = [shape[a] // n] * n
    points = np.cumsum(np.asarray(sizes, dtype=np.int64))[:-1].astype("<i4")
    layout = ex.layout_of(node.inputs[0]) if a == 1 and len(shape) == 4 else NCHW
    outs = [ex.out(o, layout) for o in node.outputs]
    ex.nb.add("Slice", [ex.value(node.inputs[0], layout)], outs, "Slice",
              T({S.SLICE.axis: i32(a), S.SLICE.slicePoints: points,
                 S.SLICE.sourceType: i8(S.SOURCE_CAFFE)}), layout=layout)


@emits("BatchNormalization")
def _batchnorm(ex: Exporter, node) -> None:
    scale, beta, mean, var = (ex.const(node, k).astype(np.float64) for k in range(1, 5))
    a = scale / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
    b = beta - mean * a
    if _rank(ex, node.inputs[0]) != 4:
        raise Unsupported("only 4-D inputs")
    table = T({S.SCALE.channels: i32(a.size), S.SCALE.scaleData: a.astype("<f4"),
               S.SCALE.biasData: b.astype("<f4")})
    ex.nb.add("Scale", [ex.value(node.inputs[0], NC4HW4)], [ex.out(node.outputs[0], NC4HW4)],
              "Scale", table, layout=NC4HW4)


@emits(*REDUCE)
def _reduce(ex: Exporter, node) -> None:
    rank = _rank(ex, node.inputs[0])
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ex.const(node, 1).reshape(-1).tolist()
    if axes is None:
        axes = list(range(rank))
    axes = [int(a) % rank for a in axes]
    table = T({S.REDUCTION.operation: i8(REDUCE[node.op]),
               S.REDUCTION.dim: np.asarray(axes, "<i4"), S.REDUCTION.coeff: f32(0.0),
               S.REDUCTION.keepDims: flag(bool(node.attr("keepdims", 1))),
               S.REDUCTION.dType: i32(S.DT_FLOAT)})
    ex.nb.add("Reduction", [ex.value(node.inputs[0], NCHW)], [ex.out(node.outputs[0])],
              "ReductionParam", table)


@emits("LRN")
def _lrn(ex: Exporter, node) -> None:
    table = T({0: i32(0), 1: i32(int(node.attr("size"))), 2: f32(node.attr("alpha", 1e-4)),
               3: f32(node.attr("beta", 0.75)), 4: f32(node.attr("bias", 1.0))})
    ex.nb.add("LRN", [ex.value(node.inputs[0], NC4HW4)], [ex.out(node.outputs[0], NC4HW4)],
              "LRN", table, layout=NC4HW4)
