"""TNN format without shared data: op coverage through onnxruntime, int8 arithmetic against the
spec formulas (fold, truncated bias, merge types), exact round trips and malformed files."""
import os

import numpy as np
import pytest

import ptqconv
from ptqconv.core.errors import ModelFormatError, UnsupportedOpsError
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.ir.onnx_bridge import from_onnx
from ptqconv.core.numeric import round_half_away
from ptqconv.core.passes import canonicalize, fuse_activation
from ptqconv.core.runtime import make_session
from ptqconv.formats.tnn.binary import FLOAT, HALF, INT8, INT32
from ptqconv.formats.tnn.model import parse_model
from ptqconv.formats.tnn.proto import parse_proto
from ptqconv.formats.tnn.ops_read import KNOWN_TYPES
from ptqconv.formats.tnn.reader import read_tnn
from ptqconv.formats.tnn.writer import write_tnn

from cli_helpers import assert_one_line_error, run_cli
from synthetic import tiny_cnn, write_images


def _c(rng, *shape, scale=0.3):
    return rng.normal(0, scale, shape).astype(np.float32)


def coverage_graph() -> Graph:
    """An IR graph using every op the TNN writer maps (two outputs)."""
    rng = np.random.default_rng(1)
    k = {
        "w1": _c(rng, 8, 4, 3, 3), "b1": _c(rng, 8), "w2": _c(rng, 8, 1, 3, 3), "b2": _c(rng, 8),
        "w3": _c(rng, 8, 4, 1, 1), "w4": _c(rng, 8, 8, 2, 2), "b4": _c(rng, 8),
        "wt": _c(rng, 16, 4, 2, 2), "bt": _c(rng, 4), "slope": _c(rng, 8, 1, 1, scale=0.1),
        "addc": _c(rng, 1, 8, 1, 1), "mulc": np.array(1.5, np.float32),
        "subc": _c(rng, 8, 1, 1), "divc": np.array(2.0, np.float32),
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
        "minc": np.array(0.8, np.float32),
        "clo": np.array(-1.0, np.float32), "chi": np.array(2.5, np.float32),
        "bn_s": rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn_b": _c(rng, 16),
        "bn_m": _c(rng, 16), "bn_v": rng.uniform(0.5, 1.5, 16).astype(np.float32),
        "up": np.array([1, 1, 2, 2], np.float32), "pads": np.array([0, 0, 1, 2, 0, 0, 1, 0]),
        "padv": np.array(0.5, np.float32), "split": np.array([3, 1]),
        "shape": np.array([1, -1]), "wfc": _c(rng, 5, 4), "bfc": _c(rng, 5),
        "wmm": _c(rng, 5, 3),
    }
    k["pads"] = k["pads"].astype(np.int64)
    k["split"] = k["split"].astype(np.int64)
    k["shape"] = k["shape"].astype(np.int64)
    N = Node
    nodes = [
        N("Conv", "conv1", ["x", "w1", "b1"], ["c1"], {"pads": [1, 1, 1, 1]}),
        N("Clip", "relu6_1", ["c1", "lo", "hi"], ["r1"]),
        N("Conv", "dw2", ["r1", "w2", "b2"], ["c2"], {"group": 8, "strides": [2, 2],
                                                     "pads": [1, 1, 1, 1]}),
        N("Relu", "relu2", ["c2"], ["r2"]),
        N("Conv", "grp3", ["r2", "w3"], ["c3"], {"group": 2}),
        N("Sigmoid", "sig3", ["c3"], ["s3"]),
        N("PRelu", "prelu", ["s3", "slope"], ["p3"]),
        N("HardSwish", "hswish", ["p3"], ["h3"]),
        N("Add", "addc", ["h3", "addc"], ["a3"]),
        N("Mul", "mulc", ["a3", "mulc"], ["m3"]),
        N("Sub", "subc", ["subc", "m3"], ["sb3"]),
        N("Div", "divc", ["sb3", "divc"], ["d3"]),
        N("Conv", "asym4", ["d3", "w4", "b4"], ["c4"], {"pads": [0, 0, 1, 1]}),
        N("Tanh", "tanh4", ["c4"], ["t4"]),
        N("Concat", "cat", ["d3", "t4"], ["cat"], {"axis": 1}),
        N("BatchNormalization", "bn", ["cat", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"],
          {"epsilon": 1e-5}),
        N("MaxPool", "maxpool", ["bn"], ["mp"], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                "ceil_mode": 1}),
        N("ConvTranspose", "deconv", ["mp", "wt", "bt"], ["dc"], {"strides": [2, 2]}),
        N("Resize", "up", ["dc", "", "up"], ["u"], {"mode": "nearest", "nearest_mode": "floor",
                                                   "coordinate_transformation_mode": "asymmetric"}),
        N("Pad", "pad", ["u", "pads", "padv"], ["pd"], {"mode": "constant"}),
        N("AveragePool", "avgpool", ["pd"], ["ap"], {"kernel_shape": [3, 3],
                                                    "pads": [1, 1, 1, 1]}),
        N("Clip", "clip", ["ap", "clo", "chi"], ["cl"]),
        N("Split", "split", ["cl", "split"], ["sp0", "sp1"], {"axis": 1}),
        N("Transpose", "perm", ["sp0"], ["tr"], {"perm": [0, 2, 3, 1]}),
        N("Transpose", "perm_back", ["tr"], ["tb"], {"perm": [0, 3, 1, 2]}),
        N("Max", "max", ["tb", "tb"], ["mx"]),
        N("Min", "minc", ["mx", "minc"], ["mn"]),
        N("Reshape", "reshape", ["mn", "shape"], ["rs"]),
        N("Softmax", "softmax", ["rs"], ["out_a"], {"axis": 1}),
        N("Concat", "cat2", ["sp1", "sp0"], ["cat2"], {"axis": 1}),
        N("GlobalAveragePool", "gap", ["cat2"], ["gap"]),
        N("Flatten", "flat", ["gap"], ["flat"], {"axis": 1}),
        N("Gemm", "fc", ["flat", "wfc", "bfc"], ["fc"], {"transB": 1}),
        N("Relu", "fc_relu", ["fc"], ["fcr"]),
        N("MatMul", "mm", ["fcr", "wmm"], ["out_b"]),
    ]
    k["wmm"] = _c(rng, 5, 3)
    return Graph("coverage", [TensorInfo("x", "float32", (1, 4, 12, 12))],
                 [TensorInfo("out_a"), TensorInfo("out_b")], nodes, k, opset=14).infer_shapes()


def _run(graph, x):
    sess = make_session(graph)
    return sess.run(None, {graph.inputs[0].name: x})


def _write(graph, table, folder, name="m", **options):
    paths = [str(folder / f"{name}.tnnproto"), str(folder / f"{name}.tnnmodel")]
    g = fuse_activation(canonicalize(graph.copy()))
    write_tnn(g, table, paths, options)
    return paths


def _same_graph(a: Graph, b: Graph):
    assert [(n.op, n.name, n.inputs, n.outputs) for n in a.nodes] == \
        [(n.op, n.name, n.inputs, n.outputs) for n in b.nodes]
    for n, m in zip(a.nodes, b.nodes):
        assert n.attrs == m.attrs, n.name
    assert sorted(a.constants) == sorted(b.constants)
    for key, value in a.constants.items():
        other = b.constants[key]
        assert value.dtype == other.dtype and np.array_equal(value, other), key
    assert [(t.name, t.shape) for t in a.inputs] == [(t.name, t.shape) for t in b.inputs]
    assert a.output_names() == b.output_names()


def test_every_mapped_op_round_trips_through_onnxruntime(tmp_path):
    graph = coverage_graph()
    x = np.random.default_rng(0).normal(0, 1, (1, 4, 12, 12)).astype(np.float32)
    want = _run(graph, x)
    paths = _write(graph, None, tmp_path)
    text = open(paths[0]).read()
    for layer in ("Convolution", "Clip", "Deconvolution", "PReLU", "HardSwish", "Pad ", "SplitV",
                  "Permute", "Upsample", "BatchNormCxx", "InnerProduct", "Softmax", "Maximum",
                  "Minimum"):
        assert layer in text, layer
    assert ' 1 -1 1 1 2 ,"' in text  # ReLU6 fused into conv1 as activation_type 2
    loaded = read_tnn(paths)
    assert loaded.table is None
    got = _run(loaded.graph, x)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    # read -> write -> read is identical, and ptqconv's own files are byte-identical
    again = _write(loaded.graph, None, tmp_path, "again")
    _same_graph(loaded.graph, read_tnn(again).graph)
    third = _write(read_tnn(again).graph, None, tmp_path, "third")
    for p, q in zip(again, third):
        assert open(p, "rb").read() == open(q, "rb").read()


def test_fp16_option_stores_half_weights(tmp_path):
    graph = coverage_graph()
    x = np.random.default_rng(2).normal(0, 1, (1, 4, 12, 12)).astype(np.float32)
    paths = _write(graph, None, tmp_path, fp16=1)
    model = parse_model(open(paths[1], "rb").read(), paths[1])
    conv = model.resources["conv1"]
    assert conv.buffer("filter").data_type == HALF and conv.buffer("bias").data_type == FLOAT
    assert model.resources["fc"].buffer("weight").data_type == HALF
    got = _run(read_tnn(paths).graph, x)
    for w, g in zip(_run(graph, x), got):
        np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-2)


@pytest.fixture(scope="module")
def int8_models(tmp_path_factory):
    """tiny_cnn -> tnn-int8 for each merge type, calibrated on synthetic images."""
    folder = tmp_path_factory.mktemp("tnn_int8")
    onnx_path = tiny_cnn(folder / "tiny.onnx", size=16)
    images = folder / "img"
    write_images(images, count=6, size=20)
    out = {}
    for merge in ("per-channel", "mix", "per-tensor"):
        target = str(folder / f"{merge}.tnnproto")
        ptqconv.convert({"input": onnx_path, "output": target, "to": "tnn-int8",
                         "calibration": {"data": str(images), "method": "minmax",
                                         "refine": "none"},
                         "preprocess": {"size": [16, 16], "norm": [1 / 255] * 3},
                         "quantize": {"weights": merge, "bias_correction": False}})
        out[merge] = target
    return onnx_path, out


def _resources(proto_path):
    model_path = proto_path[:-len(".tnnproto")] + ".tnnmodel"
    return parse_model(open(model_path, "rb").read(), model_path)


def test_int8_layout_merge_types(int8_models):
    _, files = int8_models
    counts = {}
    for merge, path in files.items():
        text = open(path).read()
        assert "QuantizedConvolution conv1 " in text and "QuantizedInnerProduct fc " in text
        res = _resources(path).resources
        blob = res["r1_scale_data_"]  # conv1 + fused ReLU output, 8 channels
        assert [blob.buffer(k).data_type for k in ("zero_point", "scale", "bias")] == \
            [INT8, FLOAT, INT32]
        assert not blob.buffer("bias").data.any() and not blob.buffer("zero_point").data.any()
        counts[merge] = (blob.buffer("scale").size, res["conv1"].buffer("scale").size,
                         res["flat_scale_data_"].buffer("scale").size
                         if "flat_scale_data_" in res else res["gap_scale_data_"].buffer(
                             "scale").size)
    # per-channel: one blob scale per channel; mix: one; per-tensor: one, weights too.
    # Blobs touching the InnerProduct are always per tensor.
    assert counts == {"per-channel": (8, 8, 1), "mix": (1, 8, 1), "per-tensor": (1, 1, 1)}


def test_int8_weights_fold_input_scale_and_truncate_bias(int8_models):
    onnx_path, files = int8_models
    import onnx
    graph = canonicalize(from_onnx(onnx.load(onnx_path)))
    consts = {n.name: n for n in graph.nodes}
    for merge, path in files.items():
        res = _resources(path).resources
        for layer, in_blob in (("conv1", "input"), ("conv2", "r1")):
            node = consts[layer]
            w = graph.constants[node.inputs[1]].astype(np.float64)
            b = graph.constants[node.inputs[2]].astype(np.float64)
            s_in = res[in_blob + "_scale_data_"].buffer("scale").as_float().astype(np.float64)
            rec = res[layer]
            q = rec.buffer("filter").data.reshape(w.shape).astype(np.float64)
            scale = rec.buffer("scale").as_float().astype(np.float64)
            depthwise = int(node.attrs.get("group", 1)) > 1
            if depthwise:  # quantize raw w, then multiply the input scale into the scale
                base = np.abs(w).reshape(len(w), -1).max(1) / 127
                base = base if merge != "per-tensor" else np.array([base.max()])
                expect = base * (s_in if s_in.size > 1 else s_in[0])
                folded = w * (s_in if s_in.size > 1 else s_in[0]).reshape(-1, 1, 1, 1)
            else:  # w' = w * s_in[ic], then per-output-channel absmax / 127
                folded = w * s_in.reshape(1, -1, 1, 1)
                absmax = np.abs(folded).reshape(len(w), -1).max(1)
                expect = absmax / 127 if merge != "per-tensor" else np.array([absmax.max() / 127])
            np.testing.assert_allclose(scale, expect, rtol=1e-5)
            sc = scale.reshape(-1, 1, 1, 1)
            want_q = np.clip(round_half_away(folded / sc), -127, 127)
            assert np.mean(want_q == q) > 0.995 and np.abs(want_q - q).max() <= 1
            assert np.abs(q).max() == 127
            bias_q = rec.buffer("bias").data
            assert rec.buffer("bias").data_type == INT32
            np.testing.assert_array_equal(bias_q, np.trunc(b / scale).astype(np.int32))
            assert rec.buffer("zero_point").data_type == INT8


def test_int8_read_back_and_byte_identical_rewrite(int8_models, tmp_path):
    _, files = int8_models
    for merge, path in files.items():
        loaded = read_tnn([path, path[:-9] + ".tnnmodel"])
        table = loaded.table
        assert table.meta["weights"] == merge
        assert {"conv1", "conv2", "fc"} <= {k for k, v in table.precision.items() if v == "int8"}
        # re-written from what was read: same graph and table, and the same bytes
        out = str(tmp_path / f"{merge}.tnnproto")
        ptqconv.convert({"input": path, "output": out, "to": "tnn-int8"})
        for a, b in ((path, out), (path[:-9] + ".tnnmodel", out[:-9] + ".tnnmodel")):
            assert open(a, "rb").read() == open(b, "rb").read(), (merge, a)
        again = read_tnn([out, out[:-9] + ".tnnmodel"])
        _same_graph(loaded.graph, again.graph)
        assert again.table.to_dict() == table.to_dict()


# ---- malformed files --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tnn_small")
    onnx_path = tiny_cnn(folder / "tiny.onnx", batchnorm=False, size=8)
    target = str(folder / "tiny.tnnproto")
    ptqconv.convert({"input": onnx_path, "output": target, "to": "tnn"})
    return open(target).read(), open(target[:-9] + ".tnnmodel", "rb").read()


def _pair(folder, proto, model, name="bad"):
    p = folder / f"{name}.tnnproto"
    p.write_text(proto)
    (folder / f"{name}.tnnmodel").write_bytes(model)
    return str(p)


def _corrupt(small_pair, kind):
    proto, model = small_pair
    lines = proto.splitlines(keepends=True)
    conv_line = next(k for k, ln in enumerate(lines) if ln.startswith('"Convolution conv1'))
    if kind == "proto magic":
        lines[0] = lines[0].replace("4206624772", "4206624771")
    elif kind == "model magic":
        model = b"\x00\x00\x00\x00" + model[4:]
    elif kind == "truncated":
        model = model[:200]
    elif kind == "few params":
        fields = lines[conv_line].split()
        lines[conv_line] = " ".join(fields[:10]) + ' ,"\n'
    elif kind == "unknown type":
        lines[conv_line] = lines[conv_line].replace("Convolution", "Convolutio", 1)
    elif kind == "never produced":
        lines[conv_line] = lines[conv_line].replace(" input ", " inptu ", 1)
    return "".join(lines), model, conv_line + 1


EXPECT = {"proto magic": "line 1", "model magic": "offset 0", "truncated": "truncated file",
          "few params": "parameter", "unknown type": "unknown layer type 'Convolutio'",
          "never produced": "'inptu'"}


@pytest.mark.parametrize("kind", sorted(EXPECT))
def test_malformed_pair_is_one_format_error(small_pair, tmp_path, kind):
    proto, model, line = _corrupt(small_pair, kind)
    path = _pair(tmp_path, proto, model)
    with pytest.raises(ModelFormatError) as info:
        read_tnn([path, path[:-9] + ".tnnmodel"])
    message = str(info.value)
    assert EXPECT[kind] in message and "\n" not in message
    if kind in ("few params", "unknown type", "never produced"):
        assert f"bad.tnnproto (line {line})" in message
    if kind == "truncated":
        assert "bad.tnnmodel (offset " in message


@pytest.mark.parametrize("kind", sorted(EXPECT))
def test_malformed_pair_cli_subprocess(small_pair, tmp_path, kind):
    proto, model, _ = _corrupt(small_pair, kind)
    path = _pair(tmp_path, proto, model)
    out = tmp_path / "out.tnnproto"
    proc = run_cli("-q", "-i", path, "--to", "tnn", "-o", out)
    assert_one_line_error(proc, EXPECT[kind], "bad.tnn")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out.tnnmodel").exists()
    assert [f for f in os.listdir(tmp_path) if f.startswith(".out")] == []


def test_known_but_unsupported_layers_are_listed_together(small_pair, tmp_path):
    proto, model = small_pair
    lines = proto.splitlines(keepends=True)
    lines.append('"LRN lrn 1 1 logits lrn_out 5 ,"\n')
    lines.append('"Gather g 1 1 lrn_out g_out 0 ,"\n')
    path = _pair(tmp_path, "".join(lines), model)
    with pytest.raises(UnsupportedOpsError) as info:
        read_tnn([path, path[:-9] + ".tnnmodel"])
    assert "LRN" in str(info.value) and "Gather" in str(info.value)


def test_proto_tokenising_follows_the_tnn_reader():
    text = ('"1 3 1 4206624772 ,"\n"a 4 1 3 8 8 0 : b 2 1 10 ,"\n" a b c ,"\n"c ,"\n" 1 ,"\n'
            '"Add   add  2 1 a \n b c ,"\n')
    proto = parse_proto(text, "x.tnnproto", KNOWN_TYPES)
    assert [(i.name, i.dims, i.data_type) for i in proto.inputs] == \
        [("a", (1, 3, 8, 8), 0), ("b", (1, 10), 0)]
    layer = proto.layers[0]
    assert (layer.type, layer.name, layer.inputs, layer.outputs, layer.line) == \
        ("Add", "add", ["a", "b"], ["c"], 6)
    v1 = parse_proto('"1 1 1 4206624770 ,"\n"in 1 3 4 4 ,"\n" x ,"\n"x ,"\n" 0 ,"\n', "y",
                     KNOWN_TYPES)
    assert v1.inputs[0].dims == (1, 3, 4, 4)


def _v1_raw(values, data_type=FLOAT):
    """A v1 raw buffer (no dims), as old TNN files store them."""
    import struct
    arr = np.asarray(values, {FLOAT: "<f4", HALF: "<f2", INT8: "i1", INT32: "<i4"}[data_type])
    return struct.pack("<Iii", 0xFABC0002, data_type, arr.nbytes) + arr.tobytes()


def _v1_record(type_id, type_str, name, body):
    import struct

    def s(text):
        return struct.pack("<i", len(text)) + text.encode()
    return struct.pack("<i", type_id) + s(type_str) + s(name) + body


def test_hand_written_v1_pair_matches_numpy(tmp_path):
    """Layers the writer never emits (Scale, Caffe Split, SoftmaxCaffe, Upsample to a size,
    per-channel constant without dims, transposed InnerProduct, fp16 weights) in a v1 file."""
    import struct
    rng = np.random.default_rng(3)
    s, b = rng.uniform(0.5, 2, 2).astype(np.float32), rng.normal(0, 1, 2).astype(np.float32)
    c = rng.normal(0, 1, 2).astype(np.float32)
    w = rng.normal(0, 1, (8, 3)).astype(np.float16)  # transposed: [K, N] with K = 2*2*2
    fb = rng.normal(0, 1, 3).astype(np.float32)
    proto = ('"1 9 1 4206624770 ,"\n"x 1 2 4 4 ,"\n" stale list ,"\n"prob fc ,"\n" 7 ,"\n'
             '"Scale sc 1 1 x y 1 1 1 ,"\n'
             '"Split sp 1 2 y y0 y1 ,"\n'
             '"Add add 2 1 y0 y1 z ,"\n'
             '"Mul mulc 1 1 z zc ,"\n'
             '"Upsample up 1 1 zc u 1 0 0 0 8 8 ,"\n'
             '"SoftmaxCaffe prob 1 1 u prob 1 ,"\n'
             '"Pooling pool 1 1 z p 1 2 2 2 2 0 0 ,"\n'
             '"InnerProduct fc 1 1 p fc 3 1 1 1 ,"\n')
    records = [
        _v1_record(16, "Scale", "sc", struct.pack("<i", 2) + b"sc" + struct.pack("<i", 1)
                   + _v1_raw(s) + _v1_raw(b)),
        _v1_record(42, "Mul", "mulc", _v1_raw(c)),
        _v1_record(19, "InnerProduct", "fc", struct.pack("<i", 2) + b"fc" + _v1_raw(w, HALF)
                   + _v1_raw(fb)),
    ]
    model = struct.pack("<Ii", 0xFABC0002, len(records)) + b"".join(records)
    path = _pair(tmp_path, proto, model, "hand")
    loaded = read_tnn([path, path[:-9] + ".tnnmodel"])
    x = rng.normal(0, 1, (1, 2, 4, 4)).astype(np.float32)
    prob, fc = make_session(loaded.graph).run(["prob", "fc"], {"x": x})
    y = x * s.reshape(1, 2, 1, 1) + b.reshape(1, 2, 1, 1)
    z = 2 * y
    zc = z * c.reshape(1, 2, 1, 1)
    u = zc.repeat(2, axis=2).repeat(2, axis=3)
    e = np.exp(u - u.max(axis=1, keepdims=True))
    np.testing.assert_allclose(prob, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    p = z.reshape(1, 2, 2, 2, 2, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(fc, p.reshape(1, 8) @ w.astype(np.float32) + fb, rtol=1e-4,
                               atol=1e-5)
