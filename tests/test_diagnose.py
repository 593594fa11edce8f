"""Diagnosis, sensitivity and automatic mixed precision on hand-made tensors and a small model
with one layer made hard to quantize (per-tensor weights with one channel 100x wider)."""
import json
import math
import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import ptqconv
from cli_helpers import run_cli
from synthetic import save_model, tiny_cnn, write_images
from ptqconv.core.data import CalibrationData
from ptqconv.core.config import Preprocess
from ptqconv.core.diagnose import metrics, plots
from ptqconv.core.diagnose.analysis import diagnose
from ptqconv.core.diagnose.probes import ProbeGraph
from ptqconv.core.diagnose.report import terminal_table, write_report
from ptqconv.core.ir.onnx_bridge import from_onnx
from ptqconv.core.qtable import ActQuant, QuantTable, WeightQuant
from ptqconv.core.runtime import make_session
from ptqconv.formats.onnx.qdq import insert_qdq

PRE = {"size": [16, 16], "mean": [128.0], "norm": [1 / 64]}


# ---- metrics on hand-made tensors ----------------------------------------------------------------
def test_cosine_and_sqnr_known_values():
    x = np.random.default_rng(0).normal(size=1000)
    assert metrics.cosine(x, x) == pytest.approx(1.0)
    assert metrics.cosine(x, 3 * x) == pytest.approx(1.0)
    assert metrics.cosine(x, -x) == pytest.approx(-1.0)
    assert metrics.cosine([1, 0], [0, 1]) == 0.0
    assert metrics.cosine(np.zeros(4), np.zeros(4)) == 1.0   # both zero: 1 by definition
    assert metrics.cosine(np.zeros(4), np.ones(4)) == 0.0    # one zero: 0
    ref = np.ones(100)
    assert metrics.sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert metrics.sqnr_db(ref, ref * 0.5) == pytest.approx(10 * math.log10(4))
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert metrics.max_abs_error([1, 2, 3], [1, 2.5, 2]) == pytest.approx(1.0)


def test_overflow_and_clip_ratio():
    t = 2.54
    aq = ActQuant(scale=t / 127, threshold=t)
    x = np.linspace(-1.0, 1.0, 50)
    x[7] = t                                   # one value exactly at +T
    assert metrics.overflow_ratio(x, aq) == pytest.approx(1 / 50)
    assert metrics.clip_ratio(x, aq) == 0.0    # at T nothing is lost beyond rounding
    x[8] = -2 * t                              # clipped and saturated on the negative side
    assert metrics.overflow_ratio(x, aq) == pytest.approx(2 / 50)
    assert metrics.clip_ratio(x, aq) == pytest.approx(1 / 50)
    u = ActQuant(scale=t / 255, signed=False, threshold=t)  # unsigned zero point 0: code 0 is 0
    y = np.concatenate([np.zeros(9), [t]])
    assert metrics.overflow_ratio(y, u) == pytest.approx(1 / 10)


def test_top1_drop_is_paired_and_bounded():
    from ptqconv.core.diagnose.automix import top1_drop
    labels = [0, 1, 2, 5]
    drop, bound, lost, gained = top1_drop([0, 1, 2, 3], [0, 1, 9, 3], labels)
    assert (lost, gained) == (1, 0) and drop == pytest.approx(25.0)
    assert bound == pytest.approx(25.0 + 100 * math.sqrt((1 / 4 - 1 / 16) / 4))
    drop, bound, lost, gained = top1_drop([0, 1, 2, 3], [0, 1, 9, 5], labels)  # one each way
    assert (lost, gained, drop) == (1, 1, 0.0) and bound == pytest.approx(100 * math.sqrt(2 / 16))
    assert top1_drop([0, 1, 2, 3], [0, 1, 2, 4], labels)[:2] == (0.0, 0.0)  # no right/wrong flip


# ---- a small model with one deliberately hard layer ------------------------------------------
def hard_model(path, seed=0):
    """conv_a -> conv_b (depthwise, channel 0 weights x100, undone by a float Mul after it) ->
    conv_c -> conv_d -> GAP -> fc. Per-tensor weights starve conv_b's other channels."""
    rng = np.random.default_rng(seed)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)
    wb = rng.normal(0, 0.3, (8, 1, 3, 3))
    wb[0] *= 100.0
    rescale = np.ones((1, 8, 1, 1))
    rescale[0, 0] = 0.01
    inits = [init("wa", rng.normal(0, 0.3, (8, 3, 3, 3))), init("ba", rng.normal(0, 0.1, 8)),
             init("wb", wb), init("bb", rng.normal(0, 0.1, 8)), init("sb", rescale),
             init("wc", rng.normal(0, 0.3, (8, 8, 1, 1))), init("bc", rng.normal(0, 0.1, 8)),
             init("wd", rng.normal(0, 0.3, (8, 8, 3, 3))), init("bd", rng.normal(0, 0.1, 8)),
             init("wfc", rng.normal(0, 0.5, (5, 8))), init("bfc", rng.normal(0, 0.1, 5))]
    mk = helper.make_node
    nodes = [mk("Conv", ["input", "wa", "ba"], ["a"], name="conv_a", pads=[1] * 4),
             mk("Relu", ["a"], ["ra"], name="relu_a"),
             mk("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b", group=8, pads=[1] * 4),
             mk("Mul", ["b", "sb"], ["bs"], name="rescale_b"),
             mk("Relu", ["bs"], ["rb"], name="relu_b"),
             mk("Conv", ["rb", "wc", "bc"], ["c"], name="conv_c"),
             mk("Relu", ["c"], ["rc"], name="relu_c"),
             mk("Conv", ["rc", "wd", "bd"], ["d"], name="conv_d", pads=[1] * 4),
             mk("Relu", ["d"], ["rd"], name="relu_d"),
             mk("GlobalAveragePool", ["rd"], ["gap"], name="gap"),
             mk("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
             mk("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1)]
    return save_model(nodes, inits, [("input", [1, 3, 16, 16])], [("logits", [1, 5])], path,
                      "hard")


@pytest.fixture
def hard(tmp_path):
    """(model path, image folder with 16 images, base config dict) for the hard model."""
    model = hard_model(tmp_path / "hard.onnx")
    imgs = tmp_path / "imgs"
    write_images(imgs, 16, size=16)
    cfg = {"input": model, "to": "onnx-int8", "output": str(tmp_path / "out.onnx"),
           "calibration": {"data": str(imgs), "count": 16, "method": "minmax"},
           "preprocess": PRE, "quantize": {"weights": "per-tensor"}}
    return model, imgs, cfg


def _table_and_graph(cfg, tmp_path):
    result = ptqconv.convert(cfg, save_table=str(tmp_path / "t.json"))
    return result.table, from_onnx(onnx.load(cfg["input"]))


# ---- in-graph probes equal numpy on the real tensors ------------------------------------------
def test_probe_scalars_equal_numpy(tmp_path):
    graph = from_onnx(onnx.load(tiny_cnn(tmp_path / "m.onnx", batchnorm=False))).infer_shapes()
    rng = np.random.default_rng(1)
    table = QuantTable(meta={"method": "test"})
    for node, t in (("conv1", 1.5), ("conv2", 0.8)):  # thresholds that clip some values
        n = graph.node(node)
        table.precision[node] = "int8"
        table.activations[n.inputs[0]] = ActQuant(t / 127, threshold=t)
        w = graph.constants[n.inputs[1]]
        table.weights[n.inputs[1]] = WeightQuant(np.float32([np.abs(w).max() / 127]), None)
    x = rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)
    pg = ProbeGraph(graph)
    qmap = pg.quantized_model(table)
    pg.error("c2", "c2", qmap["c2"])
    pg.saturation("sat", "r1", table.activations["r1"])
    got = pg.run([{"input": x}], 1)
    ref = make_session(graph, extra_outputs=["c2", "r1"]).run(["c2", "r1"], {"input": x})
    q = make_session(insert_qdq(graph, table), extra_outputs=["c2"]).run(["c2"], {"input": x})[0]
    summary = metrics.summarize_error(got["c2"])
    assert summary["cosine"] == pytest.approx(metrics.cosine(ref[0], q), abs=1e-5)
    assert summary["sqnr"] == pytest.approx(metrics.sqnr_db(ref[0], q), abs=1e-3)
    assert summary["max_abs"] == pytest.approx(metrics.max_abs_error(ref[0], q), rel=1e-5)
    assert got["sat"]["overflow"][0] == pytest.approx(
        metrics.overflow_ratio(ref[1], table.activations["r1"]))
    assert got["sat"]["clipped"][0] == pytest.approx(
        metrics.clip_ratio(ref[1], table.activations["r1"]))
    assert 0 < got["sat"]["clipped"][0] < 1


def test_diagnose_ranks_the_hard_layer_first(hard, tmp_path):
    model, imgs, cfg = hard
    table, graph = _table_and_graph(cfg, tmp_path)
    graph = ptqconv.load_plugins().get("passes", "canonicalize").run(graph)
    files = sorted(str(p) for p in imgs.iterdir())[:8]
    data = CalibrationData(graph.inputs, [files], [Preprocess(**PRE)], 1)
    diag = diagnose(graph, table, data)
    ranked = diag.ranked()
    assert ranked[0].name == "conv_b"
    assert ranked[0].sensitivity > 10 * ranked[1].sensitivity
    b = {r.name: r for r in diag.layers}["conv_b"]
    assert b.depthwise and b.weights.per_tensor
    assert b.weights.starved == list(range(1, 8))       # every channel but the wide one
    assert b.weights.sqnr_per_channel > b.weights.sqnr_table + 20
    # its own error looks harmless (the wide channel dominates its output energy): only the
    # effect on the model output, measured with this layer alone quantized, exposes it
    assert b.own["sqnr"] > b.alone["sqnr"] + 10
    assert diag.final["sqnr"] < b.alone["sqnr"] + 1     # it is nearly all of the output error
    text = terminal_table(diag)
    assert text.splitlines()[4].startswith("conv_b")


def test_auto_mixed_keeps_the_hard_layer_float_and_writers_honour_it(hard, tmp_path):
    model, imgs, cfg = hard
    cfg["quantize"]["auto_mixed"] = {"metric": "sqnr", "budget": 30.0, "max_float": 0.4}
    report = tmp_path / "report.md"
    result = ptqconv.convert(cfg, save_table=str(tmp_path / "t.json"), report=str(report))
    assert result.table.precision["conv_b"] == "float"
    assert [n for n, p in result.table.precision.items() if p == "float"] == ["conv_b"]
    saved = json.loads((tmp_path / "t.json").read_text())
    mixed = saved["meta"]["auto_mixed"]
    assert mixed["float_layers"] == ["conv_b"] and mixed["inputs"] == 8
    assert "per-tensor depthwise weights" in mixed["reasons"]["conv_b"]
    trials = {t[0]: (t[1], t[2]) for t in mixed["trials"]}
    assert not trials[0][1] and trials[1][1] and trials[1][0] >= 30.0
    assert mixed["passes"] <= 3 + math.ceil(math.log2(2))
    # the ONNX writer leaves conv_b float (plain float weight) and quantizes the others
    written = onnx.load(result.outputs[0])
    producers = {o: n.op_type for n in written.graph.node for o in n.output}
    convs = {n.name: n for n in written.graph.node if n.op_type == "Conv"}
    assert convs["conv_b"].input[1] == "wb" and producers.get(convs["conv_b"].input[0]) == "Relu"
    for name in ("conv_a", "conv_c", "conv_d"):
        assert producers[convs[name].input[1]] == "DequantizeLinear"
    text = report.read_text()
    assert "## Automatic mixed precision" in text
    assert re.search(r"\| conv_b \| sensitivity rank 1: .*per-tensor depthwise weights", text)


def test_ncnn_int8_writer_keeps_auto_mixed_float_layers_float(hard, tmp_path):
    model, imgs, cfg = hard
    cfg.update({"to": "ncnn-int8", "output": str(tmp_path / "m.param")})
    cfg["quantize"]["auto_mixed"] = {"metric": "sqnr", "budget": 30.0, "max_float": 0.4}
    result = ptqconv.convert(cfg)
    floats = result.table.float_layers()
    # conv_b is the hard layer; conv_d (3x3 stride 1) has ncnn's 6-bit weights and may join it
    assert "conv_b" in floats and set(floats) <= {"conv_b", "conv_d"}
    lines = (tmp_path / "m.param").read_text().splitlines()[2:]
    layers = {ln.split()[1]: ln.split() for ln in lines}
    int8 = {name: any(f.startswith("8=") for f in fields) for name, fields in layers.items()
            if fields[0] in ("Convolution", "ConvolutionDepthWise", "InnerProduct")}
    assert int8 == {name: name not in floats for name in ("conv_a", "conv_b", "conv_c",
                                                            "conv_d", "fc")}


def test_auto_mixed_top1_uses_labels_and_held_aside_inputs(hard, tmp_path):
    model, imgs, cfg = hard
    graph = from_onnx(onnx.load(model))
    session = make_session(graph)
    pre = Preprocess(**PRE)
    files = sorted(imgs.iterdir())
    data = CalibrationData(graph.inputs, [[str(f) for f in files]], [pre], 1)
    preds = [int(np.argmax(session.run(None, feed)[0])) for feed in data.batches()]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{f.name}\t{(p + k % 2) % 5}\n"     # fp32 right on half of them
                              for k, (f, p) in enumerate(zip(files, preds))))
    cfg["calibration"]["labels"] = str(labels)
    cfg["quantize"]["auto_mixed"] = {"metric": "top1", "budget": 0.0, "holdout": 0.25}
    result = ptqconv.convert(cfg)
    mixed = result.table.meta["auto_mixed"]
    assert mixed["inputs"] == 4 and mixed["baseline"] == pytest.approx(50.0)
    for k, drop, ok, bound, detail in mixed["trials"]:
        lost, gained = map(int, re.match(r"(\d+) lost, (\d+) gained of 4;", detail).groups())
        assert drop == pytest.approx(100 * (lost - gained) / 4)
        assert ok == (bound <= 0.0) and bound >= drop and (bound == drop) == (lost + gained == 0)
    cfg["calibration"]["labels"] = None
    (imgs / "labels.txt").write_text("")  # no label for any held-aside input
    with pytest.raises(ptqconv.core.errors.PtqconvError, match="calibration.labels"):
        ptqconv.convert(cfg)


# ---- the report renders ------------------------------------------------------------------------
def _diagnosis(hard, tmp_path):
    model, imgs, cfg = hard
    table, graph = _table_and_graph(cfg, tmp_path)
    graph = ptqconv.load_plugins().get("passes", "canonicalize").run(graph)
    files = sorted(str(p) for p in imgs.iterdir())[8:12]
    data = CalibrationData(graph.inputs, [files], [Preprocess(**PRE)], 1)
    return diagnose(graph, table, data, labels=[0, 1, 2, 3], name="hard.onnx")


def _check_tables(text):
    assert "Quantization diagnosis: hard.onnx" in text
    for section in ("Model output", "Layers responsible", "Worst layers",
                    "Weight ranges per output channel", "All layers"):
        assert section in text
    assert "conv_b" in text and "top-1 fp32" in text


def test_report_markdown_and_html_render_with_plots(hard, tmp_path):
    pytest.importorskip("matplotlib")
    diag = _diagnosis(hard, tmp_path)
    written = write_report(diag, str(tmp_path / "rep" / "report.md"))
    md = (tmp_path / "rep" / "report.md").read_text()
    _check_tables(md)
    rows = [ln for ln in md.splitlines() if ln.startswith("| 1 | ")]
    assert rows and rows[0].startswith("| 1 | conv_b | Conv dw |")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == ["report_files/activations.png", "report_files/sqnr.png",
                             "report_files/weights.png"]
    for link in links:
        data = (tmp_path / "rep" / link).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert len(written) == 4
    page = write_report(diag, str(tmp_path / "report.html"))
    html = open(page[0], encoding="utf-8").read()
    _check_tables(html)
    assert html.count("<table>") == 4 and html.count("data:image/png;base64,") == 3


def test_report_without_matplotlib_keeps_its_tables(hard, tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "available", lambda: False)
    diag = _diagnosis(hard, tmp_path)
    written = write_report(diag, str(tmp_path / "report.md"))
    md = (tmp_path / "report.md").read_text()
    _check_tables(md)
    assert written == [str(tmp_path / "report.md")] and "![" not in md
    assert not (tmp_path / "report_files").exists()


def test_diagnose_command_line(hard, tmp_path):
    model, imgs, cfg = hard
    cfg_path = tmp_path / "cfg.json"  # JSON is YAML
    cfg_path.write_text(json.dumps({**cfg, "calibration": {**cfg["calibration"], "count": 8}}))
    proc = run_cli("diagnose", "-c", cfg_path, "--report", tmp_path / "r.html", "-q")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("model output: cosine") and "over 8 input(s)" in lines[0]
    assert lines[4].split()[0] == "conv_b"
    assert "conv_b" in (tmp_path / "r.html").read_text()
    proc = run_cli("diagnose", "-c", cfg_path, "--report", model, "-q")  # never over an input
    assert proc.returncode != 0 and "refusing to overwrite" in proc.stderr
