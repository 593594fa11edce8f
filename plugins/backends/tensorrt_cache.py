"""TensorRT calibration cache (``--save-table x.cache`` / ``--load-table x.cache``).

Text file: a header ``TRT-<version>-<calibrator>`` (e.g. ``TRT-8601-EntropyCalibration2``), then
one line per tensor ``<tensor name>: <8 hex digits>``, the big-endian IEEE-754 bits of the float32
step ``T / 127`` (symmetric int8, codes [-127, 127]). TensorRT compares the header with its own
version and calibrator; ``TRT_CACHE_HEADER`` is what ptqconv writes.

The cache holds activation steps only: reading it re-derives the weights as TensorRT does
(per-channel max-abs, 8 bits) for every layer the ``tensorrt`` profile runs in int8 whose input
has a step.
"""
from __future__ import annotations

import re
import struct

import numpy as np

from ptqconv.core.atomic import write_text_atomic
from ptqconv.core.errors import PtqconvError
from ptqconv.core.qtable import INT8, ActQuant, QuantTable, WeightQuant

TRT_CACHE_HEADER = "TRT-8601-EntropyCalibration2"
QMAX = 127
_LINE = re.compile(r"^(?P<name>.+): (?P<hex>[0-9a-fA-F]{8})$")


def float_to_hex(value: float) -> str:
    """8 lowercase hex digits of the float32 bits of ``value`` (big-endian)."""
    return struct.pack(">f", np.float32(value)).hex()


def hex_to_float(text: str) -> float:
    """The float32 whose big-endian bits are the 8 hex digits ``text``."""
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def cache_step(name: str, aq) -> float:
    """The symmetric int8 step TensorRT will use for ``aq``, or an error if it has none.

    Unsigned codes with zero point 0 keep their threshold (step ``T/127``); asymmetric entries
    and other bit widths cannot be expressed."""
    if aq.zero_point != 0:
        raise PtqconvError(f"TensorRT calibration cache: tensor '{name}' is asymmetric (zero point "
                           f"{aq.zero_point}); TensorRT runs symmetric int8 activations only")
    if aq.bits != 8:
        raise PtqconvError(f"TensorRT calibration cache: tensor '{name}' has {aq.bits}-bit "
                           f"activations; TensorRT runs 8-bit activations only")
    threshold = aq.scale * aq.qmax
    return threshold / QMAX


def write_trt_cache(table: QuantTable, graph, path: str) -> None:
    """Write the table's activation steps as a TensorRT calibration cache."""
    lines = [TRT_CACHE_HEADER]
    for name in sorted(table.activations):
        step = cache_step(name, table.activations[name])
        if "\n" in name or ": " in name:
            raise PtqconvError(f"TensorRT calibration cache: tensor name {name!r} cannot be "
                               f"written (contains a newline or ': ')")
        lines.append(f"{name}: {float_to_hex(step)}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_trt_cache(path: str, graph=None) -> QuantTable:
    """Read a TensorRT calibration cache into a table (weights re-derived, see module doc)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise PtqconvError(f"{path}: table file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PtqconvError(f"{path}: cannot read TensorRT calibration cache: {exc}") from None
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise PtqconvError(f"{path} (line 1): not a TensorRT calibration cache (the header "
                           f"'TRT-<version>-<calibrator>' is missing)")
    table = QuantTable(meta={"source": "tensorrt-cache", "header": lines[0].strip()})
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        m = _LINE.match(line.rstrip("\r"))
        if m is None:
            raise PtqconvError(f"{path} (line {number}): expected '<tensor>: <8 hex digits>'")
        step = hex_to_float(m.group("hex"))
        if not np.isfinite(step) or step < 0:
            raise PtqconvError(f"{path} (line {number}): step {step} of tensor "
                               f"'{m.group('name')}' is not a finite non-negative number")
        table.activations[m.group("name")] = ActQuant(step, 0, 8, True, step * QMAX)
    if graph is not None:
        _derive_weights(table, graph)
    return table


def _derive_weights(table: QuantTable, graph) -> None:
    from ptqconv.core.plugins import get_registry
    from ptqconv.core.quantize import plan_layers
    from ptqconv.plugins.weights.builtin import absmax_scales
    backend = get_registry().get("backends", "tensorrt")
    for layer in plan_layers(graph, backend):
        if layer.activation not in table.activations:
            continue
        w = graph.constants[layer.weight]
        table.weights[layer.weight] = WeightQuant(
            absmax_scales(w, layer.axis, 8, {}).astype(np.float32), layer.axis, 8)
        table.precision[layer.node.name] = INT8
