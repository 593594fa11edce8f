"""Centring never-negative int8 inputs for backends without zero points (core/centre.py): the
rewrite keeps the float function, and the centred int8 model computes what the unsigned table
simulates; padded consumers and shared tensors are left alone."""
from dataclasses import replace

import numpy as np
import pytest
from onnx import helper, numpy_helper

import ptqconv
from ptqconv.core.centre import centrable, centre_tensors
from ptqconv.core.ir.onnx_bridge import to_onnx
from ptqconv.core.plugins import get_registry
from ptqconv.core.qtable import FLOAT
from ptqconv.core.runtime import session_from_model
from ptqconv.formats.onnx.qdq import insert_qdq
from ptqconv.formats.onnx.reader import read_onnx
from synthetic import save_model


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def branchy_model(path, seed=0):
    """conv_a/conv_b (3x3, ReLU and ReLU6) -> Concat -> MaxPool -> 1x1 conv_c (no bias) -> ReLU
    -> GlobalAveragePool -> Flatten -> Gemm; conv_a's ReLU output also feeds a padded 3x3
    conv_p whose output is a second model output."""
    rng = np.random.default_rng(seed)
    inits = [_init("wa", rng.normal(0, .4, (4, 3, 3, 3))), _init("ba", rng.normal(.2, .1, 4)),
             _init("wb", rng.normal(0, .4, (4, 3, 3, 3))), _init("bb", rng.normal(.2, .1, 4)),
             _init("wc", rng.normal(0, .4, (6, 8, 1, 1))),
             _init("wp", rng.normal(0, .4, (2, 4, 3, 3))), _init("bp", rng.normal(0, .1, 2)),
             _init("wfc", rng.normal(0, .4, (5, 6))), _init("bfc", rng.normal(0, .1, 5)),
             _init("lo", 0.0), _init("hi", 6.0)]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["ca"], name="conv_a"),
             helper.make_node("Relu", ["ca"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["ra", "wp", "bp"], ["side"], name="conv_p", pads=[1] * 4),
             helper.make_node("Conv", ["x", "wb", "bb"], ["cb"], name="conv_b"),
             helper.make_node("Clip", ["cb", "lo", "hi"], ["rb"], name="relu6_b"),
             helper.make_node("Concat", ["ra2", "rb"], ["cat"], name="cat", axis=1),
             helper.make_node("MaxPool", ["cat"], ["mp"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Conv", ["mp", "wc"], ["cc"], name="conv_c"),
             helper.make_node("Relu", ["cc"], ["rc"], name="relu_c"),
             helper.make_node("GlobalAveragePool", ["rc"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["y"], name="fc", transB=1)]
    # conv_a's ReLU output has two readers: give the Concat its own ReLU copy so that the
    # concat chain is centrable while 'ra' (read by the padded conv_p) is not
    nodes.insert(2, helper.make_node("Relu", ["ca2"], ["ra2"], name="relu_a2"))
    nodes.insert(2, helper.make_node("Conv", ["x", "wa", "ba"], ["ca2"], name="conv_a2"))
    return save_model(nodes, inits, [("x", [1, 3, 10, 10])],
                      [("y", [1, 5]), ("side", [1, 2, 8, 8])], path, "branchy")


@pytest.fixture
def job(tmp_path):
    model = branchy_model(tmp_path / "b.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(3)
    for k in range(8):
        np.save(calib / f"x{k}.npy", rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32))
    graph = get_registry().get("passes", "canonicalize").run(read_onnx([model], {}).graph)
    result = ptqconv.convert({"input": model, "output": str(tmp_path / "b.param"),
                              "to": "ncnn-int8", "calibration": {"data": str(calib),
                                                                 "threads": 1}})
    return graph, result.table


def _run(graph, xs):
    sess = session_from_model(to_onnx(graph))
    return [sess.run(None, {"x": x})for x in xs]


def test_centrable_tensors_are_the_unpadded_shift_commuting_chains(job):
    graph, table = job
    assert centrable(graph, "mp") and centrable(graph, "flat")
    assert not centrable(graph, "ra")          # read by a padded convolution
    assert not centrable(graph, "x")           # a model input has no producing layer
    unsigned = {t for t, a in table.activations.items() if not a.signed}
    assert unsigned == {"mp", "flat"}          # what ncnn-cpu's table gets


def test_centring_keeps_the_float_function_and_the_int8_codes(job):
    graph, table = job
    xs = np.random.default_rng(5).normal(0, 1, (4, 1, 3, 10, 10)).astype(np.float32)
    # consumers left float: their bias takes c * sum(W) and the float function is unchanged
    floats = replace(table, precision={k: FLOAT for k in table.precision})
    for a, b in zip(_run(graph, xs), _run(centre_tensors(graph, floats)[0], xs)):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)
    # int8 consumers take c * sum(Wq), which their int8 weights cancel exactly; thresholds
    # above every value, since unsigned codes reach 255 steps and centred ones 254
    for name in ("mp", "flat"):
        aq = table.activations[name]
        table.activations[name] = replace(aq, scale=aq.scale * 4, threshold=aq.threshold * 4)
    centred, new_table = centre_tensors(graph, table)
    for name in ("mp", "flat"):
        old, new = table.activations[name], new_table.activations[name]
        assert new.signed and new.scale == old.scale and new.threshold == pytest.approx(
            127 * old.scale)
    assert not any(n.op == "Relu" for n in centred.nodes if n.outputs[0] in ("ra2", "rc"))
    # the centred int8 model computes what the unsigned table simulates
    sim = _run(insert_qdq(graph.copy(), table), xs)
    real = _run(insert_qdq(centred.copy(), new_table), xs)
    for a, b in zip(sim, real):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-4)


def test_uncentrable_unsigned_entries_fall_back_to_signed_codes(job):
    graph, table = job
    aq = table.activations["mp"]
    table.activations["ra"] = aq            # e.g. a loaded table made for onnxruntime
    _, new_table = centre_tensors(graph, table)
    ra = new_table.activations["ra"]
    assert ra.signed and ra.threshold == pytest.approx(aq.threshold)
    assert ra.scale == pytest.approx(aq.threshold / 127)


def test_ncnn_runs_the_centred_model_as_simulated(tmp_path, job):
    ncnn = pytest.importorskip("ncnn")  # noqa: F841
    from ptqconv.formats.ncnn.runtime import ncnn_runtime
    graph, table = job
    out = tmp_path / "b.param"
    text = out.read_text()
    assert "9=3" in text and "-23310=2,-" in text   # a fused Clip with a negative lower bound
    run = ncnn_runtime([str(out), str(tmp_path / "b.bin")])
    sim = session_from_model(to_onnx(insert_qdq(graph.copy(), table)))
    fp32 = session_from_model(to_onnx(graph))
    xs = np.random.default_rng(9).normal(0, 1, (4, 1, 3, 10, 10)).astype(np.float32)
    for x in xs:
        got = [np.asarray(o).reshape(-1) for o in run({"x": x}) if np.size(o) == 5][0]
        want = sim.run(["y"], {"x": x})[0].reshape(-1)
        ref = fp32.run(["y"], {"x": x})[0].reshape(-1)
        assert np.abs(got - want).max() <= 0.05 * np.abs(ref).max()


def test_padded_convolution_inputs_centre_through_an_explicit_pad(job):
    graph, table = job
    assert centrable(graph, "ra", padded=True) and not centrable(graph, "ra")
    aq = table.activations["mp"]
    table.activations["ra"] = replace(aq, scale=aq.scale * 8, threshold=aq.threshold * 8)
    centred, new_table = centre_tensors(graph, table, padded=True)
    pad = [n for n in centred.nodes if n.op == "Pad"]
    assert len(pad) == 1 and pad[0].inputs[0] == "ra"
    assert float(centred.constants[pad[0].inputs[2]]) == pytest.approx(
        -new_table.activations["ra"].threshold)
    assert new_table.activations[pad[0].outputs[0]] == new_table.activations["ra"]
    xs = np.random.default_rng(6).normal(0, 1, (3, 1, 3, 10, 10)).astype(np.float32)
    sim = _run(insert_qdq(graph.copy(), table), xs)
    real = _run(insert_qdq(centred.copy(), new_table), xs)
    for a, b in zip(sim, real):   # 'side' (conv_p's output) included
        np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-4)
