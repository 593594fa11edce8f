"""Running an IR graph on onnxruntime (used by calibration, corrections and checks)."""
from __future__ import annotations

from typing import Iterable, Optional

import onnxruntime as ort

from ptqconv.core.errors import PtqconvError
from ptqconv.core.ir.onnx_bridge import to_onnx


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Session options with ``threads`` intra-op threads (0 = onnxruntime's default)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def make_session(graph, extra_outputs: Iterable[str] = (), threads: int = 0,
                 batch: Optional[int] = None) -> ort.InferenceSession:
    """Build an onnxruntime session for ``graph`` exposing ``extra_outputs`` as outputs.

    With ``batch`` > 1 the first input dimension is made symbolic.
    """
    model = to_onnx(graph, extra_outputs=extra_outputs, keep_value_info=False)
    if batch and batch > 1:
        for vi in list(model.graph.input) + list(model.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if len(dims):
                dims[0].dim_param = "batch"
    return session_from_model(model, threads, graph.name)


def session_from_model(model, threads: int = 0, name: str = "model") -> ort.InferenceSession:
    """Build a CPU onnxruntime session from an ONNX ``ModelProto`` with a clear error."""
    try:
        return ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise PtqconvError(f"onnxruntime cannot load '{name}': {str(exc).splitlines()[0]}") from None
