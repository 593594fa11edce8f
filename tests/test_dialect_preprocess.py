"""Dialect preprocessing keys beyond resize/mean/norm: MNN's center_crop_h/center_crop_w (a
centered fraction of the image, cropped before the resize) and Tengine's -k (YOLOv5 focus,
space-to-depth after normalizing); both through the shared input pipeline."""
import json

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ptqconv.core.config import Preprocess
from ptqconv.core.data import load_image
from ptqconv.core.errors import PtqconvError
from synthetic import tiny_cnn, write_images
from test_dialects import one_line_error, read_table, run_ok, to_format


def _framed_image(path):
    """40 wide x 20 high: a (200, 100, 50) border around a 20x10 (10, 20, 30) center block."""
    x = np.full((20, 40, 3), (200, 100, 50), np.uint8)
    x[5:15, 10:30] = (10, 20, 30)
    Image.fromarray(x).save(path)
    return str(path)


def test_crop_fraction_keeps_the_centered_part(tmp_path):
    path = _framed_image(tmp_path / "framed.png")
    pre = Preprocess(pixel="RGB", size=[10, 20], crop_fraction=[0.5, 0.5], interpolation="nearest")
    x = load_image(path, pre, (10, 20))
    assert x.shape == (3, 10, 20)
    np.testing.assert_array_equal(np.unique(x.reshape(3, -1), axis=1), [[10], [20], [30]])
    whole = load_image(path, Preprocess(pixel="RGB", size=[10, 20], interpolation="nearest"),
                       (10, 20))
    assert whole[0].max() == 200  # without the crop the border is in


def test_mnn_center_crop_keys(tmp_path, capsys):
    model = tiny_cnn(tmp_path / "tiny.onnx", size=16)
    write_images(tmp_path / "img", count=2, size=24)
    base = {"format": "RGB", "width": 16, "height": 16, "path": str(tmp_path / "img")}
    cfg = tmp_path / "q.json"
    cfg.write_text(json.dumps({**base, "center_crop_h": 0.5, "center_crop_w": 0.875}))
    config = yaml.safe_load(run_ok(capsys, "quantized", model, tmp_path / "q.mnn", cfg,
                                   "--print-config"))
    assert config["preprocess"]["crop_fraction"] == [0.5, 0.875]
    cfg.write_text(json.dumps({**base, "center_crop_h": 1.0}))
    config = yaml.safe_load(run_ok(capsys, "quantized", model, tmp_path / "q.mnn", cfg,
                                   "--print-config"))
    assert "crop_fraction" not in config["preprocess"]  # 1.0 is no crop, the tool's default
    cfg.write_text(json.dumps({**base, "center_crop_w": 1.5}))
    assert "center_crop_w should be in (0, 1]" in one_line_error(capsys, "quantized", model,
                                                                 tmp_path / "q.mnn", cfg)


def test_space_to_depth_is_yolov5_focus(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    pre = Preprocess(pixel="RGB", size=[8, 6], mean=[1.0, 2.0, 3.0], space_to_depth=True)
    y = load_image(str(tmp_path / "x.png"), pre, (8, 6))
    x = rgb.astype(np.float32).transpose(2, 0, 1) - np.array([1, 2, 3], np.float32)[:, None, None]
    want = np.concatenate([x[:, ::2, ::2], x[:, 1::2, ::2], x[:, ::2, 1::2], x[:, 1::2, 1::2]])
    np.testing.assert_array_equal(y, want)
    with pytest.raises(PtqconvError, match="even image size"):
        load_image(str(tmp_path / "x.png"), Preprocess(size=[7, 6], space_to_depth=True), (7, 6))


def _focus_model(path, half=8):
    """Input 'input' [1,12,half,half] -> Conv(12->4,1x1) -> Relu -> GlobalAveragePool."""
    w = numpy_helper.from_array(np.random.default_rng(1).normal(0, 0.3, (4, 12, 1, 1))
                                .astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["out"], name="gap")]
    graph = helper.make_graph(nodes, "focus", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 12, half, half])], [helper.make_tensor_value_info(
            "out", TensorProto.FLOAT, [1, 4, 1, 1])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_tengine_k_feeds_the_focused_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = to_format(_focus_model(tmp_path / "focus.onnx"), "tmfile", tmp_path / "f.tmfile")[0]
    images = write_images(tmp_path / "img", count=3, size=24)
    argv = ["quant_tool_int8", "-m", src, "-i", tmp_path / "img", "-o", tmp_path / "q.tmfile",
            "-g", "3,16,16", "-w", "0,0,0", "-s", "0.5,0.25,1", "-a", "0", "-k", "1", "-t", "1"]
    config = yaml.safe_load(run_ok(capsys, *argv, "--print-config"))
    assert config["preprocess"]["space_to_depth"] is True
    run_ok(capsys, *argv, "-q")
    pre = Preprocess(**config["preprocess"])
    absmax = max(np.abs(load_image(p, pre, (16, 16))).max() for p in images)
    step = read_table("tmfile", [tmp_path / "q.tmfile"]).activations["input"].scale
    assert step * 127 == pytest.approx(absmax, rel=1e-5)  # min-max of the 12x8x8 tensors
    assert "-k 1 needs an even" in one_line_error(capsys, *argv[:-6], "-g", "3,15,16", "-k", "1")


def test_bias_correction_switch_is_opt_in(tmp_path, capsys):
    model = tiny_cnn(tmp_path / "tiny.onnx", size=16)
    write_images(tmp_path / "img", count=2, size=24)
    argv = ["quant_tool_int8", "-m", model, "-i", tmp_path / "img", "-o", tmp_path / "q.tmfile",
            "-g", "3,16,16", "--print-config"]
    assert yaml.safe_load(run_ok(capsys, *argv))["quantize"]["bias_correction"] is False
    both = yaml.safe_load(run_ok(capsys, *argv, "--bias-correction", "--refine"))
    assert both["quantize"]["bias_correction"] is True
    assert both["calibration"]["refine"] == "cosine"
