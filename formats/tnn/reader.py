"""Read a ``.tnnproto`` + ``.tnnmodel`` pair into the float IR (+ QuantTable for int8 files).

Int8 files: weights are dequantized with the combined scale and the input blob scale
(``w = q * s[oc] / s_in[ic]``), int32 biases become ``b_q * s[oc]``; every ``<blob>_scale_data_``
resource becomes a per-tensor :class:`ActQuant` (the largest channel step), and the exact TNN
per-channel values are kept in ``table.meta["tnn"]`` so the ``tnn-int8`` writer can reproduce the
file. Quantized Convolution/InnerProduct layers are marked int8 in ``table.precision``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from ptqconv.core.errors import ModelFormatError, PtqconvError, UnsupportedOpsError
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.qtable import INT8, ActQuant, QuantTable, WeightQuant
from ptqconv.core.records import LoadedModel
from ptqconv.formats.tnn import int8 as tq
from ptqconv.formats.tnn.binary import BFP16 as DT_BFP16, HALF as DT_HALF, INT8 as DT_INT8, \
    INT32 as DT_INT32
from ptqconv.formats.tnn.model import BLOB_SCALE, BLOB_SCALE_SUFFIX, Resource, parse_model
from ptqconv.formats.tnn.ops_read import KNOWN_TYPES, READERS, Params
from ptqconv.formats.tnn.proto import Proto, ProtoLayer, parse_proto

MAX_PROTO_BYTES = 64 << 20
INPUT_DTYPES = {0: "float32", 1: "float16", 2: "int8", 3: "int32", 5: "int64"}
# Base types that may carry the Quantized prefix (tnn.md §1.9).
QUANTIZABLE = frozenset({"Convolution", "InnerProduct", "Add", "Concat", "Pooling", "ReLU",
                         "Upsample", "Sigmoid", "Reshape", "Permute", "BatchNormCxx", "Mul"})
WEIGHTED = ("Convolution", "InnerProduct")


class ReadContext:
    """Collects the IR while the layers are read; knows the files for error messages."""

    def __init__(self, proto: Proto, model, proto_path: str, model_path: str):
        self.proto, self.model = proto, model
        self.proto_path, self.model_path = proto_path, model_path
        self.nodes: List[Node] = []
        self.constants: Dict[str, np.ndarray] = {}
        self.unsupported: List[str] = []
        self.used = {i.name for i in proto.inputs} | set(model.constants)
        for layer in proto.layers:
            self.used.update([layer.name] + layer.inputs + layer.outputs)
        self.blob_scales = {name[:-len(BLOB_SCALE_SUFFIX)]: res
                            for name, res in model.resources.items()
                            if res.type_str == BLOB_SCALE and name.endswith(BLOB_SCALE_SUFFIX)}
        self.int8: Dict[str, dict] = {}  # layer name -> weight constant, scales, ...

    # ---- errors ---------------------------------------------------------------------------
    def fail(self, layer: ProtoLayer, message: str):
        """Raise a format error at ``layer``'s proto line."""
        raise ModelFormatError(self.proto_path, f"line {layer.line}", message)

    def fail_resource(self, res: Resource, message: str):
        """Raise a format error at ``res``'s offset in the model file."""
        raise ModelFormatError(self.model_path, f"offset {res.offset}", message)

    def unsupported_layer(self, layer: ProtoLayer, detail: str = ""):
        """Note a layer ptqconv cannot convert (all are reported together)."""
        self.unsupported.append(f"{layer.type_string}" + (f" ({detail})" if detail else ""))

    # ---- IR sinks -------------------------------------------------------------------------
    def new_name(self, base: str) -> str:
        """A tensor/node name starting with ``base`` not used anywhere yet."""
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, base: str, value) -> str:
        """Add a constant; returns its (unique) name."""
        name = self.new_name(base)
        self.constants[name] = np.asarray(value)
        return name

    def scalar(self, base: str, value: float) -> str:
        """Add a float32 scalar constant."""
        return self.const(base, np.array(value, dtype=np.float32))

    def node(self, op, name, inputs, outputs, attrs=None):
        """Append an IR node."""
        self.nodes.append(Node(op, name, list(inputs), list(outputs), dict(attrs or {})))

    # ---- resources ------------------------------------------------------------------------
    def resource(self, layer: ProtoLayer, types) -> Resource:
        """The ``.tnnmodel`` record of ``layer`` (checked to be of one of ``types``)."""
        res = self.model.resources.get(layer.name)
        if res is None:
            self.fail(layer, f"layer '{layer.name}' ({layer.type}) needs weights but "
                      f"{os.path.basename(self.model_path)} has no resource of that name")
        if res.type_str not in types:
            self.fail_resource(res, f"resource '{layer.name}' has type '{res.type_str}' but the "
                               f"proto layer is a {layer.type}")
        return res

    def input_scale(self, layer: ProtoLayer) -> Optional[np.ndarray]:
        """The blob scale of ``layer``'s first input, when the layer is quantized."""
        if not layer.quantized:
            return None
        res = self.blob_scales.get(layer.inputs[0])
        return None if res is None else res.buffer("scale").as_float()

    def weights(self, layer, res, key, shape, group, transpose=False) -> str:
        """Float weights of ``res[key]`` shaped ``shape`` (int8: dequantized); constant name."""
        buf = res.buffer(key)
        if buf.data_type != DT_INT8:
            w = buf.as_float().reshape(shape)
            return self.const(layer.name + "_weight", w.T.copy() if transpose else w)
        q = buf.data.reshape(shape)
        q = q.T.copy() if transpose else q
        oc = q.shape[0]
        scale = res.buffer("scale").as_float() if res.buffer("scale") is not None else None
        if scale is None or scale.size not in (1, oc):
            self.fail_resource(res, f"int8 weights of '{layer.name}' need 1 or {oc} scales, "
                               f"found {0 if scale is None else scale.size}")
        codes = q.astype(np.int32)
        zp = res.buffer("zero_point")
        if zp is not None and zp.size:
            if zp.size != scale.size:
                self.fail_resource(res, f"'{layer.name}' has {zp.size} weight zero points for "
                                   f"{scale.size} scales")
            codes = codes - zp.data.astype(np.int32).reshape([-1] + [1] * (q.ndim - 1))
        s_in = self.input_scale(layer)
        if layer.quantized and s_in is None:
            self.fail(layer, f"quantized layer '{layer.name}' has no blob scale for its input "
                      f"'{layer.inputs[0]}' ({layer.inputs[0]}{BLOB_SCALE_SUFFIX})")
        try:
            w = tq.dequantize_weights(codes, scale, s_in, group)
        except ValueError as exc:
            self.fail_resource(res, f"'{layer.name}': {exc}")
        name = self.const(layer.name + "_weight", w)
        steps, axis = tq.float_steps(w, scale, s_in, group)
        self.int8[layer.name] = {"weight": name, "scale": scale, "steps": steps, "axis": axis}
        return name

    def bias(self, layer, res, key, n) -> str:
        """Float bias of ``res[key]`` (int32 scaled by the layer's weight scale)."""
        buf = res.buffer(key)
        if buf.size != n:
            self.fail_resource(res, f"bias of '{layer.name}' has {buf.size} values, expected {n}")
        if buf.data_type == DT_INT32 and layer.name in self.int8:
            b = tq.bias_from_int32(buf.data, self.int8[layer.name]["scale"])
        elif buf.data_type == DT_INT32:
            self.fail_resource(res, f"'{layer.name}' has an int32 bias but float weights")
        else:
            b = buf.as_float()
        return self.const(layer.name + "_bias", b)


def _check_blobs(ctx: ReadContext) -> None:
    """Every layer input exists when it is read; names are produced once."""
    available = {i.name for i in ctx.proto.inputs} | set(ctx.model.constants)
    names = set()
    for layer in ctx.proto.layers:
        if layer.name in names:
            ctx.fail(layer, f"layer name '{layer.name}' is used twice")
        names.add(layer.name)
        for blob in layer.inputs:
            if blob not in available:
                ctx.fail(layer, f"layer '{layer.name}' reads blob '{blob}', which no earlier "
                         "layer produces")
        for blob in layer.outputs:
            if blob in available:
                ctx.fail(layer, f"layer '{layer.name}' writes blob '{blob}', which already "
                         "exists")
            available.add(blob)
    for out in ctx.proto.outputs:
        if out not in available:
            raise ModelFormatError(ctx.proto_path, f"line {ctx.proto.output_line}",
                                   f"output blob '{out}' is never produced")


def _check_scales(ctx: ReadContext) -> None:
    for layer in ctx.proto.layers:
        if not layer.quantized:
            continue
        for blob in layer.inputs + layer.outputs:
            if blob not in ctx.blob_scales and blob not in ctx.model.constants:
                ctx.fail(layer, f"quantized layer '{layer.name}' has no blob scale resource "
                         f"'{blob}{BLOB_SCALE_SUFFIX}'")


def _act_quant(ctx: ReadContext, blob: str) -> ActQuant:
    res = ctx.blob_scales[blob]
    scale = res.buffer("scale")
    if scale is None or scale.size == 0:
        ctx.fail_resource(res, f"blob scale of '{blob}' is empty")
    values = scale.as_float()
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        ctx.fail_resource(res, f"blob scale of '{blob}' has negative or non-finite values")
    zp = res.buffer("zero_point")
    zero = 0
    if zp is not None and zp.size:
        if zp.size != values.size:
            ctx.fail_resource(res, f"blob '{blob}' has {zp.size} zero points for "
                              f"{values.size} scales")
        if np.any(zp.data != zp.data[0]):
            raise UnsupportedOpsError(ctx.model_path, [f"per-channel zero points ('{blob}')"])
        zero = int(zp.data[0])
    step = float(np.float32(values.max()))
    return ActQuant(scale=step, zero_point=zero, bits=8, signed=True,
                    threshold=float(np.float32(step * 127)))


def _merge_type(ctx: ReadContext) -> str:
    if any(res.buffer("scale").size > 1 for res in ctx.blob_scales.values()):
        return "per-channel"
    if any(np.size(info["scale"]) > 1 for info in ctx.int8.values()):
        return "mix"
    return "per-tensor"


def _table(ctx: ReadContext, graph: Graph) -> Optional[QuantTable]:
    quantized = [layer for layer in ctx.proto.layers if layer.quantized]
    if not quantized and not ctx.blob_scales:
        return None
    tensors = {i.name for i in graph.inputs} | {o for n in graph.nodes for o in n.outputs}
    table = QuantTable(meta={"source": "tnn", "weights": _merge_type(ctx)})
    blob_meta, weight_meta = {}, {}
    for blob in sorted(ctx.blob_scales):
        if blob in tensors:
            table.activations[blob] = _act_quant(ctx, blob)
            blob_meta[blob] = [float(v) for v in ctx.blob_scales[blob].buffer("scale").as_float()]
    by_name = {n.name: n for n in graph.nodes}
    for layer in quantized:
        if layer.type not in WEIGHTED or layer.name not in ctx.int8:
            continue
        info = ctx.int8[layer.name]
        node = by_name[layer.name]
        table.precision[node.name] = INT8
        table.weights[info["weight"]] = WeightQuant(info["steps"], info["axis"], 8)
        weight_meta[info["weight"]] = [float(v) for v in info["scale"]]
        act = node.inputs[0]
        if act not in table.activations and layer.inputs[0] in table.activations:
            table.activations[act] = table.activations[layer.inputs[0]]  # Flatten output
    table.meta["tnn"] = {"blob_scales": blob_meta, "weight_scales": weight_meta}
    return table


def _read_text(path: str) -> str:
    try:
        size = os.path.getsize(path)
        if size > MAX_PROTO_BYTES:
            raise ModelFormatError(path, None, f"proto of {size} bytes is too large")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise PtqconvError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ModelFormatError(path, f"line {line}", "not UTF-8 text; is this a .tnnproto?") \
            from None


def read_tnn(paths, options=None) -> LoadedModel:
    """Read ``[x.tnnproto, x.tnnmodel]`` into a :class:`LoadedModel` (graph, table or None)."""
    proto_path = str(paths[0])
    if proto_path.lower().endswith(".tnnmodel"):
        raise PtqconvError(f"{proto_path}: give the .tnnproto file; the .tnnmodel beside it is "
                           "found automatically")
    if len(paths) < 2:
        raise PtqconvError(f"{proto_path}: the .tnnmodel weights file is missing")
    model_path = str(paths[1])
    proto = parse_proto(_read_text(proto_path), proto_path, KNOWN_TYPES)
    for layer in proto.layers:
        if layer.quantized and layer.type not in QUANTIZABLE:
            raise ModelFormatError(proto_path, f"line {layer.line}", f"unknown layer type "
                                   f"'{layer.type_string}' (layer '{layer.name}')")
    try:
        with open(model_path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise PtqconvError(f"{model_path}: cannot read: {exc.strerror}") from None
    model = parse_model(data, model_path)
    ctx = ReadContext(proto, model, proto_path, model_path)
    _check_blobs(ctx)
    _check_scales(ctx)
    for layer in proto.layers:
        reader = READERS.get(layer.type)
        if reader is None:
            ctx.unsupported_layer(layer)
            continue
        reader(ctx, layer, Params(layer, ctx))
    if ctx.unsupported:
        raise UnsupportedOpsError(proto_path, ctx.unsupported)
    for name, buf in model.constants.items():
        value = buf.as_float() if buf.data_type in (DT_HALF, DT_BFP16) else buf.data
        ctx.constants.setdefault(name, value.reshape(buf.dims or (-1,)))
    inputs = []
    for i in proto.inputs:
        if i.data_type not in INPUT_DTYPES:
            raise ModelFormatError(proto_path, "line 2", f"input '{i.name}' has unknown data "
                                   f"type {i.data_type}")
        inputs.append(TensorInfo(i.name, INPUT_DTYPES[i.data_type], tuple(i.dims)))
    graph = Graph(os.path.splitext(os.path.basename(proto_path))[0], inputs,
                  [TensorInfo(o) for o in proto.outputs], ctx.nodes, ctx.constants,
                  opset=14 if any(n.op == "HardSwish" for n in ctx.nodes) else 13)
    return LoadedModel(graph, _table(ctx, graph))
