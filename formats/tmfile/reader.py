"""Read a ``.tmfile`` into the float IR; int8/uint8 files also give their :class:`QuantTable`.

Quantized constants are dequantized (``(q - zero_point) * scale``, per axis-0 channel when the
tensor holds one quant param per channel); int32 biases are ``q * scale``. The table keeps the
activation steps/zero points, the weight steps and, under ``meta["tmfile"]``, what the QuantTable
has no field for (per-channel bias params, uint8 weight zero points), so writing the table back
reproduces the file's quantization exactly.
"""
from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from ptqconv.core.errors import ModelFormatError, PtqconvError, UnsupportedOpsError
from ptqconv.core.ir.graph import Graph, TensorInfo
from ptqconv.core.qtable import INT8, ActQuant, QuantTable, WeightQuant
from ptqconv.core.records import LoadedModel
from ptqconv.formats.tmfile import schema as S
from ptqconv.formats.tmfile.container import TmModel, TmTensor, parse_tmfile
from ptqconv.formats.tmfile.read_ops import READ_OPS, ReadContext

WEIGHTED = ("Convolution", "Deconvolution", "FullyConnected")
SKIPPED = ("Const", "InputOp")
NEWER_OPS = {"HardSwish": 14, "Mish": 18}


def sniff_tmfile(path: str) -> bool:
    """True if ``path`` passes the structural checks of tmfile.md §11 (no magic number exists)."""
    size = os.path.getsize(path)
    if size < 28:
        return False
    with open(path, "rb") as f:
        head = f.read(12)
    ver_main, ver_sub, ver_compile = (int.from_bytes(head[k:k + 2], "little") for k in (0, 2, 4))
    root = int.from_bytes(head[8:12], "little")
    if ver_main != 2 or ver_sub > 16 or ver_compile > 16:
        return False
    if root % 4 or root < 12 or root + 16 > size:
        return False
    with open(path, "rb") as f:
        f.seek(root)
        model = f.read(16)
        orig, sub = (int.from_bytes(model[k:k + 4], "little", signed=True) for k in (0, 4))
        vo_sg = int.from_bytes(model[8:12], "little")
        if not 0 <= orig <= 8 or sub != 0 or vo_sg % 4 or vo_sg >= root:
            return False
        f.seek(vo_sg)
        count = int.from_bytes(f.read(4), "little")
        return count == 1


def read_tmfile(paths, options=None) -> LoadedModel:
    """Read ``paths[0]`` (a tmfile) into a :class:`LoadedModel` (graph, table or None)."""
    path = str(paths[0])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PtqconvError(f"{path}: model file not found") from None
    except OSError as exc:
        raise PtqconvError(f"{path}: cannot read: {exc.strerror}") from None
    model = parse_tmfile(data, path)
    return convert_model(model, path)


def convert_model(model: TmModel, path: str) -> LoadedModel:
    """Turn a parsed :class:`TmModel` into the IR graph and its quantization table."""
    if model.graph_layout != 0 or model.model_layout != 0:
        raise UnsupportedOpsError(path, ["NHWC layout (only NCHW tmfiles are supported)"])
    names = _tensor_names(model.tensors)
    constants = {names[k]: dequantize(t, path) for k, t in enumerate(model.tensors)
                 if t.type == S.T_CONST}
    ctx = ReadContext(model, path, names, constants)
    _check_order(model, ctx)
    inputs = []
    for node in model.nodes:
        if node.op == "InputOp":
            for k in node.outputs:
                inputs.append(_info(names[k], model.tensors[k]))
        elif node.op not in SKIPPED:
            fn = READ_OPS.get(node.op)
            if fn is None:
                ctx.unsupported.append(node.op)
                continue
            try:
                fn(ctx, node)
            except (ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
                # Param values that contradict each other or the tensors (untrusted input).
                raise ctx.error(node, f"inconsistent params or tensors ({exc})") from None
    if ctx.unsupported:
        raise UnsupportedOpsError(path, ctx.unsupported)
    outputs = [_info(names[k], model.tensors[k]) for n in model.outputs
               for k in model.nodes[n].outputs]
    used = {i for n in ctx.nodes for i in n.inputs} | {t.name for t in outputs}
    # The lowest opset with every op used: HardSwish came in 14, Mish in 18.
    opset = max([13] + [NEWER_OPS.get(n.op, 13) for n in ctx.nodes])
    for n in ctx.nodes:
        if n.op == "Split" and len(n.inputs) == 1 and opset >= 18:
            n.attrs["num_outputs"] = len(n.outputs)
    graph = Graph(model.name or os.path.splitext(os.path.basename(path))[0], inputs, outputs,
                  ctx.nodes, {k: v for k, v in ctx.constants.items() if k in used}, opset=opset)
    inputs_set = {t.name for t in inputs} | {t.name for t in outputs}
    graph.value_info = {names[k]: _info(names[k], t) for k, t in enumerate(model.tensors)
                        if t.type == S.T_VAR and t.dims is not None and names[k] not in inputs_set
                        and names[k] in used}
    try:
        graph.validate()
    except PtqconvError as exc:
        raise ModelFormatError(path, None, str(exc)) from None
    return LoadedModel(graph, _table(model, names, graph, ctx.derived))


def _check_order(model: TmModel, ctx: ReadContext) -> None:
    """Every tensor is produced by exactly one node, before any node reads it."""
    produced = set()
    for node in model.nodes:
        for k in node.inputs:
            if k not in produced:
                raise ctx.error(node, f"reads tensor {k} ('{ctx.names[k]}') before any node "
                                      f"produces it")
        for k in node.outputs:
            if k in produced:
                raise ctx.error(node, f"produces tensor {k} ('{ctx.names[k]}') a second time")
            produced.add(k)


def _tensor_names(tensors: List[TmTensor]) -> List[str]:
    names, seen = [], set()
    for k, t in enumerate(tensors):
        name = t.name or f"tensor_{k}"
        base, j = name, 1
        while name in seen:
            name, j = f"{base}_{j}", j + 1
        seen.add(name)
        names.append(name)
    return names


def _info(name: str, t: TmTensor) -> TensorInfo:
    shape = None if t.dims is None else tuple(d if d >= 0 else None for d in t.dims)
    return TensorInfo(name, "float32", shape)


def _channel_view(t: TmTensor, path: str, count: int):
    """Shape to broadcast ``count`` per-channel params over the tensor (axis 0), or raise."""
    dims = t.dims or []
    if count == 1:
        return (1,) * max(len(dims), 1)
    if dims and dims[0] == count:
        return (count,) + (1,) * (len(dims) - 1)
    raise ModelFormatError(path, f"offset {t.offset}", f"tensor '{t.name}' has {count} quant "
                                                       f"params for dims {dims}")


def dequantize(t: TmTensor, path: str) -> np.ndarray:
    """The value of const tensor ``t`` as numpy: float32 for float and quantized data."""
    raw = np.frombuffer(t.data or b"", dtype=S.DTYPES[t.data_type]).reshape(t.dims)
    if t.data_type in (S.FP32, S.FP16):
        return raw.astype(np.float32)
    if t.data_type in (S.INT8, S.UINT8):
        if not t.quant:
            raise ModelFormatError(path, f"offset {t.offset}", f"quantized tensor '{t.name}' "
                                                               f"has no quant params")
        view = _channel_view(t, path, len(t.quant))
        # int8 is symmetric in Tengine's int8 kernels; quant_tool leaves garbage zero points on
        # some single-channel layers, so only uint8 uses them.
        zp = np.array([q[0] if t.data_type == S.UINT8 else 0 for q in t.quant],
                      np.float32).reshape(view)
        scale = np.array([q[1] for q in t.quant], np.float32).reshape(view)
        # float32 is exact here: one correctly rounded product of two float32 values.
        return (raw.astype(np.float32) - zp) * scale
    if t.data_type == S.INT32 and t.quant and any(q[1] != 0 for q in t.quant):
        # An int32 bias: the runtime adds the codes with step in_scale * w_scale; its zero point
        # is not used (quant_tool leaves garbage there for some single-channel layers).
        view = _channel_view(t, path, len(t.quant))
        scale = np.array([q[1] for q in t.quant], np.float32).astype(np.float64).reshape(view)
        return (raw.astype(np.float64) * scale).astype(np.float32)
    return raw.astype(raw.dtype.newbyteorder("="))


def _table(model: TmModel, names: List[str], graph: Graph, derived: Dict[str, str]):
    """The QuantTable of a quantized file (None for a float file)."""
    present = set(graph.input_names()) | {o for n in graph.nodes for o in n.outputs}
    table = QuantTable(meta={"source": "tmfile"})
    for k, t in enumerate(model.tensors):
        if t.type in (S.T_VAR, S.T_INPUT) and t.data_type in (S.INT8, S.UINT8) and t.quant \
                and names[k] in present:
            zp, scale, _ = t.quant[0]
            table.activations[names[k]] = ActQuant(float(scale), int(zp), 8,
                                                   t.data_type == S.INT8)
    for tensor, source in derived.items():
        if source in table.activations:  # e.g. the Flatten the reader puts before an FC
            table.activations[tensor] = table.activations[source]
    users: Dict[str, List[str]] = {}
    for n in graph.nodes:
        if n.op in ("Conv", "ConvTranspose", "Gemm") and len(n.inputs) > 1:
            users.setdefault(n.inputs[1], []).append(n.name)
    bias_params, uint8_weights = {}, {}
    for node in model.nodes:
        if node.op not in WEIGHTED or len(node.inputs) < 2:
            continue
        w = model.tensors[node.inputs[1]]
        wname = names[node.inputs[1]]
        if w.type != S.T_CONST or w.data_type not in (S.INT8, S.UINT8) or wname not in users:
            continue
        if w.data_type == S.INT8:
            scales = np.array([q[1] for q in w.quant], np.float32)
            axis = 0 if len(w.quant) > 1 or (w.dims and w.dims[0] == 1) else None
        else:
            # Asymmetric uint8 weights have no QuantTable field: keep a symmetric step for other
            # writers and the exact (scale, zero point) for the tmfile-uint8 writer.
            value = graph.constants[wname]
            scales = np.array([np.abs(value).max() / 127.0 if value.size else 0.0], np.float32)
            axis = None
            uint8_weights[wname] = [float(w.quant[0][1]), int(w.quant[0][0])]
        table.weights[wname] = WeightQuant(scales, axis, 8)
        for user in users[wname]:
            table.precision[user] = INT8
        if len(node.inputs) > 2:
            b = model.tensors[node.inputs[2]]
            if b.type == S.T_CONST and b.data_type == S.INT32 and b.quant:
                bias_params[names[node.inputs[2]]] = [[float(s), int(z)] for z, s, _ in b.quant]
    if not table.activations and not table.weights:
        return None
    extra = {}
    if bias_params:
        extra["bias"] = bias_params
    if uint8_weights:
        extra["uint8_weights"] = uint8_weights
    if extra:
        table.meta["tmfile"] = extra
    return table
