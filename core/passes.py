"""Graph passes on the IR, registered as the built-in ``passes`` plugin.

Each pass takes a :class:`Graph`, changes it in place and returns it, so passes chain.
"""
from __future__ import annotations

import numpy as np
import onnx

from ptqconv.core.hookspecs import hookimpl
from ptqconv.core.ir.onnx_bridge import to_onnx
from ptqconv.core.runtime import session_from_model
from ptqconv.core.ir.graph import Graph, Node
from ptqconv.core.ir.ops import ACTIVATION_OPS
from ptqconv.core.records import GraphPass

FOLDABLE_SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Add",
                                "Sub", "Mul", "Div", "Slice", "Reshape", "ConstantOfShape", "Range",
                                "Identity", "Floor", "Ceil", "Equal", "Where", "Expand", "Size",
                                "ReduceProd", "Transpose", "Neg", "Sqrt", "Max", "Min"})


def fold_constants(graph: Graph) -> Graph:
    """Evaluate nodes whose inputs are all constants (and ``Shape`` of static shapes) with
    onnxruntime, replacing them by constants. Only cheap shape-arithmetic ops are folded."""
    graph.infer_shapes()
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op not in FOLDABLE_SHAPE_OPS:
                continue
            if node.op == "Shape":
                shape = graph.shape(node.inputs[0])
                if shape is None:
                    continue
                start, end = node.attr("start", 0), node.attr("end", None)
                graph.constants[node.outputs[0]] = np.array(shape[start:end], dtype=np.int64)
            elif all(i == "" or i in graph.constants for i in node.inputs):
                values = _evaluate(graph, node)
                if values is None:
                    continue
                graph.constants.update(zip(node.outputs, values))
            else:
                continue
            graph.nodes.remove(node)
            changed = True
    return graph.cleanup()


def _evaluate(graph: Graph, node: Node):
    """Run one node whose inputs are constants on onnxruntime; None if it cannot run alone."""
    sub = Graph("fold", [], [], [node], {i: graph.constants[i] for i in node.inputs if i},
                opset=graph.opset)
    model = to_onnx(sub, keep_value_info=False)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in node.outputs)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        return [np.asarray(v) for v in session_from_model(inferred).run(None, {})]
    except Exception:  # onnx/onnxruntime raise many types; the node then simply stays
        return None


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold ``BatchNormalization`` that follows a Conv/ConvTranspose/Gemm (sole consumer) into
    the producer's weight and bias; the producer takes over the BN's output name."""
    consumers = graph.consumers()
    producers = graph.producers()
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        prev = producers.get(bn.inputs[0])
        if prev is None or prev.op not in ("Conv", "ConvTranspose", "Gemm") or \
                len(consumers.get(bn.inputs[0], [])) != 1 or \
                bn.inputs[0] in graph.output_names() or \
                not all(i in graph.constants for i in bn.inputs[1:5] + prev.inputs[1:]) or \
                (prev.op == "Gemm" and prev.attr("transB", 0) != 1):
            continue
        scale, beta, mean, var = (graph.constants[i].astype(np.float64) for i in bn.inputs[1:5])
        factor = scale / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
        w_name = prev.inputs[1]
        w = graph.constants[w_name].astype(np.float64)
        if prev.op == "ConvTranspose":
            group = int(prev.attr("group", 1))
            shaped = w.reshape(group, w.shape[0] // group, w.shape[1], *w.shape[2:])
            shaped = shaped * factor.reshape(group, 1, -1, *([1] * (w.ndim - 2)))
            w = shaped.reshape(w.shape)
        else:
            w = w * factor.reshape(-1, *([1] * (w.ndim - 1)))
        bias = graph.constants[prev.inputs[2]].astype(np.float64) if len(prev.inputs) > 2 and \
            prev.inputs[2] else np.zeros(factor.shape)
        bias = (bias - mean) * factor + beta
        new_w = graph.unique_name(w_name + "_bnfold") if _shared(graph, w_name) else w_name
        graph.constants[new_w] = w.astype(np.float32)
        b_name = prev.inputs[2] if len(prev.inputs) > 2 and prev.inputs[2] and \
            not _shared(graph, prev.inputs[2]) else graph.unique_name(prev.name + "_bias")
        graph.constants[b_name] = bias.astype(np.float32)
        prev.inputs = [prev.inputs[0], new_w, b_name]
        graph.nodes.remove(bn)
        prev.outputs = [bn.outputs[0]]
        graph.value_info.pop(bn.inputs[0], None)
    return graph.cleanup()


def _shared(graph: Graph, const: str) -> bool:
    return sum(n.inputs.count(const) for n in graph.nodes) > 1


def fuse_activation(graph: Graph) -> Graph:
    """Fuse an activation that is the sole consumer of a Conv/Gemm/ConvTranspose output into it.

    The fused node gets attributes ``fused_activation`` (the ONNX op name) and
    ``fused_activation_params`` (dict: alpha/min/max...). Writers that ask for this pass
    (ncnn, MNN, TNN, tmfile) emit it as their layer's activation; it is not valid ONNX.
    """
    consumers = graph.consumers()
    producers = graph.producers()
    for act in [n for n in graph.nodes if n.op in ACTIVATION_OPS]:
        prev = producers.get(act.inputs[0])
        if prev is None or prev.op not in ("Conv", "Gemm", "ConvTranspose", "MatMul") or \
                "fused_activation" in prev.attrs or len(consumers.get(act.inputs[0], [])) != 1 or \
                act.inputs[0] in graph.output_names():
            continue
        params = {k: v for k, v in act.attrs.items()}
        if act.op == "Clip":
            lo = graph.constants.get(act.inputs[1]) if len(act.inputs) > 1 and act.inputs[1] else None
            hi = graph.constants.get(act.inputs[2]) if len(act.inputs) > 2 and act.inputs[2] else None
            if (len(act.inputs) > 1 and act.inputs[1] and lo is None) or \
                    (len(act.inputs) > 2 and act.inputs[2] and hi is None):
                continue
            params = {"min": _scalar(lo) if lo is not None else float(act.attr("min", -3.4028235e38)),
                      "max": _scalar(hi) if hi is not None else float(act.attr("max", 3.4028235e38))}
        prev.attrs["fused_activation"] = act.op
        prev.attrs["fused_activation_params"] = params
        graph.nodes.remove(act)
        graph.value_info.pop(prev.outputs[0], None)
        prev.outputs = [act.outputs[0]]
    return graph.cleanup()


def _scalar(value) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def remove_identity(graph: Graph) -> Graph:
    """Drop Identity and Dropout (inference) nodes, rewiring their consumers."""
    for node in [n for n in graph.nodes if n.op in ("Identity", "Dropout")]:
        src, dst = node.inputs[0], node.outputs[0]
        graph.nodes.remove(node)
        if dst in graph.output_names():
            prod = graph.producer(src)
            if prod is not None and src not in graph.output_names():
                prod.outputs = [dst if o == src else o for o in prod.outputs]
                graph.replace_uses(src, dst)
                continue
            graph.nodes.append(Node("Identity", node.name, [src], [dst]))
        else:
            graph.replace_uses(dst, src)
    return graph.toposort().cleanup()


def explicit_kernel_shape(graph: Graph) -> Graph:
    """Give every Conv/ConvTranspose with a constant weight its ``kernel_shape`` attribute
    (optional in ONNX), so passes and backend rules can read it from the node."""
    for node in graph.nodes:
        if node.op in ("Conv", "ConvTranspose") and "kernel_shape" not in node.attrs and \
                len(node.inputs) > 1 and node.inputs[1] in graph.constants:
            node.attrs["kernel_shape"] = [int(d) for d in graph.constants[node.inputs[1]].shape[2:]]
    return graph


def canonicalize(graph: Graph) -> Graph:
    """The passes every quantization starts from: identities out, constants and BN folded,
    kernel shapes explicit."""
    graph = fold_batchnorm(fold_constants(remove_identity(graph)))
    return explicit_kernel_shape(graph).infer_shapes()


@hookimpl
def register_passes(register):
    register(GraphPass("fold_constants", fold_constants, "evaluate constant shape arithmetic"))
    register(GraphPass("fold_batchnorm", fold_batchnorm, "fold BatchNormalization into Conv/Gemm"))
    register(GraphPass("fuse_activation", fuse_activation, "fuse activations into Conv/Gemm"))
    register(GraphPass("remove_identity", remove_identity, "drop Identity/Dropout"))
    register(GraphPass("canonicalize", canonicalize, "remove_identity + fold_constants + "
                       "fold_batchnorm + shape inference"))
