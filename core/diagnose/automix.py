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
stops at a ``k`` that was measured to pass. If even ``K`` fails, ``K`` layers stay float (the
most the search may) and the result says the budget was not met.

A top-1 drop measured on a few held-aside images is noisy: single images flip both ways, and
50 images resolve 2 points. The budget is therefore checked against the measured drop plus one
standard error of the paired difference (lost and gained images), which is zero only when no
image changed between right and wrong.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from ptqconv.core import log
from ptqconv.core.data import CalibrationData
from ptqconv.core.diagnose.analysis import (output_error, output_probes, quantized_layers,
                                             require_float_output)
from ptqconv.core.diagnose.explain import explain
from ptqconv.core.diagnose.probes import ProbeGraph
from ptqconv.core.diagnose.weights import weight_ranges
from ptqconv.core.errors import PtqconvError
from ptqconv.core.qtable import FLOAT, QuantTable

METRICS = ("cosine", "sqnr", "top1")
RANK_INPUTS = 16
TOP1_Z = 1.0  # standard errors added to a measured top-1 drop before comparing it to the budget


@dataclass
class Trial:
    """One measured candidate: ``floats`` most sensitive layers kept float; ``value`` is the
    metric (top1: the measured drop in points), ``bound`` what the budget is checked against
    (top1: the drop plus one standard error of the paired difference)."""

    floats: int
    value: float
    met: bool
    bound: Optional[float] = None
    detail: str = ""


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
    note: str = ""

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
                "trials": [[t.floats, float(t.value), bool(t.met),
                            None if t.bound is None else float(t.bound), t.detail]
                           for t in self.trials],
                "passes": self.passes, "inputs": self.inputs, "seconds": round(self.seconds, 2),
                "baseline": self.baseline, "total_noise": self.total_noise, "note": self.note}

    @classmethod
    def from_meta(cls, meta: dict) -> "MixedResult":
        """Rebuild a result from :meth:`to_meta`'s dict (as read back from a table file)."""
        return cls(meta["metric"], float(meta["budget"]), int(meta["layers"]),
                   list(meta["float_layers"]), dict(meta.get("reasons", {})),
                   [(n, float(v)) for n, v in meta.get("ranking", [])],
                   [Trial(int(t[0]), float(t[1]), bool(t[2]), *t[3:5])
                    for t in meta.get("trials", [])],
                   int(meta.get("passes", 0)), int(meta.get("inputs", 0)),
                   float(meta.get("seconds", 0.0)), meta.get("baseline"), meta.get("total_noise"),
                   meta.get("note", ""))

    def value_text(self, value: float) -> str:
        """A metric value with its unit."""
        return {"top1": f"{value:.2f} point drop", "cosine": f"cosine {value:.5f}",
                "sqnr": f"{value:.2f} dB"}[self.metric]

    def budget_text(self) -> str:
        """The budget as a condition."""
        return {"top1": f"top-1 drop + 1 standard error <= {self.budget:g} points", "cosine":
                f"output cosine >= {self.budget:g}", "sqnr": f"output SQNR >= {self.budget:g} dB"}[
            self.metric]


def top1_drop(fp32_arg, int8_arg, labels) -> Tuple[float, float, int, int]:
    """(drop in points, its upper bound, images lost, images gained). The drop is paired (same
    images); the bound adds one standard error of the paired difference, so a small held-aside
    set where single images flip both ways cannot certify a drop finer than it can resolve."""
    truth = np.asarray(labels)
    right, q_right = np.asarray(fp32_arg) == truth, np.asarray(int8_arg) == truth
    n = max(len(truth), 1)
    lost, gained = int(np.sum(right & ~q_right)), int(np.sum(~right & q_right))
    d = (lost - gained) / n
    se = math.sqrt(max((lost + gained) / n - d * d, 0.0) / n)
    return 100.0 * d, 100.0 * (d + TOP1_Z * se), lost, gained


def judge(metric: str, budget: float, k: int, final, fp32_arg, int8_arg, labels) -> Trial:
    """Measure one candidate against the budget: top1 drop (bound) at most ``budget`` points,
    output cosine or SQNR (dB) at least ``budget``."""
    if metric == "top1":
        drop, bound, lost, gained = top1_drop(fp32_arg, int8_arg, labels)
        return Trial(k, drop, bound <= budget + 1e-9, bound,
                     f"{lost} lost, {gained} gained of {len(labels)}; bound {bound:.2f}")
    value = final[metric]
    return Trial(k, value, value >= budget)


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
    require_float_output(graph)
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
        result.trials.append(judge(metric, budget, k, final, fp32_arg, int8_arg, labels))
        t = result.trials[-1]
        log.step(f"mixed precision: {k} float layer(s): {result.value_text(t.value)}"
                 f"{f' ({t.detail})' if t.detail else ''}{'' if t.met else ', over budget'}")
        return result.trials[-1].met

    best = 0
    if not trial(0):
        lo, hi = 0, cap
        if cap == 0 or not trial(cap):
            best = cap
            result.note = f"the budget is not met with {cap} float layer(s), the most the " \
                          f"search may keep (quantize.auto_mixed.max_float)"
            if metric == "top1" and 100.0 / len(data) > budget:
                result.note += f"; {len(data)} held-aside images resolve {100.0 / len(data):.2g} " \
                               f"points per image, coarser than the budget: any image flipping " \
                               f"between right and wrong exceeds it (hold more images aside)"
            log.step(f"warning: mixed precision: {result.note}")
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
