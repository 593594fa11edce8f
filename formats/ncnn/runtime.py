"""Run an ncnn model with the ``ncnn`` pip package (fp32 arithmetic; int8 layers in int8)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable, Dict, List

import numpy as np

from ptqconv.core.errors import PtqconvError
from ptqconv.formats.ncnn.reader import load_param_file


def model_io(param_path: str):
    """(input blob names, output blob names) of a text ``.param``: Input layers' blobs, and blobs
    that no layer consumes (Split outputs excluded)."""
    pf = load_param_file(param_path)
    consumed = {b for layer in pf.layers for b in layer.inputs}
    inputs = [b for layer in pf.layers if layer.type == "Input" for b in layer.outputs]
    outputs = [b for layer in pf.layers if layer.type != "Split"
               for b in layer.outputs if b not in consumed and layer.type != "Input"]
    return inputs, outputs


class RuntimeMissing(PtqconvError, ImportError):
    """The ``ncnn`` package is not installed (an ImportError, so callers can fall back)."""


def _import_ncnn():
    try:
        import ncnn  # noqa: F401
    except ImportError:
        raise RuntimeMissing("the ncnn runtime is not installed (pip install ncnn)") from None
    return ncnn


@contextlib.contextmanager
def captured_stderr():
    """Capture what C code writes to file descriptor 2; yields a list that receives the text."""
    sink: List[str] = []
    fd = 2
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield sink
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


def load_net(param_path: str, bin_path: str, options=None):
    """An ``ncnn.Net`` with fp32 storage/arithmetic (unless ``runtime_fp16=1`` in options),
    int8 inference on, ``threads`` threads (default 1), packed layout unless ``packing=0``,
    loaded from the two files."""
    ncnn = _import_ncnn()
    options = options or {}
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    half = bool(int(options.get("runtime_fp16", 0)))
    opt.use_fp16_storage = opt.use_fp16_arithmetic = opt.use_fp16_packed = half
    opt.use_bf16_storage = False
    opt.use_int8_inference = True
    opt.use_packing_layout = bool(int(options.get("packing", 1)))
    opt.num_threads = int(options.get("threads", 1))
    if net.load_param(str(param_path)) != 0:
        raise PtqconvError(f"{param_path}: the ncnn runtime cannot load this param file")
    if net.load_model(str(bin_path)) != 0:
        raise PtqconvError(f"{bin_path}: the ncnn runtime cannot load this weight file")
    return net


def ncnn_runtime(paths, options=None) -> Callable[[Dict[str, np.ndarray]], List[np.ndarray]]:
    """``runtime`` hook: a callable running ``feed`` ({input name: NCHW array, batch axis
    first}) through the model sample by sample; returns the outputs with a batch axis."""
    ncnn = _import_ncnn()
    param_path = str(paths[0])
    bin_path = str(paths[1]) if len(paths) > 1 else os.path.splitext(param_path)[0] + ".bin"
    inputs, outputs = model_io(param_path)
    net = load_net(param_path, bin_path, options)

    def run(feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        missing = [n for n in inputs if n not in feed]
        if missing:
            raise PtqconvError(f"missing input(s) {', '.join(missing)} for {param_path}")
        batch = next(iter(feed.values())).shape[0]
        results: List[List[np.ndarray]] = [[] for _ in outputs]
        for k in range(batch):
            ex = net.create_extractor()
            for name in inputs:
                # clone: in-place layers must not write into (or outlive) the caller's array
                x = np.ascontiguousarray(feed[name][k], dtype=np.float32)
                ex.input(name, ncnn.Mat(x).clone())
            for j, name in enumerate(outputs):
                ret, mat = ex.extract(name)
                if ret != 0:
                    raise PtqconvError(f"ncnn failed to compute '{name}' (error {ret})")
                results[j].append(np.array(mat).copy())
        return [np.stack(r) for r in results]

    run.input_names, run.output_names = inputs, outputs
    return run
