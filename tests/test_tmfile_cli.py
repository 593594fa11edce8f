"""tmfile through the CLI: calibrate to tmfile-int8 saving Tengine's .scale table, load it back."""
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import shared_path
from ptqconv.core.runtime import make_session
from ptqconv.formats.onnx.qdq import insert_qdq
from ptqconv.formats.tmfile.reader import read_tmfile

# torchvision's MNIST normalization, (pixel/255 - 0.1307) / 0.3081, as ptqconv preprocessing
MNIST_CONFIG = """
calibration:
  refine: none
preprocess:
  pixel: GRAY
  size: [28, 28]
  mean: [33.3285]
  norm: [0.0127287]
"""


def ptqconv(*args):
    result = subprocess.run([sys.executable, "-m", "ptqconv.core.cli", "-q", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_calibrate_save_and_load_tengine_table(tmp_path):
    model = shared_path("golden", "tengine", "mnist.tmfile")
    digits = shared_path("images", "mnist-sample")
    cfg = tmp_path / "mnist.yaml"
    cfg.write_text(MNIST_CONFIG)
    out, table = tmp_path / "mnist_int8.tmfile", tmp_path / "table_kl.scale"
    ptqconv("-c", cfg, "--from", "tmfile", "--to", "tmfile-int8", "-i", model, "-o", out,
            "--calib", digits, "--count", 10, "--method", "kl", "--save-table", table)
    lines = table.read_text().splitlines()
    assert all(re.fullmatch(r"\S+ \d+\.\d{6} 0", ln) for ln in lines)
    # every activation of the written file, in its tensor order (Tengine's table layout); the
    # host fuses Relu_10 into Gemm_9, FC has no activation field, so the writer splits it off
    # again and the FC output takes the ReLU's scale (quant_tool's in-place rule)
    assert [ln.split()[0] for ln in lines] == ["images", "11", "13", "15", "17", "19",
                                               "21__preact", "21"]
    assert lines[-1].split()[1] == lines[-2].split()[1]
    written = read_tmfile([str(out)])
    for ln in lines:
        name, scale, _ = ln.split()
        assert abs(written.table.activations[name].scale - float(scale)) <= 6e-7  # %f rounding
    assert set(written.table.precision) == {"Conv_0", "Conv_2", "Conv_4", "Gemm_9", "Gemm_11"}

    again = tmp_path / "from_table.tmfile"
    ptqconv("--from", "tmfile", "--to", "tmfile-int8", "-i", model, "-o", again,
            "--load-table", table)
    loaded = read_tmfile([str(again)])
    for ln in lines:
        name, scale, _ = ln.split()
        assert np.float32(loaded.table.activations[name].scale) == np.float32(scale)

    rows = [ln.split("\t") for ln in (digits / "labels.txt").read_text().splitlines()][10:110]
    x = np.stack([np.asarray(Image.open(digits / f).convert("L"), np.float32) for f, _ in rows])
    y = np.array([int(label) for _, label in rows])
    session = make_session(insert_qdq(loaded.graph, loaded.table), threads=1)
    pred = [session.run(None, {"images": ((xi / 255 - 0.1307) / 0.3081)[None, None]})[0].argmax()
            for xi in x]
    assert (np.array(pred) == y).mean() >= 0.97
