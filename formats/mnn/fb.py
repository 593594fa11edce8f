"""Bounds-checked FlatBuffers table access for untrusted ``.mnn`` files.

Every read checks the offset and length against the buffer before touching it; a violation raises
:class:`ModelFormatError` naming the file and the byte offset. Tables are addressed by field *slot*
(declaration order, see shared specs/mnn.md §1), never through generated code.
"""
from __future__ import annotations

import struct
from typing import List, Optional

import numpy as np

from ptqconv.core.errors import ModelFormatError

_SCALAR = {"b": 1, "B": 1, "?": 1, "h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "Q": 8, "f": 4, "d": 8}
_NP = {"b": "<i1", "B": "<u1", "?": "<u1", "h": "<i2", "H": "<u2", "i": "<i4", "I": "<u4",
       "q": "<i8", "Q": "<u8", "f": "<f4", "d": "<f8"}


class Buffer:
    """An immutable byte buffer plus the file name used in error messages."""

    def __init__(self, data: bytes, path: str):
        self.data = memoryview(data)
        self.size = len(data)
        self.path = str(path)
        self.last = 0  # position of the last table entered, for errors found later

    def fail(self, offset: int, message: str):
        """Raise the one-line format error for ``offset``."""
        raise ModelFormatError(self.path, f"offset {offset}", message)

    def check(self, offset: int, length: int, what: str) -> None:
        """Ensure ``[offset, offset + length)`` lies inside the buffer."""
        if offset < 0 or length < 0 or offset + length > self.size:
            self.fail(offset, f"{what} ({length} byte(s)) runs past the end of the file "
                              f"({self.size} bytes)")

    def scalar(self, offset: int, fmt: str, what: str = "value"):
        """Read one little-endian scalar of struct format ``fmt`` at ``offset``."""
        self.check(offset, _SCALAR[fmt], what)
        return struct.unpack_from("<" + fmt, self.data, offset)[0]

    def root(self) -> "Table":
        """The root table (its uoffset is the first 4 bytes)."""
        if self.size < 8:
            self.fail(0, "file too small to be an MNN model")
        return Table(self, self.scalar(0, "I", "root offset"), "Net")


class Table:
    """A FlatBuffers table at ``pos``; fields are read by slot number with schema defaults."""

    def __init__(self, buf: Buffer, pos: int, name: str = "table"):
        self.buf, self.pos, self.name = buf, pos, name
        buf.last = pos
        if pos % 4 or pos < 0:
            buf.fail(pos, f"{name} table is misaligned or out of range")
        soff = buf.scalar(pos, "i", f"{name} table")
        vt = pos - soff
        buf.check(vt, 4, f"{name} vtable")
        if vt % 2:
            buf.fail(vt, f"{name} vtable is misaligned")
        self.vt_size = buf.scalar(vt, "H")
        self.obj_size = buf.scalar(vt + 2, "H")
        if self.vt_size < 4 or self.vt_size % 2:
            buf.fail(vt, f"{name} vtable has invalid size {self.vt_size}")
        buf.check(vt, self.vt_size, f"{name} vtable")
        buf.check(pos, max(self.obj_size, 4), f"{name} table")
        self.vt = vt

    def _field(self, slot: int, size: int) -> Optional[int]:
        entry = 4 + 2 * slot
        if entry >= self.vt_size:
            return None
        off = self.buf.scalar(self.vt + entry, "H")
        if off == 0:
            return None
        if off + size > self.obj_size:
            self.buf.fail(self.pos + off, f"{self.name} field {slot} lies outside its table")
        return self.pos + off

    def has(self, slot: int) -> bool:
        """True when field ``slot`` is present."""
        return self._field(slot, 1) is not None

    def scalar(self, slot: int, fmt: str, default=0):
        """Scalar field ``slot`` (struct format ``fmt``) or ``default`` when absent."""
        at = self._field(slot, _SCALAR[fmt])
        if at is None:
            return default
        value = self.buf.scalar(at, fmt)
        return bool(value) if fmt == "?" else value

    def _target(self, slot: int) -> Optional[int]:
        at = self._field(slot, 4)
        if at is None:
            return None
        rel = self.buf.scalar(at, "I")
        target = at + rel
        if rel == 0 or target + 4 > self.buf.size:
            self.buf.fail(at, f"{self.name} field {slot} points outside the file "
                              f"(to {target})")
        return target

    def table(self, slot: int, name: str = "table") -> Optional["Table"]:
        """Sub-table at ``slot`` or None."""
        target = self._target(slot)
        return None if target is None else Table(self.buf, target, name)

    def string(self, slot: int, default: Optional[str] = None) -> Optional[str]:
        """UTF-8 string at ``slot`` or ``default``."""
        target = self._target(slot)
        return default if target is None else read_string(self.buf, target)

    def _vector(self, slot: int, elem: int, what: str):
        target = self._target(slot)
        if target is None:
            return None, 0
        count = self.buf.scalar(target, "I", f"{what} length")
        if count > (self.buf.size - target - 4) // max(elem, 1):
            self.buf.fail(target, f"{self.name} {what} of {count} element(s) runs past the end "
                                  f"of the file")
        return target + 4, count

    def array(self, slot: int, fmt: str) -> Optional[np.ndarray]:
        """Vector of scalars at ``slot`` as a read-only numpy array (None when absent)."""
        start, count = self._vector(slot, _SCALAR[fmt], f"field {slot} vector")
        if start is None:
            return None
        return np.frombuffer(self.buf.data, dtype=_NP[fmt], count=count, offset=start)

    def tables(self, slot: int, name: str = "table") -> List["Table"]:
        """Vector of tables at ``slot`` (empty when absent)."""
        start, count = self._vector(slot, 4, f"{name} list")
        if start is None:
            return []
        out = []
        for k in range(count):
            at = start + 4 * k
            out.append(Table(self.buf, at + self.buf.scalar(at, "I"), name))
        return out

    def strings(self, slot: int) -> List[str]:
        """Vector of strings at ``slot`` (empty when absent)."""
        start, count = self._vector(slot, 4, "string list")
        if start is None:
            return []
        return [read_string(self.buf, start + 4 * k + self.buf.scalar(start + 4 * k, "I"))
                for k in range(count)]


def read_string(buf: Buffer, target: int) -> str:
    """Decode the length-prefixed string at ``target``."""
    length = buf.scalar(target, "I", "string length")
    buf.check(target + 4, length, "string")
    return bytes(buf.data[target + 4:target + 4 + length]).decode("utf-8", "replace")
