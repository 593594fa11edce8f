"""ncnn dialect: ncnn2table / ncnn2int8 / ncnnoptimize. The dialect and its printed YAML give
identical tables and int8 files; a two-input model calibrates with one list (and mean, norm,
shape, pixel group) per input and runs in ncnn; a table laid out as ncnn's own ncnn2table writes
it drives ncnn2int8 (a commented activation line keeps that layer float)."""
import numpy as np
import pytest
import yaml

import ptqconv
from ptqconv.core.plugins import get_registry
from synthetic import tiny_cnn, write_images
from test_dialects import SIZE, one_line_error, run_ok, two_input_model

MEAN = "mean=[127.5,127.5,127.5]"
NORM = "norm=[0.0078125,0.0078125,0.0078125]"


@pytest.fixture(scope="module")
def tiny_ncnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ncnn")
    model = tiny_cnn(folder / "tiny.onnx", size=SIZE)
    param, binary = ptqconv.convert({"input": model, "to": "ncnn",
                                     "output": str(folder / "tiny.param")}).outputs
    images = write_images(folder / "images", count=6, size=24)
    (folder / "list.txt").write_text("\n".join(images) + "\n")
    return folder, param, binary


def test_ncnn2table_and_ncnn2int8_match_their_yaml(tmp_path, capsys, tiny_ncnn):
    folder, param, binary = tiny_ncnn
    argv = ["ncnn2table", param, binary, folder / "list.txt", tmp_path / "a.table", MEAN, NORM,
            f"shape=[{SIZE},{SIZE},3]", "pixel=RGB", "thread=1", "method=kl"]
    run_ok(capsys, *argv, "-q")
    config = yaml.safe_load(run_ok(capsys, *argv, "--print-config"))
    assert "to" not in config and config["calibration"]["method"] == "kl"
    config["save_table"] = str(tmp_path / "b.table")
    ptqconv.convert(config)
    text = (tmp_path / "a.table").read_text()
    assert text == (tmp_path / "b.table").read_text()
    assert {"conv1", "conv2", "fc", "conv1_param_0"} <= {ln.split()[0] for ln in text.splitlines()}
    int8 = ["ncnn2int8", param, binary, tmp_path / "a.param", tmp_path / "a.bin",
            tmp_path / "a.table"]
    run_ok(capsys, *int8, "-q")
    config = yaml.safe_load(run_ok(capsys, *int8, "--print-config"))
    config["output"] = [str(tmp_path / "c.param"), str(tmp_path / "c.bin")]
    ptqconv.convert(config)
    for ext in ("param", "bin"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"c.{ext}").read_bytes()
    assert "8=" in (tmp_path / "a.param").read_text()  # int8 layers


def test_ncnn2int8_reads_a_table_as_ncnn_writes_it(tmp_path, capsys, tiny_ncnn):
    """Multipliers as ncnn2table prints them ('%f ' with a trailing space); '#conv2' comments
    out an activation line, which keeps that layer in float."""
    folder, param, binary = tiny_ncnn
    graph = get_registry().reader("ncnn").read([param, binary], {}).graph
    weights = {n.name: graph.constants[n.inputs[1]] for n in graph.nodes if len(n.inputs) > 1
               and n.inputs[1] in graph.constants}
    lines = []
    for name in ("conv1", "conv2", "fc"):
        w = weights[name]
        absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        lines.append(f"{name}_param_0 " + "".join(f"{127 / a:f} " for a in absmax))
    lines += ["conv1 40.000000 ", "#conv2 30.000000 ", "fc 20.000000 "]
    (tmp_path / "ncnn.table").write_text("\n".join(lines) + "\n")
    run_ok(capsys, "ncnn2int8", param, binary, tmp_path / "q.param", tmp_path / "q.bin",
           tmp_path / "ncnn.table", "-q")
    layers = {ln.split()[1]: ln for ln in (tmp_path / "q.param").read_text().splitlines()[2:]}
    assert " 8=" in layers["conv1"] and " 8=" in layers["fc"]
    assert " 8=" not in layers["conv2"]  # commented activation line: float layer
    table = get_registry().reader("ncnn").read([str(tmp_path / "q.param"),
                                                 str(tmp_path / "q.bin")], {}).table
    steps = {k: v.scale for k, v in table.activations.items()}
    assert steps["input"] == pytest.approx(1 / 40) and steps["flat"] == pytest.approx(1 / 20)


def test_two_input_model_per_input_lists(tmp_path, capsys):
    ncnn = pytest.importorskip("ncnn")
    model = two_input_model(tmp_path / "two.onnx")
    param, binary = ptqconv.convert({"input": model, "to": "ncnn",
                                     "output": str(tmp_path / "two.param")}).outputs
    images = write_images(tmp_path / "images", count=6, size=24)
    (tmp_path / "rgb.txt").write_text("\n".join(images) + "\n")
    (tmp_path / "gray.txt").write_text("\n".join(reversed(images)) + "\n")
    run_ok(capsys, "ncnn2table", param, binary, f"{tmp_path / 'rgb.txt'},{tmp_path / 'gray.txt'}",
           tmp_path / "two.table", "mean=[127.5,127.5,127.5],[128]",
           "norm=[0.0078125,0.0078125,0.0078125],[0.5]",
           f"shape=[{SIZE},{SIZE},3],[{SIZE},{SIZE},1]",
           "pixel=RGB,GRAY", "thread=1", "method=kl", "-q")
    table = dict(ln.split(maxsplit=1) for ln in (tmp_path / "two.table").read_text().splitlines())
    rgb, gray = float(table["conv_rgb"]), float(table["conv_gray"])
    # the gray input got its own preprocessing: 64x the spread, so a multiplier far smaller
    assert 20 < rgb / gray < 200
    run_ok(capsys, "ncnn2int8", param, binary, tmp_path / "q.param", tmp_path / "q.bin",
           tmp_path / "two.table", "-q")
    rng = np.random.default_rng(0)
    x_rgb = rng.uniform(-1, 1, (3, SIZE, SIZE)).astype(np.float32)
    x_gray = rng.uniform(-60, 60, (1, SIZE, SIZE)).astype(np.float32)

    def run(p, b):
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.load_param(str(p))
        net.load_model(str(b))
        ex = net.create_extractor()
        ex.input("rgb", ncnn.Mat(x_rgb))
        ex.input("gray", ncnn.Mat(x_gray))
        return np.array(ex.extract("logits")[1]).reshape(-1)

    ref, got = run(param, binary), run(tmp_path / "q.param", tmp_path / "q.bin")
    cos = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert cos > 0.98, (ref, got)


def test_ncnnoptimize_fp16_storage(tmp_path, capsys, tiny_ncnn):
    folder, param, binary = tiny_ncnn
    run_ok(capsys, "ncnnoptimize", param, binary, tmp_path / "o.param", tmp_path / "o.bin", "1",
           "-q")
    assert (tmp_path / "o.bin").stat().st_size < 0.7 * (folder / "tiny.bin").stat().st_size
    config = yaml.safe_load(run_ok(capsys, "ncnnoptimize", param, binary, tmp_path / "o.param",
                                   tmp_path / "o.bin", "0", "--print-config"))
    assert config["to"] == "ncnn" and "options" not in config


def test_ncnn_errors_are_one_line(tmp_path, capsys, tiny_ncnn):
    folder, param, binary = tiny_ncnn
    base = ["ncnn2table", param, binary, folder / "list.txt", tmp_path / "t.table"]
    shape = f"shape=[{SIZE},{SIZE},3]"
    line = one_line_error(capsys, *base, MEAN, NORM, shape, "pixel=RGB", "method=mse")
    assert "method 'mse' is not a valid value" in line and "kl, aciq, eq" in line
    line = one_line_error(capsys, *base, "mean=[1,2,3],[4]", NORM, shape, "pixel=RGB")
    assert "expect 1 mean(s), one per list file, but got 2" in line
    line = one_line_error(capsys, *base, MEAN, NORM, shape, "pixel=GRAY")
    assert "has 3 channel(s) but pixel=GRAY gives 1" in line
    line = one_line_error(capsys, *base, MEAN, NORM, shape, "pixel=RGB", "threads=2")
    assert "unknown argument 'threads=2'" in line
    assert "expected 5 file arguments" in one_line_error(capsys, "ncnn2int8", param, binary)
