"""Per-layer diagnosis of a quantization table: what each layer's quantization costs.

Two streamed passes over a few inputs: one fp32 pass for activation statistics (histograms for
the report), and one pass of a :class:`ProbeGraph` holding the fp32 model, the whole quantized
model, and for every int8 layer a copy quantized alone (layer-local, and with the float model
downstream of it for its effect on the output). Per layer it reports cosine, SQNR, max abs
error (own = the layer alone on fp32 input; accumulated = in the quantized model), activation
overflow/clipping, weight ranges, and the output error when only that layer is quantized.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ptqconv.core import log
from ptqconv.core.calibrate import collect_stats
from ptqconv.core.diagnose.metrics import summarize_error
from ptqconv.core.diagnose.probes import ERROR_PARTS, ProbeGraph
from ptqconv.core.diagnose.weights import WeightRange, is_depthwise, weight_ranges
from ptqconv.core.errors import PtqconvError
from ptqconv.core.qtable import INT8, QuantTable


@dataclass
class LayerReport:
    """Everything measured about one int8 layer."""

    name: str
    op: str
    activation: str
    output: str
    depthwise: bool
    threshold: float                      # float magnitude of the input's largest code
    own: Dict[str, float]                 # layer alone, fp32 input: cosine/sqnr/max_abs/noise
    accumulated: Dict[str, float]         # same tensor in the fully quantized model
    alone: Optional[Dict[str, float]]     # model outputs with only this layer quantized
    alone_agreement: Optional[float]      # top-1 agreement with fp32 in that case
    overflow: float                       # fraction of input values with a saturated code
    clipped: float                        # fraction beyond half a step past the threshold
    weights: Optional[WeightRange]

    @property
    def sensitivity(self) -> float:
        """Output noise energy (relative) this layer causes alone; the ranking key."""
        if self.alone is not None:
            return self.alone["noise"]
        return self.own["noise"]


@dataclass
class Diagnosis:
    """A diagnosis: per-layer reports (graph order), the whole model's output error, and the
    statistics used for plots."""

    model: str
    table: QuantTable
    inputs: int
    layers: List[LayerReport]
    final: Dict[str, float]
    agreement: Optional[float]           # top-1 agreement int8 vs fp32
    top1: Optional[Dict[str, float]]     # {"fp32": %, "int8": %} with labels
    stats: Dict[str, object] = field(default_factory=dict)
    sources: str = ""                    # which inputs were used, for the report
    passes: int = 0
    seconds: float = 0.0
    mixed: Optional[object] = None       # an automix.MixedResult when auto_mixed ran

    def ranked(self) -> List[LayerReport]:
        """Layers from the most to the least sensitive."""
        return sorted(self.layers, key=lambda r: -r.sensitivity)


def quantized_layers(graph, table: QuantTable):
    """The nodes ``table`` runs in int8 (with an activation entry), in graph order."""
    return [n for n in graph.nodes if table.precision.get(n.name) == INT8
            and n.inputs and n.inputs[0] in table.activations
            and table.activations[n.inputs[0]].scale > 0]


def combine(parts_list):
    """Add several error probes' per-input parts together (all model outputs as one)."""
    if len(parts_list) == 1:
        return parts_list[0]
    out = {k: np.sum([p[k] for p in parts_list], axis=0) for k in ERROR_PARTS if k != "max_abs"}
    out["max_abs"] = np.max([p["max_abs"] for p in parts_list], axis=0)
    return out


def agreement(a, b) -> float:
    """Fraction of inputs whose two arg-max arrays agree."""
    return float(np.mean(np.asarray(a) == np.asarray(b))) if len(a) else 1.0


def float_outputs(graph) -> List[str]:
    """The model outputs with a floating-point (or unknown) element type."""
    return [t.name for t in graph.outputs if t.dtype in ("float32", "float16", "float64", None)]


def require_float_output(graph) -> None:
    """Raise unless the model has a floating-point output to compare."""
    if not float_outputs(graph):
        raise PtqconvError(f"graph '{graph.name}' has no floating-point output to compare "
                           f"fp32 and int8 on")


def output_probes(pg: ProbeGraph, graph, mapping, tag) -> None:
    """Error probes between every float model output and its copy, plus the first one's
    arg-max (a classifier's top-1)."""
    outs = float_outputs(graph)
    for out in outs:
        if out in mapping:
            pg.error((tag, out), out, mapping[out])
    if outs and outs[0] in mapping:
        pg.argmax((tag, "argmax"), mapping[outs[0]])


def output_error(results, graph, tag):
    """(summary of all outputs' error, arg-max array) of the probes :func:`output_probes` added."""
    parts = [results[(tag, o)] for o in float_outputs(graph) if (tag, o) in results]
    summary = summarize_error(combine(parts)) if parts else None
    arg = results.get((tag, "argmax"), {}).get("argmax")
    return summary, arg


def diagnose(graph, table: QuantTable, data, threads: int = 0, sensitivity: bool = True,
             labels: Optional[List[int]] = None, name: str = "model") -> Diagnosis:
    """Diagnose ``table`` on ``graph`` over ``data`` (a CalibrationData with batch size 1);
    ``labels`` (class per input) adds top-1 accuracy. Two streamed passes."""
    t0 = time.perf_counter()
    require_float_output(graph)
    layers = quantized_layers(graph, table)
    acts = list(dict.fromkeys(n.inputs[0] for n in layers))
    log.step(f"diagnosis: {len(layers)} int8 layer(s) on {len(data)} input(s)")
    stats = collect_stats(graph, acts, data, threads)
    pg = ProbeGraph(graph)
    output_probes(pg, graph, {o: o for o in graph.output_names()}, "fp32")
    qmap = pg.quantized_model(table, "q")
    output_probes(pg, graph, qmap, "int8")
    for k, node in enumerate(layers):
        out = node.outputs[0]
        pg.error(("acc", node.name), out, qmap[out])
        local = pg.quantized_layers(node, table, f"own{k}", to_outputs=False)
        pg.error(("own", node.name), out, local[out])
        act = node.inputs[0]
        if ("sat", act) not in pg.probes:
            pg.saturation(("sat", act), act, table.activations[act])
        if sensitivity:
            output_probes(pg, graph, pg.quantized_layers(node, table, f"alone{k}"), ("alone", k))
    log.step(f"diagnosis graph: {len(pg.g.nodes)} nodes")
    results = pg.run(data.batches(), len(data), threads)
    fp32_arg = results[("fp32", "argmax")]["argmax"]
    final, int8_arg = output_error(results, graph, "int8")
    wr = weight_ranges(graph, table, layers)
    reports = []
    for k, node in enumerate(layers):
        aq = table.activations[node.inputs[0]]
        sat = results.get(("sat", node.inputs[0]), {"overflow": [0.0], "clipped": [0.0]})
        alone, arg = output_error(results, graph, ("alone", k)) if sensitivity else (None, None)
        reports.append(LayerReport(
            node.name, node.op, node.inputs[0], node.outputs[0], is_depthwise(graph, node),
            aq.threshold if aq.threshold is not None else aq.scale * aq.qmax,
            summarize_error(results[("own", node.name)]),
            summarize_error(results[("acc", node.name)]), alone,
            agreement(arg, fp32_arg) if arg is not None else None,
            float(np.mean(sat["overflow"])), float(np.mean(sat["clipped"])),
            wr.get(node.name)))
    top1 = None
    if labels is not None and len(labels) == len(fp32_arg):
        truth = np.asarray(labels)
        top1 = {"fp32": 100.0 * float(np.mean(fp32_arg == truth)),
                "int8": 100.0 * float(np.mean(int8_arg == truth))}
    return Diagnosis(name, table, len(fp32_arg), reports, final, agreement(int8_arg, fp32_arg),
                     top1, stats, passes=2, seconds=time.perf_counter() - t0)
