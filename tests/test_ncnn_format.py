"""ncnn format: param syntax, spec byte examples, and real-model round trips checked with the
ncnn runtime and onnxruntime on real images."""
import struct

import numpy as np
import onnx
import pytest

import ptqconv
from ptqconv.core.data import load_image
from ptqconv.core.errors import ModelFormatError
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.qtable import ActQuant, QuantTable, WeightQuant
from ptqconv.core.runtime import session_from_model
from ptqconv.formats.ncnn.param import format_param, parse_param, parse_value
from ptqconv.formats.ncnn.reader import read_ncnn
from ptqconv.formats.ncnn.writer import write_ncnn
from conftest import CAFFE_BGR224, CAFFE_BGR227, TORCHVISION, imagenet_split, shared_path

ncnn = pytest.importorskip("ncnn")

from ptqconv.formats.ncnn.runtime import captured_stderr, load_net, ncnn_runtime  # noqa: E402

N_IMAGES = 5


def _images(preset, size, n=N_IMAGES):
    _, evaluation = imagenet_split()
    return [load_image(p, preset, size)[None] for p in evaluation[:n]]


def _cos(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _pair(path):
    return [str(path), str(path)[: -len(".param")] + ".bin"]


def _squeezenet():
    p = shared_path("models", "squeezenet_v1.1", "squeezenet_v1.1.param")
    return _pair(p)


def _golden():
    p = shared_path("golden", "ncnn", "mobilenet_v2_int8.param")
    return _pair(p)


# ---- syntax -------------------------------------------------------------------------------------
def test_param_values_types_and_arrays():
    assert parse_value("0", "1", "m", 1) == (0, 1)
    assert parse_value("0", "1.0", "m", 1) == (0, 1.0)
    assert parse_value("0", "1e-3", "m", 1) == (0, 1e-3)
    assert parse_value("-23310", "2,0.0,6.0", "m", 1) == (10, [0.0, 6.0])
    assert parse_value("10", "0.0,6.0", "m", 1) == (10, [0.0, 6.0])
    assert parse_value("6", "expr", "m", 1) == (6, "expr")
    with pytest.raises(ModelFormatError, match=r"line 3.*declares 3 values but lists 2"):
        parse_value("-23310", "3,0.0,6.0", "m", 3)
    # floats always carry an exponent; arrays in the old style
    assert format_param(0, 1.0) == "0=1.000000e+00"
    assert format_param(10, [0.0, 6.0]) == "-23310=2,0.000000e+00,6.000000e+00"
    assert format_param(1, float("inf")) == "1=3.402823e+38"


def test_spec_worked_example_reads_and_runs(tmp_path):
    """specs/ncnn.md §1.3: 2-channel 4x4 input, 3x3 conv, leaky ReLU; 156-byte .bin."""
    text = ("7767517\n3 3\nInput data 0 1 data 0=4 1=4 2=2\n"
            "Convolution conv1 1 1 data c1 0=2 1=3 4=1 5=1 6=36\n"
            "ReLU relu1 1 1 c1 out 0=1.000000e-01\n")
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal(36).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    (tmp_path / "m.param").write_text(text)
    (tmp_path / "m.bin").write_bytes(b"\0\0\0\0" + w.tobytes() + b.tobytes())
    assert (tmp_path / "m.bin").stat().st_size == 156
    graph = read_ncnn([str(tmp_path / "m.param"), str(tmp_path / "m.bin")]).graph
    conv = graph.node("conv1")
    np.testing.assert_array_equal(graph.constants[conv.inputs[1]].reshape(-1), w)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    ref = ncnn_runtime([str(tmp_path / "m.param"), str(tmp_path / "m.bin")])({"data": x})[0]
    got = session_from_model(ptqconv.core.ir.onnx_bridge.to_onnx(graph)).run(None, {"data": x})[0]
    np.testing.assert_allclose(got.reshape(-1), ref.reshape(-1), atol=1e-5)


def test_spec_int8_byte_example(tmp_path):
    """specs/ncnn.md §5.3: int8 1x1 conv, weights [0.5, -0.25], bias [0.1, -0.2], input scale
    127 -> exactly the 28 documented bytes, and the documented ncnn output."""
    graph = Graph("t", [TensorInfo("data", "float32", (1, 1, 1, 3))],
                  [TensorInfo("out", "float32", (1, 2, 1, 3))],
                  [Node("Conv", "conv8", ["data", "w", "b"], ["out"], {"kernel_shape": [1, 1]})],
                  {"w": np.array([0.5, -0.25], np.float32).reshape(2, 1, 1, 1),
                   "b": np.array([0.1, -0.2], np.float32)})
    graph.infer_shapes()
    table = QuantTable(activations={"data": ActQuant(scale=1.0 / 127)},
                       weights={"w": WeightQuant(np.array([0.5 / 127, 0.25 / 127]), 0, 8)},
                       precision={"conv8": "int8"})
    paths = [str(tmp_path / "q.param"), str(tmp_path / "q.bin")]
    write_ncnn(graph, table, paths, {})
    expected = bytes.fromhex("384B0D00 7F810000 CDCCCC3D CDCC4CBE 00007E43 0000FE43 0000FE42"
                             .replace(" ", ""))
    assert open(paths[1], "rb").read() == expected
    line = [ln for ln in open(paths[0]).read().splitlines() if ln.startswith("Convolution")][0]
    assert set(line.split()[6:]) == {"0=2", "1=1", "5=1", "6=2", "8=2"}
    x = np.array([1.0, -0.5, 0.25], np.float32).reshape(1, 1, 1, 3)
    y = ncnn_runtime(paths)({"data": x})[0].reshape(-1)
    np.testing.assert_allclose(y, [0.6, -0.152, 0.226, -0.45, -0.074, -0.263], atol=2e-3)


# ---- real models --------------------------------------------------------------------------------
def test_squeezenet_round_trip_equal_outputs(tmp_path):
    """ncnn -> IR -> ncnn: same outputs (fp32 options), and fp16=1 rewrites the fp16 .bin
    byte for byte."""
    src = _squeezenet()
    out = ptqconv.convert({"input": src[0], "from": "ncnn", "to": "ncnn",
                           "output": str(tmp_path / "sq.param")}).outputs
    out16 = ptqconv.convert({"input": src[0], "from": "ncnn", "to": "ncnn",
                             "output": str(tmp_path / "sq16.param"),
                             "options": {"fp16": 1}}).outputs
    assert open(out16[1], "rb").read() == open(src[1], "rb").read()
    a, b = ncnn_runtime(src), ncnn_runtime(out)
    for x in _images(CAFFE_BGR227, (227, 227)):
        ya, yb = a({"data": x})[0], b({"data": x})[0]
        assert np.abs(ya - yb).max() <= 1e-4


def test_onnx_mobilenet_to_ncnn_matches_onnxruntime(tmp_path):
    onnx_path = shared_path("models", "mobilenet_v2", "mobilenet_v2.onnx")
    out = ptqconv.convert({"input": str(onnx_path), "to": "ncnn",
                           "output": str(tmp_path / "mb.param")}).outputs
    text = open(out[0]).read()
    assert "9=3 -23310=2,0.000000e+00,6.000000e+00" in text      # ReLU6 fused as clip
    assert "Pooling" in text and "InnerProduct" in text
    with captured_stderr() as err:      # loads without any runtime warning
        load_net(*out)
    assert err[0] == ""
    sess = session_from_model(onnx.load(str(onnx_path)))
    rt = ncnn_runtime(out)
    for x in _images(TORCHVISION, (224, 224)):
        assert _cos(sess.run(None, {"input": x})[0], rt({"input": x})[0]) >= 0.9999


def test_ncnn_squeezenet_to_onnx_matches_ncnn(tmp_path):
    src = _squeezenet()
    out = ptqconv.convert({"input": src[0], "from": "ncnn", "to": "onnx",
                           "output": str(tmp_path / "sq.onnx")}).outputs
    sess = session_from_model(onnx.load(out[0]))
    rt = ncnn_runtime(src)
    for x in _images(CAFFE_BGR227, (227, 227)):
        a, b = sess.run(None, {"data": x})[0], rt({"data": x})[0]
        assert _cos(a, b) >= 0.9999
        assert np.abs(a.reshape(-1) - b.reshape(-1)).max() <= 1e-4


def test_golden_int8_reads_into_float_ir_and_table():
    loaded = read_ncnn(_golden())
    table = loaded.table
    convs = [n for n in loaded.graph.nodes if n.op in ("Conv", "Gemm")]
    assert len(convs) == 54
    assert all(table.is_quantized(n.name) for n in convs)
    assert all(n.inputs[0] in table.activations and n.inputs[1] in table.weights for n in convs)
    dw = loaded.graph.node("conv2_1/dwise")
    assert dw.attrs["group"] == 32 and np.size(table.weights[dw.inputs[1]].scales) == 32
    # dequantized weights are integer codes times the stored step
    w = loaded.graph.constants[dw.inputs[1]].reshape(32, -1)
    codes = w / np.asarray(table.weights[dw.inputs[1]].scales).reshape(-1, 1)
    assert np.abs(codes - np.round(codes)).max() < 1e-3 and np.abs(np.round(codes)).max() <= 127


def test_golden_int8_rewritten_byte_for_byte(tmp_path):
    """ncnn2int8 output -> IR + table -> ncnn-int8: the same .bin (scales, requantize terms,
    padding) and the same layers; runs with identical outputs."""
    src = _golden()
    out = ptqconv.convert({"input": src[0], "from": "ncnn", "to": "ncnn-int8",
                           "output": str(tmp_path / "g.param")}).outputs
    assert open(out[1], "rb").read() == open(src[1], "rb").read()

    def terms(path):
        return [tok for ln in open(path).read().splitlines() for tok in ln.split()
                if tok.startswith("8=")]
    assert terms(out[0]) == terms(src[0])
    a, b = ncnn_runtime(src), ncnn_runtime(out)
    x = _images(CAFFE_BGR224, (224, 224), 1)[0]
    np.testing.assert_array_equal(a({"data": x})[0], b({"data": x})[0])


def test_golden_int8_to_onnx_and_back(tmp_path):
    """ncnn int8 -> ONNX (float) -> ncnn matches onnxruntime; with the golden's own table
    (written as .table) -> ncnn-int8 gives the golden's outputs again."""
    src = _golden()
    table = str(tmp_path / "g.table")
    ptqconv.convert({"input": src[0], "from": "ncnn", "to": "ncnn-int8", "save_table": table,
                     "output": str(tmp_path / "g8.param")})
    onnx_out = ptqconv.convert({"input": src[0], "from": "ncnn", "to": "onnx",
                                "output": str(tmp_path / "g.onnx")}).outputs[0]
    back = ptqconv.convert({"input": onnx_out, "to": "ncnn",
                            "output": str(tmp_path / "f.param")}).outputs
    back8 = ptqconv.convert({"input": onnx_out, "to": "ncnn-int8", "load_table": table,
                             "output": str(tmp_path / "q.param")}).outputs
    sess = session_from_model(onnx.load(onnx_out))
    gold, f32, q8 = ncnn_runtime(src), ncnn_runtime(back), ncnn_runtime(back8)
    for x in _images(CAFFE_BGR224, (224, 224), 3):
        assert _cos(sess.run(None, {"data": x})[0], f32({"data": x})[0]) >= 0.9999
        g, q = gold({"data": x})[0], q8({"data": x})[0]
        assert np.argmax(g) == np.argmax(q) and _cos(g, q) >= 0.9999


def test_fp16_tag_and_padding(tmp_path):
    """fp16 storage writes the fp16 tag and pads odd counts to 4 bytes."""
    graph = Graph("t", [TensorInfo("x", "float32", (1, 1, 4, 4))],
                  [TensorInfo("y", "float32", (1, 3, 4, 4))],
                  [Node("Conv", "c", ["x", "w"], ["y"], {"kernel_shape": [1, 1]})],
                  {"w": np.array([1.0, -2.0, 0.5], np.float32).reshape(3, 1, 1, 1)})
    graph.infer_shapes()
    paths = [str(tmp_path / "h.param"), str(tmp_path / "h.bin")]
    write_ncnn(graph, None, paths, {"fp16": 1})
    data = open(paths[1], "rb").read()
    assert struct.unpack("<I", data[:4])[0] == 0x01306B47 and len(data) == 4 + 8
    assert np.frombuffer(data[4:10], "<f2").tolist() == [1.0, -2.0, 0.5]
    assert read_ncnn(paths).graph.constants["c_weight"].reshape(-1).tolist() == [1.0, -2.0, 0.5]


def test_parse_counts_and_names():
    text = "7767517\n2 2\nInput in 0 1 x\nReLU r 1 1 x y\n"
    pf = parse_param(text, "m.param")
    assert [x.name for x in pf.layers] == ["in", "r"] and pf.blob_count == 2


def test_int8_rows_inner_product_round_trip(tmp_path):
    """MatMul [1,M,K] x [K,N] + bias -> int8 InnerProduct on a 2-D blob (rows); reading it back
    gives the table and writing it again gives the same .bin."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    graph = Graph("t", [TensorInfo("x", "float32", (1, 5, 6))],
                  [TensorInfo("y", "float32", (1, 5, 3))],
                  [Node("MatMul", "fc", ["x", "w"], ["t"]),
                   Node("Add", "fc_add", ["t", "b"], ["y"])],
                  {"w": w, "b": b})
    graph.infer_shapes()
    table = QuantTable(activations={"x": ActQuant(scale=1.0 / 127)},
                       weights={"w": WeightQuant(np.abs(w).max(0) / 127, 1, 8)},
                       precision={"fc": "int8"})
    first = [str(tmp_path / "a.param"), str(tmp_path / "a.bin")]
    write_ncnn(graph, table, first, {})
    assert "InnerProduct fc" in " ".join(open(first[0]).read().split())
    x = rng.uniform(-1, 1, (1, 5, 6)).astype(np.float32)
    y = ncnn_runtime(first)({"x": x})[0].reshape(1, 5, 3)
    np.testing.assert_allclose(y, x @ w + b, atol=0.05)
    loaded = read_ncnn(first)
    assert loaded.table.is_quantized("fc")
    second = [str(tmp_path / "b.param"), str(tmp_path / "b.bin")]
    ptqconv.convert({"input": first[0], "from": "ncnn", "to": "ncnn-int8", "output": second[0]})
    assert open(second[1], "rb").read() == open(first[1], "rb").read()


def test_input_without_shape_takes_channels_from_conv_or_option(tmp_path):
    """pnnx writes ``Input in0 0 1 in0`` with no shape: the rank and channels come from the
    consuming convolution, or from ``--option input_shape``."""
    text = ("7767517\n2 2\nInput in0 0 1 in0\n"
            "Convolution conv 1 1 in0 out0 0=2 1=1 5=0 6=6\n")
    (tmp_path / "p.param").write_text(text)
    (tmp_path / "p.bin").write_bytes(b"\0\0\0\0" + np.ones(6, np.float32).tobytes())
    paths = [str(tmp_path / "p.param"), str(tmp_path / "p.bin")]
    assert read_ncnn(paths).graph.inputs[0].shape == (1, 3, None, None)
    shaped = read_ncnn(paths, {"input_shape": "1,3,8,8"}).graph
    assert shaped.inputs[0].shape == (1, 3, 8, 8)
    x = np.arange(3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    out = [str(tmp_path / "q.param"), str(tmp_path / "q.bin")]
    ptqconv.convert({"input": paths[0], "from": "ncnn", "to": "ncnn", "output": out[0],
                     "options": {"input_shape": [1, 3, 8, 8]}})
    np.testing.assert_allclose(ncnn_runtime(out)({"in0": x})[0].reshape(2, 8, 8),
                               np.broadcast_to(x.sum(axis=1), (1, 2, 8, 8))[0], rtol=1e-5)
