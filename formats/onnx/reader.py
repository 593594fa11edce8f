"""Read an ``.onnx`` file into the IR (opset 11 and later)."""
import onnx
from google.protobuf.message import DecodeError

from ptqconv.core.errors import ModelFormatError, PtqconvError
from ptqconv.core.ir.onnx_bridge import from_onnx
from ptqconv.core.records import LoadedModel

MIN_OPSET = 11


def sniff_onnx(path):
    """True if ``path`` looks like a serialized ONNX ModelProto (field 1 ir_version varint)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return path.lower().endswith(".onnx") or (len(head) == 2 and head[0] == 0x08 and head[1] < 0x20)


def read_onnx(paths, options=None):
    """Read ``paths[0]`` and return a :class:`LoadedModel` (float graph; a QDQ model keeps its
    Q/DQ nodes as ops)."""
    path = paths[0]
    try:
        model = onnx.load(path, load_external_data=False)
    except FileNotFoundError:
        raise PtqconvError(f"{path}: model file not found") from None
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        raise ModelFormatError(path, None, f"not a valid ONNX model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'truncated or corrupt'})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelFormatError(path, None, "not a valid ONNX model (no graph)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, 13)
        except Exception as exc:
            raise ModelFormatError(path, None, f"opset {opset} is older than {MIN_OPSET} and "
                                   f"could not be converted: {exc}") from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelFormatError(path, None, f"invalid ONNX model: {str(exc).splitlines()[0]}") from None
    return LoadedModel(from_onnx(model, source=path))
