"""Little-endian primitives of the ``.tnnmodel`` file: a bounds-checked reader and a writer.

Strings are ``int32 length`` + bytes (no NUL). A raw buffer is ``u32 magic, i32 data_type,
i32 byte length`` then, when the length is positive, ``i32 ndims`` + dims (v2 magic only) and the
data (tnn.md §3.1). Every length and count is checked against the bytes left before it is used.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ptqconv.core.errors import ModelFormatError

MAGIC_V1 = 0xFABC0002
MAGIC_V2 = 0xFABC0004
MAGICS = (MAGIC_V1, MAGIC_V2)

# DataType enum (tnn.md §2.2) -> numpy dtype of the stored elements.
FLOAT, HALF, INT8, INT32, BFP16, INT64, UINT32 = 0, 1, 2, 3, 4, 5, 6
DTYPES = {FLOAT: np.dtype("<f4"), HALF: np.dtype("<f2"), INT8: np.dtype("i1"),
          INT32: np.dtype("<i4"), BFP16: np.dtype("<u2"), INT64: np.dtype("<i8"),
          UINT32: np.dtype("<u4")}
MAX_NDIMS = 16
MAX_STRING = 1 << 20


@dataclass
class RawBuffer:
    """One raw buffer: TNN ``data_type``, ``dims`` as stored (often empty), flat ``data``
    (numpy array of the stored type; BFP16 kept as its uint16 bits) and its file ``offset``."""

    data_type: int
    dims: Tuple[int, ...]
    data: np.ndarray
    offset: int = 0

    def as_float(self) -> np.ndarray:
        """The elements as float32 (HALF and BFP16 widened, integers converted)."""
        if self.data_type == BFP16:
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        return self.data.astype(np.float32)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(self.data.size)


class Cursor:
    """Sequential bounds-checked reads over ``data``; errors name ``path`` and the offset."""

    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.pos = data, path, 0

    def remaining(self) -> int:
        """Bytes left after the current position."""
        return len(self.data) - self.pos

    def fail(self, message: str, offset=None):
        """Raise the one-line :class:`ModelFormatError` at ``offset`` (default: here)."""
        raise ModelFormatError(self.path, f"offset {self.pos if offset is None else offset}",
                               message)

    def _take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remaining():
            self.fail(f"truncated file: {what} needs {n} bytes but only {self.remaining()} remain")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u32(self, what: str = "value") -> int:
        """Read an unsigned 32-bit integer."""
        return struct.unpack("<I", self._take(4, what))[0]

    def i32(self, what: str = "value") -> int:
        """Read a signed 32-bit integer."""
        return struct.unpack("<i", self._take(4, what))[0]

    def string(self, what: str = "string") -> str:
        """Read an ``int32 length`` + bytes string (UTF-8, no NUL)."""
        start = self.pos
        n = self.i32(f"{what} length")
        if n < 0 or n > min(self.remaining(), MAX_STRING):
            self.fail(f"{what} length {n} is invalid ({self.remaining()} bytes remain)", start)
        raw = self._take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8", start)

    def raw_buffer(self, what: str = "raw buffer") -> RawBuffer:
        """Read one raw buffer (tnn.md §3.1)."""
        start = self.pos
        magic = self.u32(f"{what} magic")
        if magic not in MAGICS:
            self.fail(f"{what}: bad magic 0x{magic:08X} (expected 0xFABC0002 or 0xFABC0004)",
                      start)
        data_type = self.i32(f"{what} data type")
        length = self.i32(f"{what} length")
        if length <= 0:
            dtype = DTYPES.get(data_type, DTYPES[FLOAT])
            return RawBuffer(data_type, (), np.zeros(0, dtype), start)
        if data_type not in DTYPES:
            self.fail(f"{what}: unknown data type {data_type}", start + 4)
        dims: Tuple[int, ...] = ()
        if magic == MAGIC_V2:
            ndims = self.i32(f"{what} ndims")
            if ndims < 0 or ndims > MAX_NDIMS or 4 * ndims > self.remaining():
                self.fail(f"{what}: invalid dimension count {ndims}", self.pos - 4)
            dims = tuple(struct.unpack(f"<{ndims}i", self._take(4 * ndims, f"{what} dims")))
        dtype = DTYPES[data_type]
        if length % dtype.itemsize:
            self.fail(f"{what}: byte length {length} is not a multiple of the element size "
                      f"{dtype.itemsize}", start + 8)
        if length > self.remaining():
            self.fail(f"truncated file: {what} holds {length} bytes but only "
                      f"{self.remaining()} remain", start + 8)
        data = np.frombuffer(self._take(length, what), dtype=dtype).copy()
        if dims and (any(d < 0 for d in dims) or int(np.prod(dims)) != data.size):
            dims = ()  # dims are only a hint; the element count decides
        return RawBuffer(data_type, dims, data, start)


class Writer:
    """Accumulates little-endian primitives into bytes."""

    def __init__(self):
        self.parts = []

    def u32(self, v: int) -> None:
        """Append an unsigned 32-bit integer."""
        self.parts.append(struct.pack("<I", v))

    def i32(self, v: int) -> None:
        """Append a signed 32-bit integer."""
        self.parts.append(struct.pack("<i", int(v)))

    def string(self, s: str) -> None:
        """Append a length-prefixed UTF-8 string."""
        raw = s.encode("utf-8")
        self.i32(len(raw))
        self.parts.append(raw)

    def raw_buffer(self, buf: RawBuffer) -> None:
        """Append a v2 raw buffer with its dims (an empty buffer is the 12-byte record)."""
        data = np.ascontiguousarray(buf.data, dtype=DTYPES[buf.data_type])
        self.u32(MAGIC_V2)
        self.i32(buf.data_type)
        self.i32(data.nbytes)
        if data.nbytes == 0:
            return
        self.i32(len(buf.dims))
        for d in buf.dims:
            self.i32(d)
        self.parts.append(data.tobytes())

    def getvalue(self) -> bytes:
        """All bytes written so far."""
        return b"".join(self.parts)


def raw(data, data_type: int, dims=None) -> RawBuffer:
    """Make a :class:`RawBuffer` of ``data`` stored as ``data_type`` (dims default: its shape)."""
    arr = np.asarray(data)
    if data_type == BFP16:
        raise ValueError("writing BFP16 buffers is not supported")
    stored = arr.astype(DTYPES[data_type]).reshape(-1)
    shape = tuple(int(d) for d in (arr.shape if dims is None else dims))
    return RawBuffer(data_type, shape, stored)
