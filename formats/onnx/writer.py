"""Write the IR as ``.onnx``: float, or QDQ int8/uint8 when a quantization table is given."""
import onnx

from ptqconv.core.atomic import atomic_outputs
from ptqconv.core.errors import PtqconvError
from ptqconv.core.ir.onnx_bridge import to_onnx
from ptqconv.formats.onnx.qdq import insert_qdq


def write_onnx(graph, table, paths, options=None):
    """Write ``graph`` to ``paths[0]``; with ``table``, as a QDQ model onnxruntime runs in int8.
    The model passes ``onnx.checker`` before anything is renamed into place."""
    if table is not None:
        graph = insert_qdq(graph, table)
    model = to_onnx(graph)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise PtqconvError(f"internal error: the written ONNX model is invalid: "
                           f"{str(exc).splitlines()[0]}") from None
    with atomic_outputs(paths[:1]) as (tmp,):
        onnx.save(model, tmp)
    return paths[:1]
