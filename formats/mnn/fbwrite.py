"""Serialize a tree of :class:`T` tables into one FlatBuffers buffer (``flatbuffers.Builder``).

A :class:`T` lists ``slot -> value``; the kind of each value decides how it is stored:
``Scalar`` (struct format + number), ``str``, ``T`` (sub-table), numpy array (vector of scalars),
list of ``T`` (vector of tables), list of ``str`` (vector of strings). Children are built before
their parent as FlatBuffers requires. Scalars are always written, defaults included, so the file
never depends on a default we might have wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from ptqconv.core.errors import PtqconvError


@dataclass(frozen=True)
class Scalar:
    """A scalar field value with its struct format (b, B, ?, h, H, i, I, f, q)."""

    fmt: str
    value: object


def i32(v):
    """An int32 field."""
    return Scalar("i", int(v))


def f32(v):
    """A float32 field."""
    return Scalar("f", float(v))


def i8(v):
    """A signed byte field (byte enums such as MNN_DATA_FORMAT)."""
    return Scalar("b", int(v))


def u8(v):
    """An unsigned byte field (union type tags)."""
    return Scalar("B", int(v))


def flag(v):
    """A bool field."""
    return Scalar("?", bool(v))


class T:
    """A table to write: ``T(slot=value, ...)`` via :meth:`set` or the constructor dict."""

    def __init__(self, fields: Dict[int, object] = None):
        self.fields: Dict[int, object] = {k: v for k, v in (fields or {}).items()
                                          if v is not None}

    def set(self, slot: int, value) -> "T":
        """Set ``slot`` (None leaves the field out); returns self."""
        if value is not None:
            self.fields[slot] = value
        return self


_PREPEND = {"b": "PrependInt8Slot", "B": "PrependUint8Slot", "?": "PrependBoolSlot",
            "h": "PrependInt16Slot", "H": "PrependUint16Slot", "i": "PrependInt32Slot",
            "I": "PrependUint32Slot", "q": "PrependInt64Slot", "f": "PrependFloat32Slot"}


def _build(b, value):
    """Build a non-scalar value and return its offset."""
    if isinstance(value, T):
        return _build_table(b, value)
    if isinstance(value, str):
        return b.CreateString(value)
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value.reshape(-1))
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        return b.CreateNumpyVector(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
    if isinstance(value, list):
        offsets = [_build(b, v) for v in value]
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _build_table(b, table: T):
    children = {slot: _build(b, v) for slot, v in sorted(table.fields.items())
                if not isinstance(v, Scalar)}
    nslots = max(table.fields) + 1 if table.fields else 0
    b.StartObject(nslots)
    # Larger scalars first keeps padding small; order does not matter for correctness.
    for slot, v in sorted(table.fields.items()):
        if isinstance(v, Scalar):
            getattr(b, _PREPEND[v.fmt])(slot, v.value, v.value)
    for slot, off in children.items():
        b.PrependUOffsetTRelativeSlot(slot, off, 0)
    return b.EndObject()


def serialize(root: T, size_hint: int = 1 << 16) -> bytes:
    """Return the FlatBuffers buffer whose root table is ``root``."""
    try:
        import flatbuffers
    except ImportError:
        raise PtqconvError("writing .mnn files needs the flatbuffers package "
                           "(pip install 'ptqconv[mnn]')") from None
    b = flatbuffers.Builder(size_hint)
    b.ForceDefaults(True)
    b.Finish(_build_table(b, root))
    return bytes(b.Output())
