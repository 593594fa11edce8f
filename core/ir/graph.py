"""Graph, Node and TensorInfo: the format-free float IR.

Nodes carry ONNX op names and ONNX-style attributes (python scalars, lists, strings, numpy arrays);
tensors are referred to by name; constants are numpy arrays held by the graph. Every format reader
produces this and every writer consumes it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ptqconv.core.errors import PtqconvError

Dim = Union[int, str, None]


@dataclass
class TensorInfo:
    """A named tensor's element type (numpy dtype name) and shape (ints, symbolic names or None)."""

    name: str
    dtype: str = "float32"
    shape: Optional[Tuple[Dim, ...]] = None

    def static_shape(self) -> Optional[Tuple[int, ...]]:
        """Return the shape as ints if every dimension is known, else None."""
        if self.shape is None or any(not isinstance(d, int) or d < 0 for d in self.shape):
            return None
        return tuple(self.shape)


@dataclass
class Node:
    """One operation: ONNX ``op`` name, unique ``name``, input/output tensor names, attributes.

    An empty string in ``inputs`` marks an omitted optional input, as in ONNX.
    """

    op: str
    name: str
    inputs: List[str]
    outputs: List[str]
    attrs: Dict[str, object] = field(default_factory=dict)
    domain: str = ""

    def attr(self, key, default=None):
        """Return attribute ``key`` or ``default``."""
        return self.attrs.get(key, default)


class Graph:
    """A DAG of :class:`Node` in topological order with graph inputs, outputs and constants."""

    def __init__(self, name="graph", inputs=None, outputs=None, nodes=None, constants=None,
                 value_info=None, opset=13):
        self.name = name
        self.inputs: List[TensorInfo] = list(inputs or [])
        self.outputs: List[TensorInfo] = list(outputs or [])
        self.nodes: List[Node] = list(nodes or [])
        self.constants: Dict[str, np.ndarray] = dict(constants or {})
        self.value_info: Dict[str, TensorInfo] = dict(value_info or {})
        self.opset = opset

    # ---- lookup -----------------------------------------------------------------------------
    def producers(self) -> Dict[str, Node]:
        """Map each tensor name to the node that produces it."""
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> Dict[str, List[Node]]:
        """Map each tensor name to the nodes that read it (in node order)."""
        result: Dict[str, List[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    result.setdefault(i, []).append(n)
        return result

    def producer(self, tensor: str) -> Optional[Node]:
        """Return the node producing ``tensor`` or None (graph input or constant)."""
        return self.producers().get(tensor)

    def node(self, name: str) -> Node:
        """Return the node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def input_names(self) -> List[str]:
        """Names of the graph inputs."""
        return [t.name for t in self.inputs]

    def output_names(self) -> List[str]:
        """Names of the graph outputs."""
        return [t.name for t in self.outputs]

    def tensor_info(self, name: str) -> Optional[TensorInfo]:
        """Return the known type/shape of ``name`` (inputs, outputs, value_info, constants)."""
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        if name in self.value_info:
            return self.value_info[name]
        if name in self.constants:
            c = self.constants[name]
            return TensorInfo(name, str(c.dtype), tuple(c.shape))
        return None

    def shape(self, name: str):
        """Return the static shape of ``name`` or None."""
        info = self.tensor_info(name)
        return info.static_shape() if info else None

    # ---- editing ----------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """Return a tensor/node name starting with ``base`` that is not used yet."""
        used = set(self.constants) | {t.name for t in self.inputs + self.outputs}
        for n in self.nodes:
            used.add(n.name)
            used.update(n.outputs)
        if base not in used:
            return base
        k = 1
        while f"{base}_{k}" in used:
            k += 1
        return f"{base}_{k}"

    def rename_tensor(self, old: str, new: str) -> None:
        """Rename tensor ``old`` to ``new`` everywhere it appears."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
            n.outputs = [new if o == old else o for o in n.outputs]
        for t in self.inputs + self.outputs:
            if t.name == old:
                t.name = new
        if old in self.constants:
            self.constants[new] = self.constants.pop(old)
        if old in self.value_info:
            info = self.value_info.pop(old)
            info.name = new
            self.value_info[new] = info

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer (and graph output) of ``old`` read ``new`` instead."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
        for t in self.outputs:
            if t.name == old:
                t.name = new

    def copy(self) -> "Graph":
        """Deep copy (constants are copied too)."""
        return copy.deepcopy(self)

    # ---- whole-graph operations (each returns self so they chain) ---------------------------
    def toposort(self) -> "Graph":
        """Order nodes so every input is produced before use; error on cycles."""
        available = set(self.constants) | set(self.input_names()) | {""}
        pending, ordered = list(self.nodes), []
        while pending:
            ready = [n for n in pending if all(i in available for i in n.inputs)]
            if not ready:
                missing = sorted({i for n in pending for i in n.inputs if i not in available})
                raise PtqconvError(f"graph '{self.name}': tensors used but never produced "
                                   f"(or a cycle): {', '.join(missing[:10])}")
            ready_ids = {id(n) for n in ready}
            pending = [n for n in pending if id(n) not in ready_ids]
            for n in ready:
                ordered.append(n)
                available.update(n.outputs)
        self.nodes = ordered
        return self

    def cleanup(self) -> "Graph":
        """Remove nodes and constants that do not contribute to any graph output."""
        needed = set(self.output_names())
        kept = []
        for n in reversed(self.nodes):
            if any(o in needed for o in n.outputs):
                kept.append(n)
                needed.update(i for i in n.inputs if i)
        self.nodes = list(reversed(kept))
        self.constants = {k: v for k, v in self.constants.items() if k in needed}
        live = needed | {o for n in self.nodes for o in n.outputs}
        self.value_info = {k: v for k, v in self.value_info.items() if k in live}
        return self

    def validate(self) -> "Graph":
        """Check names are unique and every input is defined before use."""
        seen_nodes, produced = set(), set(self.constants) | set(self.input_names())
        for n in self.nodes:
            if n.name in seen_nodes:
                raise PtqconvError(f"graph '{self.name}': duplicate node name '{n.name}'")
            seen_nodes.add(n.name)
            for i in n.inputs:
                if i and i not in produced:
                    raise PtqconvError(f"graph '{self.name}': node '{n.name}' ({n.op}) uses "
                                       f"'{i}' before it is produced")
            for o in n.outputs:
                if o and o in produced:
                    raise PtqconvError(f"graph '{self.name}': tensor '{o}' is produced twice")
                produced.add(o)
        for t in self.outputs:
            if t.name not in produced:
                raise PtqconvError(f"graph '{self.name}': output '{t.name}' is never produced")
        return self

    def infer_shapes(self) -> "Graph":
        """Fill ``value_info`` with shapes from ONNX shape inference."""
        from ptqconv.core.ir.onnx_bridge import infer_shapes
        infer_shapes(self)
        return self

    def op_counts(self) -> Dict[str, int]:
        """Return {op: count}."""
        counts: Dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def __repr__(self):
        return (f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs={self.input_names()}, "
                f"outputs={self.output_names()})")
