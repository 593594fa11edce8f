"""How quant_tool_int8 / quant_tool_uint8 lay quantization out in a tmfile (tmfile.md §12).

int8: every activation INT8 with one ``{0, T/127}`` param; Conv/FC/Deconv weights INT8 with one
param per output channel (axis 0); their biases INT32 with ``scale[c] = in_scale * w_scale[c]``
(binary32 product). uint8: activations UINT8 with an asymmetric ``(scale, zp)``; weights UINT8
per tensor; biases INT32 with ``in_scale * w_scale``. Every other tensor carries one ``{0, 0}``
param, as the tool writes them. Activation scales come from the table; tensors it leaves out are
completed with Tengine's own rules (Softmax output, scale sharing through in-place ops, Eltwise
inputs) where possible, and stay FP32 otherwise.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ptqconv.core import log
from ptqconv.core.ir.graph import Graph
from ptqconv.core.numeric import quantize_bias, quantize_weights, round_half_away
from ptqconv.core.qtable import ActQuant, QuantTable
from ptqconv.formats.tmfile import schema as S
from ptqconv.formats.tmfile.container import TmModel
from ptqconv.formats.tmfile.write_ops import QuantLayer, TmSpec, WriteContext

# quant_tool's "inplace" ops: their output scale is given back to their input (tmfile.md §12.1).
INPLACE = frozenset({"Flatten", "Reshape", "Squeeze", "Clip", "Slice", "MaxPool", "GlobalMaxPool",
                     "Relu"})
# Ops whose output range lies within their input's: the output may take the input's scale.
PASS_THROUGH = INPLACE | {"Unsqueeze", "Transpose", "Split", "Identity", "Dropout"}
ELTWISE_SUM = frozenset({"Add", "Sub", "Sum", "Max"})


def table_quant_type(table: QuantTable, options=None) -> str:
    """``uint8`` when every activation of ``table`` is unsigned (or ``options['quant']`` says
    so), else ``int8``."""
    forced = (options or {}).get("quant")
    if forced in ("int8", "uint8"):
        return forced
    acts = list(table.activations.values())
    return "uint8" if acts and all(not a.signed for a in acts) else "int8"


def uint8_from_range(lo: float, hi: float) -> ActQuant:
    """quant_tool_uint8's asymmetric rule (tmfile.md §12.2), zero point truncated."""
    if hi <= lo:
        return ActQuant(0.0, 0, 8, False)
    if lo >= 0:
        scale = hi / 255.0
        return ActQuant(scale, 0, 8, False)
    scale = (hi - lo) / 255.0 if hi > 0 else -lo / 255.0
    return ActQuant(scale, int(-lo / scale), 8, False)


def to_file_type(aq: ActQuant, quant: str) -> ActQuant:
    """``aq`` expressed as the file stores it: symmetric int8 or asymmetric uint8."""
    lo, hi = (aq.qmin - aq.zero_point) * aq.scale, (aq.qmax - aq.zero_point) * aq.scale
    if quant == "uint8":
        return aq if not aq.signed and aq.bits == 8 else uint8_from_range(lo, hi)
    if aq.signed and aq.zero_point == 0 and aq.bits == 8:
        return aq
    t = aq.threshold if aq.threshold is not None and aq.zero_point == 0 else max(-lo, hi)
    return ActQuant(t / 127.0, 0, 8, True, t)


def file_activations(graph: Graph, table: QuantTable, quant: str,
                     specs: Optional[List[TmSpec]] = None) -> Dict[str, ActQuant]:
    """Every activation's quantization as written to the file: the table's, converted to the
    file's type, then completed with quant_tool's propagation rules (missing entries only).
    ``specs`` (the tm nodes being written) let a ReLU/ReLU6/Clip the writer split off a layer
    give its scale back to the layer's output, as quant_tool's in-place rule does."""
    acts = {k: to_file_type(v, quant) for k, v in table.activations.items() if v.scale > 0}
    consumers = graph.consumers()
    softmax = ActQuant(1 / 127.0, 0, 8, True) if quant == "int8" else ActQuant(1 / 255.0, 0, 8,
                                                                               False)

    def give(tensor, aq) -> bool:
        if not tensor or tensor in acts or tensor in graph.constants or aq is None:
            return False
        acts[tensor] = aq
        return True

    changed = True
    while changed:  # each pass only adds entries, so this ends
        changed = False
        for node in reversed(graph.nodes):
            if node.op == "Softmax":
                changed |= give(node.outputs[0], softmax)
            out = acts.get(node.outputs[0])
            if node.op in INPLACE and len(consumers.get(node.inputs[0], [])) <= 1:
                changed |= give(node.inputs[0], out)
            if node.op in ELTWISE_SUM:
                for i in node.inputs:
                    changed |= give(i, out)
        for node in graph.nodes:
            if node.op in PASS_THROUGH and node.inputs[0] in acts:
                for o in node.outputs:
                    changed |= give(o, acts[node.inputs[0]])
    for spec in specs or []:
        if spec.op in ("ReLU6", "Clip") or (spec.op == "ReLU" and
                                             not (spec.params or {}).get("negative_slope")):
            if spec.inputs[0] not in acts and spec.outputs[0] in acts:
                acts[spec.inputs[0]] = acts[spec.outputs[0]]
    return acts


def _weight_steps(layer: QuantLayer, w: np.ndarray, table: QuantTable) -> np.ndarray:
    """Per-output-channel (axis 0 of the tm weight) steps, or one step."""
    wq = table.weights.get(layer.ir_weight)
    absmax = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1).max(axis=1) if w.size else \
        np.zeros(w.shape[0])
    if wq is None:
        steps = absmax / 127.0
    else:
        steps = np.asarray(wq.scales, np.float32).reshape(-1)
        if layer.kind == "deconv":
            steps = np.array([steps.max() if steps.size else 0.0])
        elif steps.size > 1 and wq.axis != layer.ir_axis:
            steps = absmax / 127.0  # the table's channels are not the tm weight's axis 0
    if layer.kind == "deconv" and steps.size > 1:
        steps = np.array([steps.max()])
    return np.asarray(steps, np.float32)


def _uint8_weights(name: str, w: np.ndarray, table: QuantTable):
    """(codes, scale, zero point) of per-tensor asymmetric uint8 weights."""
    hint = table.meta.get("tmfile", {}).get("uint8_weights", {}).get(name)
    if hint is not None:
        scale, zp = np.float32(hint[0]), int(hint[1])
    else:
        aq = uint8_from_range(float(w.min()), float(w.max())) if w.size else ActQuant(0.0)
        scale, zp = np.float32(aq.scale), aq.zero_point
    if scale <= 0:
        return np.zeros(w.shape, np.uint8), 0.0, 0
    q = round_half_away(w.astype(np.float64) / np.float64(scale) + zp)
    return np.clip(q, 0, 255).astype(np.uint8), float(scale), zp


def quantize_model(model: TmModel, ctx: WriteContext, table: QuantTable, quant: str) -> None:
    """Rewrite ``model``'s tensors in place as quant_tool lays out an int8/uint8 model (``ctx``
    is the context that built it: graph, constants in tm layout, layers)."""
    graph, consts, layers = ctx.graph, ctx.consts, ctx.layers
    acts = file_activations(graph, table, quant, ctx.specs)
    converted = sum(1 for a in table.activations.values() if a.scale > 0 and
                    (a.signed if quant == "uint8" else not a.signed or a.zero_point))
    if converted:
        how = "asymmetric uint8" if quant == "uint8" else (
            "signed int8 (Tengine's int8 has no unsigned codes; calibrate with "
            "quantize.unsigned_activations: false to choose thresholds for signed codes)")
        log.step(f"tmfile-{quant}: {converted} activation(s) of the table re-expressed as {how}")
    index = {t.name: k for k, t in enumerate(model.tensors)}
    act_type = S.INT8 if quant == "int8" else S.UINT8
    missing = []
    for t in model.tensors:
        if t.type == S.T_CONST:
            t.quant = [(0, 0.0, 16 if t.data_type == S.FP16 else 32)]
        elif t.name in acts:
            aq = acts[t.name]
            t.data_type, t.quant = act_type, [(int(aq.zero_point), float(aq.scale), 8)]
        else:
            t.quant = [(0, 0.0, 32)]
            missing.append(t.name)
    bias_hints = table.meta.get("tmfile", {}).get("bias", {})
    for layer in layers:
        aq = acts.get(layer.activation)
        if not table.is_quantized(layer.node) or aq is None or aq.scale <= 0:
            continue
        w_t = model.tensors[index[layer.weight]]
        w = consts[layer.weight].astype(np.float32)
        if quant == "int8":
            steps = _weight_steps(layer, w, table)
            codes = quantize_weights(w, steps, 0 if steps.size > 1 else None)
            w_t.data_type, w_t.data = S.INT8, codes.tobytes()
            w_t.quant = [(0, float(s), 8) for s in steps]
        else:
            codes, scale, zp = _uint8_weights(layer.ir_weight, w, table)
            steps = np.array([scale], np.float32)
            w_t.data_type, w_t.data, w_t.quant = S.UINT8, codes.tobytes(), [(zp, scale, 8)]
        if layer.bias is None:
            continue
        b_t = model.tensors[index[layer.bias]]
        b = consts[layer.bias].astype(np.float64).reshape(-1)  # host added bias_corrections
        hint = bias_hints.get(layer.ir_bias)
        if hint is not None and len(hint) in (1, b.size):
            b_steps = np.array([h[0] for h in hint], np.float32)
            zps = [int(h[1]) for h in hint]
        else:
            b_steps = (np.float32(aq.scale) * steps).astype(np.float32)
            zps = [0] * b_steps.size
        codes = quantize_bias(b, 1.0, np.broadcast_to(b_steps, b.shape))
        b_t.data_type, b_t.data = S.INT32, codes.astype("<i4").tobytes()
        b_t.quant = [(z, float(s), 32) for z, s in zip(zps, b_steps)]
    if missing:
        log.step(f"tmfile: {len(missing)} activation(s) have no scale in the table and stay FP32 "
                 f"(e.g. {', '.join(missing[:3])})")
