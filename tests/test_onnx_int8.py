"""ONNX in, calibration engine, QDQ int8/uint8 out: values checked against onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import ptqconv
from conftest import TORCHVISION, imagenet_split, shared_path
from ptqconv.core.calibrate import collect_stats
from ptqconv.core.config import Preprocess
from ptqconv.core.data import CalibrationData, load_image
from ptqconv.core.ir.onnx_bridge import from_onnx
from ptqconv.core.runtime import make_session
from synthetic import tiny_cnn, write_images


def _inits(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_engine_statistics_equal_direct_computation(tmp_path):
    graph = from_onnx(onnx.load(tiny_cnn(tmp_path / "m.onnx")))
    paths = write_images(tmp_path / "imgs", 6, size=16)
    pre = Preprocess(size=[16, 16], mean=[128.0], norm=[1 / 64])
    data = CalibrationData(graph.inputs, [paths], [pre], batch_size=4)
    stats = collect_stats(graph, ["input", "r1", "r2"], data)
    session = make_session(graph, extra_outputs=["r1"])
    feeds = [load_image(p, pre, (16, 16))[None] for p in paths]
    r1 = np.concatenate([session.run(["r1"], {"input": x})[0] for x in feeds])
    assert stats["r1"].max == pytest.approx(float(r1.max()), rel=1e-6)
    assert stats["r1"].count == r1.size and stats["r1"].min == 0.0
    assert stats["input"].absmax == pytest.approx(float(np.abs(np.concatenate(feeds)).max()))


def test_int8_writer_layout_and_outputs(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx")
    imgs = tmp_path / "imgs"
    write_images(imgs, 8, size=16)
    out = tmp_path / "q.onnx"
    cfg = {"input": model, "output": str(out), "to": "onnx-int8",
           "calibration": {"data": str(imgs), "method": "minmax"},
           "preprocess": {"size": [16, 16], "mean": [128.0], "norm": [1 / 64]}}
    result = ptqconv.convert(cfg)
    onnx.checker.check_model(onnx.load(out))
    inits = _inits(out)
    w = inits["w1_quantized"]
    assert w.dtype == np.int8 and w.min() >= -127 and np.abs(w).max(axis=(1, 2, 3)).min() == 127
    ws = inits["w1_scale"]
    assert ws.shape == (8,)  # per output channel
    s_in = result.table.activations["input"].scale
    bias = inits["b1_quantized"]  # int32 with step input_step * weight_step
    assert bias.dtype == np.int32
    np.testing.assert_allclose(inits["b1_scale"], s_in * ws, rtol=1e-6)
    folded_bias = result.graph.constants["b1"]
    np.testing.assert_allclose(bias * inits["b1_scale"], folded_bias, atol=float(s_in * ws.max()))
    # the QDQ model stays close to fp32 on the calibration images
    pre = Preprocess(size=[16, 16], mean=[128.0], norm=[1 / 64])
    x = np.stack([load_image(p, pre, (16, 16)) for p in sorted(map(str, imgs.iterdir()))])
    ref = np.concatenate([_session(model).run(None, {"input": xi[None]})[0] for xi in x])
    got = np.concatenate([_session(out).run(None, {"input": xi[None]})[0] for xi in x])
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_uint8_writer_uses_zero_points(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx")
    write_images(tmp_path / "imgs", 4, size=16)
    out = tmp_path / "q8.onnx"
    result = ptqconv.convert({"input": model, "output": str(out), "to": "onnx-uint8",
                              "calibration": {"data": str(tmp_path / "imgs"), "method": "minmax"},
                              "preprocess": {"size": [16, 16], "mean": [128.0], "norm": [1 / 64]}})
    aq = result.table.activations["input"]
    assert not aq.signed and 0 < aq.zero_point < 255
    zps = [v for k, v in _inits(out).items() if k == "input_zero_point"]
    assert zps and zps[0].dtype == np.uint8 and int(zps[0]) == aq.zero_point


def test_table_save_and_load_gives_the_same_model(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx")
    write_images(tmp_path / "imgs", 4, size=16)
    base = {"input": model, "to": "onnx-int8", "preprocess": {"size": [16, 16]},
            "calibration": {"data": str(tmp_path / "imgs")}}
    ptqconv.convert({**base, "output": str(tmp_path / "a.onnx"), "save_table": str(tmp_path / "t.json")})
    ptqconv.convert({**base, "output": str(tmp_path / "b.onnx"), "load_table": str(tmp_path / "t.json"),
                     "calibration": {}})
    a, b = _inits(tmp_path / "a.onnx"), _inits(tmp_path / "b.onnx")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_skip_keeps_layers_float(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx")
    write_images(tmp_path / "imgs", 4, size=16)
    out = tmp_path / "s.onnx"
    result = ptqconv.convert({"input": model, "output": str(out), "to": "onnx-int8",
                              "calibration": {"data": str(tmp_path / "imgs")},
                              "preprocess": {"size": [16, 16]}, "quantize": {"skip": ["fc"]}})
    assert result.table.precision["fc"] == "float"
    assert "wfc_quantized" not in _inits(out) and "w1_quantized" in _inits(out)


def test_mobilenet_v2_int8_tracks_fp32_on_real_images(tmp_path):
    model = shared_path("models", "mobilenet_v2", "mobilenet_v2.onnx")
    calib, evaluation = imagenet_split()
    (tmp_path / "calib.txt").write_text("\n".join(calib[:16]))
    out = tmp_path / "mb2.onnx"
    ptqconv.convert({"input": str(model), "output": str(out), "to": "onnx-int8",
                     "calibration": {"data": str(tmp_path / "calib.txt"), "method": "kl",
                                     "refine_inputs": 8},
                     "preprocess": TORCHVISION.model_dump()})
    fp32, int8 = _session(model), _session(out)
    agree, cosines = 0, []
    for path in evaluation[:20]:
        x = load_image(path, TORCHVISION, (224, 224))[None]
        a, b = fp32.run(None, {"input": x})[0][0], int8.run(None, {"input": x})[0][0]
        agree += int(a.argmax() == b.argmax())
        cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert np.mean(cosines) > 0.97 and agree >= 17


def test_exact_statistics_bin_every_value_on_zero_to_absmax(tmp_path):
    # two passes: the histogram is the seed tools' one (absmax/2048 bins, no sampling)
    graph = from_onnx(onnx.load(tiny_cnn(tmp_path / "m.onnx")))
    paths = write_images(tmp_path / "imgs", 6, size=16)
    pre = Preprocess(size=[16, 16], mean=[128.0], norm=[1 / 64])
    data = CalibrationData(graph.inputs, [paths], [pre], batch_size=2)
    stats = collect_stats(graph, ["r1"], data, exact=True)["r1"]
    session = make_session(graph, extra_outputs=["r1"])
    r1 = np.concatenate([session.run(["r1"], {"input": load_image(p, pre, (16, 16))[None]})[0]
                         for p in paths]).reshape(-1)
    mag = np.abs(r1[r1 != 0]).astype(np.float32)
    assert stats.bin_width * stats.bins == pytest.approx(float(mag.max()), rel=1e-6)
    idx = np.minimum((mag * np.float32(1 / stats.bin_width)).astype(np.int64), stats.bins - 1)
    direct = np.bincount(idx, minlength=stats.bins)
    assert stats.hist.sum() == mag.size
    assert np.abs(stats.hist - direct).sum() <= 4   # values sitting exactly on an edge
