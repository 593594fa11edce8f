"""Graph passes: outputs on onnxruntime before and after must agree."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptqconv.core.ir.onnx_bridge import from_onnx
from ptqconv.core.passes import canonicalize, fold_batchnorm, fold_constants, fuse_activation
from ptqconv.core.runtime import make_session
from synthetic import tiny_cnn


def _run(graph, x):
    return make_session(graph).run(None, {"input": x})[0]


def test_fold_batchnorm_matches_original(tmp_path):
    graph = from_onnx(onnx.load(tiny_cnn(tmp_path / "m.onnx", batchnorm=True)))
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    ref = _run(graph, x)
    folded = fold_batchnorm(graph.copy())
    assert "BatchNormalization" not in folded.op_counts()
    assert folded.producer("bn1").name == "conv1"  # conv took over the BN output name
    np.testing.assert_allclose(_run(folded, x), ref, rtol=1e-4, atol=1e-5)


def test_fuse_activation_records_params(tmp_path):
    graph = canonicalize(from_onnx(onnx.load(tiny_cnn(tmp_path / "m.onnx"))))
    fused = fuse_activation(graph)
    conv1, conv2 = fused.node("conv1"), fused.node("conv2")
    assert conv1.attrs["fused_activation"] == "Relu"
    assert conv2.attrs["fused_activation"] == "Clip"
    assert conv2.attrs["fused_activation_params"] == {"min": 0.0, "max": 6.0}
    assert "Relu" not in fused.op_counts() and "Clip" not in fused.op_counts()


def test_fold_constants_removes_shape_arithmetic():
    # x -> Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape(x)
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"]),
             helper.make_node("Relu", ["y"], ["out"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    graph = from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    ref = make_session(graph).run(None, {"x": x})[0]
    folded = fold_constants(graph)
    assert sorted(folded.op_counts()) == ["Relu", "Reshape"]
    reshape = folded.node([n.name for n in folded.nodes if n.op == "Reshape"][0])
    np.testing.assert_array_equal(folded.constants[reshape.inputs[1]], [2, -1])
    np.testing.assert_array_equal(make_session(folded).run(None, {"x": x})[0], ref)
