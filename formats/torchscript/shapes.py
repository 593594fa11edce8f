"""Input shapes for pnnx: parsing the ``input_shape`` option and reading back what pnnx used."""
from __future__ import annotations

import re
from typing import List, Optional

from ptqconv.core.errors import ModelFormatError, PtqconvError

Shape = List[int]
MAX_INPUTS = 64
MAX_RANK = 8
EXAMPLE = "e.g. input_shape=1,3,224,224, several inputs as 1,3,224,224;1,10"


def _bad(spec, why):
    return PtqconvError(f"option input_shape={spec!r}: {why} ({EXAMPLE})")


def _check(spec, shapes: List[Shape]) -> List[Shape]:
    if not shapes or len(shapes) > MAX_INPUTS:
        raise _bad(spec, f"expected 1 to {MAX_INPUTS} shapes")
    for shape in shapes:
        if not 1 <= len(shape) <= MAX_RANK or any(d <= 0 for d in shape):
            raise _bad(spec, f"shape {shape} must have 1 to {MAX_RANK} positive dimensions")
    return shapes


def parse_input_shapes(spec) -> Optional[List[Shape]]:
    """Turn an ``input_shape`` option into one shape per model input, or None when unset.

    Accepts a list of ints (one input), a list of lists, or text: ``1,3,224,224``,
    ``1,3,224,224;1,10`` or ``[1,3,224,224],[1,10]``.
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, (list, tuple)):
        items = list(spec) if spec and isinstance(spec[0], (list, tuple)) else [spec]
        try:
            return _check(spec, [[int(d) for d in item] for item in items])
        except (TypeError, ValueError):
            raise _bad(spec, "expected integers") from None
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise _bad(spec, "expected integers")
    text = re.sub(r"\s+", "", str(spec)).replace("],[", ";")
    text = text.strip("[]")
    try:
        shapes = [[int(d) for d in part.strip("[]").split(",")] for part in text.split(";") if part]
    except ValueError:
        raise _bad(spec, "expected comma-separated integers") from None
    return _check(spec, shapes)


def pnnx_argument(shapes: List[Shape]) -> str:
    """The ``inputshape=`` argument of pnnx for ``shapes`` (float32 inputs)."""
    return "inputshape=" + ",".join("[" + ",".join(str(d) for d in s) + "]f32" for s in shapes)


_INPUT_LINE = re.compile(r"^pnnx\.Input\s+\S+\s+0\s+1\s+(\S+)\s.*?#\1=\(([\d,?]*)\)(\w+)")


def read_pnnx_input_shapes(path: str, limit: int = 64 << 20) -> List[Optional[Shape]]:
    """Shapes of the ``pnnx.Input`` operators in a ``.pnnx.param`` file, in order (None for an
    input whose shape pnnx left dynamic)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise PtqconvError(f"{path}: cannot read pnnx output: {exc}") from None
    if len(data) > limit:
        raise ModelFormatError(path, None, "pnnx param file is too large")
    shapes = []
    for line in data.decode("utf-8", "replace").splitlines():
        m = _INPUT_LINE.match(line)
        if m:
            dims = m.group(2).split(",") if m.group(2) else []
            shapes.append([int(d) for d in dims] if all(d.isdigit() for d in dims) else None)
    return shapes
