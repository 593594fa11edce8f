"""Seed-tool dialects (MNN quantized, Tengine quant_tool_int8, TNN quantization_cmd, MindSpore
converter_lite): the dialect command and its printed YAML give identical scales; two-input
models calibrate with per-input data; bad values are one-line errors. Tiny models, few inputs."""
import os

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import ptqconv
from ptqconv.core.cli import main
from ptqconv.core.plugins import get_registry
from synthetic import tiny_cnn, write_images

SIZE = 16


def two_input_model(path, seed=0):
    """Two image branches concatenated: 'rgb' [1,3,16,16] -> Conv(3->4)+Relu and 'gray'
    [1,1,16,16] -> Conv(1->4)+Relu, Concat -> Conv(8->6)+Relu -> GlobalAveragePool -> Flatten ->
    Gemm(6->5) 'logits'. Returns the path."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, s=0.4):
        return numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), name)

    inits = [init("wa", 4, 3, 3, 3), init("ba", 4, s=0.1), init("wb", 4, 1, 3, 3),
             init("bb", 4, s=0.1), init("wc", 6, 8, 1, 1), init("bc", 6, s=0.1),
             init("wf", 5, 6), init("bf", 5, s=0.1)]
    nodes = [helper.make_node("Conv", ["rgb", "wa", "ba"], ["ca"], name="conv_rgb", pads=[1] * 4),
             helper.make_node("Relu", ["ca"], ["ra"], name="relu_rgb"),
             helper.make_node("Conv", ["gray", "wb", "bb"], ["cb"], name="conv_gray",
                              pads=[1] * 4),
             helper.make_node("Relu", ["cb"], ["rb"], name="relu_gray"),
             helper.make_node("Concat", ["ra", "rb"], ["cat"], name="concat", axis=1),
             helper.make_node("Conv", ["cat", "wc", "bc"], ["cc"], name="conv_mix"),
             helper.make_node("Relu", ["cc"], ["rc"], name="relu_mix"),
             helper.make_node("GlobalAveragePool", ["rc"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1, 3, SIZE, SIZE]),
         helper.make_tensor_value_info("gray", TensorProto.FLOAT, [1, 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def to_format(onnx_path, target, out):
    """Write ``onnx_path`` as a float ``target`` model with ptqconv; returns the written paths."""
    return ptqconv.convert({"input": str(onnx_path), "to": target, "output": str(out)}).outputs


def run_ok(capsys, *argv):
    """Run ``ptqconv ARGV`` in-process; assert success; return captured stdout."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def one_line_error(capsys, *argv):
    """Run ``ptqconv ARGV`` in-process; assert the one-line error contract; return the line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("ptqconv: error:")]
    assert len(lines) == 1, err
    return lines[0]


def read_table(fmt, paths):
    """The quantization table a ptqconv reader finds in a written int8 model."""
    table = get_registry().reader(fmt).read([str(p) for p in paths], {}).table
    assert table is not None and table.activations
    return table


def onnx_qdq_scales(path):
    """{quantized tensor: (scales, zero points)} of every QuantizeLinear/DequantizeLinear of a QDQ
    ONNX file (it carries no ptqconv table)."""
    model = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in consts:
            zp = consts.get(node.input[2]) if len(node.input) > 2 else None
            found[(node.op_type, node.input[0])] = (consts[node.input[1]].tolist(),
                                                    None if zp is None else zp.tolist())
    assert found, path
    return found


def assert_same_tables(a, b):
    """Identical activation and weight scales (exact float equality)."""
    assert set(a.activations) == set(b.activations)
    for name, aq in a.activations.items():
        bq = b.activations[name]
        assert (aq.scale, aq.zero_point) == (bq.scale, bq.zero_point), name
    assert set(a.weights) == set(b.weights)
    for name, wq in a.weights.items():
        np.testing.assert_array_equal(wq.scales, b.weights[name].scales)


def yaml_job(capsys, tmp_path, argv, redirect):
    """Print the dialect's config, move its outputs (``redirect``: key -> new value), run it
    with ``ptqconv -c``; returns the config dict that ran."""
    text = run_ok(capsys, *argv, "--print-config")
    config = yaml.safe_load(text)
    assert isinstance(config, dict) and text.startswith("# ptqconv config equivalent to:")
    config.update(redirect)
    path = tmp_path / "equivalent.yaml"
    path.write_text(yaml.safe_dump(config))
    run_ok(capsys, "-c", path, "-q")
    return config


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, count=6, size=24)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_cnn(tmp_path_factory.mktemp("model") / "tiny.onnx", size=SIZE)


# ---------------------------------------------------------------- MNN quantized

def _mnn_json(json_path, **keys):
    import json
    data = {"format": "RGB", "mean": [127.5, 127.5, 127.5], "normal": [0.0078125] * 3,
            "width": SIZE, "height": SIZE, "feature_quantize_method": "KL",
            "weight_quantize_method": "MAX_ABS"}
    data.update(keys)
    json_path.write_text(json.dumps(data))
    return json_path


def test_mnn_dialect_and_yaml_give_identical_scales(tmp_path, capsys, tiny, images):
    pytest.importorskip("flatbuffers")
    src = to_format(tiny, "mnn", tmp_path / "tiny.mnn")[0]
    cfg = _mnn_json(tmp_path / "q.json", path=str(images), used_image_num=4, debug=False)
    out = run_ok(capsys, "quantized", src, tmp_path / "q.mnn", cfg, "-q")
    assert "Quantize model done" in out
    yaml_job(capsys, tmp_path, ["quantized", src, tmp_path / "q.mnn", cfg],
             {"output": str(tmp_path / "y.mnn")})
    a, b = read_table("mnn", [tmp_path / "q.mnn"]), read_table("mnn", [tmp_path / "y.mnn"])
    assert_same_tables(a, b)
    assert (tmp_path / "q.mnn").read_bytes() == (tmp_path / "y.mnn").read_bytes()


def test_mnn_keys_map_onto_the_config(tmp_path, capsys, tiny, images):
    cfg = _mnn_json(tmp_path / "q.json", path=str(images), used_image_num=3, format="GRAY",
                    mean=[1.0], normal=[0.5], feature_quantize_method="EMA",
                    weight_quantize_method="ADMM", feature_clamp_value=120,
                    weight_clamp_value=100, quant_bits=8, skip_quant_op_names=["conv1"],
                    batch_size=2, model="ignored.mnn", debug=True)
    config = yaml.safe_load(run_ok(capsys, "quantized", tiny, tmp_path / "q.mnn", cfg,
                                   "--print-config"))
    assert config["calibration"] == {"data": str(images), "count": 3, "method": "ema",
                                     "batch_size": 2, "refine": "cosine"}
    assert config["quantize"] == {"weight_method": "admm", "bits": 8, "skip": ["conv1"],
                                  "params": {"weight_clamp_value": 100}, "activation_clamp": 120,
                                  "bias_correction": False}
    assert config["preprocess"] == {"pixel": "GRAY", "size": [SIZE, SIZE], "mean": [1.0],
                                    "norm": [0.5]}
    assert config["report"] == str(tmp_path / "q.mnn.debug.md")  # debug: per-layer cos/overflow


def test_mnn_feature_clamp_value_sets_the_step(tmp_path, capsys, tiny, images):
    pytest.importorskip("flatbuffers")
    src = to_format(tiny, "mnn", tmp_path / "tiny.mnn")[0]
    tables = {}
    for clamp in (127, 100):
        cfg = _mnn_json(tmp_path / f"q{clamp}.json", path=str(images),
                        feature_quantize_method="KL", feature_clamp_value=clamp)
        config = yaml.safe_load(run_ok(capsys, "quantized", src, tmp_path / "q.mnn", cfg,
                                       "--print-config", "--seed-exact"))
        assert config["calibration"]["refine"] == "none"
        config["save_table"] = str(tmp_path / f"t{clamp}.json")
        tables[clamp] = ptqconv.convert(config).table
    assert set(tables[100].activations) == set(tables[127].activations)
    for name, aq in tables[127].activations.items():
        other = tables[100].activations[name]
        assert other.threshold == pytest.approx(aq.threshold)  # same calibration, same T
        assert aq.scale == pytest.approx(aq.threshold / 127)
        assert other.scale == pytest.approx(other.threshold / 100)  # step = T / clamp


def test_mnn_sequence_input_two_inputs(tmp_path, capsys, images):
    pytest.importorskip("flatbuffers")
    model = two_input_model(tmp_path / "two.onnx")
    src = to_format(model, "mnn", tmp_path / "two.mnn")[0]
    rng = np.random.default_rng(3)
    data = tmp_path / "seq"
    for k in range(4):
        sample = data / f"sample_{k}"
        sample.mkdir(parents=True)
        np.savetxt(sample / "rgb.txt", rng.normal(0, 1, 3 * SIZE * SIZE).reshape(-1, 16))
        np.savetxt(sample / "gray.txt", rng.uniform(0, 3 + k, SIZE * SIZE))
        (sample / "input.json").write_text('{"inputs": [{"name": "rgb", "shape": [1,3,16,16]},'
                                           ' {"name": "gray", "shape": [1,1,16,16]}]}')
    cfg = _mnn_json(tmp_path / "seq.json", path=str(data), input_type="sequence",
                    feature_quantize_method="KL")
    run_ok(capsys, "quantized", src, tmp_path / "q.mnn", cfg, "-q")
    table = read_table("mnn", [tmp_path / "q.mnn"])
    gray_max = max(np.loadtxt(data / f"sample_{k}" / "gray.txt").max() for k in range(4))
    # the gray branch saw its own data: the 'gray' input's range covers the largest value
    assert "gray" in table.activations and "rgb" in table.activations
    assert table.activations["gray"].scale * 127 <= gray_max * 1.001
    assert table.activations["gray"].scale * 127 >= gray_max * 0.3


def test_mnn_config_errors_are_one_line(tmp_path, capsys, tiny, images):
    bad_key = _mnn_json(tmp_path / "a.json", path=str(images), feature_quantise_method="KL")
    line = one_line_error(capsys, "quantized", tiny, tmp_path / "q.mnn", bad_key)
    assert "unknown key 'feature_quantise_method'" in line and "feature_quantize_method" in line
    bad_method = _mnn_json(tmp_path / "b.json", path=str(images), feature_quantize_method="MSE")
    line = one_line_error(capsys, "quantized", tiny, tmp_path / "q.mnn", bad_method)
    assert "feature_quantize_method 'MSE' is not a valid value" in line and "KL" in line
    (tmp_path / "c.json").write_text('{"path": "x",\n "width": }')
    assert "(line 2): invalid JSON" in one_line_error(capsys, "quantized", tiny,
                                                      tmp_path / "q.mnn", tmp_path / "c.json")


# ---------------------------------------------------------------- Tengine quant_tool_int8

def tengine_args(model, images, out):
    return ["quant_tool_int8", "-m", model, "-i", images, "-o", out, "-g", f"3,{SIZE},{SIZE}",
            "-a", "1", "-w", "104.007,116.669,122.679", "-s", "0.017,0.017,0.017", "-b", "1",
            "-c", "0", "-y", "0,0", "-t", "1"]


def test_tengine_dialect_and_yaml_give_identical_scales(tmp_path, capsys, tiny, images,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = to_format(tiny, "tmfile", tmp_path / "tiny.tmfile")[0]
    run_ok(capsys, *tengine_args(src, images, tmp_path / "int8.tmfile"), "-q")
    scale_lines = (tmp_path / "table_kl.scale").read_text().split("\n")
    assert len(scale_lines) > 3 and len(scale_lines[0].split()) == 3  # name step zero-point
    yaml_job(capsys, tmp_path, tengine_args(src, images, tmp_path / "int8.tmfile"),
             {"output": str(tmp_path / "y.tmfile"), "save_table": str(tmp_path / "y.scale")})
    assert_same_tables(read_table("tmfile", [tmp_path / "int8.tmfile"]),
                       read_table("tmfile", [tmp_path / "y.tmfile"]))
    assert (tmp_path / "y.scale").read_text() == (tmp_path / "table_kl.scale").read_text()
    # -f: the tool's scale file instead of calibrating (-i not needed)
    run_ok(capsys, "quant_tool_int8", "-m", src, "-f", tmp_path / "table_kl.scale", "-o",
           tmp_path / "f.tmfile", "-g", f"3,{SIZE},{SIZE}", "-q")
    a, f = (read_table("tmfile", [tmp_path / n]) for n in ("int8.tmfile", "f.tmfile"))
    for name, aq in a.activations.items():
        assert f.activations[name].scale == pytest.approx(aq.scale, abs=5.1e-7)  # "%f" file


def test_tengine_flags_map_onto_the_config(tmp_path, capsys, tiny, images):
    args = tengine_args(tiny, images, tmp_path / "o.tmfile")
    config = yaml.safe_load(run_ok(capsys, *args, "--print-config"))
    assert config["preprocess"] == {"pixel": "RGB", "size": [SIZE, SIZE],
                                    "mean": [104.007, 116.669, 122.679], "norm": [0.017] * 3}
    assert config["calibration"]["method"] == "kl-tengine"
    assert config["calibration"]["refine"] == "cosine"  # ptqconv's check of the thresholds
    exact = yaml.safe_load(run_ok(capsys, *args, "--print-config", "--seed-exact"))
    assert exact["calibration"]["refine"] == "none"  # the tool's own thresholds
    crop = args[:-8] + ["-c", "1", "-b", "0", "-a", "0", "-t", "2"]
    config = yaml.safe_load(run_ok(capsys, *crop, "--print-config"))
    assert config["preprocess"]["resize_short"] == 256 and config["preprocess"]["pixel"] == "BGR"
    assert config["calibration"]["method"] == "minmax" and config["calibration"]["threads"] == 2
    box = args[:-4] + ["-y", f"{SIZE},{SIZE}", "-a", "2"]
    config = yaml.safe_load(run_ok(capsys, *box, "--print-config"))
    assert config["preprocess"]["letterbox"] == pytest.approx(
        [104.007 + 0.5 / 0.017, 116.669 + 0.5 / 0.017, 122.679 + 0.5 / 0.017])
    assert config["calibration"]["params"] == {"clamp": False}


def test_tengine_letterbox_pads_per_channel(tmp_path):
    from PIL import Image
    from ptqconv.core.config import Preprocess
    from ptqconv.core.data import load_image
    Image.new("RGB", (40, 20), (10, 20, 30)).save(tmp_path / "wide.png")
    pre = Preprocess(pixel="RGB", size=[20, 20], letterbox=[100.0, 150.0, 200.0])
    x = load_image(str(tmp_path / "wide.png"), pre, (20, 20))
    assert x.shape == (3, 20, 20)
    np.testing.assert_array_equal(x[:, 0, 0], [100, 150, 200])  # pad rows on top
    np.testing.assert_array_equal(x[:, 10, 10], [10, 20, 30])


def test_tengine_errors_are_one_line(tmp_path, capsys, tiny, images):
    args = tengine_args(tiny, images, tmp_path / "o.tmfile")
    line = one_line_error(capsys, *[a if a != "1" or args[k - 1] != "-a" else "3"
                                    for k, a in enumerate(args)])
    assert "-a 3 (DFQ) is not supported" in line
    line = one_line_error(capsys, *(args[:-4] + ["-y", "300,300"]))
    assert "-y 300,300 must equal the -g size" in line
    assert "-k: 2 is not one of 0, 1" in one_line_error(capsys, *args, "-k", "2")


# ---------------------------------------------------------------- TNN quantization_cmd

def write_txt_inputs(folder, count, shape, seed=0):
    """``count`` TNN .txt inputs: NCHW floats, one value per line."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for k in range(count):
        x = rng.normal(0, 1 + k, shape).astype(np.float32)
        (folder / f"in_{k}.txt").write_text("\n".join(f"{v:.6f}" for v in x.reshape(-1)) + "\n")
        arrays.append(np.array([float(f"{v:.6f}") for v in x.reshape(-1)]).reshape(shape))
    return arrays


def test_tnn_dialect_and_yaml_give_identical_scales_from_txt(tmp_path, capsys, tiny):
    proto, model = to_format(tiny, "tnn", tmp_path / "tiny.tnnproto")
    arrays = write_txt_inputs(tmp_path / "txt", 4, (1, 3, SIZE, SIZE))
    argv = ["quantization_cmd", "-p", proto, "-m", model, "-i", tmp_path / "txt", "-b", "0",
            "-w", "0", "-t", "1", "-o", tmp_path / "q"]
    assert "quantize model success!" in run_ok(capsys, *argv, "-q")
    out = [tmp_path / "q.quantized.tnnproto", tmp_path / "q.quantized.tnnmodel"]
    yaml_job(capsys, tmp_path, argv, {"output": [str(tmp_path / "y.tnnproto"),
                                                 str(tmp_path / "y.tnnmodel")]})
    a = read_table("tnn", out)
    assert_same_tables(a, read_table("tnn", [tmp_path / "y.tnnproto", tmp_path / "y.tnnmodel"]))
    # min-max of the .txt data reached the input blob: its step covers the largest |value|
    absmax = max(np.abs(x).max() for x in arrays)
    assert a.activations["input"].scale * 127 == pytest.approx(absmax, rel=1e-5)


def test_tnn_flags_map_onto_the_config(tmp_path, capsys, tiny, images):
    argv = ["quantization_cmd", "-p", "m.tnnproto", "-m", "m.tnnmodel", "-i", images, "-b", "2",
            "-w", "1", "-n", "104,117,123,0", "-s", "0.5,0.5,0.5", "-r", "1", "-t", "2"]
    config = yaml.safe_load(run_ok(capsys, *argv, "--print-config"))
    assert config["preprocess"] == {"pixel": "BGR", "mean": [104.0, 117.0, 123.0],
                                    "norm": [0.5, 0.5, 0.5]}
    assert config["calibration"]["method"] == "kl-mnn"
    assert config["quantize"] == {"weights": "per-tensor", "weight_method": "admm",
                                  "bias_correction": False}
    assert config["output"][0] == os.path.abspath("model.quantized.tnnproto")
    assert "-b 1 (ADMM) is not supported" in one_line_error(capsys, *argv[:8], "1")
    two = two_input_model(tmp_path / "two.onnx")
    proto, model = to_format(two, "tnn", tmp_path / "two.tnnproto")
    line = one_line_error(capsys, "quantization_cmd", "-p", proto, "-m", model, "-i", images,
                          "-o", tmp_path / "q")
    assert "2 input(s)" in line


# ---------------------------------------------------------------- MindSpore converter_lite

def write_bins(folder, count, shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        rng.normal(0, scale, shape).astype("<f4").tofile(folder / f"x_{k:02d}.bin")


def test_mindspore_dialect_and_yaml_give_identical_scales(tmp_path, capsys, tiny):
    write_bins(tmp_path / "bins", 5, (1, 3, SIZE, SIZE))
    (tmp_path / "config.cfg").write_text(f"image_path={tmp_path / 'bins'}\nbatch_count=4\n"
                                         "method_x=MAX_MIN\nthread_num=1\n")
    argv = ["converter_lite", "--fmk=ONNX", f"--modelFile={tiny}",
            f"--outputFile={tmp_path / 'q'}", "--quantType=PostTraining",
            f"--config_file={tmp_path / 'config.cfg'}"]
    run_ok(capsys, *argv, "-q")
    config = yaml_job(capsys, tmp_path, argv, {"output": str(tmp_path / "y.onnx")})
    assert config["to"] == "onnx-int8" and config["calibration"]["count"] == 4
    assert onnx_qdq_scales(tmp_path / "q.onnx") == onnx_qdq_scales(tmp_path / "y.onnx")


def test_mindspore_two_inputs_per_input_folders(tmp_path, capsys):
    model = two_input_model(tmp_path / "two.onnx")
    write_bins(tmp_path / "a", 3, (1, 3, SIZE, SIZE), seed=1, scale=1.0)
    write_bins(tmp_path / "b", 3, (1, 1, SIZE, SIZE), seed=2, scale=20.0)
    configs = {"old.cfg": f"image_path={tmp_path / 'a'},{tmp_path / 'b'}\nmethod_x=MAX_MIN\n",
               "new.cfg": f"[data_preprocess_param]\ncalibrate_path=gray:{tmp_path / 'b'},"
                          f"rgb:{tmp_path / 'a'}\ncalibrate_size=3\ninput_type=BIN\n"
                          f"[full_quant_param]\nactivation_quant_method=MAX_MIN\n"}
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / f"{name}.onnx"
        run_ok(capsys, "converter_lite", "--fmk=ONNX", f"--modelFile={model}",
               f"--outputFile={out}", "--quantType=PostTraining",
               f"--config_file={tmp_path / name}", "-q")
        scales = onnx_qdq_scales(out)
        for tensor, folder in (("gray", "b"), ("rgb", "a")):
            absmax = max(np.abs(np.fromfile(p, "<f4")).max() for p in (tmp_path / folder).iterdir())
            step, _ = scales[("QuantizeLinear", tensor)]
            assert step * 127 == pytest.approx(absmax, rel=1e-5)  # MAX_MIN on its own data


def test_mindspore_errors_and_help(tmp_path, capsys, tiny):
    base = ["converter_lite", f"--modelFile={tiny}", f"--outputFile={tmp_path / 'q'}"]
    assert "no Caffe reader" in one_line_error(capsys, *base, "--fmk=CAFFE")
    (tmp_path / "c.cfg").write_text("image_path=x\nmethod_y=KL\n")
    line = one_line_error(capsys, *base, "--fmk=ONNX", "--quantType=PostTraining",
                          f"--config_file={tmp_path / 'c.cfg'}")
    assert "(line 2): unknown key 'method_y'" in line and "method_x" in line
    with pytest.raises(SystemExit):
        main(["converter_lite", "--help"])
    assert "no .ms writer" in capsys.readouterr().out.replace("\n", " ")
