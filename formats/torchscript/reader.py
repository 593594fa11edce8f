"""Reader ``torchscript``: TorchScript file -> pnnx (in a temporary folder) -> ncnn reader -> IR.

The file is checked as a zip archive first (pnnx takes any non-zip file for ONNX and may crash on
garbage); then pnnx runs with ``fp16=0`` so the weights stay float32, and the ncnn param/bin it
writes are read by the host's ``ncnn`` reader. Input shapes come from the ``input_shape`` option,
else from the shapes recorded by ``torch.jit.trace``, else from the image preprocessing size.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import List, Optional

from ptqconv.core import log
from ptqconv.core.config import PREPROCESS_SHAPES
from ptqconv.core.errors import ModelFormatError, PtqconvError, UnsupportedOpsError
from ptqconv.core.plugins import get_registry
from ptqconv.core.records import LoadedModel
from ptqconv.formats.torchscript.archive import inspect_archive
from ptqconv.formats.torchscript.fixups import rewrite_global_means
from ptqconv.formats.torchscript.pnnx import PnnxMissing, find_pnnx, run_pnnx, summarize_output
from ptqconv.formats.torchscript.shapes import (parse_input_shapes, pnnx_argument,
                                                read_pnnx_input_shapes)

DEFAULT_TIMEOUT = 900.0
# pnnx: "input_shapes[0] expect [1,3,227,227]f32 but got [1,4,227,227]f32"
_SHAPE_MISMATCH = re.compile(r"input_shapes\[(\d+)\] expect (\S+) but got (\S+)")


def _input_name(index: int) -> str:
    return f"in{index}"  # pnnx names the ncnn inputs in0, in1, ... in argument order


def choose_shapes(options: dict, traced: bool, path: str) -> Optional[List[List[int]]]:
    """The shapes to give pnnx: the ``input_shape`` option, else None when the file records its
    traced inputs (pnnx reads them), else the preprocessing size; raises when there is none."""
    shapes = parse_input_shapes(options.get("input_shape"))
    if shapes is not None or traced:
        return shapes
    hint = options.get(PREPROCESS_SHAPES)
    if hint:
        log.step(f"torchscript: input shape {', '.join(map(str, hint))} from the preprocessing "
                 f"size")
        return [list(s) for s in hint]
    raise PtqconvError(f"{path}: this TorchScript file records no example input shapes (saved "
                       f"from torch.jit.script?); give them with --input-shape 1,3,224,224, "
                       f"--option input_shape=1,3,224,224, 'options: {{input_shape: [1, 3, 224, "
                       f"224]}}' in the config, or set preprocess.size")


def _pnnx_failure(path: str, returncode: int, output: str, shapes) -> PtqconvError:
    m = _SHAPE_MISMATCH.search(output)
    if m:
        k = int(m.group(1))
        return PtqconvError(f"{path}: wrong input shape for input '{_input_name(k)}' (#{k + 1}): "
                            f"the model was traced with {m.group(2)} but {m.group(3)} was given "
                            f"(option input_shape)")
    how = f"crashed (signal {-returncode})" if returncode < 0 else f"failed (exit code {returncode})"
    given = f" with input shape {pnnx_argument(shapes)[11:]}" if shapes else ""
    return PtqconvError(f"{path}: pnnx {how} converting this TorchScript model{given}: "
                        f"{summarize_output(output)}")


def _link_model(path: str, workdir: str) -> str:
    """A name for the model inside ``workdir`` (pnnx parses key=value arguments and derives
    names from the path, so the user's path is never passed as is)."""
    target = os.path.join(workdir, "model.pt")
    try:
        os.symlink(os.path.abspath(path), target)
    except OSError:
        import shutil
        shutil.copyfile(path, target)
    return target


def pnnx_to_ncnn(path: str, work: str, shapes, timeout: float = DEFAULT_TIMEOUT):
    """Run pnnx on the TorchScript file ``path`` inside the folder ``work`` (float32 weights).

    Returns (ncnn param path, ncnn bin path, input shapes pnnx used); the param is already
    rewritten by :func:`rewrite_global_means`. Raises one-line errors naming ``path``.
    """
    try:
        exe = find_pnnx()
    except PnnxMissing as exc:
        raise PnnxMissing(f"{path}: {exc}") from None
    model = _link_model(path, work)
    out = {key: os.path.join(work, name) for key, name in (
        ("pnnxparam", "m.pnnx.param"), ("pnnxbin", "m.pnnx.bin"), ("pnnxpy", "m_pnnx.py"),
        ("pnnxonnx", "m.pnnx.onnx"), ("ncnnparam", "m.ncnn.param"),
        ("ncnnbin", "m.ncnn.bin"), ("ncnnpy", "m_ncnn.py"))}
    extra = ["fp16=0", "device=cpu"] + ([pnnx_argument(shapes)] if shapes else [])
    log.step(f"torchscript: running pnnx on {path}")
    proc = run_pnnx(exe, model, work, out, extra, timeout)
    param, binfile = out["ncnnparam"], out["ncnnbin"]
    if proc.returncode != 0 or not (os.path.isfile(param) and os.path.isfile(binfile)):
        raise _pnnx_failure(path, proc.returncode, proc.stdout or "", shapes)
    used = read_pnnx_input_shapes(out["pnnxparam"]) if os.path.isfile(out["pnnxparam"]) else []
    used = [u or (shapes[k] if shapes and k < len(shapes) else None)
            for k, u in enumerate(used or shapes or [])]
    with open(param, "r", encoding="utf-8", errors="replace") as f:
        text = f.read()
    with open(param, "w", encoding="utf-8") as f:
        f.write(rewrite_global_means(text))
    return param, binfile, used


def read_torchscript(paths, options=None) -> LoadedModel:
    """Read a TorchScript ``.pt``/``.pth`` file into the float IR through pnnx and the ncnn
    reader. ``options``: ``input_shape`` (see :func:`parse_input_shapes`), ``pnnx_timeout``
    (seconds)."""
    options = dict(options or {})
    path = paths[0]
    info = inspect_archive(path)
    shapes = choose_shapes(options, info.traced_inputs, path)
    timeout = float(options.get("pnnx_timeout", DEFAULT_TIMEOUT))
    with tempfile.TemporaryDirectory(prefix="ptqconv-pnnx-") as work:
        param, binfile, used = pnnx_to_ncnn(path, work, shapes, timeout)
        ncnn_options = {k: v for k, v in options.items() if k not in ("input_shape",
                                                                      PREPROCESS_SHAPES)}
        named = [f"{_input_name(k)}:{','.join(map(str, s))}" for k, s in enumerate(used) if s]
        if named:
            ncnn_options["input_shape"] = ";".join(named)
        try:
            loaded = get_registry().reader("ncnn").read([param, binfile], ncnn_options)
        except UnsupportedOpsError as exc:  # name the user's file, not the temporary one
            raise UnsupportedOpsError(f"{path} (after pnnx, ncnn layers)", exc.items) from None
        except ModelFormatError as exc:
            raise PtqconvError(f"{path}: the ncnn model pnnx wrote for it is not readable: "
                               f"{exc}") from None
    loaded.graph.name = os.path.splitext(os.path.basename(path))[0]
    return loaded
