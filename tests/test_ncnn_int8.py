"""ncnn-int8 writer and the ncnn2table ``.table`` format, checked with the ncnn runtime on real
images (few calibration images: these test the layout and the runtime, not the accuracy; the
accuracy run is benchmarks/ncnn_accuracy.py)."""
import re

import numpy as np
import pytest

import ptqconv
from ptqconv.core.centre import centre_tensors
from ptqconv.core.corrections import apply_bias_corrections
from ptqconv.core.data import load_image
from ptqconv.formats.ncnn.reader import read_ncnn
from conftest import CAFFE_BGR227, TORCHVISION, imagenet_split, shared_path

ncnn = pytest.importorskip("ncnn")

from ptqconv.formats.ncnn.runtime import captured_stderr, load_net, ncnn_runtime  # noqa: E402

CALIB = 8
EVAL = 10
LINE = re.compile(r"^(\S+) ((?:-?\d+\.\d{6} )+)$")


def _calib_list(tmp_path):
    calib, _ = imagenet_split()
    p = tmp_path / "calib.txt"
    p.write_text("\n".join(calib[:CALIB]) + "\n")
    return str(p)


def _job(src, out, preset, tmp_path, **extra):
    cfg = {"input": src, "to": "ncnn-int8", "output": str(out),
           "calibration": {"data": _calib_list(tmp_path), "method": "minmax", "refine": "none",
                           "threads": 2},
           "preprocess": preset.model_dump(exclude_none=True)}
    cfg.update(extra)
    return ptqconv.convert(cfg)


def _layers(param):
    rows = {}
    for ln in open(param).read().splitlines()[2:]:
        t = ln.split()
        n = 4 + int(t[2]) + int(t[3])
        rows[t[1]] = (t[0], dict(kv.split("=", 1) for kv in t[n:]))
    return rows


def _probs(run, name, x):
    y = np.asarray(run({name: x})[0], np.float64).reshape(-1)
    if y.min() < 0:
        y = np.exp(y - y.max())
        y /= y.sum()
    return y


@pytest.fixture(scope="module")
def squeezenet_int8(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sq8")
    src = str(shared_path("models", "squeezenet_v1.1", "squeezenet_v1.1.param"))
    out = tmp / "sq8.param"
    table = tmp / "sq8.table"
    result = _job([src], out, CAFFE_BGR227, tmp, **{"from": "ncnn", "save_table": str(table)})
    return src, result, str(out), str(table)


def test_int8_squeezenet_runs_close_to_fp32(squeezenet_int8):
    src, _, out, _ = squeezenet_int8
    layers = _layers(out)
    convs = {k: v for k, v in layers.items() if v[0] == "Convolution"}
    assert len(convs) == 26 and all(p.get("8") in ("2", "102") for _, p in convs.values())
    with captured_stderr() as err:      # loads without any runtime warning
        load_net(out, out[:-6] + ".bin")
    assert err[0] == ""
    fp32 = ncnn_runtime([src, src[:-6] + ".bin"])
    int8 = ncnn_runtime([out, out[:-6] + ".bin"])
    _, evaluation = imagenet_split()
    agree, cos = 0, []
    for path in evaluation[:EVAL]:
        x = load_image(path, CAFFE_BGR227, (227, 227))[None]
        a, b = _probs(fp32, "data", x), _probs(int8, "data", x)
        agree += int(a.argmax() == b.argmax())
        cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert agree >= EVAL - 3 and np.mean(cos) >= 0.9


def test_int8_layout_follows_ncnn2int8(squeezenet_int8):
    """Read the written model back: per-channel multipliers, codes within ±127 (±31 for 3x3
    stride-1 convolutions), one input scale from the table, fp32 bias (plus the table's bias
    correction, applied once, and the centring shifts)."""
    src, result, out, _ = squeezenet_int8
    original = read_ncnn([src, src[:-6] + ".bin"]).graph
    # what the host hands the writer: bias corrections added, never-negative inputs centred
    original, _ = centre_tensors(apply_bias_corrections(original, result.table), result.table)
    loaded = read_ncnn([out, out[:-6] + ".bin"])
    graph, table = loaded.graph, loaded.table
    convs = [n for n in graph.nodes if n.op == "Conv"]
    assert len(convs) == 26 and all(table.is_quantized(n.name) for n in convs)
    for node in convs:
        steps = np.asarray(table.weights[node.inputs[1]].scales, np.float64)
        w = graph.constants[node.inputs[1]].reshape(len(steps), -1)
        codes = np.round(w / steps[:, None])
        np.testing.assert_allclose(w / steps[:, None], codes, atol=1e-3)
        limit = 31 if node.attrs["kernel_shape"] == [3, 3] and node.attrs["strides"] == [1, 1] \
            else 127
        assert np.abs(codes).max() == limit
        ref = result.table.activations[node.inputs[0]]
        assert abs(table.activations[node.inputs[0]].scale / ref.scale - 1) < 1e-6
        bias = original.constants[original.node(node.name).inputs[2]]
        np.testing.assert_array_equal(graph.constants[node.inputs[2]], bias)


def test_table_follows_ncnn2table_layout(squeezenet_int8):
    _, result, out, table = squeezenet_int8
    lines = open(table).read().splitlines()
    assert all(LINE.match(ln) for ln in lines), [ln for ln in lines if not LINE.match(ln)][:2]
    keys = [ln.split()[0] for ln in lines]
    weights = [k for k in keys if k.endswith("_param_0")]
    assert keys[:len(weights)] == weights and len(weights) == 26   # weight lines come first
    layers = _layers(out)
    for ln in lines:
        key, values = ln.split()[0], ln.split()[1:]
        layer = key[: -len("_param_0")] if key.endswith("_param_0") else key
        assert layers[layer][0] == "Convolution"
        assert len(values) == (int(layers[layer][1]["0"]) if key.endswith("_param_0") else 1)
    # the input line holds 127 / threshold
    key = keys[len(weights)]
    node = result.graph.node(key)
    aq = result.table.activations[node.inputs[0]]
    assert abs(float(lines[len(weights)].split()[1]) * aq.threshold / 127 - 1) < 1e-5


def test_commented_table_lines_keep_layers_fp32(squeezenet_int8, tmp_path):
    src, _, _, table = squeezenet_int8
    text = open(table).read()
    edited = tmp_path / "edited.table"
    edited.write_text(re.sub(r"^(fire5/expand3x3|conv10) ", r"#\1 ", text, flags=re.M))
    out = tmp_path / "mixed.param"
    ptqconv.convert({"input": src, "from": "ncnn", "to": "ncnn-int8", "output": str(out),
                     "load_table": str(edited)})
    layers = _layers(str(out))
    assert "8" not in layers["fire5/expand3x3"][1] and "8" not in layers["conv10"][1]
    assert layers["fire5/expand1x1"][1]["8"] in ("2", "102")
    loaded = read_ncnn([str(out), str(out)[:-6] + ".bin"])
    assert not loaded.table.is_quantized("conv10") and loaded.table.is_quantized("conv1")
    # a table ptqconv writes for a skipped layer keeps its weight line, drops its input line
    again = tmp_path / "again.table"
    ptqconv.convert({"input": src, "from": "ncnn", "to": "ncnn-int8", "load_table": str(edited),
                     "save_table": str(again), "output": str(tmp_path / "again.param"),
                     "quantize": {"skip": ["fire2/squeeze1x1"]}})
    keys = [ln.split()[0] for ln in again.read_text().splitlines()]
    assert "fire2/squeeze1x1_param_0" in keys and "fire2/squeeze1x1" not in keys
    assert "conv10_param_0" in keys and "conv10" not in keys and "conv1" in keys


def test_mobilenet_onnx_to_ncnn_int8_depthwise_per_group(tmp_path):
    onnx_path = str(shared_path("models", "mobilenet_v2", "mobilenet_v2.onnx"))
    out = tmp_path / "mb8.param"
    _job([onnx_path], out, TORCHVISION, tmp_path)
    layers = _layers(str(out))
    dw = [p for t, p in layers.values() if t == "ConvolutionDepthWise"]
    assert len(dw) == 17 and all(p["8"] in ("1", "101") for p in dw)
    assert [p["8"] for t, p in layers.values() if t == "InnerProduct"] == ["2"]
    loaded = read_ncnn([str(out), str(out)[:-6] + ".bin"])
    assert sum(loaded.table.is_quantized(n.name) for n in loaded.graph.nodes) == 53
    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    int8 = ncnn_runtime([str(out), str(out)[:-6] + ".bin"])
    _, evaluation = imagenet_split()
    agree = 0
    for path in evaluation[:EVAL]:
        x = load_image(path, TORCHVISION, (224, 224))[None]
        a = sess.run(None, {"input": x})[0].reshape(-1)
        b = int8({"input": x})[0].reshape(-1)
        agree += int(a.argmax() == b.argmax())
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.9
    assert agree >= EVAL - 3
