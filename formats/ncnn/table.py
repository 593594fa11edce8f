"""ncnn2table's calibration table (``.table``) as a ptqconv table format.

One entry per line, ``<key> <value> <value> ...`` (shared specs/ncnn.md §5.4): ``<layer>_param_0``
holds the layer's weight multipliers (per output channel; per group for ConvolutionDepthWise;
``31/absmax`` for 3x3 stride-1 Convolution), ``<layer>`` the multiplier of its input blob. A layer
is int8 only when both lines exist; a missing or commented-out activation line keeps it fp32.
Written tables leave out the activation lines of float layers (never their ``_param_0`` lines,
which would make ncnn2int8 stop quantizing that layer type). A tensor the job gave unsigned codes
(centred by the ncnn-int8 writer, core/centre.py) is written with signed codes over its
threshold: the table describes the model as given, without the centring rewrite.
"""
from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from ptqconv.core import log
from ptqconv.core.atomic import write_text_atomic
from ptqconv.core.errors import PtqconvError
from ptqconv.core.qtable import FLOAT, INT8, ActQuant, QuantTable, WeightQuant
from ptqconv.formats.ncnn.int8 import ncnn_type, plan_int8
from ptqconv.formats.ncnn.names import layer_names

WEIGHT_SUFFIX = "_param_0"
MAX_TABLE_BYTES = 64 * 1024 * 1024


def _line(key: str, values) -> str:
    return key + " " + "".join("%f " % float(v) for v in values)


def write_ncnn_table(table: QuantTable, graph, path) -> None:
    """Write ``table`` in ncnn2table's layout: all ``_param_0`` lines, then the input lines of
    the int8 layers."""
    names = layer_names(graph.nodes)
    weights: List[str] = []
    acts: List[str] = []
    for node in graph.nodes:
        if ncnn_type(graph, node) is None:
            continue
        plan = plan_int8(graph, node, table, require_activation=False)
        weights.append(_line(names[node.name] + WEIGHT_SUFFIX, plan.scales))
        aq = table.activations.get(node.inputs[0])
        if table.is_quantized(node.name) and aq is not None and aq.scale > 0:
            step = aq.scale
            if not aq.signed:  # codes the table cannot say: the same threshold, signed
                step = (aq.threshold or aq.scale * aq.qmax) / (2 ** (aq.bits - 1) - 1)
            acts.append(_line(names[node.name], [1.0 / step]))
    write_text_atomic(str(path), "\n".join(weights + acts) + "\n")


def _parse(path) -> Dict[str, tuple]:
    """{key: (line number, values)} of a ``.table``; '#' lines are comments."""
    try:
        if os.path.getsize(path) > MAX_TABLE_BYTES:
            raise PtqconvError(f"{path}: too large for an ncnn calibration table")
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise PtqconvError(f"{path}: table file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{path}: cannot read table: {exc}") from None
    entries: Dict[str, tuple] = {}
    for number, line in enumerate(lines, 1):
        toks = line.split()
        if not toks or toks[0].startswith("#"):
            continue
        try:
            values = np.array([float(t) for t in toks[1:]], dtype=np.float64)
        except ValueError:
            raise PtqconvError(f"{path} (line {number}): '{line[:60]}' is not "
                               f"'<name> <number> ...'") from None
        if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values < 0):
            raise PtqconvError(f"{path} (line {number}): '{toks[0]}' needs finite, "
                               f"non-negative scales")
        entries[toks[0]] = (number, values)
    return entries


def _steps(multipliers: np.ndarray) -> np.ndarray:
    m = np.asarray(multipliers, np.float64)
    return np.where(m > 0, 1.0 / np.where(m > 0, m, 1.0), 0.0)


def read_ncnn_table(path, graph) -> QuantTable:
    """Read an ncnn2table ``.table`` for ``graph`` (keys are ncnn layer names)."""
    entries = _parse(path)
    names = layer_names(graph.nodes)
    table = QuantTable(meta={"source": "ncnn2table", "table": str(path)})
    used = set()
    for node in graph.nodes:
        kind = ncnn_type(graph, node)
        if kind is None:
            continue
        name = names[node.name]
        act, wts = entries.get(name), entries.get(name + WEIGHT_SUFFIX)
        used.update(k for k in (name, name + WEIGHT_SUFFIX) if k in entries)
        if act is None or wts is None:
            table.precision[node.name] = FLOAT
            if act is not None:
                log.step(f"warning: {path}: layer '{name}' has an input scale but no "
                         f"'{name}{WEIGHT_SUFFIX}' line; it stays fp32")
            continue
        w = graph.constants[node.inputs[1]]
        rows = w.shape[0] if node.op in ("Conv", "Gemm") and (node.op == "Conv" or
                                                               node.attr("transB", 0)) \
            else w.shape[-1]
        group = int(node.attr("group", 1)) if kind == "ConvolutionDepthWise" else rows
        line, mult = wts
        if mult.size not in (1, rows, group):
            raise PtqconvError(f"{path} (line {line}): '{name}{WEIGHT_SUFFIX}' has {mult.size} "
                               f"scales; layer '{name}' ({kind}) needs {group}")
        per_row = np.repeat(mult, rows // mult.size)
        axis = 0 if node.op == "Conv" or (node.op == "Gemm" and node.attr("transB", 0)) else 1
        table.weights[node.inputs[1]] = WeightQuant(_steps(per_row).astype(np.float32), axis, 8)
        line, m_in = act
        if m_in.size != 1:
            raise PtqconvError(f"{path} (line {line}): '{name}' needs one input scale, "
                               f"got {m_in.size}")
        step = float(_steps(m_in)[0])
        if step <= 0:
            table.precision[node.name] = FLOAT
            continue
        prev = table.activations.get(node.inputs[0])
        if prev is not None and abs(prev.scale - step) > 1e-6 * step:
            log.step(f"warning: {path}: layers reading '{node.inputs[0]}' have different input "
                     f"scales; using the first")
        else:
            table.activations[node.inputs[0]] = ActQuant(scale=step, threshold=127.0 * step)
        table.precision[node.name] = INT8
    unknown = sorted(set(entries) - used)
    if unknown:
        log.step(f"warning: {path}: {len(unknown)} entr{'y' if len(unknown) == 1 else 'ies'} "
                 f"match no int8-capable layer (e.g. '{unknown[0]}')")
    return table
