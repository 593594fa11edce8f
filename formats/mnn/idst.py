"""The IDSTQuan type-1 ("dense palette") weight buffer of MNN int8 convolutions (specs/mnn.md §5.2).

Layout: ``u8 ndims | dims (uint16 LE, uint32 LE when shapeInt32) | u8 palette_count (0 = 256) |
int8 palette[count] | indices bit-packed MSB-first, ceil(log2(count)) bits each``. ptqconv writes
the linear palette ``-2^(bits-1) .. 2^(bits-1)-1`` so index = code + 2^(bits-1).
"""
from __future__ import annotations

import math
import struct
from typing import Tuple

import numpy as np


class IdstError(ValueError):
    """A malformed weight buffer; ``offset`` is relative to the start of the buffer."""

    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = offset


def encode_dense(codes: np.ndarray, bits: int = 8) -> Tuple[np.ndarray, bool]:
    """Encode int8 ``codes`` shaped ``[out, ...]`` as a type-1 buffer; returns (int8 bytes,
    shapeInt32 flag)."""
    codes = np.asarray(codes)
    dims = (codes.shape[0], int(np.prod(codes.shape[1:], dtype=np.int64)))
    wide = max(dims) > 0xFFFF
    head = bytes([2]) + struct.pack("<2I" if wide else "<2H", *dims)
    count = 1 << bits
    palette = np.arange(-(count // 2), count // 2, dtype=np.int64)
    index = codes.reshape(-1).astype(np.int64) + count // 2
    if index.size and (index.min() < 0 or index.max() >= count):
        raise ValueError(f"weight codes do not fit in {bits} bits")
    packed = _pack_bits(index, bits)
    body = head + bytes([count & 0xFF]) + palette.astype(np.int8).tobytes() + packed
    return np.frombuffer(body, dtype=np.int8), wide


def decode_dense(buf: np.ndarray, shape_int32: bool = False) -> np.ndarray:
    """Decode a type-1 buffer into int codes shaped ``[dims[0], dims[1]]`` (int16, since a palette
    entry may be any int8). Raises :class:`IdstError` for any inconsistency."""
    data = np.asarray(buf).view(np.uint8)
    if data.size < 1:
        raise IdstError(0, "empty quantized weight buffer")
    ndims = int(data[0])
    width = 4 if shape_int32 else 2
    if ndims < 1 or ndims > 4:
        raise IdstError(0, f"quantized weight buffer has {ndims} dimensions")
    pos = 1 + ndims * width
    if data.size < pos + 1:
        raise IdstError(data.size, "quantized weight buffer is truncated in its header")
    dims = struct.unpack_from("<%d%s" % (ndims, "I" if shape_int32 else "H"),
                              data.tobytes()[1:pos])
    total = 1
    for d in dims:
        total *= int(d)
    count = int(data[pos]) or 256
    pos += 1
    if data.size < pos + count:
        raise IdstError(pos, "quantized weight palette runs past the end of its buffer")
    palette = data[pos:pos + count].view(np.int8).astype(np.int16)
    pos += count
    bits = max(1, math.ceil(math.log2(count))) if count > 1 else 1
    need = (bits * total + 7) // 8
    if data.size < pos + need:
        raise IdstError(pos, f"quantized weight indices ({total} x {bits} bit) run past the end "
                             f"of their buffer")
    index = _unpack_bits(data[pos:pos + need], bits, total)
    if index.size and index.max() >= count:
        raise IdstError(pos, "quantized weight index outside its palette")
    return palette[index].reshape(dims[0], -1) if ndims > 1 else palette[index]


def _pack_bits(index: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return index.astype(np.uint8).tobytes()
    shifts = np.arange(bits - 1, -1, -1)
    flat = ((index[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(flat).tobytes()  # MSB first, zero padded


def _unpack_bits(raw: np.ndarray, bits: int, total: int) -> np.ndarray:
    if bits == 8:
        return raw[:total].astype(np.int64)
    flat = np.unpackbits(raw)[:bits * total].reshape(total, bits).astype(np.int64)
    return (flat << np.arange(bits - 1, -1, -1)).sum(axis=1)
