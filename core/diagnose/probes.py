"""One onnxruntime pass that runs the fp32 model beside quantized variants of it and returns
only scalars (the pattern of :mod:`ptqconv.core.refine`, generalised).

A :class:`ProbeGraph` starts as the fp32 graph. ``quantized_model`` adds the whole QDQ-quantized
model (errors accumulate, as in the written int8 model); ``quantized_layers`` adds a copy of one
layer quantized alone and, optionally, everything downstream of it (the rest in fp32). Every
quantized copy is built by :func:`ptqconv.formats.onnx.qdq.insert_qdq`, the simulation the ONNX
writer ships, so a diagnosis measures what a user gets. Probes add nodes reducing a tensor pair to
a few scalars per input; :meth:`ProbeGraph.run` streams the data and keeps one scalar per probe
and input, so memory does not grow with the size of the tensors.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, List

import numpy as np

from ptqconv.core import log
from ptqconv.core.corrections import apply_bias_corrections
from ptqconv.core.errors import PtqconvError
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.qtable import INT8, QuantTable
from ptqconv.core.runtime import make_session
from ptqconv.core.diagnose.metrics import clipping_bounds, saturation_bounds

ERROR_PARTS = ("dot", "ref_sq", "test_sq", "err_sq", "max_abs")


def single_layer_table(table: QuantTable, node: Node) -> QuantTable:
    """The part of ``table`` that quantizes ``node`` alone (every other layer float)."""
    sub = QuantTable(meta=dict(table.meta))
    sub.precision[node.name] = INT8
    if node.inputs[0] in table.activations:
        sub.activations[node.inputs[0]] = table.activations[node.inputs[0]]
    if len(node.inputs) > 1 and node.inputs[1] in table.weights:
        sub.weights[node.inputs[1]] = table.weights[node.inputs[1]]
    if node.name in table.bias_corrections:
        sub.bias_corrections[node.name] = table.bias_corrections[node.name]
    return sub


def downstream(graph: Graph, node: Node) -> List[Node]:
    """``node`` and every node depending on its outputs, in graph order."""
    consumers = graph.consumers()
    reached, todo = {id(node)}, list(node.outputs)
    while todo:
        for n in consumers.get(todo.pop(), ()):
            if id(n) not in reached:
                reached.add(id(n))
                todo.extend(n.outputs)
    return [n for n in graph.nodes if id(n) in reached]


class ProbeGraph:
    """The fp32 graph plus quantized copies and scalar probes, run by :meth:`run`."""

    def __init__(self, graph: Graph):
        self.base = graph
        self.g = Graph(graph.name, copy.deepcopy(graph.inputs), copy.deepcopy(graph.outputs),
                       [copy.deepcopy(n) for n in graph.nodes], dict(graph.constants),
                       dict(graph.value_info), max(graph.opset or 13, 13))
        self.probes: Dict[object, Dict[str, str]] = {}
        self._names = {n.name for n in self.g.nodes} | {o for n in self.g.nodes for o in n.outputs}
        self._names |= set(self.g.constants) | set(self.g.input_names())

    # ---- quantized copies --------------------------------------------------------------------
    def _fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def _merge(self, sub: Graph, tag: str, external: Iterable[str]) -> Dict[str, str]:
        """Append ``sub``'s nodes, renaming every tensor it produces (and every constant that
        differs from the fp32 graph's) with ``tag``; returns {sub tensor: merged name}."""
        external = set(external)
        mapping: Dict[str, str] = {}
        for name, value in sub.constants.items():
            mine = self.g.constants.get(name)
            if mine is not None and mine.shape == value.shape and mine.dtype == value.dtype \
                    and np.array_equal(mine, value):
                mapping[name] = name
            else:
                mapping[name] = self._fresh(f"{tag}/{name}")
                self.g.constants[mapping[name]] = value
        for node in sub.nodes:
            inputs = [i if (not i or i in external) else mapping[i] for i in node.inputs]
            outputs = []
            for o in node.outputs:
                if o:
                    mapping[o] = self._fresh(f"{tag}/{o}")
                outputs.append(mapping.get(o, o))
            self.g.nodes.append(Node(node.op, self._fresh(f"{tag}/{node.name}"), inputs, outputs,
                                     dict(node.attrs), node.domain))
        return mapping

    def quantized_model(self, table: QuantTable, tag: str = "q") -> Dict[str, str]:
        """Add the whole model quantized as ``table`` says (bias corrections applied, QDQ as the
        ONNX writer makes it); returns {fp32 tensor: its quantized-model counterpart}."""
        from ptqconv.formats.onnx.qdq import insert_qdq
        g = apply_bias_corrections(self.base.copy(), table)
        return self._merge(insert_qdq(g, table), tag, self.base.input_names())

    def quantized_layers(self, node: Node, table: QuantTable, tag: str,
                         to_outputs: bool = True) -> Dict[str, str]:
        """Add ``node`` quantized alone; with ``to_outputs`` also a float copy of everything
        downstream of it, so the model outputs carry only this layer's error. Returns
        {fp32 tensor: copy} for the tensors the copy produces."""
        from ptqconv.formats.onnx.qdq import insert_qdq
        nodes = downstream(self.base, node) if to_outputs else [node]
        produced = {o for n in nodes for o in n.outputs if o}
        external = [i for n in nodes for i in n.inputs
                    if i and i not in produced and i not in self.base.constants]
        wanted = [o.name for o in self.base.outputs if o.name in produced] if to_outputs \
            else [o for o in node.outputs if o]
        if not wanted:
            return {}
        used = {i for n in nodes for i in n.inputs if i in self.base.constants}
        sub = Graph(f"{tag}", [TensorInfo(t) for t in dict.fromkeys(external)],
                    [TensorInfo(t) for t in wanted], [copy.deepcopy(n) for n in nodes],
                    {c: self.base.constants[c] for c in used}, {}, self.g.opset)
        one = single_layer_table(table, node)
        sub = insert_qdq(apply_bias_corrections(sub, one), one)
        return self._merge(sub, tag, external)

    # ---- probes -----------------------------------------------------------------------------
    def _op(self, op: str, inputs: List[str], attrs=None, dtype: str = "float32") -> str:
        out = self._fresh(f"probe/{op}")
        self.g.nodes.append(Node(op, self._fresh(out + "_op"), inputs, [out], dict(attrs or {})))
        self.g.value_info[out] = TensorInfo(out, dtype)
        return out

    def _scalar(self, value: float) -> str:
        name = self._fresh("probe/const")
        self.g.constants[name] = np.float32(value)
        return name

    def error(self, key, ref: str, test: str) -> None:
        """Probe ``key``: per input Σref·test, Σref², Σtest², Σ(ref-test)², max|ref-test|."""
        diff = self._op("Sub", [ref, test])
        self.probes[key] = {
            "dot": self._op("ReduceSum", [self._op("Mul", [ref, test])], {"keepdims": 0}),
            "ref_sq": self._op("ReduceSumSquare", [ref], {"keepdims": 0}),
            "test_sq": self._op("ReduceSumSquare", [test], {"keepdims": 0}),
            "err_sq": self._op("ReduceSumSquare", [diff], {"keepdims": 0}),
            "max_abs": self._op("ReduceMax", [self._op("Abs", [diff])], {"keepdims": 0})}

    def _fraction_outside(self, x: str, lo: float, hi: float, inclusive: bool) -> str:
        above, below = ("GreaterOrEqual", "LessOrEqual") if inclusive else ("Greater", "Less")
        hit = self._op(above, [x, self._scalar(hi)], dtype="bool")
        if np.isfinite(lo):
            hit = self._op("Or", [hit, self._op(below, [x, self._scalar(lo)], dtype="bool")],
                           dtype="bool")
        return self._op("ReduceMean", [self._op("Cast", [hit], {"to": 1})], {"keepdims": 0})

    def saturation(self, key, tensor: str, aq) -> None:
        """Probe ``key``: per input, the fraction of ``tensor`` whose code saturates
        ("overflow", MNN's definition) and the fraction clipped beyond half a step."""
        if aq.scale <= 0:
            return
        self.probes[key] = {
            "overflow": self._fraction_outside(tensor, *saturation_bounds(aq), True),
            "clipped": self._fraction_outside(tensor, *clipping_bounds(aq), False)}

    def argmax(self, key, tensor: str) -> None:
        """Probe ``key``: the arg-max over the last axis (a classifier's top-1 class)."""
        flat = self._op("Flatten", [tensor], {"axis": 1})
        self.probes[key] = {"argmax": self._op("ArgMax", [flat], {"axis": 1, "keepdims": 0},
                                               dtype="int64")}

    # ---- running ----------------------------------------------------------------------------
    def run(self, feeds: Iterable[Dict[str, np.ndarray]], total: int, threads: int = 0,
            desc: str = "diagnosing") -> Dict[object, Dict[str, np.ndarray]]:
        """Stream ``feeds`` (one input each) through the graph; return {probe key: {part:
        one value per input}}."""
        fetch = list(dict.fromkeys(n for parts in self.probes.values() for n in parts.values()))
        if not fetch:
            return {}
        session = make_session(self.g, extra_outputs=fetch, threads=threads)
        rows = []
        with log.progress(total, desc) as bar:
            for feed in feeds:
                try:
                    values = session.run(fetch, feed)
                except Exception as exc:  # onnxruntime's own error types
                    raise PtqconvError(f"onnxruntime failed while {desc}: "
                                       f"{str(exc).splitlines()[0]}") from None
                rows.append([np.asarray(v).reshape(-1) for v in values])
                bar.update(1)
        if not rows:
            raise PtqconvError(f"no input to run while {desc}")
        column = {name: np.concatenate([r[k] for r in rows]) for k, name in enumerate(fetch)}
        return {key: {part: column[name] for part, name in parts.items()}
                for key, parts in self.probes.items()}
