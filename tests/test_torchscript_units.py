"""TorchScript reader pieces that need neither pnnx nor the shared data: archive checks, input
shape options, the pnnx-missing message and the Reduction rewrite."""
import zipfile
from importlib import metadata

import pytest

from ptqconv.core.config import PREPROCESS_SHAPES, load_config
from ptqconv.core.errors import ModelFormatError, PtqconvError, UnsupportedOpsError
from ptqconv.formats.torchscript import pnnx as pnnx_mod
from ptqconv.formats.torchscript.archive import inspect_archive, sniff_torchscript
from ptqconv.formats.torchscript.fixups import rewrite_global_means
from ptqconv.formats.torchscript.reader import choose_shapes, read_torchscript
from ptqconv.formats.torchscript.shapes import parse_input_shapes, pnnx_argument


def _zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return str(path)


def _torchscript_layout(path, traced=True):
    """A zip laid out like torch.jit.save output (contents are not valid pickles)."""
    entries = {"m/data.pkl": b"\x80\x02.", "m/constants.pkl": b"\x80\x02.", "m/version": b"3",
               "m/code/__torch__/m.py": b"class M: pass\n", "m/data/0": b"\0" * 16}
    if traced:
        entries["m/traced_inputs.pkl"] = b"\x80\x02."
    return _zip(path, entries)


def test_archive_layout_is_recognised(tmp_path):
    ts = _torchscript_layout(tmp_path / "ok.pt")
    assert sniff_torchscript(ts)
    info = inspect_archive(ts)
    assert (info.prefix, info.traced_inputs) == ("m", True)
    assert inspect_archive(_torchscript_layout(tmp_path / "s.pt", traced=False)).traced_inputs is False


def test_state_dict_zip_is_not_torchscript(tmp_path):
    sd = _zip(tmp_path / "sd.pt", {"archive/data.pkl": b"x", "archive/version": b"3",
                                    "archive/data/0": b"\0" * 8})
    assert not sniff_torchscript(sd)
    with pytest.raises(ModelFormatError, match="state_dict.*torch.jit.trace"):
        inspect_archive(sd)


def test_truncated_and_damaged_archives(tmp_path):
    good = (tmp_path / "ok.pt")
    _torchscript_layout(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    assert not sniff_torchscript(str(cut))
    with pytest.raises(ModelFormatError, match="not a readable zip archive"):
        inspect_archive(str(cut))
    bad = bytearray(data)
    k = data.index(b"class M")  # inside the stored code entry
    bad[k] ^= 0xFF
    crc = tmp_path / "crc.pt"
    crc.write_bytes(bytes(bad))
    with pytest.raises(ModelFormatError, match="CRC"):
        inspect_archive(str(crc))


@pytest.mark.parametrize("spec, expected", [
    ("1,3,227,227", [[1, 3, 227, 227]]),
    ("1,3,224,224;1,10", [[1, 3, 224, 224], [1, 10]]),
    ("[1,3,224,224],[1, 10]", [[1, 3, 224, 224], [1, 10]]),
    ([1, 3, 32, 32], [[1, 3, 32, 32]]),
    ([[1, 3, 32, 32], [1, 4]], [[1, 3, 32, 32], [1, 4]]),
    (None, None),
])
def test_input_shape_option_forms(spec, expected):
    assert parse_input_shapes(spec) == expected


@pytest.mark.parametrize("spec", ["1,x,2", "1,0,3", [1, -3], "1,2,3,4,5,6,7,8,9"])
def test_input_shape_option_errors(spec):
    with pytest.raises(PtqconvError, match="input_shape"):
        parse_input_shapes(spec)


def test_pnnx_shape_argument():
    assert pnnx_argument([[1, 3, 8, 8], [1, 10]]) == "inputshape=[1,3,8,8]f32,[1,10]f32"


def test_shape_precedence():
    hint = {PREPROCESS_SHAPES: [[1, 3, 99, 99]]}
    assert choose_shapes({"input_shape": "1,3,5,5", **hint}, False, "m.pt") == [[1, 3, 5, 5]]
    assert choose_shapes(hint, True, "m.pt") is None  # pnnx takes the traced shapes
    assert choose_shapes(hint, False, "m.pt") == [[1, 3, 99, 99]]
    with pytest.raises(PtqconvError, match="m.pt: .*input_shape"):
        choose_shapes({}, False, "m.pt")


def test_preprocessing_gives_a_shape_hint():
    cfg = load_config({"preprocess": {"pixel": "GRAY", "size": [28, 30]}})
    assert cfg.reader_options()[PREPROCESS_SHAPES] == [[1, 1, 28, 30]]
    cfg = load_config({"preprocess": {"pixel": "RGB", "size": [8, 9], "layout": "NHWC"},
                       "options": {"input_shape": [[1, 8, 9, 3], [1, 4]]}})
    assert cfg.reader_options()[PREPROCESS_SHAPES] == [[1, 8, 9, 3]]
    assert cfg.reader_options()["input_shape"] == [[1, 8, 9, 3], [1, 4]]
    assert PREPROCESS_SHAPES not in load_config({}).reader_options()


def test_missing_pnnx_says_how_to_install(tmp_path, monkeypatch):
    def no_dist(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.delenv(pnnx_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(pnnx_mod.metadata, "files", no_dist)
    assert pnnx_mod.pnnx_status().startswith("UNUSABLE")
    with pytest.raises(pnnx_mod.PnnxMissing, match=r"pip install --no-deps pnnx"):
        read_torchscript([_torchscript_layout(tmp_path / "m.pt")], {})
    monkeypatch.setenv(pnnx_mod.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(pnnx_mod.PnnxMissing, match="not an executable"):
        pnnx_mod.find_pnnx()


def test_pnnx_output_summary_drops_noise():
    out = ("fp16 = 0\ninputshape = [1,3,8,8]f32\n############# pass_level0\n"
           "Load torchscript failed: bad archive\nframe #0: pnnx() [0x1]\n\n"
           "Please export model to torchscript as follows\n----------\nimport torch\n"
           "mod = torch.jit.trace(net, x)\n")
    assert pnnx_mod.summarize_output(out) == "Load torchscript failed: bad archive"


PARAM = """7767517
6 7
Input            in0   0 1 in0
Convolution      conv  1 1 in0 1 0=8 1=3 5=1 6=216 9=1
Split            sp    1 2 1 2 3
Reduction        mean  1 1 2 4 0=3 1=0 -23303=2,1,2 4=1 5=1
Flatten          flat  1 1 4 out0
Reduction        keep  1 1 3 out1 0=3 1=0 -23303=2,1,2 4=1 5=1
"""


def test_spatial_mean_before_flatten_becomes_global_pooling():
    lines = rewrite_global_means(PARAM).splitlines()
    assert lines[5].split() == ["Pooling", "mean", "1", "1", "2", "4", "0=1", "4=1"]
    assert lines[7] == PARAM.splitlines()[7]  # keepdims result not flattened: left alone
    assert lines[:5] == PARAM.splitlines()[:5]
    summed = PARAM.replace("mean  1 1 2 4 0=3", "mean  1 1 2 4 0=0")
    assert rewrite_global_means(summed).splitlines()[5] == summed.splitlines()[5]


def _fake_pnnx(tmp_path, body):
    """A stand-in pnnx executable (shell script) to drive the reader's failure paths."""
    exe = tmp_path / "fake_pnnx"
    exe.write_text("#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in ncnnparam=*) P=\"${a#ncnnparam=}\";;"
                   " ncnnbin=*) B=\"${a#ncnnbin=}\";; esac; done\n" + body)
    exe.chmod(0o755)
    return str(exe)


def test_pnnx_failure_names_the_model_and_quotes_pnnx(tmp_path, monkeypatch):
    model = _torchscript_layout(tmp_path / "net.pt")
    monkeypatch.setenv(pnnx_mod.ENV_VAR, _fake_pnnx(tmp_path, (
        "echo 'fp16 = 0'\necho 'unknown operator aten::frobnicate'\n"
        "echo 'frame #0: pnnx() [0x1]'\nexit 3\n")))
    with pytest.raises(PtqconvError) as err:
        read_torchscript([model], {})
    assert str(err.value) == (f"{model}: pnnx failed (exit code 3) converting this TorchScript "
                              f"model: unknown operator aten::frobnicate")
    monkeypatch.setenv(pnnx_mod.ENV_VAR, _fake_pnnx(tmp_path, "kill -SEGV $$\n"))
    with pytest.raises(PtqconvError, match=r"net.pt: pnnx crashed \(signal 11\)"):
        read_torchscript([model], {})


def test_layers_the_ncnn_reader_lacks_are_listed_for_the_model(tmp_path, monkeypatch):
    model = _torchscript_layout(tmp_path / "net.pt")
    monkeypatch.setenv(pnnx_mod.ENV_VAR, _fake_pnnx(tmp_path, (
        "printf '7767517\\n3 3\\nInput in0 0 1 in0\\n"
        "Reduction sum 1 1 in0 a 0=0 1=0 -23303=2,1,2 4=0 5=1\\nFrobnicate f 1 1 a out0\\n' > \"$P\"\n"
        ": > \"$B\"\n")))
    with pytest.raises(UnsupportedOpsError) as err:
        read_torchscript([model], {})
    assert str(err.value).startswith(f"{model} (after pnnx, ncnn layers): unsupported op(s): ")
    assert "Frobnicate" in str(err.value)
