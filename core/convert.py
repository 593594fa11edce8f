"""The conversion job: read -> (calibrate -> quantize) -> write. The CLI is a thin layer on this."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from ptqconv.core import log
from ptqconv.core.atomic import check_not_input
from ptqconv.core.calibrate import collect_stats, compute_thresholds
from ptqconv.core.centre import centre_tensors
from ptqconv.core.config import Config, load_config
from ptqconv.core.corrections import apply_bias_corrections, measure_bias_corrections
from ptqconv.core.data import CalibrationData, list_samples
from ptqconv.core.equalize import equalize
from ptqconv.core.errors import PtqconvError
from ptqconv.core.ir.ops import ACTIVATION_OPS
from ptqconv.core.plugins import get_registry
from ptqconv.core.qtable import QuantTable
from ptqconv.core.refine import refine_thresholds
from ptqconv.core.quantize import (activation_spec, assemble_table, check_table_for_backend,
                                   plan_layers, unsigned_where_non_negative, weight_scales)


@dataclass
class ConvertResult:
    """What a job produced: written files, the quantization table (if any) and the graph."""

    outputs: List[str]
    table: Optional[QuantTable]
    graph: object
    timings: Dict[str, float] = field(default_factory=dict)


def sniff_reader(registry, path: str):
    """Pick the reader for ``path`` by content sniffing, then by file extension."""
    if not os.path.exists(path):
        raise PtqconvError(f"{path}: model file not found")
    readers = [f for f in registry.formats.values() if f.read is not None]
    for fmt in readers:
        if fmt.sniff is not None:
            try:
                if fmt.sniff(path):
                    return fmt
            except OSError:
                continue
    lower = path.lower()
    for fmt in readers:
        if any(lower.endswith(ext) for ext in fmt.extensions):
            return fmt
    raise PtqconvError(f"{path}: cannot tell the model format; pass --from (readers: "
                       f"{', '.join(sorted(f.name for f in readers))})")


def companion_paths(fmt, paths: List[str]) -> List[str]:
    """Complete ``paths`` with the format's companion files found beside the first file
    (``m.param`` -> ``m.param`` + ``m.bin``)."""
    if not fmt.companions or len(paths) > len(fmt.companions):
        return list(paths)
    first = paths[0]
    stem = first
    for ext in fmt.extensions:
        if first.lower().endswith(ext):
            stem = first[: -len(ext)]
            break
    result = [first]
    for k, ext in enumerate(fmt.companions):
        result.append(paths[k + 1] if k + 1 < len(paths) else stem + ext)
    return result


def output_paths(fmt, output) -> List[str]:
    """The files a writer produces for ``-o output`` (the pair for two-file formats); a list
    names the companion files too (``[out.param, weights.bin]``)."""
    given = list(output) if isinstance(output, (list, tuple)) else [output]
    if len(given) > 1 + len(fmt.companions):
        raise PtqconvError(f"output lists {len(given)} files but '{fmt.name}' writes "
                           f"{1 + len(fmt.companions)}")
    if not fmt.companions:
        return given
    return companion_paths(fmt, given)


def read_model(registry, cfg: Config):
    """Read the job's input model into the IR; returns (LoadedModel, reader format, paths)."""
    if not cfg.input:
        raise PtqconvError("no input model given (use -i/--input or 'input:' in the config)")
    fmt = registry.reader(cfg.from_format) if cfg.from_format else sniff_reader(registry, cfg.input[0])
    paths = companion_paths(fmt, cfg.input)
    for p in paths:
        if not os.path.exists(p):
            raise PtqconvError(f"{p}: model file not found")
    log.step(f"reading {', '.join(paths)} as {fmt.name}")
    loaded = fmt.read(paths, cfg.reader_options())
    return loaded, fmt, paths


def _table_format(registry, path: str):
    lower = path.lower()
    for tf in registry.table_formats.values():
        if any(lower.endswith(ext) for ext in tf.extensions):
            return tf
    known = sorted(ext for tf in registry.table_formats.values() for ext in tf.extensions)
    raise PtqconvError(f"{path}: unknown table file type (known endings: {', '.join(known)})")


def load_table(registry, path: str, graph) -> QuantTable:
    """Read a quantization table, choosing the table format by file ending."""
    tf = _table_format(registry, path)
    if tf.read is None:
        raise PtqconvError(f"{path}: table format '{tf.name}' cannot be read")
    if not os.path.exists(path):
        raise PtqconvError(f"{path}: table file not found")
    return tf.read(path, graph)


def save_table(registry, table: QuantTable, graph, path: str) -> None:
    """Write a quantization table in the format its file ending names."""
    tf = _table_format(registry, path)
    if tf.write is None:
        raise PtqconvError(f"{path}: table format '{tf.name}' cannot be written")
    tf.write(table, graph, path)
    log.step(f"wrote table {path} ({tf.name})")


def calibration_data(cfg: Config, graph) -> CalibrationData:
    """Build the streaming calibration dataset of the job (one source per model input)."""
    spec = cfg.calibration.data
    if not spec:
        raise PtqconvError("quantizing needs calibration data (--calib or 'calibration.data'), "
                           "or a table (--load-table)")
    specs = spec if isinstance(spec, list) else [spec]
    sources = [list_samples(s, cfg.calibration.count) for s in specs]
    pre = [cfg.preprocess_for(k) for k in range(len(graph.inputs))]
    data = CalibrationData(graph.inputs, sources, pre, cfg.calibration.batch_size)
    log.step(f"calibration data: {len(data)} input(s) from {', '.join(specs)}")
    return data


def output_activations(graph, layers) -> List[str]:
    """The outputs of the quantized layers, taken after an activation that is their only
    consumer (writers fuse it), for backends with ``quantize_outputs``."""
    consumers = graph.consumers()
    result = []
    for layer in layers:
        out = layer.node.outputs[0]
        users = consumers.get(out, [])
        if len(users) == 1 and users[0].op in ACTIVATION_OPS and out not in graph.output_names():
            out = users[0].outputs[0]
        result.append(out)
    return list(dict.fromkeys(result))


def use_bias_correction(setting, backend) -> bool:
    """Resolve ``quantize.bias_correction`` (True, False or None = auto for ``backend``).

    Auto turns it on for backends whose int8 activations are signed only: there a KL-style
    threshold plus the wasted sign bit of ReLU outputs shifts layer means, and the correction
    recovered 1-1.5 top-1 points on MobileNetV2 and SqueezeNet (ncnn, TNN, Tengine, signed
    ONNX); with unsigned codes (onnxruntime) it made no measurable difference. A backend may
    set its own default (mnn-cpu: off; it lowered SqueezeNet in the MNN runtime).
    """
    if setting is not None:
        return bool(setting)
    if backend.bias_correction is not None:
        return backend.bias_correction
    return not backend.unsigned_symmetric


def calibrate_table(registry, cfg: Config, graph, backend, quant: str) -> QuantTable:
    """Calibrate activations and quantize weights into a new :class:`QuantTable`."""
    q = cfg.quantize
    calibrator = registry.get("calibrators", cfg.calibration.method)
    wquant = registry.get("weight_quantizers", q.weight_method)
    act_bits = q.activation_bits or q.bits
    spec = activation_spec(quant, act_bits, backend)
    if q.activation_clamp:  # MNN feature_clamp_value: step = T / clamp
        spec = replace(spec, clamp=q.activation_clamp)
    layers = plan_layers(graph, backend, q.skip)
    if not layers:
        raise PtqconvError(f"no layer of this model can be quantized for backend '{backend.name}' "
                           f"(it runs {', '.join(sorted(backend.ops))} in int8)")
    log.step(f"quantizing {len(layers)} layer(s) for backend '{backend.name}' "
             f"with '{calibrator.name}' activations and '{wquant.name}' {q.weights} weights")
    weights = weight_scales(graph, layers, wquant, q.weights, q.weight_bits or q.bits, backend,
                            q.params)
    data = calibration_data(cfg, graph)
    params = {**calibrator.params, **cfg.calibration.params}
    outputs = output_activations(graph, layers) if backend.quantize_outputs else []
    # exact two-pass histograms: the streamed one's sampling and power-of-two re-binning moved
    # KL thresholds of MobileNetV2 by up to 2x (KL's divergence curve has several minima)
    stats = collect_stats(graph, [layer.activation for layer in layers] + outputs, data,
                          cfg.calibration.threads, histogram=calibrator.histogram,
                          observer=calibrator.observer, exact=True)
    activations = compute_thresholds(calibrator, stats, spec, params, cfg.calibration.threads)
    if spec.symmetric and cfg.quantize.unsigned_activations:
        n = unsigned_where_non_negative(graph, activations, backend, q.centre_padded)
        if n:
            how = "centred in the written model" if backend.centre_non_negative else \
                "unsigned codes with zero point 0"
            log.step(f"{n} never-negative tensor(s) get every int8 code ({how})")
    zero = [n for n, a in activations.items() if a.scale == 0]
    if zero:
        log.step(f"warning: {len(zero)} tensor(s) were all zero on the calibration data "
                 f"(step 0): {', '.join(zero[:5])}")
    table = assemble_table(layers, activations, weights, graph.nodes, q.skip,
                           {"method": calibrator.name, "weight_method": wquant.name,
                            "weights": q.weights, "backend": backend.name, "inputs": len(data)})
    for name in outputs:  # backends that store an output scale per int8 layer (TNN)
        table.activations.setdefault(name, activations[name])
    if calibrator.refine is not None:
        table = calibrator.refine(graph, table, data, spec, params, cfg)
    if cfg.calibration.refine == "cosine":
        table = refine_thresholds(graph, table, stats, data, spec, cfg.calibration.threads,
                                  cfg.calibration.refine_inputs)
    if use_bias_correction(q.bias_correction, backend):
        table.bias_corrections = measure_bias_corrections(graph, table, data,
                                                          cfg.calibration.threads)
    return table


def job_table(registry, cfg: Config, graph, loaded, backend, quant: str) -> QuantTable:
    """The job's table: loaded (--load-table), carried by a quantized source model, or
    calibrated (without the inputs ``quantize.auto_mixed`` holds aside); then ``quantize.skip``
    and automatic mixed precision applied, and checked against ``backend``."""
    from ptqconv.core.diagnose.jobs import mixed_precision_table, split_holdout
    if cfg.quantize.equalize and (cfg.load_table or loaded.table is None or cfg.calibration.data):
        equalize(graph, clip=cfg.quantize.equalize_clip)  # in place: the writer gets it too
    if cfg.load_table:
        table = load_table(registry, cfg.load_table, graph)
        log.step(f"loaded table {cfg.load_table}")
    elif loaded.table is not None and not cfg.calibration.data:
        table = loaded.table
        log.step("using the quantization table that came with the source model")
    else:
        table = calibrate_table(registry, split_holdout(cfg)[0], graph, backend, quant)
    for name in cfg.quantize.skip:
        table.precision[name] = "float"
    check_table_for_backend(table, graph, backend)
    return mixed_precision_table(cfg, graph, table)


def table_job(registry, cfg: Config, t0: float) -> ConvertResult:
    """A table-only job (``save_table`` without ``to``/``output``, as ncnn2table does): calibrate
    (or load) for ``backend`` (default: the reader's) and write the table; no model is written."""
    loaded, reader, in_paths = read_model(registry, cfg)
    check_not_input([cfg.save_table], in_paths)
    graph = registry.get("passes", "canonicalize").run(loaded.graph)
    # a table alone cannot carry the graph rewrite that centring needs
    backend = replace(registry.get("backends", cfg.backend or reader.backend),
                      centre_non_negative=False)
    table = job_table(registry, cfg, graph, loaded, backend, "int8")
    save_table(registry, table, graph, cfg.save_table)
    return ConvertResult([cfg.save_table], table, graph, {"total": time.perf_counter() - t0})


def convert(config=None, **overrides) -> ConvertResult:
    """Run one job from a config (dict, YAML path or :class:`Config`) plus dotted overrides."""
    t0 = time.perf_counter()
    cfg = load_config(config, **overrides)
    registry = get_registry()
    if not cfg.to and cfg.save_table and not cfg.output:
        return table_job(registry, cfg, t0)
    if not cfg.to:
        raise PtqconvError("no target format given (use --to or 'to:' in the config; writers: "
                           + ", ".join(sorted(registry.writer_names())) + ")")
    writer, quant = registry.writer(cfg.to)
    if not cfg.output:
        raise PtqconvError("no output path given (use -o/--output or 'output:' in the config)")
    outs = output_paths(writer, cfg.output)
    loaded, reader, in_paths = read_model(registry, cfg)
    check_not_input(outs + ([cfg.save_table] if cfg.save_table else []), in_paths)
    graph = registry.get("passes", "canonicalize").run(loaded.graph)
    table = None
    if quant or cfg.save_table:
        backend = registry.get("backends", cfg.backend or writer.backend)
        quant = quant or "int8"
        table = job_table(registry, cfg, graph, loaded, backend, quant)
        if cfg.report:
            from ptqconv.core.diagnose.jobs import diagnose_and_report, report_sources
            diagnose_and_report(cfg, graph, table, report_sources(cfg), cfg.report,
                                show=not log.QUIET)
        if cfg.save_table:
            save_table(registry, table, graph, cfg.save_table)
    if not (quant and writer.quantized):
        write_table = None
    else:
        write_table = table
    graph = apply_bias_corrections(graph, write_table)
    if write_table is not None and backend.centre_non_negative:
        graph, write_table = centre_tensors(graph, write_table, cfg.quantize.centre_padded)
    for name in writer.write_passes:
        graph = registry.get("passes", name).run(graph)
    written = writer.write(graph, write_table, outs, dict(cfg.options)) or outs
    log.step(f"wrote {', '.join(written)} ({cfg.to})")
    return ConvertResult(list(written), table, graph, {"total": time.perf_counter() - t0})
