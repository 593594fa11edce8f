"""``ptqconv diagnose --config cfg.yaml --report PATH``: quantize as the config says (without
writing a model), then report per layer what the quantization costs on a few evaluation inputs."""
from __future__ import annotations

import argparse

from ptqconv.core import log
from ptqconv.core.atomic import check_not_input
from ptqconv.core.config import load_config
from ptqconv.core.data import list_samples
from ptqconv.core.diagnose.jobs import (REPORT_INPUTS, calibration_sources, diagnose_and_report,
                                        labels_path)
from ptqconv.core.errors import PtqconvError
from ptqconv.core.plugins import get_registry


def parser() -> argparse.ArgumentParser:
    """The ``diagnose`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ptqconv diagnose",
        description="Per-layer accuracy diagnosis of a quantized model: fp32 and QDQ-quantized "
                    "models run side by side on onnxruntime; reports cosine, SQNR, max error, "
                    "overflow, weight ranges and each layer's own vs accumulated error.")
    p.add_argument("-c", "--config", help="YAML config of the job (model, calibration, quantize)")
    p.add_argument("--report", required=True, help="report file: .md (PNGs beside it) or .html")
    p.add_argument("-i", "--input", nargs="+", help="model file(s) (overrides the config)")
    p.add_argument("--from", dest="from_format", help="reader name (sniffed if omitted)")
    p.add_argument("--to", help="target writer (its backend profile decides what is int8)")
    p.add_argument("--backend", help="backend profile (default: the target's, else onnxruntime)")
    p.add_argument("--calib", help="calibration data (overrides calibration.data)")
    p.add_argument("--method", help="activation calibration method")
    p.add_argument("--weights", choices=["per-channel", "per-tensor", "mix"],
                   help="weight granularity")
    p.add_argument("--load-table", help="diagnose this quantization table instead of calibrating")
    p.add_argument("--data", help="evaluation inputs (default: the calibration source, after the "
                   "calibration inputs)")
    p.add_argument("--labels", help="labels file for top-1 (default: labels.txt beside the data)")
    p.add_argument("--skip", type=int, help="skip the first N sorted evaluation inputs")
    p.add_argument("--count", type=int, default=REPORT_INPUTS,
                   help=f"number of evaluation inputs (default {REPORT_INPUTS})")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the per-layer effect on the model output (the costly part)")
    p.add_argument("--rows", type=int, default=10, help="layers in the terminal table")
    p.add_argument("--threads", type=int, help="onnxruntime threads")
    p.add_argument("-q", "--quiet", action="store_true", help="no step log")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def evaluation_sources(cfg, data, skip, count):
    """Evaluation files per model input: ``data`` from ``skip``, or by default the calibration
    source after the calibration inputs (the calibration inputs themselves if none are left)."""
    if data:
        return [list_samples(data)[skip or 0:][:count]]
    spec = cfg.calibration.data
    if not spec:
        raise PtqconvError("diagnose needs inputs: --data, or calibration.data in the config")
    specs = spec if isinstance(spec, list) else [spec]
    used = len(calibration_sources(cfg)[0])
    start = used if skip is None else skip
    sources = [list_samples(s)[start:][:count] for s in specs]
    if not sources[0]:
        log.step("diagnose: no input beyond the calibration inputs; using calibration inputs")
        sources = [list_samples(s)[:count] for s in specs]
    return sources


def run_diagnose(argv) -> int:
    """Run ``ptqconv diagnose``; returns the exit code."""
    from ptqconv.core.convert import job_table, read_model
    args = parser().parse_args(argv)
    log.QUIET = args.quiet
    cfg = load_config(args.config, **{
        "input": args.input, "from": args.from_format, "to": args.to, "backend": args.backend,
        "calibration.data": args.calib, "calibration.method": args.method,
        "calibration.threads": args.threads, "quantize.weights": args.weights,
        "load_table": args.load_table})
    check_not_input([args.report], cfg.input)
    registry = get_registry()
    quant = "int8"
    backend = cfg.backend
    if cfg.to:
        writer, quant = registry.writer(cfg.to)
        backend = backend or writer.backend
        quant = quant or "int8"
    backend = registry.get("backends", backend or "onnxruntime")
    loaded, _, _ = read_model(registry, cfg)
    graph = registry.get("passes", "canonicalize").run(loaded.graph)
    table = job_table(registry, cfg, graph, loaded, backend, quant)
    sources = evaluation_sources(cfg, args.data, args.skip, args.count)
    diagnose_and_report(cfg, graph, table, sources, args.report, not args.no_sensitivity,
                        args.rows, args.labels or labels_path(cfg, args.data))
    return 0
