"""The calibration engine: runs the float IR on onnxruntime and streams per-tensor statistics.

Every watched tensor is exposed as an extra model output; batches come from
:class:`CalibrationData`; each tensor's :class:`TensorStats` (fixed size) is updated and the batch's
activations are dropped. Peak memory therefore does not grow with the number of inputs.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable

from ptqconv.core import log
from ptqconv.core.errors import PtqconvError
from ptqconv.core.runtime import make_session
from ptqconv.core.stats import TensorStats


def collect_stats(graph, tensors: Iterable[str], data, threads: int = 0, histogram: bool = True,
                  observer=None, exact: bool = False) -> Dict[str, TensorStats]:
    """Run ``data`` through ``graph`` and return streamed statistics for ``tensors``.

    ``observer`` (optional) makes calibrator-specific state per tensor, updated with each batch
    and stored as ``stats.extra``. ``exact`` makes the histograms the seed tools' two-pass ones:
    a first pass (no histogram) finds each tensor's absmax, the second bins every value on
    ``[0, absmax]`` with ``bins`` equal bins (no sampling, no re-binning). Memory stays flat;
    the data is run twice.
    """
    tensors = list(dict.fromkeys(tensors))
    if exact and histogram:
        first = collect_stats(graph, tensors, data, threads, histogram=False)
        stats = {t: TensorStats(t, hist_samples=0, upper=first[t].absmax) for t in tensors}
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
            stats[name].update(arr)
            if stats[name].extra is not None:
                stats[name].extra.update(arr)

    # Statistics of batch k are folded in a worker thread while onnxruntime runs batch k+1.
    with ThreadPoolExecutor(max_workers=1) as pool, \
            log.progress(len(data), "calibrating") as bar:
        pending = None
        for feed in data.batches():
            try:
                values = session.run(fetch, feed)
            except Exception as exc:
                raise PtqconvError(f"onnxruntime failed on calibration batch {seen // data.batch_size}: "
                                   f"{str(exc).splitlines()[0]}") from None
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
    bad = [s for s in stats.values() if s.nan_count or s.inf_count]
    if bad:
        s = bad[0]
        raise PtqconvError(f"tensor '{s.name}' has {s.nan_count} NaN and {s.inf_count} Inf values "
                           f"on the calibration data (check the model and preprocessing)")
    if seen == 0:
        raise PtqconvError("calibration set is empty")
    return stats
