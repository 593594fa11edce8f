"""Automatic mixed precision: keep the fewest layers float so the model meets a budget.

Search (specs/algorithms.md §5.3), all on held-aside inputs:

1. One streamed pass over (at most ``RANK_INPUTS`` of) the inputs ranks the int8 layers by
   sensitivity: the model-output noise energy when that layer alone is quantized (all layers'
   variants run side by side in one onnxruntime graph); then one pass measures the all-int8
   model (k = 0 float layers; shared with the ranking pass when it saw every input).
2. Keeping the ``k`` most sensitive layers float is tried for ``k = K`` (the cap,
   ``max_float`` x layers), then bisected between the largest failing and smallest passing
   ``k``: one pass of the fp32 + quantized model per trial.

Cost: at most ``3 + ceil(log2 K)`` passes (the ranking pass costs about ``1 + layers/2``
model runs per input on at most ``RANK_INPUTS`` inputs; every other pass two model runs per
held-aside input: fp32 and quantized).
The budget is assumed to improve as layers go float; where it does not, the bisection still
stops at a ``k`` that was measured to pass.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from ptqconv.core import log
from ptqconv.core.data import CalibrationData
from ptqconv.core.diagnose.analysis import output_error, output_probes, quantized_layers
from ptqconv.core.diagnose.explain import explain
from ptqconv.core.diagnose.probes import ProbeGraph
from ptqconv.core.diagnose.weights import weight_ranges
from ptqconv.core.errors import PtqconvError
from ptqconv.core.qtable import FLOAT, QuantTable

METRICS = ("cosine", "sqnr", "top1")
RANK_INPUTS = 16


@dataclass
class Trial:
    """One measured candidate: ``floats`` most sensitive layers kept float."""

    floats: int
    value: float
    met: bool


@dataclass
class MixedResult:
    """What the search decided and what it cost."""

    metric: str
    budget: float
    layers: int                          # int8 layers before the search
    float_layers: List[str]
    reasons: Dict[str, str]
    ranking: List[Tuple[str, float]]     # (layer, output noise when quantized alone)
    trials: List[Trial] = field(default_factory=list)
    passes: int = 0
    inputs: int = 0
    seconds: float = 0.0
    baseline: Optional[float] = None     # fp32 top-1 (%) on the held-aside inputs
    total_noise: Optional[float] = None  # all-int8 output noise energy

    @property
    def met(self) -> bool:
        """True when the chosen configuration was measured to meet the budget."""
        return any(t.met and t.floats == len(self.float_layers) for t in self.trials)

    def to_meta(self) -> dict:
        """A JSON-friendly dict kept in the table's ``meta["auto_mixed"]``, so a saved table
        still says which layers are float and why."""
        return {"metric": self.metric, "budget": self.budget, "layers": self.layers,
                "float_layers": list(self.float_layers), "reasons": dict(self.reasons),
                "ranking": [[n, float(v)] for n, v in self.ranking],
                "trials": [[t.floats, float(t.value), bool(t.met)] for t in self.trials],
                "passes": self.passes, "inputs": self.inputs, "seconds": round(self.seconds, 2),
                "baseline": self.baseline, "total_noise": self.total_noise}

    @classmethod
    def from_meta(cls, meta: dict) -> "MixedResult":
        """Rebuild a result from :meth:`to_meta`'s dict (as read back from a table file)."""
        return cls(meta["metric"], float(meta["budget"]), int(meta["layers"]),
                   list(meta["float_layers"]), dict(meta.get("reasons", {})),
                   [(n, float(v)) for n, v in meta.get("ranking", [])],
                   [Trial(int(k), float(v), bool(ok)) for k, v, ok in meta.get("trials", [])],
                   int(meta.get("passes", 0)), int(meta.get("inputs", 0)),
                   float(meta.get("seconds", 0.0)), meta.get("baseline"), meta.get("total_noise"))

    def value_text(self, value: float) -> str:
        """A metric value with its unit."""
        return {"top1": f"{value:.2f} point drop", "cosine": f"cosine {value:.5f}",
                "sqnr": f"{value:.2f} dB"}[self.metric]

    def budget_text(self) -> str:
        """The budget as a condition."""
        return {"top1": f"top-1 drop <= {self.budget:g} points", "cosine":
                f"output cosine >= {self.budget:g}", "sqnr": f"output SQNR >= {self.budget:g} dB"}[
            self.metric]


def metric_value(metric: str, final, fp32_arg, int8_arg, labels) -> float:
    """The metric of one pass: top-1 drop in points, mean output cosine, or SQNR in dB."""
    if metric == "cosine":
        return final["cosine"]
    if metric == "sqnr":
        return final["sqnr"]
    truth = np.asarray(labels)
    return 100.0 * (float(np.mean(fp32_arg == truth)) - float(np.mean(int8_arg == truth)))


def meets(metric: str, value: float, budget: float) -> bool:
    """Whether ``value`` satisfies ``budget`` (a drop at most, or a similarity at least)."""
    return value <= budget + 1e-9 if metric == "top1" else value >= budget


def with_float(table: QuantTable, names) -> QuantTable:
    """A copy of ``table`` with ``names`` kept float (and their bias corrections dropped)."""
    names = set(names)
    precision = {k: (FLOAT if k in names else v) for k, v in table.precision.items()}
    corrections = {k: v for k, v in table.bias_corrections.items() if k not in names}
    return replace(table, precision=precision, bias_corrections=corrections, meta=dict(table.meta))


def _pass(graph, table, data, threads, alone=(), desc="mixed precision"):
    pg = ProbeGraph(graph)
    output_probes(pg, graph, {o: o for o in graph.output_names()}, "fp32")
    output_probes(pg, graph, pg.quantized_model(table, "q"), "int8")
    for k, node in enumerate(alone):
        output_probes(pg, graph, pg.quantized_layers(node, table, f"alone{k}"), ("alone", k))
    return pg.run(data.batches(), len(data), threads, desc)


def auto_mixed(graph, table: QuantTable, data, metric: str, budget: float,
               labels: Optional[List[int]] = None, max_float: float = 0.2, threads: int = 0,
               rank_inputs: int = RANK_INPUTS) -> Tuple[QuantTable, MixedResult]:
    """Return (table with the fewest float layers meeting ``budget`` on ``data``, result).

    ``data`` is a CalibrationData with batch size 1 (the held-aside inputs); ``labels`` the
    class of each input (metric top1); the ranking pass uses the first ``rank_inputs``."""
    if metric not in METRICS:
        raise PtqconvError(f"auto_mixed metric must be one of {', '.join(METRICS)}, not '{metric}'")
    if metric == "top1" and (labels is None or len(labels) != len(data)):
        raise PtqconvError("auto_mixed with metric top1 needs a label for every held-aside input "
                           "(set calibration.labels)")
    t0 = time.perf_counter()
    layers = quantized_layers(graph, table)
    cap = min(len(layers), int(math.floor(max_float * len(layers) + 1e-9)))
    rank_data = data if len(data) <= rank_inputs else CalibrationData(
        data.inputs, [s[:rank_inputs] for s in data.sources], data.preprocess, 1)
    log.step(f"mixed precision: ranking {len(layers)} layer(s) on {len(rank_data)} held-aside "
             f"input(s) ({metric}, budget {budget:g}, at most {cap} float)")
    results = _pass(graph, table, rank_data, threads, layers, "ranking layers")
    total_noise = output_error(results, graph, "int8")[0]["noise"]
    noise = {node.name: output_error(results, graph, ("alone", k))[0]["noise"]
             for k, node in enumerate(layers)}
    ranking = sorted(noise.items(), key=lambda kv: -kv[1])
    result = MixedResult(metric, budget, len(layers), [], {}, ranking, passes=1,
                         inputs=len(data), total_noise=total_noise)

    def trial(k):
        res = results if (k == 0 and rank_data is data) else \
            _pass(graph, with_float(table, [n for n, _ in ranking[:k]]), data, threads)
        result.passes += res is not results
        fp32_arg = res[("fp32", "argmax")]["argmax"]
        final, int8_arg = output_error(res, graph, "int8")
        if labels is not None:
            result.baseline = 100.0 * float(np.mean(fp32_arg == np.asarray(labels)))
        value = metric_value(metric, final, fp32_arg, int8_arg, labels)
        result.trials.append(Trial(k, value, meets(metric, value, budget)))
        log.step(f"mixed precision: {k} float layer(s): {result.value_text(value)}"
                 f"{'' if result.trials[-1].met else ' (over budget)'}")
        return result.trials[-1].met

    best = 0
    if not trial(0):
        lo, hi = 0, cap
        if cap == 0 or not trial(cap):
            best = cap
            log.step(f"warning: mixed precision: the budget ({result.budget_text()}) is not met "
                     f"with {cap} float layer(s) (raise quantize.auto_mixed.max_float)")
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if trial(mid):
                    hi = mid
                else:
                    lo = mid
            best = hi
    chosen = [n for n, _ in ranking[:best]]
    wr = weight_ranges(graph, table, [n for n in layers if n.name in chosen])
    result.float_layers = chosen
    result.reasons = {n: f"sensitivity rank {i + 1}: " + explain(noise[n], total_noise, wr.get(n))
                      for i, n in enumerate(chosen)}
    result.seconds = time.perf_counter() - t0
    out = with_float(table, chosen)
    out.meta["auto_mixed"] = result.to_meta()
    log.step(f"mixed precision: {len(chosen)} of {len(layers)} layer(s) kept float "
             f"({result.passes} pass(es) over {len(data)} input(s), {result.seconds:.1f}s)")
    return out, result
