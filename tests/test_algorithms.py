"""Weight quantizers, corrections (bias correction, cross-layer equalization), EQ's streamed
search, backend refusal and the TensorRT calibration cache; end to end through ``convert`` and
the CLI on a small generated model."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ptqconv
from ptqconv.core.cli import main as cli_main
from ptqconv.core.corrections import apply_bias_corrections, measure_bias_corrections
from ptqconv.core.equalize import equalize, find_pairs
from ptqconv.core.errors import PtqconvError
from ptqconv.core.ir.graph import Graph, Node, TensorInfo
from ptqconv.core.numeric import QuantSpec, quantize_weights
from ptqconv.core.plugins import get_registry
from ptqconv.core.qtable import INT8, ActQuant, QuantTable, WeightQuant
from ptqconv.core.quantize import check_table_for_backend
from ptqconv.core.runtime import make_session
from ptqconv.plugins.backends.tensorrt_cache import float_to_hex, hex_to_float, read_trt_cache
from ptqconv.plugins.calibrators.eq import eq_factors, eq_refine, greedy_channels
from ptqconv.plugins.calibrators.search import mse_threshold
from ptqconv.plugins.weights.builtin import absmax_scales, admm_scales, mse_scales

METHODS = ("minmax", "kl", "kl-mnn", "kl-tengine", "kl-mindspore", "aciq", "admm", "ema",
           "percentile", "mse", "eq")
FAST = {"eq_inputs": 4, "eq_candidates": 8}


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def small_model(path, seed=0, log_input=False):
    """Conv(3->6) Relu -> dw Conv(6) Clip(0,6) -> Conv 1x1(6->4) -> GAP -> Flatten -> Gemm(4->3).
    Output channels of the first conv have very different ranges (CLE has work to do).
    ``log_input`` puts a Log in front (NaN on negative inputs)."""
    rng = np.random.default_rng(seed)
    spread = np.array([0.05, 0.2, 1.0, 3.0, 0.5, 8.0])[:, None, None, None]
    inits = [_init("w1", rng.normal(0, 0.3, (6, 3, 3, 3)) * spread), _init("b1", rng.normal(0, .1, 6)),
             _init("w2", rng.normal(0, 0.5, (6, 1, 3, 3))), _init("b2", rng.normal(0, 0.1, 6)),
             _init("w3", rng.normal(0, 0.5, (4, 6, 1, 1))), _init("b3", rng.normal(0, 0.1, 4)),
             _init("wfc", rng.normal(0, 0.5, (3, 4))), _init("bfc", rng.normal(0, 0.1, 3)),
             _init("lo", 0.0), _init("hi", 6.0)]
    first = "input"
    nodes = []
    if log_input:
        nodes.append(helper.make_node("Log", ["input"], ["logx"], name="log"))
        first = "logx"
    nodes += [helper.make_node("Conv", [first, "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw2", group=6,
                               pads=[1] * 4),
              helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="clip2"),
              helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pw3"),
              helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def npy_inputs(folder, count=12, seed=1, negative=False):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        x = rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32)
        np.save(folder / f"x{k:02d}.npy", -np.abs(x) if negative else x)
    return str(folder)


def run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def model(tmp_path):
    return small_model(tmp_path / "small.onnx")


@pytest.fixture
def calib(tmp_path):
    return npy_inputs(tmp_path / "calib")


# ---- every method end to end ---------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_every_method_through_the_cli(method, model, calib, tmp_path):
    out = tmp_path / f"{method}.onnx"
    argv = ["--to", "onnx-int8", "-i", model, "-o", str(out), "--calib", calib, "--method",
            method, "--threads", "1", "-q"]
    if method == "eq":
        argv += ["--set", "calibration.params.eq_inputs=4", "--set",
                 "calibration.params.eq_candidates=8"]
    assert cli_main(argv) == 0
    xs = np.random.default_rng(7).normal(0, 1, (4, 1, 3, 12, 12)).astype(np.float32)
    for x in xs:
        assert cosine(run_onnx(model, x), run_onnx(out, x)) > 0.98


@pytest.mark.parametrize("writer", [w for w in get_registry().writer_names()
                                    if w.endswith(("-int8", "-uint8"))])
def test_asymmetric_method_and_corrections_on_every_quantizing_writer(writer, model, calib,
                                                                      tmp_path):
    """EMA (asymmetric where the backend allows it, symmetric elsewhere) with bias correction,
    equalization and ADMM weights writes for every quantizing writer."""
    fmt, _ = get_registry().writer(writer)
    out = tmp_path / ("m" + fmt.extensions[0])
    result = ptqconv.convert({"input": model, "output": str(out), "to": writer,
                              "calibration": {"data": calib, "method": "ema", "threads": 1},
                              "quantize": {"bias_correction": True, "equalize": True,
                                           "weight_method": "admm"}})
    backend = get_registry().backends[fmt.backend]
    check_table_for_backend(result.table, result.graph, backend)
    assert result.table.bias_corrections and all(Path(p).exists() for p in result.outputs)


def test_four_bit_weights_eight_bit_activations(model, calib, tmp_path):
    out = tmp_path / "w4a8.onnx"
    result = ptqconv.convert({"input": model, "output": str(out), "to": "onnx-int8",
                              "calibration": {"data": calib, "method": "mse", "threads": 1},
                              "quantize": {"weight_bits": 4, "bias_correction": True}})
    assert all(w.bits == 4 for w in result.table.weights.values())
    assert all(a.bits == 8 for a in result.table.activations.values())
    m = onnx.load(str(out))
    codes = [numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == TensorProto.INT8
             and t.dims and len(t.dims) > 1]
    assert codes and all(np.abs(c).max() <= 7 for c in codes)
    x = np.random.default_rng(7).normal(0, 1, (1, 3, 12, 12)).astype(np.float32)
    assert cosine(run_onnx(model, x), run_onnx(out, x)) > 0.9


def test_nan_in_data_names_the_tensor(tmp_path, capsys):
    model = small_model(tmp_path / "log.onnx", log_input=True)
    calib = npy_inputs(tmp_path / "neg", count=3, negative=True)
    with pytest.raises(PtqconvError, match="'logx'.*NaN"):
        ptqconv.convert({"input": model, "output": str(tmp_path / "o.onnx"), "to": "onnx-int8",
                         "calibration": {"data": calib, "method": "mse"}})
    capsys.readouterr()  # drop convert()'s progress lines: only the CLI's stderr is checked
    code = cli_main(["--to", "onnx-int8", "-i", model, "-o", str(tmp_path / "o2.onnx"),
                     "--calib", calib, "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "logx" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o2.onnx").exists()


# ---- weight quantizers ---------------------------------------------------------------------

def test_minmax_weights_granularity_bits_and_clamp():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [2.0, 1.0, -4.0]])
    np.testing.assert_allclose(absmax_scales(w, 0, 8, {}), [1 / 127, 0, 4 / 127])
    np.testing.assert_allclose(absmax_scales(w, None, 8, {}), [4 / 127])
    np.testing.assert_allclose(absmax_scales(w, 1, 8, {}), [2 / 127, 1 / 127, 4 / 127])
    np.testing.assert_allclose(absmax_scales(w, 0, 8, {"weight_clamp_value": 100}),
                               [1 / 100, 0, 4 / 100])
    for bits in range(2, 9):
        qmax = 2 ** (bits - 1) - 1
        steps = absmax_scales(w, 0, bits, {"weight_clamp_value": 127})  # disagrees: qmax wins
        codes = quantize_weights(w, steps, 0, bits)
        assert np.abs(codes).max() == qmax and codes[1].tolist() == [0, 0, 0]
        assert -qmax - 1 not in codes


def test_admm_weights_worked_example_and_edges():
    w = np.array([0, 0.1, -0.2, 0.35, 0.5, -0.8, 1.0, 2.5, -3.0, 10.0], np.float32)
    step = admm_scales(w[None, :], 0, 8, {})
    assert step[0] == pytest.approx(0.0787246, abs=2e-7)
    codes = quantize_weights(w[None, :], step, 0, 8)
    assert codes.max() == 127 and codes.min() == -38
    both = admm_scales(np.stack([w, np.zeros_like(w)]), 0, 8, {})
    assert both[0] == pytest.approx(step[0]) and both[1] == 0
    two_bit = admm_scales(w[None, :], 0, 2, {})  # clamp 1: starts from mean|w|
    assert two_bit[0] > 0 and np.abs(quantize_weights(w[None, :], two_bit, 0, 2)).max() == 1
    per_tensor = admm_scales(np.stack([w, 2 * w]), None, 8, {})
    assert per_tensor.shape == (1,)


def test_mse_weights_search_and_error():
    """The coarse-then-fine per-channel search finds the full search's threshold, and at 4 bits
    it quantizes heavy-tailed weights with less error than max-abs."""
    w = np.random.default_rng(0).standard_t(3, (32, 3, 3, 3))
    steps = mse_scales(w, 0, 4, {})
    full = [mse_threshold(r.ravel(), None, np.abs(r).max(), 7)[0] / 7 for r in w]
    np.testing.assert_allclose(steps, full, rtol=1e-6)

    def err(s):
        return float(((quantize_weights(w, s, 0, 4) * s[:, None, None, None] - w) ** 2).sum())
    assert err(steps) < 0.95 * err(absmax_scales(w, 0, 4, {}))
    assert mse_scales(np.zeros((2, 4)), 0, 8, {}).tolist() == [0.0, 0.0]
    assert mse_scales(w, None, 8, {}).shape == (1,)


# ---- bias correction (§4.1) ----------------------------------------------------------------

class ArrayData:
    """Calibration data from in-memory batches (the engine only needs these members)."""

    def __init__(self, name, batches):
        self.name, self.items, self.batch_size = name, batches, 1

    def __len__(self):
        return len(self.items)

    def batches(self):
        for x in self.items:
            yield {self.name: x}


def pointwise_graph(w, b):
    g = Graph("pw", [TensorInfo("x", "float32", (1, w.shape[1], 5, 5))],
              [TensorInfo("y", "float32", (1, w.shape[0], 5, 5))],
              [Node("Conv", "conv", ["x", "w", "b"], ["y"])],
              {"w": w.astype(np.float32)[:, :, None, None], "b": b.astype(np.float32)})
    return g.infer_shapes()


def test_bias_correction_matches_layer_local_definition():
    rng = np.random.default_rng(3)
    w, b = rng.normal(0, 1, (4, 3)), rng.normal(0, 0.1, 4)
    g = pointwise_graph(w, b)
    xs = [rng.normal(0.3, 1, (1, 3, 5, 5)).astype(np.float32) for _ in range(5)]
    aq = ActQuant(0.05, 0, 8, True, 0.05 * 127)   # coarse: clips values above 6.35
    steps = np.abs(w).max(axis=1) / 7             # 4-bit weights: a visible bias shift
    table = QuantTable({"x": aq}, {"w": WeightQuant(steps.astype(np.float32), 0, 4)},
                       {"conv": INT8})
    delta = measure_bias_corrections(g, table, ArrayData("x", xs), threads=1)["conv"]
    wq = quantize_weights(w, steps, 0, 4) * steps[:, None]
    expected = np.zeros(4)
    for x in xs:  # mean over N,H,W of fp32 output minus fake-quantized output, per channel
        xq = np.clip(np.round(x / aq.scale), -128, 127) * aq.scale
        y = np.einsum("oc,nchw->nohw", w, x) + b[None, :, None, None]
        yq = np.einsum("oc,nchw->nohw", wq, xq) + b[None, :, None, None]
        expected += (y - yq).mean(axis=(0, 2, 3)) / len(xs)
    np.testing.assert_allclose(delta, expected, rtol=1e-4, atol=1e-6)
    corrected = apply_bias_corrections(g.copy(), table.__class__(
        table.activations, table.weights, table.precision, bias_corrections={"conv": delta}))
    new_b = corrected.constants[corrected.node("conv").inputs[2]]
    np.testing.assert_allclose(new_b, b + delta, rtol=1e-6)


# ---- cross-layer equalization (§4.3) -------------------------------------------------------

@pytest.mark.parametrize("clip", [False, True])
def test_equalization_keeps_the_function_and_equalizes_ranges(clip, model):
    from ptqconv.core.ir.onnx_bridge import from_onnx
    g = get_registry().get("passes", "canonicalize").run(from_onnx(onnx.load(model)))
    x = np.random.default_rng(2).normal(0, 1, (1, 3, 12, 12)).astype(np.float32)
    ref = make_session(g).run(None, {"input": x})[0]
    w1_before = g.constants[g.node("conv1").inputs[1]].copy()
    e = equalize(g.copy(), clip=clip)
    out = make_session(e).run(None, {"input": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    w1 = e.constants[e.node("conv1").inputs[1]]
    w2 = e.constants[e.node("dw2").inputs[1]]
    r1 = np.abs(w1).reshape(6, -1).max(axis=1)
    r2 = np.abs(w2).reshape(6, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)
    before = np.abs(w1_before).reshape(6, -1).max(axis=1)
    assert r1.max() / r1.min() < before.max() / before.min()  # per-tensor friendlier
    assert (e.op_counts().get("Min", 0) == 1) == clip  # ReLU6 rewritten only with clip


def test_equalization_skips_relu6_without_clip_and_shared_weights():
    g = pointwise_graph(np.ones((3, 3)), np.zeros(3))
    assert find_pairs(g) == []  # a single layer: nothing to pair
    g.nodes.append(Node("Relu", "r", ["y"], ["z"]))
    g.nodes.append(Node("Conv", "c2", ["z", "w"], ["out"]))
    g.nodes.append(Node("Conv", "c3", ["z", "w"], ["out2"]))  # same weight constant as c2
    g.outputs = [TensorInfo("out"), TensorInfo("out2")]
    assert find_pairs(g.infer_shapes()) == []


def test_equalization_through_a_channel_concat():
    """SqueezeNet's fire pattern: two layers concatenated on channels feed one layer."""
    rng = np.random.default_rng(4)
    c = {"wa": rng.normal(0, 1, (2, 3, 1, 1)) * np.array([0.1, 5.0])[:, None, None, None],
         "wb": rng.normal(0, 1, (3, 3, 3, 3)) * np.array([2.0, 0.05, 1.0])[:, None, None, None],
         "ba": rng.normal(0, 0.1, 2), "bb": rng.normal(0, 0.1, 3),
         "wc": rng.normal(0, 1, (4, 5, 1, 1)), "bc": rng.normal(0, 0.1, 4)}
    nodes = [Node("Conv", "a", ["x", "wa", "ba"], ["ya"]), Node("Relu", "ra", ["ya"], ["za"]),
             Node("Conv", "b", ["x", "wb", "bb"], ["yb"], {"pads": [1, 1, 1, 1]}),
             Node("Relu", "rb", ["yb"], ["zb"]),
             Node("Concat", "cat", ["za", "zb"], ["z"], {"axis": 1}),
             Node("MaxPool", "pool", ["z"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
             Node("Conv", "c", ["p", "wc", "bc"], ["y"])]
    g = Graph("cat", [TensorInfo("x", "float32", (1, 3, 6, 6))], [TensorInfo("y")], nodes,
              {k: v.astype(np.float32) for k, v in c.items()}).infer_shapes()
    x = rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)
    ref = make_session(g).run(None, {"x": x})[0]
    pairs = find_pairs(g.copy())
    assert [[n.name for n in p.producers] for p in pairs] == [["a", "b"]]
    e = equalize(g.copy())
    np.testing.assert_allclose(make_session(e).run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-5)
    r1 = np.concatenate([np.abs(e.constants["wa"]).reshape(2, -1).max(axis=1),
                         np.abs(e.constants["wb"]).reshape(3, -1).max(axis=1)])
    r2 = np.abs(e.constants["wc"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-3)


def test_per_tensor_weights_gain_from_equalization(model, calib, tmp_path):
    x = np.random.default_rng(7).normal(0, 1, (8, 1, 3, 12, 12)).astype(np.float32)
    scores = {}
    for eq in (False, True):
        out = tmp_path / f"pt_{eq}.onnx"
        ptqconv.convert({"input": model, "output": str(out), "to": "onnx-int8",
                         "calibration": {"data": calib, "method": "minmax", "threads": 1,
                                         "refine": "none"},
                         "quantize": {"weights": "per-tensor", "equalize": eq,
                                      "equalize_clip": True}})
        scores[eq] = np.mean([cosine(run_onnx(model, xi), run_onnx(out, xi)) for xi in x])
    assert scores[True] > scores[False]


# ---- EQ (§2.4): the streamed search equals a brute-force search -----------------------------

def test_greedy_channels_keeps_improving_choices():
    dots = np.array([[1.0, 0.1], [0.9, 0.9], [0.5, 0.5]])   # last row: current state
    norms = np.array([[1.0, 0.1], [1.0, 1.0], [0.5, 0.5]])
    pick = greedy_channels(dots, norms, ref_norm=2.0)
    assert pick.tolist() == [0, 1]


def test_eq_streamed_search_matches_brute_force(monkeypatch):
    """The per-candidate sums the streamed pass collects equal a brute-force numpy evaluation;
    the searched steps are the greedy choice on them; the input step is the best candidate."""
    from ptqconv.plugins.calibrators import eq as eq_mod
    seen = {}

    def spy(dots, norms, ref_norm):
        seen.update(dots=dots, norms=norms, ref=ref_norm)
        return greedy_channels(dots, norms, ref_norm)

    monkeypatch.setattr(eq_mod, "greedy_channels", spy)
    rng = np.random.default_rng(5)
    w, b = rng.normal(0, 1, (4, 3)), rng.normal(0, 0.1, 4)
    g = pointwise_graph(w, b)
    xs = [rng.normal(0, 1, (1, 3, 5, 5)).astype(np.float32) for _ in range(3)]
    aq = ActQuant(3.0 / 127, 0, 8, True, 3.0)
    steps = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    table = QuantTable({"x": aq}, {"w": WeightQuant(steps, 0, 8)}, {"conv": INT8})
    k = 6
    out = eq_refine(g, table, ArrayData("x", xs), QuantSpec(), {"eq_inputs": 3,
                                                                "eq_candidates": k})
    f = eq_factors(k).astype(np.float32)

    def fq(v, s, lo, hi):
        return np.clip(np.round(v / s), lo, hi) * s

    def layer(wm, xq):
        return np.einsum("oc,nchw->nohw", wm, xq) + b[None, :, None, None]

    ys = [layer(w, x) for x in xs]
    xqs = [fq(x, np.float32(aq.scale), -128, 127) for x in xs]
    allf = np.append(f, np.float32(1.0))
    dots = np.zeros((k + 1, 4))
    norms = np.zeros((k + 1, 4))
    for j, fj in enumerate(allf):
        wk = fq(w.astype(np.float32), (steps / fj)[:, None], -127, 127)
        for y, xq in zip(ys, xqs):
            yk = layer(wk, xq)
            dots[j] += (y * yk).sum(axis=(0, 2, 3))
            norms[j] += (yk * yk).sum(axis=(0, 2, 3))
    ref = sum(float((y * y).sum()) for y in ys)
    np.testing.assert_allclose(seen["dots"], dots, rtol=1e-4)
    np.testing.assert_allclose(seen["norms"], norms, rtol=1e-4)
    assert seen["ref"] == pytest.approx(ref, rel=1e-5)
    chosen = steps / allf[greedy_channels(seen["dots"], seen["norms"], seen["ref"])]
    np.testing.assert_allclose(out.weights["w"].scales, chosen, rtol=1e-6)
    wfinal = fq(w.astype(np.float32), chosen[:, None].astype(np.float32), -127, 127)
    score = np.zeros(k)
    for j in range(k):
        d = n = 0.0
        for x, y in zip(xs, ys):
            yk = layer(wfinal, fq(x, np.float32(aq.scale / f[j]), -127, 127))
            d += float((y * yk).sum())
            n += float((yk * yk).sum())
        score[j] = d / np.sqrt(n * ref)
    picked = int(np.argmin(np.abs(aq.scale / f - out.activations["x"].scale)))
    assert out.activations["x"].scale == pytest.approx(aq.scale / f[picked], rel=1e-6)
    assert score[picked] >= score.max() - 1e-6


# ---- backends and the TensorRT calibration cache -------------------------------------------

def test_backend_refuses_what_it_cannot_run(model, calib, tmp_path):
    reg = get_registry()
    g = Graph("g", [TensorInfo("x", "float32", (1, 3, 5, 5))], [TensorInfo("y")],
              [Node("Conv", "conv", ["x", "w"], ["y"])], {"w": np.ones((2, 3, 1, 1), np.float32)})
    asym = QuantTable({"x": ActQuant(0.01, 5, 8, True)},
                      {"w": WeightQuant(np.array([0.1, 0.1], np.float32), 0, 8)}, {"conv": INT8})
    with pytest.raises(PtqconvError, match="asymmetric"):
        check_table_for_backend(asym, g, reg.backends["ncnn-cpu"])
    check_table_for_backend(asym, g, reg.backends["onnxruntime"])
    with pytest.raises(PtqconvError, match="per-tensor"):
        ptqconv.convert({"input": model, "output": str(tmp_path / "t.onnx"), "to": "onnx-int8",
                         "backend": "tensorrt", "calibration": {"data": calib},
                         "quantize": {"weights": "per-tensor"}})


def test_ncnn_backend_gives_winograd_convs_six_bit_weights(model, calib, tmp_path):
    """ncnn-cpu's rule: the 3x3 stride-1 conv gets 6-bit weights in the table itself (absmax/31
    with minmax), so the threshold check and bias correction measure what ncnn runs; the other
    layers, and every layer on onnxruntime, keep the job's 8 bits."""
    graph = ptqconv.convert({"input": model, "to": "onnx", "output": str(tmp_path / "f.onnx")}).graph
    w1 = graph.constants["w1"].reshape(6, -1)
    tables = {}
    for to, ext in (("ncnn-int8", ".param"), ("onnx-int8", ".onnx")):
        tables[to] = ptqconv.convert({"input": model, "output": str(tmp_path / ("m" + ext)),
                                      "to": to, "calibration": {"data": calib, "threads": 1},
                                      "quantize": {"bias_correction": False}}).table
    ncnn_w1 = tables["ncnn-int8"].weights["w1"]
    assert ncnn_w1.bits == 6
    np.testing.assert_allclose(ncnn_w1.scales, np.abs(w1).max(axis=1) / 31, rtol=1e-6)
    assert tables["ncnn-int8"].weights["w3"].bits == 8     # 1x1
    assert tables["ncnn-int8"].weights["w2"].bits == 8     # depthwise 3x3
    assert tables["onnx-int8"].weights["w1"].bits == 8


def test_tensorrt_cache_hex_and_round_trip(model, calib, tmp_path):
    assert float_to_hex(1 / 127) == "3c010204"
    assert hex_to_float("3c010a14") == pytest.approx(1.00025 / 127, rel=1e-5)
    cache = tmp_path / "calib.cache"
    first = ptqconv.convert({"input": model, "output": str(tmp_path / "a.onnx"),
                             "to": "onnx-int8", "backend": "tensorrt", "save_table": str(cache),
                             "calibration": {"data": calib, "method": "percentile"},
                             # a calibration cache holds scales only, not bias corrections
                             "quantize": {"bias_correction": False}})
    lines = cache.read_text().splitlines()
    assert lines[0].startswith("TRT-") and len(lines) == 1 + len(first.table.activations)
    loaded = read_trt_cache(str(cache), first.graph)
    for name, aq in first.table.activations.items():
        assert loaded.activations[name].scale == pytest.approx(aq.scale, rel=1e-6)
    assert set(loaded.precision) == set(first.table.precision)
    second = ptqconv.convert({"input": model, "output": str(tmp_path / "b.onnx"),
                              "to": "onnx-int8", "load_table": str(cache)})
    x = np.random.default_rng(7).normal(0, 1, (1, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(tmp_path / "b.onnx", x), run_onnx(tmp_path / "a.onnx", x),
                               rtol=1e-5, atol=1e-5)
    assert second.table.meta["source"] == "tensorrt-cache"


def test_tensorrt_cache_refuses_asymmetric_and_reports_bad_lines(model, calib, tmp_path):
    with pytest.raises(PtqconvError, match="asymmetric"):
        ptqconv.convert({"input": model, "output": str(tmp_path / "a.onnx"), "to": "onnx-int8",
                         "save_table": str(tmp_path / "x.cache"),
                         "calibration": {"data": calib, "method": "ema"}})
    assert not (tmp_path / "x.cache").exists()
    bad = tmp_path / "bad.cache"
    bad.write_text("TRT-8601-EntropyCalibration2\ninput: 3c010a14\nr1 3c010a14\n")
    with pytest.raises(PtqconvError, match=r"line 3"):
        read_trt_cache(str(bad))
    bad.write_text("input: 3c010a14\n")
    with pytest.raises(PtqconvError, match=r"line 1"):
        read_trt_cache(str(bad))
    bad.write_text("TRT-8601-EntropyCalibration2\ninput: 7fc00000\n")
    with pytest.raises(PtqconvError, match="not a finite"):
        read_trt_cache(str(bad))


@pytest.mark.parametrize("method", METHODS)
def test_nan_and_inf_in_data_name_the_tensor_for_every_method(method, model, tmp_path):
    """The engine rejects non-finite statistics before any calibrator sees them, whichever
    method is selected: one error naming the tensor and the counts, no output written."""
    folder = tmp_path / "bad"
    folder.mkdir()
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 12, 12)).astype(np.float32)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    np.save(folder / "x0.npy", x)
    out = tmp_path / "o.onnx"
    with pytest.raises(PtqconvError, match=r"'input' has 1 NaN and 2 Inf"):
        ptqconv.convert({"input": model, "output": str(out), "to": "onnx-int8",
                         "calibration": {"data": str(folder), "method": method, "threads": 1,
                                         "params": FAST if method == "eq" else {}}})
    assert not out.exists()
