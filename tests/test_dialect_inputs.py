"""The shared input pipeline of the dialects and the YAML: raw .txt/.bin/.npy tensors, list
files vs tensor text files, folders mixing images and labels, per-input data, and one-line errors
for malformed tensor files (naming the file, and both shapes when they do not fit)."""
import numpy as np
import pytest

from ptqconv.core.config import Preprocess
from ptqconv.core.data import CalibrationData, list_samples
from ptqconv.core.errors import PtqconvError
from ptqconv.core.inputs import load_tensor_input
from ptqconv.core.ir.graph import TensorInfo
from synthetic import tiny_cnn, write_images
from test_dialects import one_line_error

SHAPE = (1, 3, 4, 5)


def _batches(paths_per_input, shapes):
    inputs = [TensorInfo(f"in{k}", "float32", s) for k, s in enumerate(shapes)]
    data = CalibrationData(inputs, paths_per_input, [Preprocess()] * len(shapes))
    return list(data.batches())


def test_txt_bin_npy_tensors_load_exactly(tmp_path):
    x = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) / 7 - 3
    (tmp_path / "a.txt").write_text("\n".join(repr(float(v)) for v in x.reshape(-1)))
    x.astype("<f4").tofile(tmp_path / "b.bin")
    np.save(tmp_path / "c.npy", x[0])
    for name in ("a.txt", "b.bin", "c.npy"):
        got = load_tensor_input(str(tmp_path / name), SHAPE, "in0")
        np.testing.assert_array_equal(got, x)
    # two samples in one flat file are a batch of two
    np.concatenate([x, x + 1]).astype("<f4").tofile(tmp_path / "two.bin")
    assert load_tensor_input(str(tmp_path / "two.bin"), SHAPE).shape == (2,) + SHAPE[1:]


def test_folders_list_files_and_per_input_data(tmp_path, monkeypatch):
    imgs = tmp_path / "imgs"
    write_images(imgs, count=3, size=8)
    (imgs / "labels.txt").write_text("img_000.png\t1\n")  # not a sample beside images
    assert [p.rsplit("/", 1)[1] for p in list_samples(str(imgs))] == \
        ["img_000.png", "img_001.png", "img_002.png"]
    txt = tmp_path / "txt"
    txt.mkdir()
    for k in range(3):
        (txt / f"s{k}.txt").write_text(" ".join(["%d" % k] * 60))
    assert len(list_samples(str(txt))) == 3  # a folder of tensors only
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(txt / f"s{k}.txt") for k in (2, 0)) + "\n")
    assert list_samples(str(listing)) == [str(txt / "s2.txt"), str(txt / "s0.txt")]
    assert list_samples(str(txt / "s1.txt")) == [str(txt / "s1.txt")]  # a .txt tensor itself
    # ncnn docs' `find images/ -type f > list.txt`: entries relative to the working folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("imgs/img_001.png\n")
    assert list_samples("lists/l.txt") == [str(imgs / "img_001.png")]
    gray = tmp_path / "gray"
    gray.mkdir()
    for k in range(3):
        np.full((1, 1, 4, 5), 10.0 * k, "<f4").tofile(gray / f"g{k}.bin")
    feeds = _batches([list_samples(str(txt)), list_samples(str(gray))], [SHAPE, (1, 1, 4, 5)])
    assert len(feeds) == 3
    np.testing.assert_array_equal(feeds[2]["in0"], np.full(SHAPE, 2.0))
    np.testing.assert_array_equal(feeds[2]["in1"], np.full((1, 1, 4, 5), 20.0))


@pytest.mark.parametrize("name, content, fragments", [
    ("bad.txt", "0.5\n1.5\nabc\n", ["bad.txt (line 3): 'abc' is not a number"]),
    ("empty.txt", "", ["empty.txt: calibration set is empty"]),
    ("odd.bin", b"\x00" * 7, ["odd.bin: 7 bytes is not a whole number of float32 values"]),
    ("short.bin", b"\x00" * 40, ["short.bin: 10 values do not fit model input 'input' shape "
                                 "(1, 3, 16, 16)", "768 values per sample"]),
    ("wrong.npy", "npy", ["wrong.npy: tensor shape (3, 8, 8) does not fit model input 'input' "
                          "shape (1, 3, 16, 16)"]),
    ("junk.npy", b"not numpy", ["junk.npy: not a readable .npy tensor"]),
])
def test_malformed_tensor_files_are_one_line_errors(tmp_path, capsys, name, content, fragments):
    model = tiny_cnn(tmp_path / "tiny.onnx", size=16)
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / name
    if content == "npy":
        np.save(path, np.zeros((3, 8, 8), np.float32))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    line = one_line_error(capsys, "--to", "onnx-int8", "-i", model, "-o", tmp_path / "o.onnx",
                          "--calib", path, "-q")
    for frag in fragments:
        assert frag in line, line
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_shape_needs_a_fixed_input(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(PtqconvError, match="x.bin: model input 'in' has shape .*fixed input"):
        load_tensor_input(str(tmp_path / "x.bin"), (1, "C", 2, 2), "in")
