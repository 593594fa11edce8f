"""ncnn ``.bin`` weight blobs: reading (bounds-checked against the file size) and writing.

A *tagged* blob starts with a 4-byte storage tag (fp32, fp16, int8, or a legacy 256-entry
palette), holds ``n`` values and is zero-padded to 4 bytes; a *raw* blob is ``n`` float32 values
with no tag (shared specs/ncnn.md §2).
"""
from __future__ import annotations

import struct
from typing import List, Tuple

import numpy as np

from ptqconv.core.errors import ModelFormatError

TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_ALT = 0x0002C056
TINY = 1e-30


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


class BinReader:
    """Sequential reader over the bytes of a ``.bin``; every size is checked before use."""

    def __init__(self, data: bytes, path):
        self.data = memoryview(data)
        self.path = str(path)
        self.offset = 0

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.offset

    def _take(self, nbytes: int, what: str) -> memoryview:
        if nbytes < 0 or nbytes > self.remaining:
            raise ModelFormatError(self.path, f"offset {self.offset}",
                                   f"{what} needs {nbytes} bytes but only {self.remaining} remain "
                                   f"(truncated file, or the .param does not match this .bin)")
        chunk = self.data[self.offset:self.offset + nbytes]
        self.offset += nbytes
        return chunk

    def _count(self, n: int, what: str) -> int:
        n = int(n)
        if n < 0:
            raise ModelFormatError(self.path, f"offset {self.offset}",
                                   f"{what}: negative element count {n}")
        return n

    def raw(self, n: int, what: str) -> np.ndarray:
        """``n`` untagged float32 values."""
        n = self._count(n, what)
        return np.frombuffer(self._take(4 * n, what), dtype="<f4").astype(np.float32)

    def tagged(self, n: int, what: str) -> Tuple[np.ndarray, str]:
        """A tagged blob of ``n`` values: (array, kind). ``kind`` is "fp32", "fp16", "int8"
        (array of int8 codes) or "palette"."""
        n = self._count(n, what)
        start = self.offset
        head = bytes(self._take(4, what + " storage tag"))
        tag = struct.unpack("<I", head)[0]
        if tag == TAG_FP16:
            arr = np.frombuffer(self._take(2 * n, what), dtype="<f2").astype(np.float32)
            self._take(_pad4(2 * n), what + " padding")
            return arr, "fp16"
        if tag == TAG_INT8:
            arr = np.frombuffer(self._take(n, what), dtype=np.int8).copy()
            self._take(_pad4(n), what + " padding")
            return arr, "int8"
        if tag in (TAG_FP32, TAG_FP32_ALT):
            return self.raw(n, what), "fp32"
        if sum(head) != 0 and head[0] != 0:
            table = np.frombuffer(self._take(256 * 4, what + " palette"), dtype="<f4")
            idx = np.frombuffer(self._take(n, what), dtype=np.uint8)
            self._take(_pad4(n), what + " padding")
            return table[idx].astype(np.float32), "palette"
        raise ModelFormatError(self.path, f"offset {start}", f"{what}: unknown weight storage tag "
                               f"0x{tag:08x}")


class BinWriter:
    """Collects blobs in order and returns the ``.bin`` bytes."""

    def __init__(self):
        self.parts: List[bytes] = []

    def raw(self, arr) -> None:
        """Untagged float32 values (magnitudes below 1e-30 written as 0, as ncnn's tools do)."""
        a = np.asarray(arr, dtype=np.float32).reshape(-1)
        a = np.where(np.abs(a) < TINY, np.float32(0), a).astype("<f4")
        self.parts.append(a.tobytes())

    def tagged_float(self, arr, fp16: bool = False) -> None:
        """A tagged weight blob in fp32 (tag 0) or fp16."""
        a = np.asarray(arr, dtype=np.float32).reshape(-1)
        if fp16:
            data = np.clip(a, -65504, 65504).astype("<f2").tobytes()
            self.parts.append(struct.pack("<I", TAG_FP16) + data + b"\0" * _pad4(len(data)))
        else:
            self.parts.append(struct.pack("<I", TAG_FP32))
            self.raw(a)

    def tagged_int8(self, codes) -> None:
        """A tagged int8 weight blob."""
        data = np.asarray(codes, dtype=np.int8).reshape(-1).tobytes()
        self.parts.append(struct.pack("<I", TAG_INT8) + data + b"\0" * _pad4(len(data)))

    def extend(self, other: "BinWriter") -> None:
        """Append another writer's blobs."""
        self.parts.extend(other.parts)

    def getvalue(self) -> bytes:
        """The concatenated ``.bin`` bytes."""
        return b"".join(self.parts)
