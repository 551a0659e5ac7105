"""Reader of Core ML's weight file (``weights/weight.bin``, MIL blob storage version 2).

Layout: a 64-byte header (``uint32 count, uint32 version``, padding), then for each tensor a
64-byte metadata record (``uint32 sentinel 0xDEADBEEF, uint32 dtype, uint64 size_in_bytes,
uint64 data_offset``, padding) that a ``blobFileValue.offset`` points at, and the raw
little-endian data at ``data_offset``. Sub-byte types (uint1..uint6, int4) are packed
least-significant bit first, as coremltools writes them.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from evit_deploy.errors import UsageError

SENTINEL = 0xDEADBEEF
HEADER = struct.Struct("<II")
RECORD = struct.Struct("<IIQQ")


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool = False) -> np.ndarray:
    """``count`` ``nbits``-wide integers packed LSB first into bytes -> int8/uint8 array."""
    bits = np.unpackbits(np.ascontiguousarray(packed).view(np.uint8), bitorder="little")
    if bits.size < count * nbits:
        raise UsageError(f"packed {nbits}-bit data holds {bits.size // nbits} values, {count} expected")
    bits = bits[: count * nbits].reshape(count, nbits).astype(np.int16)
    values = (bits << np.arange(nbits, dtype=np.int16)).sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (nbits - 1), values - (1 << nbits), values)
        return values.astype(np.int8)
    return values.astype(np.uint8)


class BlobFile:
    """One weight file, memory-mapped; ``read(offset, dtype, shape)`` returns a tensor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as err:
            raise UsageError(f"{path}: cannot read the Core ML weight file ({err})") from None
        if self.data.size < 64:
            raise UsageError(f"{path}: too short to be a Core ML weight file")
        count, version = HEADER.unpack_from(self.data, 0)
        if version != 2:
            raise UsageError(f"{path}: weight file version {version}; this reader knows version 2")
        self.count = count

    def read(self, offset: int, dtype: np.dtype | str, shape: tuple[int, ...], nbits: int | None = None,
             signed: bool = False) -> np.ndarray:
        if offset + RECORD.size > self.data.size:
            raise UsageError(f"{self.path}: weight offset {offset} is past the end of the file")
        sentinel, _, size, start = RECORD.unpack_from(self.data, offset)
        if sentinel != SENTINEL:
            raise UsageError(f"{self.path}: no weight record at offset {offset} (the file does not match the model)")
        raw = np.asarray(self.data[start:start + size])
        count = int(np.prod(shape, dtype=np.int64))
        if nbits is not None:
            return unpack_bits(raw, nbits, count, signed).reshape(shape)
        array = raw.view(np.dtype(dtype))
        if array.size != count:
            raise UsageError(f"{self.path}: weight at offset {offset} holds {array.size} values, {count} expected")
        return array.reshape(shape).copy()
