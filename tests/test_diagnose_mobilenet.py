"""Weight-range diagnosis on the shared MobileNetV2 (numpy only, no inference): with per-tensor
weights, the layers whose channels starve are the depthwise convolutions."""
import numpy as np
import onnx

import ptqconv
from conftest import shared_path
from ptqconv.core.diagnose.weights import STARVED, weight_ranges
from ptqconv.core.ir.onnx_bridge import from_onnx
from ptqconv.core.qtable import QuantTable, WeightQuant


def test_per_tensor_starves_the_depthwise_convolutions():
    path = shared_path("models", "mobilenet_v2", "mobilenet_v2.onnx")
    graph = ptqconv.load_plugins().get("passes", "canonicalize").run(from_onnx(onnx.load(path)))
    table = QuantTable()
    nodes = [n for n in graph.nodes if n.op in ("Conv", "Gemm")]
    for n in nodes:
        w = graph.constants[n.inputs[1]]
        table.weights[n.inputs[1]] = WeightQuant(np.float32([np.abs(w).max() / 127]), None)
    ranges = weight_ranges(graph, table, nodes)
    assert len(ranges) == 53 and sum(r.depthwise for r in ranges.values()) == 17
    share = sorted(ranges.items(), key=lambda kv: -len(kv[1].starved) / kv[1].channels)
    assert all(r.depthwise for _, r in share[:6])
    assert sum(r.depthwise for _, r in share[:10]) >= 9
    for name, r in share[:6]:
        codes = 127 * r.absmax / r.absmax.max()
        assert sorted(r.starved) == list(np.flatnonzero(codes < STARVED))
        assert r.per_tensor and r.spread > 5 and r.sqnr_per_channel > r.sqnr_table + 12
