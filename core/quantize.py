"""The quantization core: which layers become int8, their weight scales, and the final table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ptqconv.core.centre import centrable
from ptqconv.core.errors import PtqconvError, did_you_mean
from ptqconv.core.ir.graph import Graph, Node
from ptqconv.core.numeric import QuantSpec
from ptqconv.core.qtable import FLOAT, INT8, ActQuant, QuantTable, WeightQuant


@dataclass
class QuantLayer:
    """A layer to quantize: its node, activation input, weight/bias constants, weight axis."""

    node: Node
    activation: str
    weight: str
    bias: Optional[str]
    axis: int


def weight_axis(graph: Graph, node: Node) -> Optional[int]:
    """Axis of the output channels in the node's weight, or None if it has no constant weight."""
    if len(node.inputs) < 2 or node.inputs[1] not in graph.constants:
        return None
    w = graph.constants[node.inputs[1]]
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1 if int(node.attr("group", 1)) == 1 else None
    if node.op == "Gemm":
        return 0 if node.attr("transB", 0) else (1 if w.ndim == 2 else None)
    if node.op == "MatMul":
        return w.ndim - 1 if w.ndim == 2 else None
    return None


def plan_layers(graph: Graph, backend, skip: List[str] = ()) -> List[QuantLayer]:
    """Return the layers ``backend`` can run in int8, minus ``skip`` (unknown names: error)."""
    names = {n.name for n in graph.nodes}
    unknown = [s for s in skip if s not in names]
    if unknown:
        raise PtqconvError("quantize.skip names unknown layer(s): " + ", ".join(
            f"'{s}'{did_you_mean(s, names)}" for s in unknown))
    layers = []
    for node in graph.nodes:
        if node.op not in backend.ops or node.name in skip:
            continue
        axis = weight_axis(graph, node)
        if axis is None or node.inputs[0] in graph.constants:
            continue
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] in graph.constants else None
        layers.append(QuantLayer(node, node.inputs[0], node.inputs[1], bias, axis))
    return layers


def weight_scales(graph: Graph, layers: List[QuantLayer], quantizer, granularity: str,
                  bits: int, backend, params=None) -> Dict[str, WeightQuant]:
    """Compute weight steps for every layer with ``quantizer`` at ``granularity`` and ``bits``
    (fewer where a rule of ``backend`` says so)."""
    result = {}
    for layer in layers:
        allowed = backend.ops[layer.node.op].weights
        gran = "per-channel" if granularity == "mix" else granularity
        if gran not in allowed:
            raise PtqconvError(f"backend '{backend.name}' cannot run {gran} weights for "
                               f"{layer.node.op} (layer '{layer.node.name}'); it supports "
                               f"{', '.join(allowed)}")
        axis = layer.axis if gran == "per-channel" else None
        w = graph.constants[layer.weight]
        layer_bits = backend.weight_bits(layer.node, bits)
        scales = np.asarray(quantizer.quantize(w, axis, layer_bits, params or {}), dtype=np.float64)
        result[layer.weight] = WeightQuant(scales.astype(np.float32), axis, layer_bits)
    return result


def activation_spec(quant: str, bits: int, backend=None) -> QuantSpec:
    """The activation integer type for a writer's quant type ("int8" or "uint8")."""
    if quant == "uint8":
        return QuantSpec(bits=bits, signed=False, symmetric=False)
    asym = backend is not None and bool(backend.ops) and \
        all("asymmetric" in c.activations for c in backend.ops.values())
    return QuantSpec(bits=bits, signed=True, symmetric=True, allow_asymmetric=asym)


def non_negative(graph: Graph, tensor: str) -> bool:
    """True when ``tensor`` cannot be negative by construction (ReLU, Clip with min >= 0,
    Sigmoid, Softmax, or max-pooling of such a tensor)."""
    node = graph.producer(tensor)
    if node is None:
        return False
    if node.op in ("Relu", "Sigmoid", "Softmax", "HardSigmoid"):
        return True
    if node.op == "Clip":
        lo = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] \
            else node.attr("min")
        return lo is not None and np.asarray(lo).size == 1 and float(np.asarray(lo).reshape(-1)[0]) >= 0
    if node.op in ("MaxPool", "GlobalMaxPool", "Flatten", "Reshape", "GlobalAveragePool",
                   "AveragePool"):
        return non_negative(graph, node.inputs[0])
    if node.op == "Concat":
        return all(non_negative(graph, i) for i in node.inputs)
    return False


def unsigned_where_non_negative(graph: Graph, activations, backend, padded: bool = False) -> int:
    """Give structurally non-negative tensors unsigned codes [0, 2^bits-1] with zero point 0
    (still symmetric: the sign bit would be wasted) when ``backend.unsigned_symmetric``, or, for
    a backend that centres them (``centre_non_negative``), those :func:`centrable` allows
    (``padded``: inputs of padded convolutions too).
    Changes ``activations`` in place; returns how many changed."""
    if backend.unsigned_symmetric:
        eligible = non_negative
    elif backend.centre_non_negative:
        def eligible(g, name):
            return centrable(g, name, padded)
    else:
        return 0
    changed = 0
    for name, aq in activations.items():
        if aq.signed and aq.zero_point == 0 and aq.scale > 0 and eligible(graph, name):
            t = aq.threshold if aq.threshold is not None else aq.scale * aq.qmax
            activations[name] = ActQuant(t / (2 ** aq.bits - 1), 0, aq.bits, False, t)
            changed += 1
    return changed


def assemble_table(layers: List[QuantLayer], activations, weights, all_nodes, skip,
                   meta) -> QuantTable:
    """Build the :class:`QuantTable`: int8 layers, skipped layers as float, scales, provenance."""
    table = QuantTable(meta=dict(meta))
    for layer in layers:
        table.precision[layer.node.name] = INT8
        table.activations[layer.activation] = activations[layer.activation]
        table.weights[layer.weight] = weights[layer.weight]
    for name in skip:
        table.precision[name] = FLOAT
    return table


def check_table_for_backend(table: QuantTable, graph: Graph, backend) -> None:
    """Raise if ``table`` asks for something ``backend`` cannot run (ops, granularity, signedness)."""
    nodes = {n.name: n for n in graph.nodes}
    problems = []
    for name, prec in table.precision.items():
        if prec != INT8 or name not in nodes:
            continue
        node = nodes[name]
        caps = backend.ops.get(node.op)
        if caps is None:
            problems.append(f"layer '{name}' ({node.op}) cannot run in int8")
            continue
        wq = table.weights.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if wq is not None:
            gran = "per-tensor" if wq.axis is None or np.size(wq.scales) == 1 else "per-channel"
            if gran not in caps.weights:
                problems.append(f"layer '{name}' has {gran} weights")
            if wq.bits not in caps.bits and max(caps.bits) < wq.bits:
                problems.append(f"layer '{name}' has {wq.bits}-bit weights")
        aq = table.activations.get(node.inputs[0])
        if aq is not None:
            if not aq.signed and not caps.unsigned and not backend.centre_non_negative:
                problems.append(f"input of layer '{name}' is uint8")
            if aq.zero_point != 0 and "asymmetric" not in caps.activations:
                problems.append(f"input of layer '{name}' is asymmetric")
    if problems:
        raise PtqconvError(f"backend '{backend.name}' cannot run this quantization table: "
                           + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
