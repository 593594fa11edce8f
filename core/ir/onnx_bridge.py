"""Conversion between the IR and in-memory ONNX ``ModelProto``.

The calibration engine runs the IR on onnxruntime through this module; the ONNX format plugin adds
file reading/writing and the quantizing writers on top of it.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

from ptqconv.core.errors import PtqconvError, UnsupportedOpsError
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.ir.ops import SUPPORTED_OPS

_ONNX_TO_NP = {v: np.dtype(k).name for k, v in {
    "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
    "int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
    "int32": TensorProto.INT32, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}.items()}
_NP_TO_ONNX = {v: k for k, v in _ONNX_TO_NP.items()}


def onnx_dtype(np_dtype) -> int:
    """Return the ONNX TensorProto element type for a numpy dtype (name)."""
    name = np.dtype(np_dtype).name
    if name not in _NP_TO_ONNX:
        raise PtqconvError(f"element type {name} has no ONNX equivalent supported by ptqconv")
    return _NP_TO_ONNX[name]


def _value_info_to_tensor(vi) -> TensorInfo:
    ttype = vi.type.tensor_type
    dtype = _ONNX_TO_NP.get(ttype.elem_type, "float32")
    shape = None
    if ttype.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in ttype.shape.dim)
    return TensorInfo(vi.name, dtype, shape)


def _tensor_to_value_info(t: TensorInfo):
    shape = None if t.shape is None else [d if d is not None else None for d in t.shape]
    return helper.make_tensor_value_info(t.name, onnx_dtype(t.dtype), shape)


def _attr_value(attr):
    value = helper.get_attribute_value(attr)
    if attr.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(value)
    if attr.type == onnx.AttributeProto.STRING:
        return value.decode("utf-8", "replace")
    if attr.type == onnx.AttributeProto.STRINGS:
        return [v.decode("utf-8", "replace") for v in value]
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise PtqconvError(f"attribute '{attr.name}' holds a subgraph; control flow is not supported")
    if attr.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
        return list(value)
    return value


def from_onnx(model: onnx.ModelProto, source: str = "model") -> Graph:
    """Convert an ONNX model into the IR. Unsupported ops are all listed in one error."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = model.graph
    unsupported = [n.op_type if not n.domain or n.domain == "ai.onnx" else f"{n.domain}::{n.op_type}"
                   for n in g.node
                   if (n.domain not in ("", "ai.onnx")) or n.op_type not in SUPPORTED_OPS]
    if unsupported:
        raise UnsupportedOpsError(source, unsupported)
    constants = {init.name: numpy_helper.to_array(init) for init in g.initializer}
    inputs = [_value_info_to_tensor(v) for v in g.input if v.name not in constants]
    outputs = [_value_info_to_tensor(v) for v in g.output]
    value_info = {v.name: _value_info_to_tensor(v) for v in g.value_info}
    nodes, used_names = [], set()
    for k, n in enumerate(g.node):
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        if n.op_type == "Constant" and len(n.output) == 1:
            constants[n.output[0]] = _constant_node_value(attrs, source, n.name)
            continue
        name = n.name or f"{n.op_type}_{k}"
        while name in used_names:
            name = f"{name}_{k}"
        used_names.add(name)
        nodes.append(Node(n.op_type, name, list(n.input), list(n.output), attrs))
    graph = Graph(g.name or "graph", inputs, outputs, nodes, constants, value_info, opset=opset)
    graph.toposort()
    return graph


def _constant_node_value(attrs, source, name):
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    raise PtqconvError(f"{source}: Constant node '{name}' has no supported value attribute")


def _make_attr(key, value):
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        value = [v.item() if isinstance(v, np.generic) else v for v in value]
    return helper.make_attribute(key, value)


def to_onnx(graph: Graph, extra_outputs: Iterable[str] = (), opset: Optional[int] = None,
            keep_value_info: bool = True) -> onnx.ModelProto:
    """Convert the IR into an ONNX model (``extra_outputs`` exposes internal tensors too)."""
    nodes = []
    for n in graph.nodes:
        proto = helper.make_node(n.op, n.inputs, n.outputs, name=n.name, domain=n.domain or None)
        proto.attribute.extend(_make_attr(k, v) for k, v in n.attrs.items())
        nodes.append(proto)
    inits = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in graph.constants.items()]
    outputs = [_tensor_to_value_info(t) for t in graph.outputs]
    declared = {t.name for t in graph.outputs}
    for name in extra_outputs:
        if name not in declared:
            info = graph.tensor_info(name) or TensorInfo(name)
            outputs.append(helper.make_tensor_value_info(name, onnx_dtype(info.dtype), None))
            declared.add(name)
    value_info = []
    if keep_value_info:
        value_info = [_tensor_to_value_info(t) for k, t in graph.value_info.items()
                      if k not in declared]
    onnx_graph = helper.make_graph(nodes, graph.name or "graph",
                                   [_tensor_to_value_info(t) for t in graph.inputs], outputs,
                                   initializer=inits, value_info=value_info)
    version = opset or max(graph.opset or 13, 11)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", version)],
                              producer_name="ptqconv")
    model.ir_version = min(model.ir_version, 8 if version <= 17 else model.ir_version)
    return model


def infer_shapes(graph: Graph) -> Graph:
    """Fill ``graph.value_info`` (and unknown output shapes) from ONNX shape inference."""
    model = to_onnx(graph, keep_value_info=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several exception types for bad graphs
        raise PtqconvError(f"shape inference failed on graph '{graph.name}': {exc}") from None
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        info = _value_info_to_tensor(vi)
        if info.shape is not None:
            graph.value_info[info.name] = info
    for t in graph.outputs:
        if t.shape is None and t.name in graph.value_info:
            t.shape = graph.value_info[t.name].shape
            t.dtype = graph.value_info[t.name].dtype
    return graph
