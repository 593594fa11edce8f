"""Write the IR as a ``.tmfile``: fp32, or int8/uint8 laid out as Tengine's quant tool does.

Node order follows Tengine's ONNX converter: one Const node per constant (in order of first use),
then the InputOp nodes, then the operators; node *i* produces tensor *i* unless a node has several
outputs. The same graph and table always give the same bytes.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ptqconv.core.atomic import atomic_outputs
from ptqconv.core.errors import PtqconvError, UnsupportedOpsError
from ptqconv.core.ir.graph import Graph
from ptqconv.core.qtable import QuantTable
from ptqconv.formats.tmfile import schema as S
from ptqconv.formats.tmfile.binary import array_bytes
from ptqconv.formats.tmfile.container import TmModel, TmNode, TmTensor, serialize_tmfile
from ptqconv.formats.tmfile.quant import quantize_model, table_quant_type
from ptqconv.formats.tmfile.write_ops import WRITE_OPS, WriteContext

ORIG_FORMAT_TENGINE = 1


def write_tmfile(graph: Graph, table: Optional[QuantTable], paths, options=None) -> List[str]:
    """Write ``graph`` to ``paths[0]``: fp32 without ``table``, else int8 (or uint8 when the
    table's activations are all unsigned, or ``options['quant'] == 'uint8'``)."""
    data = tmfile_bytes(graph, table, options, source=str(paths[0]))
    with atomic_outputs(paths[:1]) as (tmp,):
        with open(tmp, "wb") as f:
            f.write(data)
    return list(paths[:1])


def tmfile_bytes(graph: Graph, table: Optional[QuantTable] = None, options=None,
                 source: str = "tmfile") -> bytes:
    """The tmfile bytes of ``graph`` (quantized with ``table`` when given)."""
    model, ctx = build_model(graph, source)
    if table is not None:
        quantize_model(model, ctx, table, table_quant_type(table, options))
    return serialize_tmfile(model)


def build_model(graph: Graph, source: str = "tmfile"):
    """Convert ``graph`` into an fp32 :class:`TmModel`; returns it and the write context."""
    ctx = WriteContext(graph)
    for node in graph.nodes:
        if node.name in ctx.absorbed:
            continue
        fn = WRITE_OPS.get(node.op)
        if fn is None:
            ctx.unsupported.append(node.op)
        else:
            fn(ctx, node)
    if ctx.unsupported:
        raise UnsupportedOpsError(f"{source} (tmfile writer)", ctx.unsupported)
    return _assemble(ctx, graph, source), ctx


def _const_tensor(name: str, value: np.ndarray, source: str) -> TmTensor:
    value = np.asarray(value)
    if value.dtype in (np.float32, np.float64):
        dtype, data = S.FP32, array_bytes(value, "<f4")
    elif value.dtype == np.float16:
        dtype, data = S.FP16, array_bytes(value, "<f2")
    elif value.dtype in (np.int64, np.int32, np.int16, np.uint8, np.int8, np.bool_):
        info = np.iinfo(np.int32)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise PtqconvError(f"{source}: constant '{name}' does not fit in int32")
        dtype, data = S.INT32, array_bytes(value, "<i4")
    else:
        raise PtqconvError(f"{source}: constant '{name}' has element type {value.dtype}, which "
                           f"a tmfile cannot hold")
    return TmTensor(name, S.T_CONST, dtype, [int(d) for d in value.shape], [], data)


def _dims(graph: Graph, name: str, default_batch: bool = False):
    info = graph.tensor_info(name)
    if info is None or info.shape is None:
        return None
    if default_batch:  # Tengine needs concrete input dims; symbolic ones run with 1
        return [d if isinstance(d, int) and d > 0 else 1 for d in info.shape]
    shape = info.static_shape()
    return None if shape is None else [int(d) for d in shape]


def _assemble(ctx: WriteContext, graph: Graph, source: str) -> TmModel:
    nodes: List[TmNode] = []
    tensors: List[TmTensor] = []
    index: Dict[str, int] = {}

    def add_tensor(t: TmTensor) -> int:
        index[t.name] = len(tensors)
        tensors.append(t)
        return index[t.name]

    for name, value in ctx.consts.items():
        k = add_tensor(_const_tensor(name, value, source))
        nodes.append(TmNode(name, "Const", None, [], [k]))
    inputs = []
    for t in graph.inputs:
        k = add_tensor(TmTensor(t.name, S.T_INPUT, S.FP32, _dims(graph, t.name, True)))
        inputs.append(len(nodes))
        nodes.append(TmNode(t.name, "InputOp", None, [], [k]))
    producer: Dict[str, int] = {}
    for spec in ctx.specs:
        try:
            ins = [index[i] for i in spec.inputs]
        except KeyError as exc:
            raise PtqconvError(f"{source}: node '{spec.name}' reads '{exc.args[0]}', which no "
                               f"earlier node produces") from None
        outs = []
        for o in spec.outputs:
            if o in index:
                raise PtqconvError(f"{source}: tensor '{o}' is produced twice")
            outs.append(add_tensor(TmTensor(o, S.T_VAR, S.FP32, _dims(graph, o))))
            producer[o] = len(nodes)
        nodes.append(TmNode(spec.name, spec.op, spec.params, ins, outs))
    outputs = []
    for name in graph.output_names():
        if name not in producer:
            raise PtqconvError(f"{source}: graph output '{name}' is not produced by an operator")
        if producer[name] not in outputs:
            outputs.append(producer[name])
    return TmModel(nodes, tensors, inputs, outputs, orig_format=ORIG_FORMAT_TENGINE)
