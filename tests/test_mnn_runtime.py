"""MNN files run by MNN itself (the ``MNN`` pip package): ONNX -> mnn matches onnxruntime,
mnn -> ONNX matches MNN, mnn-int8 runs its convolutions in int8 and stays close to fp32, golden
files convert to ONNX that matches MNN, ncnn SqueezeNet -> mnn-int8 in one command."""
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import ptqconv
from conftest import CAFFE_BGR227, TORCHVISION, imagenet_split, shared_path
from ptqconv.core.config import Preprocess
from ptqconv.core.data import load_image
from ptqconv.formats.mnn import schema as S
from ptqconv.formats.mnn.reader import read_mnn, read_net
from test_mnn_format import op_zoo_model

MNN = pytest.importorskip("MNN")
pytest.importorskip("flatbuffers")
from ptqconv.formats.mnn.runtime import MnnRunner, int8_conv_count, mnn_op_counts  # noqa: E402

EVAL_IMAGES = 5


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def ort_run(path, feed):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def eval_images(pre, hw, count=EVAL_IMAGES):
    _, files = imagenet_split()
    return [load_image(f, pre, hw)[None] for f in files[:count]]


def calib_config(tmp_path, pre, count=8):
    """A config dict calibrating on the first ``count`` sorted shared images."""
    calib, _ = imagenet_split()
    lst = tmp_path / "calib.txt"
    lst.write_text("\n".join(calib[:count]) + "\n")
    return {"calibration": {"data": str(lst), "count": count, "method": "percentile",
                            "refine": "none"},
            "preprocess": pre.model_dump()}


@pytest.fixture(scope="module")
def mobilenet():
    return str(shared_path("models", "mobilenet_v2", "mobilenet_v2.onnx"))


@pytest.fixture(scope="module")
def mobilenet_fp32(mobilenet, tmp_path_factory):
    out = tmp_path_factory.mktemp("mbv2") / "mobilenet_v2.mnn"
    ptqconv.convert({"input": mobilenet, "output": str(out), "to": "mnn"})
    return str(out)


def test_onnx_to_mnn_matches_onnxruntime(mobilenet, mobilenet_fp32):
    runner = MnnRunner(mobilenet_fp32)
    assert runner.inputs == ["input"] and runner.outputs == ["logits"]
    for x in eval_images(TORCHVISION, (224, 224)):
        ref = ort_run(mobilenet, {"input": x})[0]
        got = runner({"input": x})[0]
        assert got.shape == ref.shape
        assert cosine(got, ref) >= 0.9999
        assert np.argmax(got) == np.argmax(ref)


def test_op_zoo_in_mnn_matches_onnxruntime(tmp_path):
    src = op_zoo_model(tmp_path / "zoo.onnx")
    out = tmp_path / "zoo.mnn"
    ptqconv.convert({"input": src, "output": str(out), "to": "mnn"})
    x = np.random.default_rng(3).normal(0, 1, (1, 4, 16, 16)).astype(np.float32)
    ref = ort_run(src, {"x": x})
    got = MnnRunner(str(out), ["x"], ["prob", "gap"])({"x": x})
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g.reshape(r.shape), r, rtol=1e-3, atol=1e-5)


def _mnn_tool(args, dst):
    """MNN's own converter (the wheel's native ``_tools`` module, never the telemetry-calling
    console scripts) in a subprocess; skips the test when it is not usable."""
    code = ("import sys, _tools; "
            f"sys.exit(0 if _tools.mnnconvert(['mnnconvert'] + {list(map(str, args))!r}) else 1)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0 or not os.path.exists(dst):
        pytest.skip(f"MNN's converter module is not usable here: {proc.stderr[-200:]}")


def _mnn_converter(src, dst):
    """MNN's ONNX -> MNN conversion."""
    _mnn_tool(["-f", "ONNX", "--modelFile", src, "--MNNModel", dst, "--bizCode", "biz"], dst)


@pytest.mark.parametrize("source", ["mnn-converter", "ptqconv"])
def test_mnn_to_onnx_matches_mnn(tmp_path, source):
    """Files written by MNN's converter (ConvertTensor, Shape/Rank/SliceTf subgraphs, grouped
    convs as Slice+Concat, Interp, Padding, StridedSlice...) and by ptqconv read back into ONNX
    that onnxruntime runs with MNN's results."""
    src = op_zoo_model(tmp_path / "zoo.onnx")
    mnn = tmp_path / "zoo.mnn"
    if source == "mnn-converter":
        _mnn_converter(src, mnn)
    else:
        ptqconv.convert({"input": src, "output": str(mnn), "to": "mnn"})
    back = tmp_path / "back.onnx"
    ptqconv.convert({"input": str(mnn), "output": str(back), "to": "onnx"})
    x = np.random.default_rng(4).normal(0, 1, (1, 4, 16, 16)).astype(np.float32)
    runner = MnnRunner(str(mnn))
    assert sorted(runner.outputs) == ["gap", "prob"]
    want = dict(zip(runner.outputs, runner({"x": x})))
    sess = ort.InferenceSession(str(back), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    for name, value in want.items():
        np.testing.assert_allclose(got[name].reshape(value.shape), value, rtol=1e-3, atol=1e-5)


def _caffe_style_net(path):
    """Ops MNN's ONNX converter never writes (Eltwise, Caffe Slice, Sigmoid/TanH ops, Permute,
    Scale, leaky ReLU, Flatten), built as MNN JSON and turned into .mnn by MNN's ``_tools``."""
    names = ["x", "x4", "e1", "e2", "e3", "s0", "s1", "c", "sg", "th", "pm", "sc", "r", "y"]
    index = {n: k for k, n in enumerate(names)}

    def op(kind, ins, outs, param_type=None, param=None):
        d = {"type": kind, "inputIndexes": [index[i] for i in ins],
             "outputIndexes": [index[o] for o in outs], "name": outs[0]}
        if param_type:
            d.update(main_type=param_type, main=param)
        return d
    ops = [{"type": "Input", "outputIndexes": [0], "name": "x", "main_type": "Input",
            "main": {"dims": [1, 4, 6, 6], "dtype": "DT_FLOAT", "dformat": "NCHW"}},
           op("ConvertTensor", ["x"], ["x4"], "TensorConvertInfo",
              {"source": "NCHW", "dest": "NC4HW4"}),
           op("Eltwise", ["x4", "x4"], ["e1"], "Eltwise", {"type": "SUM"}),
           op("Eltwise", ["e1", "x4"], ["e2"], "Eltwise", {"type": "PROD"}),
           op("Eltwise", ["e2", "x4"], ["e3"], "Eltwise", {"type": "MAXIMUM"}),
           op("Slice", ["e3"], ["s0", "s1"], "Slice",
              {"axis": 1, "slicePoints": [1], "sourceType": "CAFFE"}),
           op("Concat", ["s1", "s0"], ["c"], "Axis", {"axis": 1}),
           op("Sigmoid", ["c"], ["sg"]),
           op("TanH", ["sg"], ["th"]),
           op("Permute", ["th"], ["pm"], "Permute", {"dims": [0, 1, 3, 2]}),
           op("Scale", ["pm"], ["sc"], "Scale", {"channels": 4, "scaleData": [1, 2, 3, 4],
                                                 "biasData": [0.1, 0.2, 0.3, 0.4]}),
           op("ReLU", ["sc"], ["r"], "Relu", {"slope": 0.1}),
           op("Flatten", ["r"], ["y"], "Flatten", {"axis": 1, "endAxis": 0})]
    js = path.with_suffix(".json")
    js.write_text(json.dumps({"oplists": ops, "tensorName": names, "outputName": ["y"],
                              "sourceType": "CAFFE", "bizCode": "test"}))
    _mnn_tool(["-f", "JSON", "--modelFile", str(js), "--MNNModel", str(path)], path)


def test_caffe_style_ops_read_like_mnn_runs_them(tmp_path):
    mnn = tmp_path / "caffe_ops.mnn"
    _caffe_style_net(mnn)
    back = tmp_path / "caffe_ops.onnx"
    ptqconv.convert({"input": str(mnn), "output": str(back), "to": "onnx"})
    x = np.random.default_rng(5).normal(0, 1, (1, 4, 6, 6)).astype(np.float32)
    want = MnnRunner(str(mnn))({"x": x})[0]
    got = ort_run(back, {"x": x})[0]
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-6)


def test_mnn_int8_runs_int8_and_stays_close(tmp_path, mobilenet, mobilenet_fp32):
    out = tmp_path / "mbv2_int8.mnn"
    cfg = calib_config(tmp_path, TORCHVISION)
    result = ptqconv.convert({**cfg, "input": mobilenet, "output": str(out), "to": "mnn-int8"})
    assert result.table is not None
    net = read_net(str(out))
    convs = [op for op in net.ops if op.type in ("Convolution", "ConvolutionDepthwise")]
    quantized = [op for op in convs if op.param.has(S.CONV2D.quanParameter)]
    # every conv but the last one, whose output only float ops (pool, Gemm classifier) consume
    assert len(quantized) == 51
    for op in quantized:
        assert not op.param.has(S.CONV2D.weight)
        q = op.param.table(S.CONV2D.quanParameter)
        assert q.scalar(S.IDST_QUAN.type, "i") == 1 and q.scalar(S.IDST_QUAN.aMaxOrBits, "i") == 8
        sym = op.param.table(S.CONV2D.symmetricQuan)
        assert sym.scalar(S.QUANT_FLOAT.clampMin, "b") == -127
        for t in (op.inputs[0], op.outputs[0]):
            scale, zero, lo, hi, dtype = net.quant_info[t]
            assert scale > 0 and (lo, hi) == (-127, 127) and dtype == S.DT_INT8
            assert zero in (0, -127)       # -127: a ReLU6 output using every code for [0, T]
    one_sided = [t for t, v in net.quant_info.items() if v[1] == -127]
    assert len(one_sided) >= 30
    ops = mnn_op_counts(out)
    assert int8_conv_count(ops) == 51, ops
    fp32, int8 = MnnRunner(mobilenet_fp32), MnnRunner(str(out))
    cos = [cosine(int8({"input": x})[0], fp32({"input": x})[0])
           for x in eval_images(TORCHVISION, (224, 224))]
    assert min(cos) >= 0.95, cos
    assert float(np.mean(cos)) >= 0.97, cos


GOLDEN_PRE = {  # shared/data/MANIFEST.md: the demo preprocessing of each model
    "blazeface.mnn": (Preprocess(pixel="BGR", size=[128, 128], mean=[127.5] * 3,
                                 norm=[1 / 127.5] * 3), 0.999),
    "blazeface_quant.mnn": (Preprocess(pixel="BGR", size=[128, 128], mean=[127.5] * 3,
                                       norm=[1 / 127.5] * 3), 0.99),
    "face_det_quant.mnn": (Preprocess(pixel="BGR", size=[224, 224], mean=[123.0] * 3,
                                      norm=[1 / 58.0] * 3), 0.99),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_PRE))
def test_golden_to_onnx_matches_mnn(tmp_path, name):
    """fp32 goldens: cosine >= 0.999; int8 goldens (dequantized: MNN computes in int8, ONNX in
    float with the same weights, scales and saturation): cosine printed, >= 0.99 required."""
    golden = str(shared_path("golden", "mnn", name))
    pre, limit = GOLDEN_PRE[name]
    onnx_path = tmp_path / (name + ".onnx")
    ptqconv.convert({"input": golden, "output": str(onnx_path), "to": "onnx"})
    loaded = read_mnn([golden])
    assert (loaded.table is not None) == ("quant" in name)
    runner = MnnRunner(golden)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert sorted(names) == sorted(runner.outputs)
    worst = 1.0
    for x in eval_images(pre, pre.size, 3):
        want = dict(zip(runner.outputs, runner({runner.inputs[0]: x})))
        got = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))
        for out, value in want.items():
            assert got[out].shape == value.shape
            worst = min(worst, cosine(got[out], value))
    print(f"{name}: worst output cosine ONNX (onnxruntime) vs MNN = {worst:.6f}")
    assert worst >= limit


def test_golden_int8_rewritten_with_its_own_table(tmp_path):
    """An int8 golden re-written as mnn-int8 from the table read out of it (no calibration)."""
    golden = str(shared_path("golden", "mnn", "face_det_quant.mnn"))
    out = tmp_path / "face_det_rewritten.mnn"
    ptqconv.convert({"input": golden, "output": str(out), "to": "mnn-int8"})
    ops = mnn_op_counts(out)
    # 47 int8 convs in the file; the 12 box/class predictors feed only float ops (Reshape,
    # Concat, the outputs), so ptqconv keeps them float
    assert int8_conv_count(ops) == 35, ops
    pre = GOLDEN_PRE["face_det_quant.mnn"][0]
    a, b = MnnRunner(golden), MnnRunner(str(out))
    for x in eval_images(pre, pre.size, 2):
        want = dict(zip(a.outputs, a({a.inputs[0]: x})))
        got = dict(zip(b.outputs, b({b.inputs[0]: x})))
        for name, value in want.items():
            assert cosine(got[name], value) >= 0.99


def test_ncnn_squeezenet_to_mnn_int8_in_one_command(tmp_path):
    param = shared_path("models", "squeezenet_v1.1", "squeezenet_v1.1.param")
    reference = shared_path("models", "squeezenet_v1.1", "squeezenet_v1.1.onnx")
    registry = ptqconv.load_plugins()
    if "ncnn" not in registry.formats or registry.formats["ncnn"].read is None:
        pytest.skip("the ncnn reader is not available")
    import yaml
    cfg = calib_config(tmp_path, CAFFE_BGR227)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "squeezenet_int8.mnn"
    from cli_helpers import run_cli
    proc = run_cli("-q", "-c", tmp_path / "cfg.yaml", "--from", "ncnn", "--to", "mnn-int8",
                   "-i", param, "-o", out)
    assert proc.returncode == 0, proc.stderr
    ops = mnn_op_counts(out)
    assert int8_conv_count(ops) == 25, ops     # all but conv10, whose output only float ops use
    runner = MnnRunner(str(out))
    for x in eval_images(CAFFE_BGR227, (227, 227), 3):
        ref = ort_run(reference, {"data": x})[0]
        got = runner({"data": x})[0]
        assert cosine(got, ref) >= 0.95


@pytest.mark.parametrize("bits", [8, 4])
def test_mnn_decodes_quantized_weights_like_the_reader(tmp_path, bits):
    """Weight-only files (IDSTQuan weights, no quantInfo) make MNN compute in float with the
    weights it decodes: they must equal the reader's dequantized weights (8- and 4-bit palettes)."""
    from synthetic import tiny_cnn, write_images
    src = tiny_cnn(tmp_path / "tiny.onnx", size=16)
    write_images(tmp_path / "imgs", 4, size=16)
    out = tmp_path / f"tiny_w{bits}.mnn"
    ptqconv.convert({"input": src, "output": str(out), "to": "mnn-int8",
                     "options": {"weight_only": True},
                     "quantize": {"weight_bits": bits},
                     "calibration": {"data": str(tmp_path / "imgs"), "method": "minmax",
                                     "refine": "none"},
                     "preprocess": {"size": [16, 16], "norm": [1 / 255] * 3}})
    assert not read_net(str(out)).quant_info
    back = tmp_path / "back.onnx"
    ptqconv.convert({"input": str(out), "output": str(back), "to": "onnx"})
    x = np.random.default_rng(6).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)
    want = MnnRunner(str(out))({"input": x})[0]
    got = ort_run(back, {"input": x})[0]
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)


def test_int8_layout_matches_mnns_own_quantizer(tmp_path):
    """Same ONNX model through MNN's converter + quantizer (``_tools.mnnquant``, KL, MAX_ABS)
    and through ptqconv: identical int8 weight blobs, weight scales and header fields."""
    from synthetic import tiny_cnn, write_images
    # no BatchNormalization: MNN's converter folds it in float32, ptqconv in float64
    src = tiny_cnn(tmp_path / "tiny.onnx", size=16, batchnorm=False)
    write_images(tmp_path / "imgs", 4, size=16)
    ref_fp32, ref_int8 = tmp_path / "ref.mnn", tmp_path / "ref_int8.mnn"
    _mnn_converter(src, ref_fp32)
    cfg = tmp_path / "quant.json"
    cfg.write_text(json.dumps({"format": "RGB", "mean": [0, 0, 0], "normal": [1 / 255] * 3,
                               "width": 16, "height": 16, "path": str(tmp_path / "imgs") + "/",
                               "used_image_num": 4, "feature_quantize_method": "KL",
                               "weight_quantize_method": "MAX_ABS", "quant_bits": 8}))
    code = ("import sys, _tools; sys.exit(0 if _tools.mnnquant(['mnnquant', "
            f"{str(ref_fp32)!r}, {str(ref_int8)!r}, {str(cfg)!r}]) else 1)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0 or not ref_int8.exists():
        pytest.skip(f"MNN's quantizer module is not usable here: {proc.stderr[-200:]}")
    ours = tmp_path / "ours.mnn"
    ptqconv.convert({"input": src, "output": str(ours), "to": "mnn-int8",
                     "options": {"int8_heads": True},     # quantize every conv, as mnnquant
                     "calibration": {"data": str(tmp_path / "imgs"), "method": "minmax",
                                     "refine": "none"},
                     "preprocess": {"size": [16, 16], "norm": [1 / 255] * 3}})
    conv_types = ("Convolution", "ConvolutionDepthwise")
    theirs = [op for op in read_net(str(ref_int8)).ops if op.type in conv_types]
    mine = [op for op in read_net(str(ours)).ops if op.type in conv_types]
    pairs = [(a, b) for a, b in zip(theirs, mine) if b.param.has(S.CONV2D.quanParameter)]
    assert len(pairs) == 2
    header = {S.IDST_QUAN.type: "i", S.IDST_QUAN.quantScale: "f", S.IDST_QUAN.aMaxOrBits: "i",
              S.IDST_QUAN.aMin: "i", S.IDST_QUAN.readType: "i"}
    for a, b in pairs:
        qa, qb = a.param.table(S.CONV2D.quanParameter), b.param.table(S.CONV2D.quanParameter)
        assert np.array_equal(qa.array(S.IDST_QUAN.buffer, "b"), qb.array(S.IDST_QUAN.buffer, "b"))
        assert np.array_equal(qa.array(S.IDST_QUAN.alpha, "f"), qb.array(S.IDST_QUAN.alpha, "f"))
        for slot, fmt in header.items():
            assert qa.scalar(slot, fmt, 0) == qb.scalar(slot, fmt, 0), slot
        sa, sb = a.param.table(S.CONV2D.symmetricQuan), b.param.table(S.CONV2D.symmetricQuan)
        for slot, fmt in ((S.QUANT_FLOAT.nbits, "i"), (S.QUANT_FLOAT.clampMin, "b"),
                          (S.QUANT_FLOAT.clampMax, "b"), (S.QUANT_FLOAT.outputDataType, "i")):
            assert sa.scalar(slot, fmt, None) == sb.scalar(slot, fmt, None), slot
        assert not a.param.has(S.CONV2D.weight) and not b.param.has(S.CONV2D.weight)


def test_one_sided_relu_codes_run_correctly_in_mnn(tmp_path):
    """ReLU outputs written with zero point -127 (every code on [0, T]) halve MNN's int8 error
    on padded dense and depthwise convolutions; the input and output of a ceil-mode max pool
    (MNN pads int8 pooling with code 0) keep zero 0."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from ptqconv.core.qtable import ActQuant, QuantTable, WeightQuant
    from ptqconv.core.runtime import make_session
    from ptqconv.core.passes import canonicalize, fuse_activation
    from ptqconv.formats.mnn.writer import mnn_bytes
    from ptqconv.formats.onnx.reader import read_onnx
    rng = np.random.default_rng(0)
    w = {"w1": rng.normal(0, .3, (16, 8, 1, 1)), "w2": rng.normal(0, .3, (16, 1, 3, 3)),
         "w3": rng.normal(0, .3, (16, 16, 3, 3)), "w4": rng.normal(0, .3, (8, 16, 1, 1))}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"]), n("Relu", ["a"], ["r1"]),
             n("Conv", ["r1", "w2"], ["b"], pads=[1, 1, 1, 1], group=16), n("Relu", ["b"], ["r2"]),
             n("Conv", ["r2", "w3"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r3"]),
             n("MaxPool", ["r3"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             n("Conv", ["p", "w4"], ["d"]), n("Relu", ["d"], ["y"])]
    graph = helper.make_graph(
        nodes, "relu_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5, 5])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "relu_net.onnx"))
    g = canonicalize(read_onnx([str(tmp_path / "relu_net.onnx")]).graph)
    x = rng.uniform(0, 1, (1, 8, 10, 10)).astype(np.float32)
    acts = ["r1", "r2", "r3", "p", "y"]
    sess = make_session(g, extra_outputs=acts)
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    table = QuantTable(activations={"x": ActQuant(1 / 127)})
    for name in acts:
        table.activations[name] = ActQuant(float(ref[name].max()) / 127)
    for node in g.nodes:
        if node.op == "Conv":
            table.precision[node.name] = "int8"
            wv = g.constants[node.inputs[1]]
            table.weights[node.inputs[1]] = WeightQuant(
                (np.abs(wv.reshape(wv.shape[0], -1)).max(1) / 127).astype(np.float32), 0, 8)
    errors = {}
    for label, opts in (("symmetric", {"symmetric_activations": True}), ("one-sided", {})):
        path = tmp_path / f"{label}.mnn"
        path.write_bytes(mnn_bytes(fuse_activation(g.copy()), table, {**opts, "int8_heads": True}))
        zeros = {read_net(str(path)).tensor_names[i]: v[1]
                 for i, v in read_net(str(path)).quant_info.items()}
        if label == "one-sided":
            assert zeros["r1"] == zeros["r2"] == -127 and zeros["r3"] == zeros["p"] == 0
        assert int8_conv_count(mnn_op_counts(path)) == 4
        y = MnnRunner(str(path), ["x"], ["y"])({"x": x})[0]
        errors[label] = float(np.abs(y - ref["y"]).max() / ref["y"].max())
    assert errors["one-sided"] < errors["symmetric"] < 0.1, errors
