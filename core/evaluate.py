"""Labelled evaluation of classifiers: top-1/top-5 of a model in any supported format.

The model runs in its format's real runtime when the format registers one and it is installed
(onnxruntime for ONNX, the ncnn or MNN packages); otherwise it is read into the IR and run by
onnxruntime (QDQ when it carries a quantization table).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ptqconv.core import log
from ptqconv.core.config import load_config
from ptqconv.core.convert import companion_paths, sniff_reader
from ptqconv.core.data import list_samples, load_image
from ptqconv.core.errors import PtqconvError
from ptqconv.core.plugins import get_registry


@dataclass
class EvalResult:
    """Top-1/top-5 counts over ``n`` labelled inputs, and which runtime ran the model."""

    n: int
    top1: int
    top5: int
    runtime: str

    def summary(self) -> str:
        """One line: top-1 and top-5 as percentages with counts."""
        return (f"top-1 {100 * self.top1 / self.n:.2f}% ({self.top1}/{self.n})  "
                f"top-5 {100 * self.top5 / self.n:.2f}% ({self.top5}/{self.n})  [{self.runtime}]")


def read_labels(path: str) -> Dict[str, int]:
    """Read ``file name <TAB> class index [<TAB> wnid]`` lines into {file name: index}."""
    labels = {}
    try:
        with open(path, "r", encoding="utf-8") as f:
            for k, line in enumerate(f, 1):
                if not line.strip() or line.startswith("#"):
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2 or not parts[1].strip().lstrip("-").isdigit():
                    raise PtqconvError(f"{path} (line {k}): expected 'file<TAB>class index'")
                labels[parts[0]] = int(parts[1])
    except FileNotFoundError:
        raise PtqconvError(f"{path}: labels file not found") from None
    return labels


def model_runner(paths: List[str], fmt, options=None, prefer_runtime: bool = True):
    """Return (callable feed -> outputs, runtime name, input TensorInfos) for a model file."""
    loaded = fmt.read(paths, dict(options or {}))
    graph = loaded.graph
    if prefer_runtime and fmt.runtime is not None:
        try:
            return fmt.runtime(paths, dict(options or {})), fmt.name, graph.inputs
        except ImportError:
            log.step(f"the {fmt.name} runtime is not installed; running through onnxruntime")
    from ptqconv.core.runtime import session_from_model
    from ptqconv.core.ir.onnx_bridge import to_onnx
    registry = get_registry()
    graph = registry.get("passes", "canonicalize").run(graph)
    if loaded.table is not None:
        from ptqconv.formats.onnx.qdq import insert_qdq  # the QDQ simulation of any int8 model
        graph = insert_qdq(graph, loaded.table)
    session = session_from_model(to_onnx(graph), name=paths[0])
    names = [o.name for o in session.get_outputs()]
    return (lambda feed: session.run(names, feed)), "onnxruntime", graph.inputs


def evaluate(model: List[str], data: str, labels: Optional[str] = None, config=None,
             from_format: Optional[str] = None, count: Optional[int] = None,
             skip: int = 0, prefer_runtime: bool = True) -> EvalResult:
    """Top-1/top-5 of ``model`` on the images of ``data`` (labels from ``labels`` or
    ``data/labels.txt``), preprocessed as ``config`` says; ``skip``/``count`` select a slice of
    the sorted file list (e.g. skip=100 evaluates on everything after the calibration images)."""
    registry = get_registry()
    cfg = load_config(config)
    fmt = registry.reader(from_format) if from_format else sniff_reader(registry, model[0])
    paths = companion_paths(fmt, list(model))
    labels_path = labels or os.path.join(data if os.path.isdir(data) else os.path.dirname(data),
                                         "labels.txt")
    truth = read_labels(labels_path)
    files = [p for p in list_samples(data) if os.path.basename(p) in truth][skip:]
    if count:
        files = files[:count]
    if not files:
        raise PtqconvError(f"{data}: no image has a label in {labels_path}")
    run, runtime, inputs = model_runner(paths, fmt, cfg.reader_options(), prefer_runtime)
    if len(inputs) != 1:
        raise PtqconvError(f"eval supports single-input classifiers; the model has {len(inputs)}")
    info, pre = inputs[0], cfg.preprocess_for(0)
    shape = info.static_shape()
    hw = pre.size or (shape[2:] if shape and len(shape) == 4 else None)
    if hw is None:
        raise PtqconvError("set preprocess.size: the model input has no static spatial size")
    top1 = top5 = 0
    with log.progress(len(files), "evaluating") as bar:
        for path in files:
            x = load_image(path, pre, hw)[None]
            scores = np.asarray(run({info.name: x})[0]).reshape(-1)
            best5 = np.argsort(-scores)[:5]
            label = truth[os.path.basename(path)]
            top1 += int(best5[0] == label)
            top5 += int(label in best5)
            bar.update(1)
    return EvalResult(len(files), top1, top5, runtime)


def run_eval(argv) -> int:
    """``ptqconv eval -i MODEL --data DIR [--labels F] [--config cfg.yaml]``."""
    p = argparse.ArgumentParser(prog="ptqconv eval", description="Top-1/top-5 of a classifier "
                                "on a labelled image folder, in the model's own runtime.")
    p.add_argument("-i", "--input", nargs="+", required=True, help="model file(s)")
    p.add_argument("--from", dest="from_format", help="reader name (sniffed if omitted)")
    p.add_argument("--data", required=True, help="image folder, list file or glob")
    p.add_argument("--labels", help="labels file (default: labels.txt in the data folder)")
    p.add_argument("-c", "--config", help="YAML config giving the preprocessing")
    p.add_argument("--skip", type=int, default=0, help="skip the first N sorted images")
    p.add_argument("--count", type=int, help="evaluate at most N images")
    p.add_argument("--onnxruntime", action="store_true",
                   help="run through onnxruntime even if the format's runtime is installed")
    args = p.parse_args(argv)
    result = evaluate(args.input, args.data, args.labels, args.config, args.from_format,
                      args.count, args.skip, not args.onnxruntime)
    print(result.summary())
    return 0
