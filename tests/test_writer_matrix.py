"""Every calibrator and weight option on every quantizing writer (issue 6's "runs on every -int8
writer"): the file is written and read back by the format's reader with its scales. 4-bit
weights are accepted by 8-bit backends (their codes fit int8 kernels)."""
import numpy as np
import pytest

import ptqconv
from ptqconv.core.convert import companion_paths, sniff_reader
from ptqconv.core.plugins import get_registry
from synthetic import tiny_cnn, write_images

WRITERS = ("onnx-int8", "onnx-uint8", "ncnn-int8", "mnn-int8", "tmfile-int8", "tmfile-uint8",
           "tnn-int8")
METHODS = ("minmax", "kl", "kl-mnn", "kl-tengine", "kl-mindspore", "aciq", "admm", "ema",
           "percentile", "mse", "eq")
OPTIONS = [("method", m, {"calibration.method": m}) for m in METHODS] + [
    ("weights", w, {"quantize.weight_method": w}) for w in ("minmax", "admm", "mse")] + [
    ("granularity", g, {"quantize.weights": g}) for g in ("per-channel", "per-tensor", "mix")] + [
    ("bits", "w4a8", {"quantize.weight_bits": 4})]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    return tiny_cnn(d / "tiny.onnx", size=16), str(d / "img"), write_images(d / "img", 4, 16), d


@pytest.mark.parametrize("writer", WRITERS)
def test_every_option_on_every_quantizing_writer(writer, setup):
    model, images, _, d = setup
    reg = get_registry()
    fmt, _ = reg.writer(writer)
    for kind, value, overrides in OPTIONS:
        out = d / f"{writer}_{kind}_{value}{fmt.extensions[0]}"
        cfg = {"input": model, "output": str(out), "to": writer,
               "calibration": {"data": images, "threads": 1, "refine_inputs": 2,
                               "params": {"eq_inputs": 2, "eq_candidates": 4}
                               if value == "eq" else {}},
               "preprocess": {"size": [16, 16]}}
        result = ptqconv.convert(cfg, **overrides)
        assert result.table.activations and result.table.weights, (writer, value)
        scales = [a.scale for a in result.table.activations.values()]
        assert all(np.isfinite(s) and s > 0 for s in scales), (writer, value)
        if kind == "bits":
            assert all(w.bits == 4 for w in result.table.weights.values())
        rfmt = sniff_reader(reg, str(out))
        loaded = rfmt.read(companion_paths(rfmt, [str(out)]), {})
        assert loaded.graph.nodes, (writer, value)
        if loaded.table is not None:  # quantized formats carry their scales back
            assert loaded.table.activations, (writer, value)
