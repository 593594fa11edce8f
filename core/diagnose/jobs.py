"""How a conversion job (or ``ptqconv diagnose``) uses the diagnosis: which inputs are held
aside from calibration, where the labels come from, automatic mixed precision on the table,
and the report."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from ptqconv.core import log
from ptqconv.core.data import CalibrationData, list_samples
from ptqconv.core.errors import PtqconvError

REPORT_INPUTS = 16


def calibration_sources(cfg) -> List[List[str]]:
    """The job's calibration files, one sorted list per model input ([] without data)."""
    spec = cfg.calibration.data
    if not spec:
        return []
    specs = spec if isinstance(spec, list) else [spec]
    return [list_samples(s, cfg.calibration.count) for s in specs]


def split_holdout(cfg) -> Tuple[object, Optional[List[List[str]]]]:
    """(config calibrating on the first part, held-aside files per input) when
    ``quantize.auto_mixed`` is set; (cfg, None) otherwise."""
    am = cfg.quantize.auto_mixed
    sources = calibration_sources(cfg) if am is not None else []
    if not sources:
        return cfg, None
    n = len(sources[0])
    held = max(1, int(round(n * am.holdout)))
    if n - held < 1:
        raise PtqconvError(f"quantize.auto_mixed holds aside {held} of {n} calibration input(s), "
                           f"leaving none to calibrate on: add calibration data")
    part = cfg.calibration.model_copy(update={"count": n - held})
    return cfg.model_copy(update={"calibration": part}), [s[n - held:] for s in sources]


def input_data(graph, cfg, sources: List[List[str]]) -> CalibrationData:
    """A one-input-per-batch stream of ``sources`` preprocessed as the job says."""
    pre = [cfg.preprocess_for(k) for k in range(len(graph.inputs))]
    return CalibrationData(graph.inputs, sources, pre, batch_size=1)


def labels_path(cfg, data_spec: Optional[str] = None) -> Optional[str]:
    """``calibration.labels``, else ``labels.txt`` in the data folder if it exists."""
    if cfg.calibration.labels:
        return cfg.calibration.labels
    spec = data_spec or cfg.calibration.data
    spec = spec[0] if isinstance(spec, list) else spec
    if not spec:
        return None
    folder = spec if os.path.isdir(spec) else os.path.dirname(spec)
    path = os.path.join(folder, "labels.txt")
    return path if os.path.isfile(path) else None


def labels_for(files: List[str], path: Optional[str]) -> Optional[List[int]]:
    """The class of each file from a labels file, or None if any file has no label."""
    if path is None:
        return None
    from ptqconv.core.evaluate import read_labels
    truth = read_labels(path)
    names = [os.path.basename(f) for f in files]
    if not all(n in truth for n in names):
        return None
    return [truth[n] for n in names]


def mixed_precision_table(cfg, graph, table):
    """Apply ``quantize.auto_mixed`` to ``table`` (on the held-aside inputs); unchanged if unset."""
    am = cfg.quantize.auto_mixed
    if am is None:
        return table
    _, held = split_holdout(cfg)
    if not held:
        raise PtqconvError("quantize.auto_mixed needs calibration data (calibration.data) to hold "
                           "part of it aside")
    from ptqconv.core.diagnose.automix import auto_mixed
    labels = labels_for(held[0], labels_path(cfg)) if am.metric == "top1" else None
    if am.metric == "top1" and labels is None:
        raise PtqconvError("quantize.auto_mixed metric 'top1' needs a label for every held-aside "
                           "input: set calibration.labels (file<TAB>class lines)")
    table, _ = auto_mixed(graph, table, input_data(graph, cfg, held), am.metric, am.budget,
                          labels, am.max_float, cfg.calibration.threads)
    return table


def report_sources(cfg) -> List[List[str]]:
    """Inputs a job's report is measured on: held-aside ones if any, else calibration ones."""
    _, held = split_holdout(cfg)
    sources = held or calibration_sources(cfg)
    if not sources:
        raise PtqconvError("the report needs inputs: set calibration.data")
    return [s[:REPORT_INPUTS] for s in sources]


def diagnose_and_report(cfg, graph, table, sources, path: str, sensitivity: bool = True,
                        rows: int = 10, labels_file: Optional[str] = None, show: bool = True):
    """Diagnose ``table`` on ``sources``, print the worst ``rows`` layers (if ``show``), write
    the report to ``path``; returns the :class:`Diagnosis`."""
    from ptqconv.core.diagnose.analysis import diagnose
    from ptqconv.core.diagnose.automix import MixedResult
    from ptqconv.core.diagnose.report import terminal_table, write_report
    from ptqconv.core.atomic import check_not_input
    check_not_input([path], cfg.input)
    labels = labels_for(sources[0], labels_file or labels_path(cfg))
    name = os.path.basename(cfg.input[0]) if cfg.input else graph.name
    diag = diagnose(graph, table, input_data(graph, cfg, sources), cfg.calibration.threads,
                    sensitivity, labels, name)
    files = sources[0]
    diag.sources = (f"{len(files)} input(s), {os.path.basename(files[0])} ... "
                    f"{os.path.basename(files[-1])}" if len(files) > 1 else files[0])
    if "auto_mixed" in table.meta:
        diag.mixed = MixedResult.from_meta(table.meta["auto_mixed"])
    written = write_report(diag, path)
    if show:
        print(terminal_table(diag, rows))
    log.step(f"wrote report {written[0]}" + (f" (+{len(written) - 1} image(s))"
                                             if len(written) > 1 else ""))
    return diag
