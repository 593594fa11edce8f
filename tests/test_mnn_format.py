"""MNN format without the MNN runtime: weight codec, write/read round trips checked with
onnxruntime, malformed files through the CLI, unsupported ops listed together."""
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ptqconv
from cli_helpers import assert_one_line_error, run_cli
from ptqconv.core.errors import ModelFormatError, UnsupportedOpsError
from ptqconv.core.passes import canonicalize
from ptqconv.core.runtime import make_session
from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.fb import Buffer
from ptqconv.formats.mnn.idst import IdstError, decode_dense, encode_dense
from ptqconv.formats.mnn.netbuild import NetBuilder, relu
from ptqconv.formats.mnn.reader import read_mnn, read_net, sniff_mnn
from synthetic import tiny_cnn

pytest.importorskip("flatbuffers")  # writing .mnn files needs it (the reader does not)


def op_zoo_model(path, seed=0):
    """An ONNX model (opset 14) using most ops the MNN writer supports; input 'x' [1,4,16,16],
    outputs 'prob' [1,10] and 'gap' [1,8,1,1]. (Pooling strides are explicit: MNN 3.6.1's own
    converter, used as a reference in the runtime tests, crashes on a pooling without them
    followed by a convolution.)"""
    rng = np.random.default_rng(seed)
    inits = {}

    def c(name, arr):
        inits[name] = numpy_helper.from_array(np.asarray(arr), name)
        return name

    def w(name, *shape):
        return c(name, rng.normal(0, 0.3, shape).astype(np.float32))
    n = helper.make_node
    nodes = [
        n("Conv", ["x", w("w1", 8, 4, 3, 3), w("b1", 8)], ["c1"], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"]),
        n("Conv", ["r1", w("w2", 8, 4, 3, 3), w("b2", 8)], ["g1"], group=2, pads=[1, 0, 1, 2]),
        n("LeakyRelu", ["g1"], ["l1"], alpha=0.1),
        n("MaxPool", ["l1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1],
          ceil_mode=1),
        n("AveragePool", ["p1"], ["a1"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        n("ConvTranspose", ["a1", w("w3", 8, 4, 3, 3), w("b3", 4)], ["d1"], strides=[2, 2],
          pads=[1, 1, 1, 1], output_padding=[1, 1]),
        n("Relu", ["d1"], ["rd"]),
        n("BatchNormalization", ["rd", w("s", 4), w("bb", 4), w("m", 4),
                                 c("v", rng.uniform(0.5, 1.5, 4).astype(np.float32))], ["bn"]),
        n("PRelu", ["bn", w("slope", 4, 1, 1)], ["pr"]),
        n("Sigmoid", ["pr"], ["sg"]),
        n("HardSwish", ["pr"], ["hs"]),
        n("Concat", ["sg", "hs"], ["cat"], axis=1),
        n("GlobalAveragePool", ["cat"], ["gap"]),
        n("Resize", ["cat", c("roi", np.zeros(0, np.float32)),
                     c("sc", np.array([1, 1, 0.5, 0.5], np.float32))], ["rs"],
          mode="linear"),
        n("Pad", ["rs", c("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], ["pd"],
          mode="reflect"),
        n("Slice", ["pd", c("st", np.array([1, 0], np.int64)), c("en", np.array([9, 10], np.int64)),
                    c("ax", np.array([2, 3], np.int64))], ["sl"]),
        n("Split", ["sl", c("split", np.array([3, 5], np.int64))], ["sa", "sb"], axis=1),
        n("ReduceMean", ["sb"], ["mean"], axes=[1], keepdims=1),
        n("Add", ["sa", "mean"], ["ad0"]),
        n("Div", ["ad0", c("two", np.array(2.0, np.float32))], ["ad"]),
        n("Transpose", ["ad"], ["tr"], perm=[0, 2, 3, 1]),
        n("Reshape", ["tr", c("shape", np.array([1, -1], np.int64))], ["fl"]),
        n("Gemm", ["fl", w("wf", 10, 240), w("bf", 10)], ["gm"], transB=1),
        n("Softmax", ["gm"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "zoo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("gap", TensorProto.FLOAT, [1, 8, 1, 1])],
        initializer=list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


def _ort(path_or_graph, feed):
    if isinstance(path_or_graph, str):
        import onnxruntime as ort
        sess = ort.InferenceSession(path_or_graph, providers=["CPUExecutionProvider"])
        return sess.run(None, feed)
    return make_session(path_or_graph).run(None, feed)


# ---- weight codec ------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_idst_dense_round_trip(bits):
    qmax = 2 ** (bits - 1) - 1
    codes = np.random.default_rng(bits).integers(-qmax, qmax + 1, (6, 3, 3, 3))
    buf, wide = encode_dense(codes, bits)
    assert not wide
    assert buf.dtype == np.int8 and buf[0] == 2
    assert struct.unpack("<2H", buf[1:5].tobytes()) == (6, 27)
    assert np.array_equal(decode_dense(buf).reshape(codes.shape), codes)


def test_idst_layout_matches_the_spec_example():
    """8-bit: header 02 | dims | 00 (=256) | palette -128..127 | index = code + 128."""
    codes = np.array([[-127, 0, 127]])
    buf, _ = encode_dense(codes, 8)
    raw = buf.view(np.uint8)
    assert list(raw[:6]) == [2, 1, 0, 3, 0, 0]
    assert list(raw[6:9]) == [0x80, 0x81, 0x82] and raw[6 + 255] == 0x7F
    assert list(raw[6 + 256:]) == [1, 128, 255]
    assert len(raw) == 1 + 4 + 1 + 256 + 3


def test_idst_truncated_buffer_is_rejected():
    buf, _ = encode_dense(np.ones((4, 9), int), 8)
    with pytest.raises(IdstError):
        decode_dense(buf[:-3])
    with pytest.raises(IdstError):
        decode_dense(buf[:100])


# ---- round trips through ptqconv's own writer and reader ---------------------------------------
def test_op_zoo_round_trip(tmp_path):
    src = op_zoo_model(tmp_path / "zoo.onnx")
    out = tmp_path / "zoo.mnn"
    ptqconv.convert({"input": src, "output": str(out), "to": "mnn"})
    assert sniff_mnn(str(out))
    loaded = read_mnn([str(out)])
    assert loaded.table is None
    graph = canonicalize(loaded.graph)
    assert graph.output_names() == ["prob", "gap"]
    x = np.random.default_rng(1).normal(0, 1, (1, 4, 16, 16)).astype(np.float32)
    ref = _ort(src, {"x": x})
    got = _ort(graph, {"x": x})
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g.reshape(r.shape), r, rtol=1e-4, atol=2e-5)


def test_written_file_structure(tmp_path):
    src = tiny_cnn(tmp_path / "tiny.onnx")
    out = tmp_path / "tiny.mnn"
    ptqconv.convert({"input": src, "output": str(out), "to": "mnn"})
    net = read_net(str(out))
    types = [op.type for op in net.ops]
    assert types[0] == "Input" and "ConvertTensor" in types
    assert types.count("Convolution") == 2 and types.count("ConvolutionDepthwise") == 1
    assert net.input_names() == ["input"] and net.output_names() == ["logits"]
    inp = net.ops[0].param
    assert inp.scalar(S.INPUT.dformat, "b", S.NC4HW4) == S.NCHW      # written explicitly
    conv = next(op for op in net.ops if op.type == "ConvolutionDepthwise")
    common = conv.param.table(S.CONV2D.common)
    assert common.scalar(S.CONV2D_COMMON.relu6, "?") is True        # Clip(0, 6) fused
    assert list(common.array(S.CONV2D_COMMON.pads, "i")) == [1, 1, 1, 1]


# ---- malformed files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_mnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnn")
    out = folder / "good.mnn"
    ptqconv.convert({"input": tiny_cnn(folder / "tiny.onnx"), "output": str(out), "to": "mnn"})
    return out.read_bytes()


def _first_conv(data: bytes):
    net = Buffer(data, "x").root()
    for op in net.tables(S.NET.oplists):
        if op.scalar(S.OP.type, "i") == S.OP_TYPE["Convolution"]:
            return op
    raise AssertionError("no convolution")


def _corrupt(data: bytes, kind: str) -> bytes:
    data = bytearray(data)
    if kind == "truncated":
        return bytes(data[: len(data) * 2 // 3])
    if kind == "root-offset":
        data[0:4] = struct.pack("<I", len(data) + 64)
        return bytes(data)
    op = _first_conv(bytes(data))
    if kind == "union-type":
        data[op._field(S.OP.main_type, 1)] = S.PARAM["Pool"]
    elif kind == "vector-length":
        conv = op.table(S.OP.main)
        at = conv._target(S.CONV2D.weight)
        data[at:at + 4] = struct.pack("<I", 0x0FFFFFFF)
    elif kind == "offset":
        at = op._field(S.OP.main, 4)
        data[at:at + 4] = struct.pack("<I", len(data) * 3)
    return bytes(data)


@pytest.mark.parametrize("kind", ["truncated", "root-offset", "union-type", "vector-length",
                                  "offset"])
def test_malformed_file_one_error(tmp_path, good_mnn, kind):
    bad = tmp_path / f"bad_{kind}.mnn"
    bad.write_bytes(_corrupt(good_mnn, kind))
    with pytest.raises(ModelFormatError) as info:
        read_mnn([str(bad)])
    assert str(bad) in str(info.value) and "offset" in str(info.value)
    if kind == "union-type":
        assert "union" in str(info.value)
    if kind in ("root-offset", "offset"):
        return  # same code path as the others through the CLI; keep the suite fast
    out = tmp_path / "out.onnx"
    proc = run_cli("--from", "mnn", "--to", "onnx", "-i", bad, "-o", out, "-q")
    assert_one_line_error(proc, bad.name, "offset")
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr
    assert not out.exists()


def test_fuzzed_files_never_crash(tmp_path, good_mnn):
    """Random byte damage gives a ptqconv error (or a readable model), never another exception."""
    rng = np.random.default_rng(7)
    for k in range(150):
        data = bytearray(good_mnn)
        for _ in range(1 + k % 4):
            p = int(rng.integers(0, len(data) - 4))
            data[p:p + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        path = tmp_path / "fuzz.mnn"
        path.write_bytes(bytes(data))
        try:
            read_mnn([str(path)])
        except (ModelFormatError, UnsupportedOpsError):
            pass


def test_unsupported_ops_are_listed_together(tmp_path):
    nb = NetBuilder()
    nb.input_op("x", [1, 3, 4, 4])
    nb.add("Raster", ["x"], ["r"])
    nb.add("While", ["r"], ["w"])
    nb.add("ReLU", ["w"], ["y"], "Relu", relu())
    path = tmp_path / "odd.mnn"
    path.write_bytes(nb.serialize(["y"]))
    with pytest.raises(UnsupportedOpsError) as info:
        read_mnn([str(path)])
    assert "Raster" in str(info.value) and "While" in str(info.value)
    proc = run_cli("--to", "onnx", "-i", path, "-o", tmp_path / "o.onnx", "-q")
    assert_one_line_error(proc, "Raster", "While")


def test_int8_file_reads_back_its_quantization(tmp_path):
    """mnn-int8 -> reader: the float weights are the dequantized codes and the table holds the
    scales that were written (weights per output channel, activations from quantInfo)."""
    from synthetic import write_images
    from ptqconv.core.numeric import quantize_weights
    src = tiny_cnn(tmp_path / "tiny.onnx")
    write_images(tmp_path / "imgs", 6, size=16)
    out = tmp_path / "tiny_int8.mnn"
    result = ptqconv.convert({"input": src, "output": str(out), "to": "mnn-int8",
                              "options": {"int8_heads": True},
                              "calibration": {"data": str(tmp_path / "imgs"), "method": "minmax",
                                              "refine": "none"},
                              "preprocess": {"size": [16, 16], "norm": [1 / 255] * 3}})
    written = result.table
    graph = result.graph
    loaded = read_mnn([str(out)])
    table = loaded.table
    assert table is not None
    convs = [n for n in loaded.graph.nodes if n.op == "Conv"]
    int8 = [n for n in convs if table.is_quantized(n.name)]
    assert len(int8) == 2                       # both convolutions; the Gemm stays float
    originals = [n for n in graph.nodes if n.op == "Conv"]
    for node, orig in zip(int8, originals):
        wq = table.weights[node.inputs[1]]
        want = written.weights[orig.inputs[1]]
        np.testing.assert_allclose(wq.scales, want.scales, rtol=1e-6)
        codes = quantize_weights(graph.constants[orig.inputs[1]], want.scales, 0)
        np.testing.assert_allclose(loaded.graph.constants[node.inputs[1]],
                                   codes * want.scales.reshape(-1, 1, 1, 1), rtol=1e-6)
        a_in = table.activations[node.inputs[0]]   # ReLU outputs were written one-sided and
        assert a_in.zero_point == 0                  # read back as the same symmetric threshold
        assert a_in.scale == pytest.approx(written.activations[orig.inputs[0]].scale, rel=1e-6)


def test_writer_lists_every_unsupported_op_and_writes_nothing(tmp_path):
    n = helper.make_node
    nodes = [n("Einsum", ["x", "x"], ["e"], equation="ij,ij->ij"),
             n("TopK", ["e", "k"], ["v", "i"], axis=1),
             n("Relu", ["v"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(np.array([3], np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src = tmp_path / "odd.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "odd.mnn"
    with pytest.raises(UnsupportedOpsError) as info:
        ptqconv.convert({"input": str(src), "output": str(out), "to": "mnn"})
    assert "Einsum" in str(info.value) and "TopK" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".odd.mnn*"))
