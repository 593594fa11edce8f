"""Bounds-checked access to tm2 bytes (reading) and the aligned append buffer (writing).

Every read checks ``offset + size <= file size`` first and every count is checked against the bytes
left before anything is allocated, so a malformed file can only raise :class:`ModelFormatError`.
Offsets are absolute; 0 means "not set" (tmfile.md §1).
"""
from __future__ import annotations

import struct
from typing import List, Optional, Tuple

import numpy as np

from ptqconv.core.errors import ModelFormatError

NOT_SET = 0


class TmBytes:
    """Read-only view of a tmfile with checked primitive reads.

    ``path`` is only used in error messages. ``enter``/``leave`` keep the chain of objects being
    parsed so an offset that points back into one of its own ancestors is reported as a cycle.
    """

    def __init__(self, data: bytes, path: str):
        self.data = memoryview(data)
        self.size = len(data)
        self.path = path
        self._chain: List[Tuple[int, int, str]] = []
        self.missing = 0  # bytes of left-out tensor data read as zeros so far

    def error(self, offset: int, message: str) -> ModelFormatError:
        """Build the one-line error for ``offset``."""
        return ModelFormatError(self.path, f"offset {offset}", message)

    def check(self, offset: int, size: int, what: str) -> None:
        """Raise unless ``size`` bytes at ``offset`` lie inside the file."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise self.error(offset, f"{what} ({size} bytes) runs past the end of the file "
                                     f"({self.size} bytes)")

    def enter(self, offset: int, size: int, what: str) -> None:
        """Check an object's bounds and alignment and push it on the parse chain (cycle check)."""
        self.check(offset, size, what)
        if offset % 4:
            raise self.error(offset, f"{what} is not 4-byte aligned")
        for start, length, owner in self._chain:
            if offset < start + length and start < offset + size:
                raise self.error(offset, f"{what} overlaps its enclosing {owner} at offset "
                                         f"{start} (cycle of offsets)")
        self._chain.append((offset, size, what))

    def leave(self) -> None:
        """Pop the innermost object of the parse chain."""
        self._chain.pop()

    def u16(self, offset: int) -> int:
        """Unsigned 16-bit little-endian value at ``offset``."""
        self.check(offset, 2, "u16")
        return struct.unpack_from("<H", self.data, offset)[0]

    def u32(self, offset: int) -> int:
        """Unsigned 32-bit value at ``offset``."""
        self.check(offset, 4, "u32")
        return struct.unpack_from("<I", self.data, offset)[0]

    def i32(self, offset: int) -> int:
        """Signed 32-bit value at ``offset``."""
        self.check(offset, 4, "i32")
        return struct.unpack_from("<i", self.data, offset)[0]

    def f32(self, offset: int) -> float:
        """binary32 value at ``offset``."""
        self.check(offset, 4, "f32")
        return struct.unpack_from("<f", self.data, offset)[0]

    def unpack(self, fmt: str, offset: int, what: str) -> tuple:
        """``struct.unpack_from`` with a bounds check naming ``what``."""
        self.check(offset, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, offset)

    def vector(self, offset: int, what: str, item: str = "I", item_size: int = 4) -> list:
        """A ``TM2_Vector_*`` (u32 count, then items) at ``offset``: a list of its items.

        The count is checked against the bytes left before the items are read.
        """
        self.check(offset, 4, what)
        if offset % 4:
            raise self.error(offset, f"{what} is not 4-byte aligned")
        count = self.u32(offset)
        if count > (self.size - offset - 4) // item_size:
            raise self.error(offset, f"{what} claims {count} entries, more than the file can hold")
        values = struct.unpack_from("<" + item * count, self.data, offset + 4)
        return list(values)

    def string(self, offset: int, what: str) -> Optional[str]:
        """A ``TM2_String`` at ``offset`` (None if not set), without its trailing NUL."""
        if offset == NOT_SET:
            return None
        self.enter(offset, 8, what)
        size, data_at = self.unpack("<II", offset, what)
        self.leave()
        if size == 0:
            return ""
        self.check(data_at, size, f"characters of {what}")
        raw = bytes(self.data[data_at:data_at + size])
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        return raw.decode("utf-8", "replace")

    def raw(self, offset: int, size: int, what: str) -> bytes:
        """``size`` raw bytes at ``offset``."""
        self.check(offset, size, what)
        return bytes(self.data[offset:offset + size])


class TmBuffer:
    """Append-only output with the reference writer's rules: objects are 4-byte aligned, raw
    payloads are not (tmfile.md §10). Offsets returned are absolute; the 12-byte header is
    reserved at the start and filled by :meth:`finish`."""

    HEADER_SIZE = 12

    def __init__(self):
        self.out = bytearray(self.HEADER_SIZE)

    @property
    def pos(self) -> int:
        """Current end of the file."""
        return len(self.out)

    def raw(self, payload: bytes) -> int:
        """Append unaligned bytes; return their offset."""
        at = self.pos
        self.out += payload
        return at

    def obj(self, fmt: str, *values) -> int:
        """Pad to 4 bytes, append ``struct.pack('<' + fmt, *values)``; return its offset."""
        self.out += b"\0" * (-self.pos % 4)
        at = self.pos
        self.out += struct.pack("<" + fmt, *values)
        return at

    def vector(self, values, item: str = "I") -> int:
        """Append a ``TM2_Vector_*`` object; return its offset."""
        values = list(values)
        return self.obj("I" + item * len(values), len(values), *values)

    def string(self, text: str) -> int:
        """Append the characters plus NUL (raw) then the ``TM2_String``; return its offset."""
        payload = text.encode("utf-8") + b"\0"
        at = self.raw(payload)
        return self.obj("II", len(payload), at)

    def buffer(self, payload: bytes) -> int:
        """Append tensor bytes (raw) then the ``TM2_Buffer``; return its offset."""
        at = self.raw(payload)
        return self.obj("II", len(payload), at)

    def finish(self, root: int, version=(2, 0, 0)) -> bytes:
        """Write the header pointing at ``root`` and return the file bytes."""
        struct.pack_into("<HHHHI", self.out, 0, version[0], version[1], version[2], 0, root)
        return bytes(self.out)


def array_bytes(values: np.ndarray, dtype) -> bytes:
    """Little-endian bytes of ``values`` as ``dtype``."""
    return np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
