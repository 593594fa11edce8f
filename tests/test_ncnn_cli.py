"""Malformed and unsupported ncnn files through the ``ptqconv`` console script: non-zero exit,
one error line naming the file and the line or byte offset, no traceback, no output written."""
import re
import subprocess

import pytest

from conftest import shared_path


def _corrupt(tmp_path, name, edit_param=None, edit_bin=None):
    src = shared_path("models", "squeezenet_v1.1", "squeezenet_v1.1.param")
    param, binf = tmp_path / f"{name}.param", tmp_path / f"{name}.bin"
    text = src.read_text()
    param.write_text(edit_param(text) if edit_param else text)
    data = (src.parent / "squeezenet_v1.1.bin").read_bytes()
    binf.write_bytes(edit_bin(data) if edit_bin else data)
    return param, binf


def _replace_line(text, start, new):
    return "\n".join(new if ln.startswith(start) else ln for ln in text.split("\n"))


CASES = {
    # name: (param edit, bin edit, file the message names, location pattern, message pattern)
    "truncated_bin": (None, lambda b: b[:100000], ".bin", r"offset \d+", r"needs \d+ bytes"),
    "trailing_bytes": (None, lambda b: b + b"\0" * 8, ".bin", r"offset \d+", r"bytes left"),
    "wrong_magic": (lambda t: t.replace("7767517", "7767518", 1), None, ".param", r"line 1",
                    r"magic"),
    "unknown_layers": (lambda t: t.replace("Concat                   fire2", "Concatt fire2")
                       .replace("Softmax ", "SoftMax "), None, ".param", r"line \d+",
                       r"Concatt \(line \d+\) \(did you mean 'Concat'\?\), SoftMax \(line"),
    "blob_before_defined": (lambda t: t.replace("1 1 pool1 fire2/squeeze1x1_fire2",
                                                "1 1 pool9 fire2/squeeze1x1_fire2"), None,
                            ".param", r"line 6", r"blob 'pool9' before"),
    "layer_count": (lambda t: t.replace("48 56", "49 56", 1), None, ".param", r"line 2",
                    r"declares 49 layers"),
    "blob_count": (lambda t: t.replace("48 56", "48 50", 1), None, ".param", r"line 2",
                   r"declares 50 blobs"),
    "io_count": (lambda t: t.replace("Pooling                  pool1                    1 1",
                                     "Pooling                  pool1                    1 7"),
                 None, ".param", r"line 5", r"declares 1 input\(s\) and 7 output"),
    "huge_weight_size": (lambda t: t.replace("6=1728", "6=1728000000"), None, ".bin",
                         r"offset 4\b", r"conv1.*needs 3456000000 bytes"),
    "huge_array_count": (lambda t: _replace_line(t, "Pooling                  pool1",
                                                 "Pooling pool1 1 1 conv1_relu_conv1 pool1 "
                                                 "-23301=99999999,1"), None, ".param",
                         r"line 5", r"declares 99999999 values but lists 1"),
}


def _check(name, param, out, code, err):
    _, _, suffix, where, what = CASES[name]
    lines = err.strip().splitlines()
    assert code != 0, name
    assert len(lines) == 1 and "Traceback" not in err, (name, err)
    assert lines[0].startswith("ptqconv: error:"), (name, err)
    assert str(param)[: -len(".param")] + suffix in lines[0], (name, err)
    assert re.search(where, lines[0]) and re.search(what, lines[0]), (name, err)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), name


def _argv(param, out):
    return ["-q", "--from", "ncnn", "--to", "onnx", "-i", str(param), "-o", str(out)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_file_fails_with_one_line(tmp_path, capfd, name):
    """Every case through the CLI entry point (in-process, to keep the suite fast)."""
    from ptqconv.core.cli import main
    param, _ = _corrupt(tmp_path, name, *CASES[name][:2])
    out = tmp_path / "out.onnx"
    code = main(_argv(param, out))
    _check(name, param, out, code, capfd.readouterr().err)


def test_malformed_files_through_console_script(tmp_path):
    """Two cases through the installed ``ptqconv`` script in a real subprocess."""
    procs = []
    for name in ("truncated_bin", "unknown_layers"):
        param, _ = _corrupt(tmp_path, name, *CASES[name][:2])
        out = tmp_path / f"{name}_out.onnx"
        procs.append((name, param, out, subprocess.Popen(
            ["ptqconv"] + _argv(param, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)))
    for name, param, out, proc in procs:
        _, err = proc.communicate(timeout=120)
        _check(name, param, out, proc.returncode, err)


def test_writer_lists_every_unsupported_op(tmp_path, capfd):
    """An IR with several ops ncnn cannot take is refused in one line, nothing written."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, TensorProto
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])
    nodes = [helper.make_node("Erf", ["x"], ["a"]), helper.make_node("Einsum", ["a"], ["b"],
                                                                     equation="nchw->nchw"),
             helper.make_node("DepthToSpace", ["b"], ["y"], blocksize=2)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "m.param"
    from ptqconv.core.cli import main
    code = main(["-q", "--to", "ncnn", "-i", str(src), "-o", str(out)])
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "Traceback" not in err
    assert all(op in lines[0] for op in ("Erf", "Einsum", "DepthToSpace"))
    assert not out.exists() and not (tmp_path / "m.bin").exists()
