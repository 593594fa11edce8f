"""The calibration engine: runs the float IR on onnxruntime and streams per-tensor statistics.

Every watched tensor is exposed as an extra model output; batches come from
:class:`CalibrationData`; each tensor's :class:`TensorStats` (fixed size) is updated and the batch's
activations are dropped. Peak memory therefore does not grow with the number of inputs.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable

import numpy as np

from ptqconv.core import log
from ptqconv.core.errors import PtqconvError
from ptqconv.core.ir.graph import Node, TensorInfo
from ptqconv.core.runtime import make_session
from ptqconv.core.stats import TensorStats


SUMMARY_PARTS = ("min", "max", "sum_abs", "size")


def _summary_graph(graph, tensors):
    """A copy of ``graph`` with, per watched tensor, scalar outputs min, max, sum of ``|x|`` and
    element count, computed by onnxruntime (no tensor leaves it)."""
    g = graph.copy()
    parts = {}
    for t in tensors:
        names = {k: g.unique_name(f"{t}_calib_{k}") for k in SUMMARY_PARTS}
        g.nodes += [Node("ReduceMin", g.unique_name(names["min"] + "_op"), [t], [names["min"]],
                         {"keepdims": 0}),
                    Node("ReduceMax", g.unique_name(names["max"] + "_op"), [t], [names["max"]],
                         {"keepdims": 0}),
                    Node("ReduceL1", g.unique_name(names["sum_abs"] + "_op"), [t],
                         [names["sum_abs"]], {"keepdims": 0}),
                    Node("Size", g.unique_name(names["size"] + "_op"), [t], [names["size"]])]
        g.value_info[names["size"]] = TensorInfo(names["size"], "int64", ())
        parts[t] = names
    return g, parts


def _count_non_finite(graph, tensors, feed, threads, stats):
    """Count NaN/Inf of ``tensors`` on one batch with numpy (the rare path after a non-finite
    sum): the tensors are fetched for this batch only."""
    graph_inputs = set(graph.input_names())
    fetch = [t for t in tensors if t not in graph_inputs]
    batch = next(iter(feed.values())).shape[0]
    values = dict(zip(fetch, make_session(graph, extra_outputs=fetch, threads=threads,
                                          batch=batch).run(fetch, feed))) if fetch else {}
    for t in tensors:
        arr = np.asarray(feed[t] if t in graph_inputs else values[t])
        stats[t].nan_count += int(np.isnan(arr).sum())
        stats[t].inf_count += int(np.isinf(arr).sum())


def summary_pass(graph, tensors, data, threads=0) -> Dict[str, TensorStats]:
    """First pass of the exact statistics: per tensor min, max, count and sum of ``|x|``, reduced
    inside onnxruntime (nothing but scalars comes back, so it costs about one plain
    inference over the data)."""
    g, parts = _summary_graph(graph, tensors)
    fetch = [parts[t][k] for t in tensors for k in SUMMARY_PARTS]
    session = make_session(g, extra_outputs=fetch, threads=threads, batch=data.batch_size)
    stats = {t: TensorStats(t, histogram=False) for t in tensors}
    seen = 0
    with log.progress(len(data), "calibrating (ranges)") as bar:
        for feed in data.batches():
            values = dict(zip(fetch, _run(session, fetch, feed, seen // data.batch_size)))
            bad = []
            for t in tensors:
                v = {k: values[parts[t][k]] for k in SUMMARY_PARTS}
                if not np.isfinite(v["sum_abs"]):
                    bad.append(t)
                    continue
                stats[t].add_summary(v["min"], v["max"], int(v["size"]), float(v["sum_abs"]))
            if bad:
                _count_non_finite(graph, bad, feed, threads, stats)
            n = next(iter(feed.values())).shape[0]
            seen += n
            bar.update(n)
    _check(stats, seen)
    return stats


def _run(session, fetch, feed, batch_index):
    try:
        return session.run(fetch, feed)
    except Exception as exc:
        raise PtqconvError(f"onnxruntime failed on calibration batch {batch_index}: "
                           f"{str(exc).splitlines()[0]}") from None


def _check(stats, seen):
    bad = [s for s in stats.values() if s.nan_count or s.inf_count]
    if bad:
        s = bad[0]
        raise PtqconvError(f"tensor '{s.name}' has {s.nan_count} NaN and {s.inf_count} Inf values "
                           f"on the calibration data (check the model and preprocessing)")
    if seen == 0:
        raise PtqconvError("calibration set is empty")


def collect_stats(graph, tensors: Iterable[str], data, threads: int = 0, histogram: bool = True,
                  observer=None, exact: bool = False) -> Dict[str, TensorStats]:
    """Run ``data`` through ``graph`` and return streamed statistics for ``tensors``.

    ``observer`` (optional) makes calibrator-specific state per tensor, updated with each batch
    and stored as ``stats.extra``. ``exact`` makes the histograms the seed tools' two-pass ones:
    a first pass (:func:`summary_pass`, reduced inside onnxruntime) finds each tensor's range,
    the second bins every value on ``[0, absmax]`` with ``bins`` equal bins (no sampling, no
    re-binning). Memory stays flat; the data is run twice. Without ``histogram`` (and without
    an observer) the range pass alone is run.
    """
    tensors = list(dict.fromkeys(tensors))
    if not histogram and observer is None:
        return summary_pass(graph, tensors, data, threads)
    summary = None
    if exact and histogram:
        summary = summary_pass(graph, tensors, data, threads)
        stats = {t: TensorStats(t, hist_samples=0, upper=summary[t].absmax) for t in tensors}
        for t, s in stats.items():
            first = summary[t]
            s.add_summary(first.min, first.max, first.count, first.sum_abs)
            s.batches = first.batches
    else:
        stats = {t: TensorStats(t, histogram=histogram) for t in tensors}
    if observer is not None:
        for s in stats.values():
            s.extra = observer(s.name)
    graph_inputs = set(graph.input_names())
    fetch = [t for t in tensors if t not in graph_inputs]
    session = make_session(graph, extra_outputs=fetch, threads=threads, batch=data.batch_size)
    t0, seen = time.perf_counter(), 0

    def update(feed, outputs):
        for name in tensors:
            arr = feed[name] if name in graph_inputs else outputs[name]
            if summary is None:
                stats[name].update(arr)
            else:
                stats[name].add_to_histogram(arr)
            if stats[name].extra is not None:
                stats[name].extra.update(arr)

    # Statistics of batch k are folded in a worker thread while onnxruntime runs batch k+1.
    with ThreadPoolExecutor(max_workers=1) as pool, \
            log.progress(len(data), "calibrating") as bar:
        pending = None
        for feed in data.batches():
            values = _run(session, fetch, feed, seen // data.batch_size)
            if pending is not None:
                pending.result()
            pending = pool.submit(update, feed, dict(zip(fetch, values)))
            n = next(iter(feed.values())).shape[0]
            seen += n
            bar.update(n)
        if pending is not None:
            pending.result()
    elapsed = time.perf_counter() - t0
    log.step(f"calibration: {seen} input(s) through {len(tensors)} tensor(s) in {elapsed:.2f}s "
             f"({seen / max(elapsed, 1e-9):.1f} inputs/s)")
    _check(stats, seen)
    return stats


def compute_thresholds(calibrator, stats: Dict[str, TensorStats], spec, params,
                       threads: int = 0) -> Dict[str, object]:
    """Run ``calibrator.compute`` for every tensor's statistics; returns {tensor: ActQuant}.
    Tensors are independent, and the searches are numpy-heavy (which releases the GIL), so they
    run on ``threads`` worker threads (0: one per CPU)."""
    workers = threads or os.cpu_count() or 1
    names = list(stats)
    if workers <= 1 or len(names) < 2:
        return {n: calibrator.compute(stats[n], spec, params) for n in names}
    with ThreadPoolExecutor(max_workers=min(workers, len(names))) as pool:
        results = pool.map(lambda n: calibrator.compute(stats[n], spec, params), names)
        return dict(zip(names, results))
