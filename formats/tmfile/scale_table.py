"""Tengine's calibration table (``table_minmax.scale``, ``table_kl.scale``, ...), tmfile.md §12.3.

One line per activation tensor in tensor order: ``<name> <scale %f> <zero_point %d>``. Reading
gives the activation steps; the layers they feed become int8 with per-channel max-abs weight steps,
which is what quant_tool does with a table.
"""
from __future__ import annotations

import math

from ptqconv.core import log
from ptqconv.core.atomic import write_text_atomic
from ptqconv.core.errors import PtqconvError
from ptqconv.core.passes import fuse_activation
from ptqconv.core.qtable import INT8, ActQuant, QuantTable
from ptqconv.core.quantize import plan_layers, weight_scales
from ptqconv.formats.tmfile import schema as S
from ptqconv.formats.tmfile.quant import file_activations, table_quant_type
from ptqconv.formats.tmfile.writer import build_model

BACKEND = "tengine-cpu"


def _tensor_order(graph):
    names = list(graph.input_names())
    for node in graph.nodes:
        names.extend(o for o in node.outputs if o)
    return names


def _file_activations(table: QuantTable, graph):
    """(activations, tensor order) of the tmfile ptqconv would write for ``graph``: fused
    activations drop the tensor before them, split-off ones add one. Falls back to the graph's
    tensors when the graph cannot be written as a tmfile."""
    quant = table_quant_type(table)
    try:
        model, ctx = build_model(fuse_activation(graph.copy()))
    except PtqconvError:
        return file_activations(graph, table, quant), _tensor_order(graph)
    order = [t.name for t in model.tensors if t.type in (S.T_VAR, S.T_INPUT)]
    return file_activations(ctx.graph, table, quant, ctx.specs), order


def write_scale_table(table: QuantTable, graph, path: str) -> None:
    """Write ``table``'s activations (completed as the tmfile writer completes them) in
    Tengine's line format, in the tensor order of the tmfile."""
    acts, order = _file_activations(table, graph)
    lines = []
    for name in order:
        if name not in acts:
            continue
        if any(ch.isspace() for ch in name) or not name:
            raise PtqconvError(f"{path}: tensor name '{name}' contains white space, which "
                               f"Tengine's table format cannot hold")
        aq = acts[name]
        lines.append(f"{name} {aq.scale:f} {int(aq.zero_point)}\n")
    write_text_atomic(path, "".join(lines))


def read_scale_table(path: str, graph) -> QuantTable:
    """Read a Tengine ``.scale`` table for ``graph``: int8 (all zero points 0) or uint8."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{path}: cannot read table: {exc}") from None
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) not in (2, 3):
            raise PtqconvError(f"{path} (line {number}): expected 'name scale zero_point'")
        try:
            scale = float(fields[1])
            zero_point = int(fields[2]) if len(fields) == 3 else 0
        except ValueError:
            raise PtqconvError(f"{path} (line {number}): scale or zero point is not a number") \
                from None
        if not math.isfinite(scale) or scale < 0:
            raise PtqconvError(f"{path} (line {number}): invalid scale {fields[1]}")
        entries[fields[0]] = (scale, zero_point)
    known = set(_tensor_order(graph))
    unknown = [n for n in entries if n not in known]
    if unknown:
        log.step(f"warning: {path}: {len(unknown)} tensor(s) are not in the model and are "
                 f"ignored (e.g. {', '.join(unknown[:3])})")
    unsigned = any(zp != 0 for _, zp in entries.values())
    table = QuantTable(meta={"source": "tengine-scale", "method": "table"})
    for name, (scale, zp) in entries.items():
        if name in known:
            table.activations[name] = ActQuant(scale, zp, 8, not unsigned)
    _plan_weights(table, graph)
    return table


def _plan_weights(table: QuantTable, graph) -> None:
    """Make every layer whose input has a scale int8, with per-channel max-abs weights."""
    from ptqconv.core.plugins import get_registry
    registry = get_registry()
    backend = registry.get("backends", BACKEND)
    layers = [layer for layer in plan_layers(graph, backend)
              if layer.activation in table.activations]
    quantizer = registry.get("weight_quantizers", "minmax")
    table.weights.update(weight_scales(graph, layers, quantizer, "per-channel", 8, backend))
    for layer in layers:
        table.precision[layer.node.name] = INT8
