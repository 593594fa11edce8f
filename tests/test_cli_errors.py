"""Bad input: one clear line, non-zero exit, no traceback, no output file."""
import onnx
from onnx import TensorProto, helper

from cli_helpers import assert_one_line_error, run_cli
from synthetic import tiny_cnn, write_images


def _job(tmp_path, model, calib, extra=()):
    out = tmp_path / "out.onnx"
    proc = run_cli("--to", "onnx-int8", "-i", model, "-o", out, "--calib", calib, "-q", *extra)
    return proc, out


def test_missing_model_file(tmp_path):
    proc, out = _job(tmp_path, tmp_path / "nope.onnx", tmp_path)
    assert_one_line_error(proc, "nope.onnx", "not found")
    assert not out.exists()


def test_truncated_and_non_onnx_files(tmp_path):
    good = tiny_cnn(tmp_path / "m.onnx")
    data = open(good, "rb").read()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 10)
    imgs = tmp_path / "imgs"
    write_images(imgs, 2)
    for name in ("cut.onnx", "text.onnx"):
        proc, out = _job(tmp_path, tmp_path / name, imgs)
        assert_one_line_error(proc, name)
        assert not out.exists()


def test_unsupported_ops_are_all_listed(tmp_path):
    nodes = [helper.make_node("Wibble", ["x"], ["y"], domain="acme"),
             helper.make_node("Wobble", ["y"], ["z"], domain="acme")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("acme", 1)])
    onnx.save(m, tmp_path / "custom.onnx")
    proc, out = _job(tmp_path, tmp_path / "custom.onnx", tmp_path)
    assert_one_line_error(proc, "acme::Wibble", "acme::Wobble")
    assert not out.exists()


def test_unknown_config_key(tmp_path):
    (tmp_path / "cfg.yaml").write_text("calibration:\n  methd: kl\n")
    proc = run_cli("--config", tmp_path / "cfg.yaml", "--to", "onnx")
    assert_one_line_error(proc, "calibration.methd", "did you mean 'method'")


def test_undecodable_image_is_named(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx")
    imgs = tmp_path / "imgs"
    write_images(imgs, 2)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    proc, out = _job(tmp_path, model, imgs)
    assert_one_line_error(proc, "broken.jpg", "cannot decode image")
    assert not out.exists()


def test_empty_calibration_set(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx")
    (tmp_path / "empty").mkdir()
    proc, out = _job(tmp_path, model, tmp_path / "empty")
    assert_one_line_error(proc, "empty")
    assert not out.exists()


def test_unknown_writer_and_method_suggest_names(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx")
    proc = run_cli("--to", "onnx-int9", "-i", model, "-o", tmp_path / "o.onnx")
    assert_one_line_error(proc, "unknown writer 'onnx-int9'", "onnx-int8")
    imgs = tmp_path / "imgs"
    write_images(imgs, 2)
    proc, out = _job(tmp_path, model, imgs, ["--method", "kll"])
    assert_one_line_error(proc, "unknown calibration method 'kll'", "did you mean 'kl'")
    assert not out.exists()


def test_refuses_to_overwrite_the_input(tmp_path):
    model = tiny_cnn(tmp_path / "m.onnx")
    before = open(model, "rb").read()
    proc = run_cli("--to", "onnx", "-i", model, "-o", model)
    assert_one_line_error(proc, "refusing to overwrite")
    assert open(model, "rb").read() == before
