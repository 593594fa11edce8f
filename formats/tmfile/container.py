"""The tm2 object model (one subgraph of nodes, tensors and buffers) and its byte layout.

:func:`parse_tmfile` turns untrusted bytes into a :class:`TmModel`, checking every offset, count and
size against the file first; :func:`serialize_tmfile` writes a :class:`TmModel` in the reference
writer's order (tmfile.md §10), so the same model always gives the same bytes.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ptqconv.formats.tmfile import schema as S
from ptqconv.formats.tmfile.binary import NOT_SET, TmBuffer, TmBytes

# A tensor whose data is left out ("benchmark" file) reads as zeros; cap what that may allocate.
MAX_MISSING_DATA = 64 << 20
NO_BUFFER = 0xFFFFFFFF


@dataclass
class TmTensor:
    """One ``TM2_Tensor``: ``quant`` holds ``(zero_point, scale, width)`` per quant param;
    ``data`` the raw little-endian bytes of a const tensor (None for other tensors)."""

    name: str
    type: int
    data_type: int
    dims: Optional[List[int]]
    quant: List[Tuple[int, float, int]] = field(default_factory=list)
    data: Optional[bytes] = None
    layout: int = 0
    offset: int = field(default=0, compare=False)  # where it was read (for error messages)


@dataclass
class TmNode:
    """One ``TM2_Node`` with its operator: ``op`` is the tm op name, ``params`` the decoded param
    struct (None when the operator has none), ``inputs``/``outputs`` tensor indices."""

    name: str
    op: str
    params: Optional[Dict[str, object]]
    inputs: List[int]
    outputs: List[int]
    dynamic_shape: int = 0
    offset: int = field(default=0, compare=False)  # where it was read (for error messages)


@dataclass
class TmModel:
    """A whole tmfile: nodes in execution order, tensors, graph I/O as node indices."""

    nodes: List[TmNode]
    tensors: List[TmTensor]
    inputs: List[int]
    outputs: List[int]
    orig_format: int = 1
    graph_layout: int = 0
    model_layout: int = 0
    name: Optional[str] = None
    version: Tuple[int, int, int] = (2, 0, 0)


def elem_size(data_type: int) -> int:
    """Bytes per element of a tm data type."""
    return np.dtype(S.DTYPES[data_type]).itemsize


# ---------------------------------------------------------------------------------------------
# reading

def parse_tmfile(data: bytes, path: str) -> TmModel:
    """Parse tmfile bytes into a :class:`TmModel`; any inconsistency raises ModelFormatError."""
    b = TmBytes(data, path)
    if b.size < 28:
        raise b.error(0, f"file is too small for a tmfile ({b.size} bytes)")
    ver_main, ver_sub, ver_compile, _pad, root = b.unpack(S.HEADER, 0, "header")
    if ver_main != 2:
        raise b.error(0, f"not a tm2 file (format version {ver_main}, expected 2)")
    if root < 12:
        raise b.error(8, f"root offset {root} points into the header")
    b.enter(0, 12, "header")
    b.enter(root, 16, "model")
    orig_format, _sub_format, vo_subgraphs, s_name = b.unpack(S.MODEL, root, "model")
    name = (b.string(s_name, "model name") or None) if s_name else None
    subgraphs = _offsets(b, vo_subgraphs, "subgraph vector")
    if not subgraphs:
        raise b.error(vo_subgraphs, "the model has no subgraph")
    sg = subgraphs[0]
    b.enter(vo_subgraphs, 4 + 4 * len(subgraphs), "subgraph vector")
    # Older writers end the subgraph after the name (36 bytes); sub_info is never needed.
    b.enter(sg, 36, "subgraph")
    (_sid, graph_layout, model_layout, vi_in, vi_out, vo_nodes, vo_tensors, vo_buffers,
     _sname) = b.unpack(S.SUBGRAPH[:-1], sg, "subgraph")
    buffers = _offsets(b, vo_buffers, "buffer vector") if vo_buffers else []
    tensors = _read_tensors(b, vo_tensors, buffers)
    nodes = _read_nodes(b, vo_nodes, len(tensors))
    inputs = _indices(b, vi_in, "graph input vector", len(nodes)) if vi_in else []
    outputs = _indices(b, vi_out, "graph output vector", len(nodes)) if vi_out else []
    if not outputs:
        raise b.error(sg + 16, "the subgraph names no output node")
    return TmModel(nodes, tensors, inputs, outputs, orig_format, graph_layout, model_layout, name,
                   (ver_main, ver_sub, ver_compile))


def _offsets(b: TmBytes, offset: int, what: str) -> List[int]:
    if offset == NOT_SET:
        raise b.error(offset, f"{what} is not set")
    values = b.vector(offset, what)
    for v in values:
        if v == NOT_SET:
            raise b.error(offset, f"{what} holds an unset offset")
    return values


def _indices(b: TmBytes, offset: int, what: str, limit: int) -> List[int]:
    b.enter(offset, 4, what)
    values = b.vector(offset, what)
    b.leave()
    b.enter(offset, 4 + 4 * len(values), what)
    b.leave()
    for v in values:
        if v >= limit:
            raise b.error(offset, f"{what} holds index {v}, but there are only {limit}")
    return values


def _dims(b: TmBytes, offset: int, what: str) -> List[int]:
    b.enter(offset, 4, what)
    values = b.vector(offset, what, "i")
    b.leave()
    b.enter(offset, 4 + 4 * len(values), what)
    b.leave()
    return values


def _read_tensors(b: TmBytes, vo_tensors: int, buffers: List[int]) -> List[TmTensor]:
    offsets = _offsets(b, vo_tensors, "tensor vector")
    b.enter(vo_tensors, 4 + 4 * len(offsets), "tensor vector")
    tensors = []
    for k, at in enumerate(offsets):
        what = f"tensor {k}"
        b.enter(at, struct.calcsize(S.TENSOR), what)
        (_tid, buffer_id, vd_dims, s_name, vo_quant, layout, ttype,
         dtype) = b.unpack(S.TENSOR, at, what)
        if dtype not in S.DTYPES:
            raise b.error(at + 28, f"{what} has unknown data type {dtype}")
        if ttype not in range(5):
            raise b.error(at + 24, f"{what} has unknown tensor type {ttype}")
        name = b.string(s_name, f"name of {what}")
        dims = _dims(b, vd_dims, f"dims of {what}") if vd_dims else None
        quant = []
        if vo_quant:
            qoffs = _offsets(b, vo_quant, f"quant params of {what}")
            b.enter(vo_quant, 4 + 4 * len(qoffs), f"quant params of {what}")
            for q in qoffs:
                b.enter(q, struct.calcsize(S.QUANT_PARAM), f"quant param of {what}")
                quant.append(tuple(b.unpack(S.QUANT_PARAM, q, "quant param")))
                b.leave()
            b.leave()
        data = None
        if ttype == S.T_CONST:
            data = _const_data(b, at, what, dims, dtype, buffer_id, buffers)
        b.leave()
        tensors.append(TmTensor(name if name else f"tensor_{k}", ttype, dtype, dims, quant, data,
                                layout, offset=at))
    b.leave()
    return tensors


def _const_data(b, at, what, dims, dtype, buffer_id, buffers) -> bytes:
    if dims is None:
        raise b.error(at + 8, f"{what} is a constant without dims")
    if any(d < 0 for d in dims):
        raise b.error(at + 8, f"{what} is a constant with negative dims {dims}")
    if buffer_id >= len(buffers):
        raise b.error(at + 4, f"{what} uses buffer {buffer_id}, but there are {len(buffers)}")
    nbytes = math.prod(dims) * elem_size(dtype)
    boff = buffers[buffer_id]
    b.enter(boff, 8, f"buffer {buffer_id}")
    size, data_at = b.unpack(S.PAIR, boff, "buffer")
    b.leave()
    if size < nbytes:
        raise b.error(boff, f"buffer {buffer_id} holds {size} bytes, {what} with dims {dims} "
                            f"needs {nbytes}")
    if data_at == NOT_SET:
        b.missing += nbytes
        if b.missing > MAX_MISSING_DATA:
            raise b.error(boff, f"buffer {buffer_id} leaves out {nbytes} bytes of data (more "
                                f"than {MAX_MISSING_DATA >> 20} MiB of zeros in all)")
        return bytes(nbytes)
    return b.raw(data_at, nbytes, f"data of buffer {buffer_id}")


def _read_nodes(b: TmBytes, vo_nodes: int, n_tensors: int) -> List[TmNode]:
    offsets = _offsets(b, vo_nodes, "node vector")
    b.enter(vo_nodes, 4 + 4 * len(offsets), "node vector")
    nodes = []
    for k, at in enumerate(offsets):
        what = f"node {k}"
        b.enter(at, 25, what)
        _nid, vi_in, vi_out, t_op, s_name, _attrs, dynamic = b.unpack(S.NODE[:-2], at, what)
        name = b.string(s_name, f"name of {what}")
        if name:
            what = f"node {k} '{name}'"
        inputs = _indices(b, vi_in, f"inputs of {what}", n_tensors) if vi_in else []
        if vi_out == NOT_SET:
            raise b.error(at + 8, f"{what} has no output vector")
        outputs = _indices(b, vi_out, f"outputs of {what}", n_tensors)
        if t_op == NOT_SET:
            raise b.error(at + 12, f"{what} has no operator")
        b.enter(t_op, 12, f"operator of {what}")
        _ver, op_type, t_param = b.unpack(S.OPERATOR, t_op, "operator")
        if op_type >= len(S.OP_NAMES) or S.OP_NAMES[op_type] is None:
            raise b.error(t_op + 4, f"{what} has unknown operator type {op_type}")
        op = S.OP_NAMES[op_type]
        params = _read_params(b, op, t_param, what) if t_param and op in S.PARAMS else None
        b.leave()
        b.leave()
        nodes.append(TmNode(name if name else f"node_{k}", op, params, inputs, outputs,
                            dynamic, offset=at))
    b.leave()
    return nodes


def _read_params(b: TmBytes, op: str, at: int, what: str) -> Dict[str, object]:
    layout = S.PARAMS[op]
    b.enter(at, layout.read_size(), f"{op} param of {what}")
    # Read the whole struct when the file holds it; only the first read_size() bytes are checked
    # for cycles, because older writers put the operator right after a shorter struct.
    size = layout.size if at + layout.size <= b.size else layout.read_size()
    values, pos = {}, at
    for name, code in layout.fields:
        width = struct.calcsize("<" + ("I" if code == "V" else code))
        if pos + width > at + size:
            break  # a shorter (older) struct: later fields are absent
        if code != "x":
            (raw,) = b.unpack("<" + ("I" if code == "V" else code), pos, f"{op}.{name}")
            if code == "V":
                raw = _dims(b, raw, f"{op}.{name} of {what}") if raw else None
            values[name] = raw
        pos += width
    b.leave()
    return values


# ---------------------------------------------------------------------------------------------
# writing

def serialize_tmfile(model: TmModel) -> bytes:
    """Lay out ``model`` exactly as the reference writer does and return the file bytes."""
    out = TmBuffer()
    node_offsets = [_write_node(out, k, node) for k, node in enumerate(model.nodes)]
    vo_nodes = out.vector(node_offsets)
    tensor_offsets, last_buffer, consts = [], NO_BUFFER, []
    for k, t in enumerate(model.tensors):
        if t.type == S.T_CONST:
            last_buffer = len(consts)
            consts.append(t)
        tensor_offsets.append(_write_tensor(out, k, t, last_buffer))
    vo_tensors = out.vector(tensor_offsets)
    vo_buffers = out.vector([out.buffer(t.data or b"") for t in consts])
    vi_in = out.vector(model.inputs)
    vi_out = out.vector(model.outputs)
    sg = out.obj(S.SUBGRAPH[1:], 0, model.graph_layout, model.model_layout, vi_in, vi_out,
                 vo_nodes, vo_tensors, vo_buffers, 0, 0)
    vo_sg = out.vector([sg])
    s_name = out.string(model.name) if model.name else 0
    root = out.obj(S.MODEL[1:], model.orig_format, 0, vo_sg, s_name)
    return out.finish(root, model.version)


def _write_node(out: TmBuffer, k: int, node: TmNode) -> int:
    s_name = out.string(node.name)
    vi_in = out.vector(node.inputs) if node.inputs else 0
    vi_out = out.vector(node.outputs)
    t_param = 0
    if node.params is not None and node.op in S.PARAMS:
        t_param = _write_params(out, S.PARAMS[node.op], node.params)
    t_op = out.obj(S.OPERATOR[1:], 1, S.OP_IDS[node.op], t_param)
    return out.obj(S.NODE[1:], k, vi_in, vi_out, t_op, s_name, 0, node.dynamic_shape)


def _write_params(out: TmBuffer, layout: S.ParamStruct, params: Dict[str, object]) -> int:
    values = []
    for name, code in layout.fields:
        if code == "x":
            continue
        value = params.get(name, 0)
        if code == "V":
            value = out.vector(value, "i") if value is not None else 0
        values.append(value)
    return out.obj(layout.fmt[1:], *values)


def _write_tensor(out: TmBuffer, k: int, t: TmTensor, buffer_id: int) -> int:
    s_name = out.string(t.name)
    vd_dims = out.vector(t.dims, "i") if t.dims is not None else 0
    vo_quant = 0
    if t.quant:
        q_offsets = [out.obj(S.QUANT_PARAM[1:], int(zp), float(scale), int(width))
                     for zp, scale, width in t.quant]
        vo_quant = out.vector(q_offsets)
    return out.obj(S.TENSOR[1:], k, buffer_id, vd_dims, s_name, vo_quant, t.layout, t.type,
                   t.data_type)
