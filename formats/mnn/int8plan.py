"""Which layers the ``mnn-int8`` writer quantizes and with which scales (MNN 3.x KL layout).

MNN 3.x runs a Convolution/ConvolutionDepthwise in int8 when its weights are an IDSTQuan blob and
both its input and output tensors carry an int8 ``quantInfo`` (specs/mnn.md §5.1). The table gives
the input scale of every int8 layer; an output scale is taken from the table when the tensor has
one (the ``mnn-cpu`` profile calibrates layer outputs), otherwise from where the tensor flows: through value-preserving ops (layout ops, max pooling,
Concat, Relu) to a tensor with a scale, or into an Add/Sum, whose output scale it takes (the rule
MNN and Tengine use for element-wise and concat inputs, algorithms.md §1.3). A layer stays float
when its output scale cannot be found, or when no int8 layer consumes its output (the classifier
head; option ``int8_heads`` quantizes it anyway): quantizing that output only adds rounding to the
model's outputs.

A tensor that cannot be negative (a Relu/ReLU6 output, or concatenated/reshaped such tensors)
keeps its threshold T but uses all 255 codes for [0, T]: ``scale = T / 254`` and ``zero = -127``
in its quantInfo (MNN runs zero points; its EMA mode writes them too). This halves the step on
most convolution inputs of ReLU networks. Pooling inputs/outputs stay at zero 0 (MNN's int8
pooling pads with code 0). Option ``symmetric_activations`` writes MNN's KL layout (zero 0)
everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ptqconv.core.log import step
from ptqconv.core.numeric import round_half_away
from ptqconv.core.qtable import ActQuant, QuantTable
from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.fbwrite import T, f32, flag, i8, i32
from ptqconv.formats.mnn.idst import encode_dense
from ptqconv.formats.mnn.netbuild import QuantInfo

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
VALUE_PRESERVING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose",
                    "MaxPool", "GlobalMaxPool", "Concat", "Relu")
SUMS = ("Add", "Sum")
SIGN_PRESERVING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose",
                   "MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Concat")


@dataclass
class ConvPlan:
    """One int8 layer: int8 weight codes [out, ...], per-output-channel steps, in/out scales."""

    codes: np.ndarray
    alpha: np.ndarray
    in_quant: QuantInfo
    out_quant: QuantInfo
    bits: int = 8

    def tables(self, lo: int = 0, hi: Optional[int] = None) -> Tuple[T, T]:
        """(IDSTQuan, QuantizedFloatParam) tables for output channels ``lo:hi``."""
        codes, alpha = self.codes[lo:hi], self.alpha[lo:hi]
        buf, wide = encode_dense(codes, self.bits)
        qmax = int(self.out_quant.max)  # activation code range (weights may use fewer bits)
        abits = int(np.ceil(np.log2(qmax + 1))) + 1
        idst = T({S.IDST_QUAN.buffer: buf, S.IDST_QUAN.alpha: alpha.astype("<f4"),
                  S.IDST_QUAN.type: i32(1), S.IDST_QUAN.useInt32: flag(False),
                  S.IDST_QUAN.quantScale: f32(1.0), S.IDST_QUAN.scaleIn: f32(self.in_quant.scale),
                  S.IDST_QUAN.scaleOut: f32(self.out_quant.scale),
                  S.IDST_QUAN.aMaxOrBits: i32(self.bits), S.IDST_QUAN.aMin: i32(0),
                  S.IDST_QUAN.readType: i32(0), S.IDST_QUAN.has_scaleInt: flag(False),
                  S.IDST_QUAN.shapeInt32: flag(wide), S.IDST_QUAN.weightSize: Scalar32(0),
                  S.IDST_QUAN.scaleStorage: i8(0)})
        sym = T({S.QUANT_FLOAT.method: i8(0), S.QUANT_FLOAT.nbits: i32(abits),
                 S.QUANT_FLOAT.zeroPoint: i8(int(self.in_quant.zero)),
                 S.QUANT_FLOAT.outputZeroPoint: i8(int(self.out_quant.zero)),
                 S.QUANT_FLOAT.clampMin: i8(-qmax), S.QUANT_FLOAT.clampMax: i8(qmax),
                 S.QUANT_FLOAT.outputDataType: i32(S.DT_INT8)})
        return idst, sym


def Scalar32(v):
    """An unsigned 32-bit scalar field."""
    from ptqconv.formats.mnn.fbwrite import Scalar
    return Scalar("I", int(v))


def quant_info(a: ActQuant) -> QuantInfo:
    """MNN quantInfo of a table entry (step, zero point, code range)."""
    return QuantInfo(float(a.scale), float(a.zero_point), float(a.qmin), float(a.qmax))


def _out_scale(graph, tensor: str, scales: Dict[str, QuantInfo], consumers, depth=0):
    """The scale of ``tensor`` from the table or, through value-preserving consumers (layout
    ops, max pooling, Concat, Relu) and sums, from the scale of what it flows into."""
    if tensor in scales:
        return scales[tensor]
    users = consumers.get(tensor, [])
    if not users or tensor in graph.output_names() or depth > 16:
        return None
    found = [_out_scale(graph, u.outputs[0], scales, consumers, depth + 1)
             for u in users if u.op in SUMS or u.op in VALUE_PRESERVING]
    found = [q for q in found if q is not None]
    return max(found, key=lambda q: q.scale) if found else None


def _feeds_int8(graph, tensor: str, int8_inputs, consumers, depth=0) -> bool:
    """True when ``tensor`` reaches the input of an int8 layer, directly or through
    value-preserving ops and sums."""
    if depth > 16:
        return False
    for u in consumers.get(tensor, []):
        if u.name in int8_inputs and u.inputs and u.inputs[0] == tensor:
            return True
        if (u.op in SUMS or u.op in VALUE_PRESERVING) and \
                _feeds_int8(graph, u.outputs[0], int8_inputs, consumers, depth + 1):
            return True
    return False


def non_negative_tensors(graph) -> set:
    """Tensors that cannot hold a negative value: outputs of (fused) Relu, Clip with min >= 0 and
    Sigmoid, and of layout ops, pooling and Concat applied to such tensors."""
    found = set()
    for n in graph.nodes:
        act, params = n.attrs.get("fused_activation"), n.attrs.get("fused_activation_params") or {}
        op = act or n.op
        if op == "Clip" and not act:
            lo = graph.constants.get(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
            params = {"min": float(lo) if lo is not None else float(n.attr("min", -np.inf))}
        if op in ("Relu", "Sigmoid") or (op == "Clip" and float(params.get("min", -np.inf)) >= 0):
            found.add(n.outputs[0])
        elif n.op in SIGN_PRESERVING and n.inputs and \
                all(i in found for i in (n.inputs if n.op == "Concat" else n.inputs[:1])):
            found.add(n.outputs[0])
    return found


def _pooled(graph) -> set:
    """Inputs and outputs of poolings: MNN's int8 pooling pads with code 0, which is not 0.0 under
    a nonzero zero point (SqueezeNet's ceil-mode max pools went wrong), so they stay zero 0."""
    pools = [n for n in graph.nodes if n.op in ("MaxPool", "AveragePool", "GlobalMaxPool",
                                                "GlobalAveragePool")]
    return {t for n in pools for t in (n.inputs[0], n.outputs[0])}


def _one_sided(q: QuantInfo) -> QuantInfo:
    """The same threshold on [0, T] with every code: step halved, zero at the lowest code."""
    if q.zero != 0 or q.min != -q.max:
        return q
    return QuantInfo(q.scale * q.max / (q.max - q.min), q.min, q.min, q.max)


def _two_sided(q: QuantInfo) -> QuantInfo:
    """Back to zero 0 with the same upper threshold (for a tensor that may be negative)."""
    if q.zero == q.min and q.zero != 0:
        return QuantInfo(q.scale * (q.max - q.min) / q.max, 0.0, -q.max, q.max)
    return q


def plan_int8(graph, table: QuantTable, options=None):
    """Return ({node name: ConvPlan}, {tensor: QuantInfo}) for the int8 writer. Option
    ``int8_heads``: also quantize layers whose output only float ops consume (as MNN's own
    quantizer does; faster, less accurate)."""
    heads = bool((options or {}).get("int8_heads", False))
    scales = {name: quant_info(a) for name, a in table.activations.items()
              if a.scale > 0 and a.signed}
    nonneg = set()
    if not (options or {}).get("symmetric_activations", False):
        nonneg = non_negative_tensors(graph) - _pooled(graph)
        for name in nonneg & set(scales):
            scales[name] = _one_sided(scales[name])
    consumers = graph.consumers()
    int8_inputs = {n.name for n in graph.nodes if n.op in WEIGHTED and table.is_quantized(n.name)
                   and n.inputs and n.inputs[0] in scales}
    plans: Dict[str, ConvPlan] = {}
    skipped = []
    for node in graph.nodes:
        if node.op not in WEIGHTED or not table.is_quantized(node.name):
            continue
        wname = node.inputs[1] if len(node.inputs) > 1 else ""
        wq = table.weights.get(wname)
        q_in = scales.get(node.inputs[0])
        if wq is None or q_in is None or wname not in graph.constants:
            skipped.append(node.name)
            continue
        # A layer whose output no int8 layer consumes (a classifier head) stays float: its
        # output would be requantized only to be converted back, and that rounding lands on the
        # model's outputs (SqueezeNet's last conv in int8 loses 4.75 points of top-1).
        if not heads and not _feeds_int8(graph, node.outputs[0], int8_inputs, consumers):
            skipped.append(node.name)
            continue
        q_out = _out_scale(graph, node.outputs[0], scales, consumers)
        if q_out is not None and node.outputs[0] not in nonneg:
            q_out = _two_sided(q_out)  # derived through a Relu: the tensor itself can be < 0
        if q_out is None:
            skipped.append(node.name)
            continue
        codes, alpha = _weight_codes(node, graph.constants[wname], wq)
        if codes is None:
            skipped.append(node.name)
            continue
        scales.setdefault(node.outputs[0], q_out)
        plans[node.name] = ConvPlan(codes, alpha, q_in, q_out, int(wq.bits))
    if skipped:
        step(f"mnn-int8: {len(skipped)} layer(s) kept in float (no scale, output not consumed "
             f"in int8, or unsupported weight layout): {', '.join(skipped[:5])}"
             + (" ..." if len(skipped) > 5 else ""))
    # quantInfo only where int8 layers read or write: a scaled tensor between float ops would
    # make MNN requantize it for nothing (e.g. a float head's output before a pooling).
    used = {n.inputs[0] for n in graph.nodes if n.name in plans}
    used |= {n.outputs[0] for n in graph.nodes if n.name in plans}
    return plans, {t: q for t, q in scales.items() if t in used}


def _weight_codes(node, w: np.ndarray, wq):
    """int8 codes [out, ...] and per-output-channel steps in MNN's weight layout, or (None, None)."""
    w = np.asarray(w, dtype=np.float32)
    scales = np.asarray(wq.scales, dtype=np.float64).reshape(-1)
    if node.op == "Conv":
        out_axis = 0
    elif node.op == "ConvTranspose":
        return None, None  # MNN's int8 deconvolution layout is not verified: keep it float
    elif node.op == "Gemm":
        out_axis = 0 if node.attr("transB", 0) else 1
    else:  # MatMul [K, N]
        out_axis = 1
    n_out = w.shape[out_axis]
    if wq.axis is None or scales.size == 1:
        scales = np.full(n_out, scales[0])
    elif wq.axis != out_axis or scales.size != n_out:
        return None, None
    if node.op == "Gemm":
        alpha_attr = float(node.attr("alpha", 1.0))
        scales = scales * abs(alpha_attr)
        w = w * alpha_attr
    w0 = np.moveaxis(w, out_axis, 0)
    return _codes_float32(w0, scales.astype(np.float32), int(wq.bits)), scales.astype(np.float32)


def _codes_float32(w: np.ndarray, steps: np.ndarray, bits: int) -> np.ndarray:
    """``clamp(round_half_away(w / step), -qmax, qmax)`` per output channel (axis 0), divided in
    float32 as MNN's quantizer does: float64 division moves a few exact .5 ties (3 of 3.4M
    MobileNetV2 weights), float32 makes the codes bit-identical to MNN's own."""
    qmax = 2 ** (bits - 1) - 1
    s = steps.reshape((-1,) + (1,) * (w.ndim - 1)).astype(np.float32)
    safe = np.where(s > 0, s, np.float32(1.0))
    q = np.where(s > 0, round_half_away(w.astype(np.float32) / safe), 0)
    return np.ascontiguousarray(np.clip(q, -qmax, qmax).astype(np.int8))
