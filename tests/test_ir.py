"""The IR: editing operations and the ONNX bridge (outputs equal before and after)."""
import numpy as np
import onnx
import pytest

from ptqconv.core.errors import PtqconvError, UnsupportedOpsError
from ptqconv.core.ir import Graph, Node, TensorInfo
from ptqconv.core.ir.onnx_bridge import from_onnx, to_onnx
from ptqconv.core.runtime import make_session
from synthetic import tiny_cnn


def _chain():
    return Graph("g", [TensorInfo("x", "float32", (1, 4))], [TensorInfo("z")],
                 [Node("Relu", "b", ["y"], ["z"]), Node("Neg", "a", ["x"], ["y"]),
                  Node("Abs", "dead", ["x"], ["unused"])])


def test_toposort_orders_and_cleanup_removes_dead_nodes():
    g = _chain().toposort()
    assert [n.name for n in g.nodes].index("a") < [n.name for n in g.nodes].index("b")
    g.cleanup()
    assert [n.name for n in g.nodes] == ["a", "b"]
    assert g.producer("z").name == "b" and [n.name for n in g.consumers()["x"]] == ["a"]


def test_toposort_reports_missing_tensor():
    g = Graph("g", [TensorInfo("x")], [TensorInfo("z")], [Node("Relu", "r", ["nope"], ["z"])])
    with pytest.raises(PtqconvError, match="nope"):
        g.toposort()


def test_validate_rejects_duplicate_producers():
    g = Graph("g", [TensorInfo("x")], [TensorInfo("y")],
              [Node("Relu", "r1", ["x"], ["y"]), Node("Relu", "r2", ["x"], ["y"])])
    with pytest.raises(PtqconvError, match="produced twice"):
        g.validate()


def test_onnx_round_trip_keeps_outputs(tmp_path):
    model = onnx.load(tiny_cnn(tmp_path / "m.onnx"))
    graph = from_onnx(model)
    assert graph.op_counts()["Conv"] == 2 and "w1" in graph.constants
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    ref = make_session(from_onnx(model)).run(None, {"input": x})[0]
    again = from_onnx(to_onnx(graph))
    out = make_session(again).run(None, {"input": x})[0]
    np.testing.assert_array_equal(out, ref)


def test_unsupported_ops_are_listed_together():
    node_a = onnx.helper.make_node("FancyOp", ["x"], ["y"], domain="custom")
    node_b = onnx.helper.make_node("OtherOp", ["y"], ["z"])
    g = onnx.helper.make_graph([node_a, node_b], "g",
                               [onnx.helper.make_tensor_value_info("x", 1, [1])],
                               [onnx.helper.make_tensor_value_info("z", 1, [1])])
    with pytest.raises(UnsupportedOpsError) as err:
        from_onnx(onnx.helper.make_model(g), source="m.onnx")
    assert "custom::FancyOp" in str(err.value) and "OtherOp" in str(err.value)


def test_infer_shapes_fills_value_info(tmp_path):
    graph = from_onnx(onnx.load(tiny_cnn(tmp_path / "m.onnx")))
    graph.infer_shapes()
    assert graph.shape("c1") == (1, 8, 16, 16)
    assert graph.shape("flat") == (1, 8)
