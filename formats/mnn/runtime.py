"""Running an ``.mnn`` file with the ``MNN`` pip package (tests, benchmarks, ``ptqconv eval``).

Only this module imports MNN, and only when a runtime is asked for; reading and writing files never
does. Inputs are NCHW float arrays; outputs are returned as NCHW numpy arrays.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from ptqconv.core.errors import PtqconvError


def _mnn():
    try:
        import MNN  # noqa: WPS433  (optional dependency)
    except ImportError as exc:  # callers such as ``ptqconv eval`` fall back to onnxruntime
        raise ImportError("running .mnn files needs the MNN package (pip install MNN)") from exc
    return MNN


def mnn_io_names(path: str):
    """(input names, output names) of an ``.mnn`` file, read with ptqconv's own reader."""
    from ptqconv.formats.mnn.reader import read_net
    net = read_net(path)
    return net.input_names(), net.output_names()


class MnnRunner:
    """A loaded MNN module; call it with ``{input name: NCHW array}`` to get the output list."""

    def __init__(self, path: str, inputs: Optional[Sequence[str]] = None,
                 outputs: Optional[Sequence[str]] = None, threads: int = 1):
        mnn = _mnn()
        if inputs is None or outputs is None:
            ins, outs = mnn_io_names(path)
            inputs = list(inputs or ins)
            outputs = list(outputs or outs)
        self.inputs, self.outputs = list(inputs), list(outputs)
        try:
            self.module = mnn.nn.load_module_from_file(str(path), self.inputs, self.outputs,
                                                       thread_num=max(1, int(threads)))
        except Exception as exc:  # MNN raises plain exceptions with its own text
            raise PtqconvError(f"{path}: MNN cannot load the model: {exc}") from None
        if self.module is None:
            raise PtqconvError(f"{path}: MNN cannot load the model")
        self.F = mnn.expr

    def __call__(self, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        F = self.F
        args = []
        for name in self.inputs:
            x = np.ascontiguousarray(feed[name], dtype=np.float32)
            v = F.placeholder(list(x.shape), F.NCHW)
            v.write(x)
            args.append(v)
        outs = self.module.forward(args)
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        result = []
        for y in outs:
            # NC4HW4 is a packed NCHW; NHWC outputs (TensorFlow models) keep their own order,
            # which is the tensor's logical shape in MNN and in ptqconv's IR.
            if y.data_format == F.NC4HW4:
                y = F.convert(y, F.NCHW)
            result.append(np.array(y.read(), dtype=np.float32).reshape(y.shape))
        return result


def mnn_runtime(paths, options=None):
    """The ``ModelFormat.runtime`` hook: a callable running ``paths[0]`` in MNN."""
    options = options or {}
    return MnnRunner(paths[0], threads=int(options.get("threads", 1)))


def mnn_op_counts(path: str, threads: int = 1) -> Dict[str, int]:
    """Run ``path`` once (zero input) in an MNN session and count the executed ops by the type
    MNN reports; ops MNN runs in int8 carry a ``[ DT_INT8 ]`` suffix, e.g.
    ``{"Convolution [ DT_INT8 ]": 35, "Convolution": 1, ...}``."""
    mnn = _mnn()
    interp = mnn.Interpreter(str(path))
    session = interp.createSession({"numThread": max(1, int(threads))})
    counts: Dict[str, int] = {}

    def after(tensors, info):
        key = info.getType().strip()
        counts[key] = counts.get(key, 0) + 1
        return True
    interp.runSessionWithCallBackInfo(session, lambda tensors, info: True, after)
    return counts


def int8_conv_count(counts: Dict[str, int]) -> int:
    """Number of convolutions (dense and depthwise) MNN ran in int8, from :func:`mnn_op_counts`."""
    return sum(v for k, v in counts.items() if k.startswith("Convolution") and "DT_INT8" in k)
