"""Frozen records that plugins hand to the host through the ``register_*`` hooks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple


@dataclass(frozen=True)
class ModelFormat:
    """A model file format.

    ``read(paths, options) -> LoadedModel`` and ``write(graph, table, path, options)`` are optional.
    ``sniff(path) -> bool`` recognizes a file by content. ``extensions`` are the main file's
    endings (".onnx"); ``companions`` the endings of files that travel with it (".bin").
    ``quantized`` lists the integer types its quantizing writers produce: a writer named
    ``<name>-int8`` exists when "int8" is listed. ``backend`` is the hardware profile its int8
    writer targets by default. ``write_passes`` are graph passes (by name) the host runs before
    ``write``. ``runtime(paths, options) -> callable(feed: dict) -> list of arrays`` runs a file of
    this format in its real runtime (used by ``eval`` and tests), when one is installed.
    """

    name: str
    description: str = ""
    extensions: Tuple[str, ...] = ()
    companions: Tuple[str, ...] = ()
    read: Optional[Callable] = None
    write: Optional[Callable] = None
    sniff: Optional[Callable] = None
    quantized: Tuple[str, ...] = ()
    backend: str = "generic"
    write_passes: Tuple[str, ...] = ()
    runtime: Optional[Callable] = None


@dataclass
class LoadedModel:
    """What a reader returns: the float IR and, for already-quantized files, their table."""

    graph: object
    table: Optional[object] = None


@dataclass(frozen=True)
class Calibrator:
    """An activation calibration method.

    ``compute(stats, spec, params) -> ActQuant`` turns streamed :class:`TensorStats` into a
    quantization for one tensor. ``observer`` optionally creates extra per-tensor streaming state
    (object with ``update(array)``), passed to ``compute`` as ``stats.extra``. ``refine`` optionally
    improves the whole table after the statistics pass, with access to the model and data.
    """

    name: str
    compute: Callable
    description: str = ""
    observer: Optional[Callable] = None
    refine: Optional[Callable] = None
    params: Dict[str, object] = field(default_factory=dict)
    histogram: bool = True  # False: ``compute`` reads only min/max/count/sum|x| (one fast pass)


@dataclass(frozen=True)
class WeightQuantizer:
    """A weight quantization method: ``quantize(w, axis, bits, params) -> scales`` (steps)."""

    name: str
    quantize: Callable
    description: str = ""


@dataclass(frozen=True)
class OpCaps:
    """What a backend runs in integer arithmetic for one op type."""

    weights: Tuple[str, ...] = ("per-channel", "per-tensor")  # granularities it accepts
    activations: Tuple[str, ...] = ("symmetric",)  # "symmetric" and/or "asymmetric"
    bits: Tuple[int, ...] = (8,)
    unsigned: bool = False  # activations as uint8 with zero point


# attribute values a node has when the attribute is absent (ONNX defaults)
_ATTR_DEFAULTS = {"strides": [1, 1], "dilations": [1, 1], "group": 1}


@dataclass(frozen=True)
class WeightBitsRule:
    """Layers of type ``op`` whose attributes equal ``attrs`` get at most ``bits``-bit weights
    (ncnn's int8 Winograd kernels need 6-bit weights in 3x3 stride-1 convolutions)."""

    op: str
    attrs: Dict[str, object]
    bits: int
    why: str = ""

    def matches(self, node) -> bool:
        """True when ``node`` is of this rule's op and has its attribute values."""
        if node.op != self.op:
            return False
        for key, want in self.attrs.items():
            have = node.attr(key, _ATTR_DEFAULTS.get(key))
            if (list(have) if isinstance(have, (list, tuple)) else have) != want:
                return False
        return True


@dataclass(frozen=True)
class Backend:
    """A hardware target as data: which ops run in int8 and with which granularity/bits."""

    name: str
    ops: Dict[str, OpCaps]
    description: str = ""
    quantize_outputs: bool = False  # also give the outputs of quantized ops a scale
    # its int8 path also runs uint8 codes with zero point 0 (never-negative tensors get the
    # sign bit back); onnxruntime does, Tengine's int8 tmfile cannot store it
    unsigned_symmetric: bool = False
    # default of quantize.bias_correction for this target (None: on unless unsigned_symmetric)
    bias_correction: Optional[bool] = None
    # no zero points, but never-negative inputs of layers without padding can be centred in the
    # float graph to use every int8 code (core/centre.py; ncnn)
    centre_non_negative: bool = False
    # layers whose kernels need fewer weight bits than the job asks for
    weight_bits_rules: Tuple[WeightBitsRule, ...] = ()

    def weight_bits(self, node, bits: int) -> int:
        """The weight bits ``node`` gets on this backend when the job asks for ``bits``."""
        for rule in self.weight_bits_rules:
            if rule.matches(node):
                bits = min(bits, rule.bits)
        return bits


@dataclass(frozen=True)
class GraphPass:
    """A named graph transformation: ``run(graph) -> graph``."""

    name: str
    run: Callable
    description: str = ""


@dataclass(frozen=True)
class TableFormat:
    """A quantization-table file format chosen by file ending.

    ``read(path, graph) -> QuantTable``; ``write(table, graph, path)``.
    """

    name: str
    extensions: Tuple[str, ...]
    read: Optional[Callable] = None
    write: Optional[Callable] = None
    description: str = ""


@dataclass(frozen=True)
class Command:
    """A CLI sub-command (``ptqconv NAME ...``): ``run(argv) -> exit code``."""

    name: str
    run: Callable
    description: str = ""
