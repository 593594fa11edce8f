"""TorchScript reader on the shared SqueezeNet v1.1 (torch.jit.trace file): outputs against
onnxruntime on the same weights as ONNX, int8 to ncnn, and the CLI's one-line errors."""
import shutil
import zipfile

import numpy as np
import pytest

import ptqconv
from cli_helpers import assert_one_line_error, run_cli
from conftest import CAFFE_BGR227, imagenet_split, shared_path
from ptqconv.core.data import load_image
from ptqconv.core.errors import PtqconvError
from ptqconv.core.plugins import get_registry
from ptqconv.formats.torchscript.pnnx import find_pnnx

MODEL = ("models", "squeezenet_v1.1", "squeezenet_v1.1.torchscript.pt")
ONNX = ("models", "squeezenet_v1.1", "squeezenet_v1.1.onnx")
N_IMAGES = 10


def _need_pnnx():
    try:
        find_pnnx()
    except PtqconvError as exc:
        pytest.skip(f"pnnx not available: {exc}")


def _images(n=N_IMAGES):
    _, evaluation = imagenet_split()
    return [load_image(p, CAFFE_BGR227, (227, 227))[None] for p in evaluation[:n]]


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def reference():
    """(images, softmax outputs of the shared ONNX in onnxruntime)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(shared_path(*ONNX)), providers=["CPUExecutionProvider"])
    images = _images()
    return images, [sess.run(None, {"data": x})[0] for x in images]


def _check_against(onnx_path, reference):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    images, expected = reference
    for x, want in zip(images, expected):
        got = sess.run(None, {name: x})[0]
        assert _cosine(got, want) >= 0.9999
        assert int(np.argmax(got)) == int(np.argmax(want))


def test_torchscript_to_onnx_matches_onnxruntime(tmp_path, reference):
    model = shared_path(*MODEL)
    _need_pnnx()
    out = tmp_path / "sq.onnx"
    result = ptqconv.convert({"input": str(model), "output": str(out), "to": "onnx"})
    assert [t.shape for t in result.graph.inputs] == [(1, 3, 227, 227)]  # from the trace
    _check_against(out, reference)


def test_untraced_file_takes_the_preprocessing_size(tmp_path, reference):
    """Without recorded example inputs (as torch.jit.script saves), the shape comes from the
    preprocessing size, and the converted model still matches."""
    model = shared_path(*MODEL)
    _need_pnnx()
    stripped = tmp_path / "untraced.pt"
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(stripped, "w") as dst:
        for info in src.infolist():
            if "traced_inputs" not in info.filename:
                dst.writestr(info, src.read(info))
    out = tmp_path / "sq.onnx"
    with pytest.raises(PtqconvError, match="records no example input shapes"):
        ptqconv.convert({"input": str(stripped), "output": str(out), "to": "onnx"})
    assert not out.exists()
    ptqconv.convert({"input": str(stripped), "output": str(out), "to": "onnx",
                     "preprocess": CAFFE_BGR227.model_dump()})
    _check_against(out, reference)


def test_torchscript_to_ncnn_int8_runs_in_ncnn(tmp_path):
    model = shared_path(*MODEL)
    _need_pnnx()
    pytest.importorskip("ncnn")
    registry = get_registry()
    if "ncnn-int8" not in registry.writer_names():
        pytest.skip("the ncnn-int8 writer is not available yet")
    calib, _ = imagenet_split()
    (tmp_path / "calib.txt").write_text("\n".join(calib[:20]) + "\n")
    out = tmp_path / "sq_int8.param"
    ptqconv.convert({"input": str(model), "output": str(out), "to": "ncnn-int8",
                     "calibration": {"data": str(tmp_path / "calib.txt"), "method": "kl",
                                     "threads": 2},
                     "preprocess": CAFFE_BGR227.model_dump()})
    param = out.read_text()
    assert "8=" in param  # int8 scale terms were written
    run_int8 = registry.formats["ncnn"].runtime([str(out), str(out.with_suffix(".bin"))], {})
    import onnxruntime as ort
    fp32 = ort.InferenceSession(str(shared_path(*ONNX)), providers=["CPUExecutionProvider"])
    agree, cosines = 0, []
    for x in _images():
        want = fp32.run(None, {"data": x})[0]
        got = run_int8({run_int8.input_names[0]: x})[0]
        cosines.append(_cosine(got, want))
        agree += int(np.argmax(got) == np.argmax(want))
    assert agree >= N_IMAGES - 2, cosines
    assert np.median(cosines) >= 0.98, cosines  # softmax outputs against fp32 onnxruntime


def _assert_clean_failure(proc, out, *fragments):
    assert_one_line_error(proc, *fragments)
    assert not out.exists() and not list(out.parent.glob("*.onnx*"))


def test_cli_corrupt_file(tmp_path):
    model = shared_path(*MODEL)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(model.read_bytes()[:100_000])
    out = tmp_path / "out" / "m.onnx"
    proc = run_cli("--from", "torchscript", "--to", "onnx", "-i", bad, "-o", out)
    _assert_clean_failure(proc, out, "corrupt.pt", "not a readable zip archive")


def test_cli_zip_that_is_not_torchscript(tmp_path):
    bad = tmp_path / "weights.pt"
    with zipfile.ZipFile(bad, "w") as zf:  # the container torch.save writes for a state_dict
        zf.writestr("weights/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("weights/version", b"3\n")
        zf.writestr("weights/data/0", b"\0" * 64)
    out = tmp_path / "out" / "m.onnx"
    proc = run_cli("--to", "onnx", "-i", bad, "-o", out)
    _assert_clean_failure(proc, out, "weights.pt", "without TorchScript code", "torch.jit.trace")


def test_cli_wrong_input_shape(tmp_path):
    model = shared_path(*MODEL)
    _need_pnnx()
    local = tmp_path / "squeezenet.pt"
    shutil.copyfile(model, local)
    out = tmp_path / "out" / "m.onnx"
    proc = run_cli("--to", "onnx", "-i", local, "-o", out, "--input-shape", "1,4,227,227")
    _assert_clean_failure(proc, out, "squeezenet.pt", "input 'in0'", "[1,3,227,227]",
                          "[1,4,227,227]")
