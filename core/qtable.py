"""The quantization table: every scale ptqconv decided, kept apart from the graph.

Conventions (see shared specs/algorithms.md §0): ``scale`` is the *step* (float per integer code),
``dequant(q) = (q - zero_point) * scale``; symmetric int8 codes are [-qmax, qmax] with
``qmax = 2**(bits-1) - 1``; unsigned codes are [0, 2**bits - 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ptqconv.core.errors import PtqconvError

TABLE_VERSION = 1
FLOAT = "float"
INT8 = "int8"


@dataclass
class ActQuant:
    """Per-tensor activation quantization: step ``scale``, ``zero_point``, ``bits``, ``signed``."""

    scale: float
    zero_point: int = 0
    bits: int = 8
    signed: bool = True
    threshold: Optional[float] = None  # the float magnitude mapped to qmax (symmetric methods)

    @property
    def qmin(self) -> int:
        """Smallest integer code used."""
        return -(2 ** (self.bits - 1) - 1) if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest integer code used."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    def to_dict(self):
        """Return a JSON-friendly dict."""
        d = {"scale": float(self.scale), "zero_point": int(self.zero_point), "bits": self.bits,
             "signed": self.signed}
        if self.threshold is not None:
            d["threshold"] = float(self.threshold)
        return d


@dataclass
class WeightQuant:
    """Weight quantization of one constant: per-channel (or one) step ``scales`` along ``axis``."""

    scales: np.ndarray
    axis: Optional[int] = 0  # None = per tensor
    bits: int = 8

    @property
    def qmax(self) -> int:
        """Largest code magnitude."""
        return 2 ** (self.bits - 1) - 1

    def to_dict(self):
        """Return a JSON-friendly dict."""
        return {"scales": [float(s) for s in np.ravel(self.scales)], "axis": self.axis,
                "bits": self.bits}


@dataclass
class QuantTable:
    """All quantization decisions for one graph.

    ``activations``: tensor name -> :class:`ActQuant`; ``weights``: constant name ->
    :class:`WeightQuant`; ``precision``: node name -> "int8" or "float" (layers kept in float);
    ``meta``: free-form provenance (method, source tool, backend); ``bias_corrections``: node
    name -> per-channel delta added to that layer's bias before writing.
    """

    activations: Dict[str, ActQuant] = field(default_factory=dict)
    weights: Dict[str, WeightQuant] = field(default_factory=dict)
    precision: Dict[str, str] = field(default_factory=dict)
    meta: Dict[str, object] = field(default_factory=dict)
    bias_corrections: Dict[str, np.ndarray] = field(default_factory=dict)
    version: int = TABLE_VERSION

    def is_quantized(self, node_name: str) -> bool:
        """True when the node is marked int8 (not float) in the table."""
        return self.precision.get(node_name) == INT8

    def float_layers(self) -> List[str]:
        """Names of the layers kept in float."""
        return [k for k, v in self.precision.items() if v == FLOAT]

    def to_dict(self):
        """Serialize to a JSON-friendly dict."""
        return {"version": self.version, "meta": self.meta,
                "precision": dict(self.precision),
                "activations": {k: v.to_dict() for k, v in self.activations.items()},
                "weights": {k: v.to_dict() for k, v in self.weights.items()},
                "bias_corrections": {k: [float(x) for x in np.ravel(v)]
                                     for k, v in self.bias_corrections.items()}}

    @classmethod
    def from_dict(cls, data, source="table") -> "QuantTable":
        """Parse what :meth:`to_dict` wrote; errors name ``source`` and the bad entry."""
        if not isinstance(data, dict) or "version" not in data:
            raise PtqconvError(f"{source}: not a ptqconv quantization table (no 'version')")
        if data["version"] != TABLE_VERSION:
            raise PtqconvError(f"{source}: table version {data['version']} is not supported "
                               f"(this ptqconv reads version {TABLE_VERSION})")
        table = cls(meta=dict(data.get("meta") or {}))
        try:
            for name, a in (data.get("activations") or {}).items():
                table.activations[name] = ActQuant(float(a["scale"]), int(a.get("zero_point", 0)),
                                                   int(a.get("bits", 8)), bool(a.get("signed", True)),
                                                   a.get("threshold"))
            for name, w in (data.get("weights") or {}).items():
                table.weights[name] = WeightQuant(np.asarray(w["scales"], dtype=np.float32),
                                                  w.get("axis", 0), int(w.get("bits", 8)))
            for name, delta in (data.get("bias_corrections") or {}).items():
                table.bias_corrections[name] = np.asarray(delta, dtype=np.float32)
            for name, p in (data.get("precision") or {}).items():
                if p not in (INT8, FLOAT):
                    raise ValueError(f"precision of '{name}' must be int8 or float, not {p!r}")
                table.precision[name] = p
        except (KeyError, TypeError, ValueError) as exc:
            raise PtqconvError(f"{source}: malformed table entry: {exc}") from None
        return table
