"""A checkpoint's ``.index``, checked before TensorFlow reads it.

TensorFlow's ``CheckpointReader`` trusts its index: an entry that does not
parse stops the whole process (a failed ``CHECK``, SIGABRT), and an entry
whose shape is absurd makes it allocate that much. So every entry is read
here first, with the standard library and TensorFlow's own protos, and checked:
each value parses, names a real dtype, a shape with no negative dimension, a
shard that exists, and a span of bytes that lies inside that shard and is as
long as the shape needs. Only then is the file handed to TensorFlow.

The index is a LevelDB-style table: blocks of prefix-compressed
``key -> value`` entries, an index block of handles to them, and a 48-byte
footer. TensorFlow writes it uncompressed; it verifies each block's checksum
itself when it reads, so a damaged block is left for it to refuse.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, Iterator

from ... import dtypes
from ...errors import fail

_FOOTER = 48


class _Damaged(Exception):
    """The table's own structure is broken (raised by the readers below, turned into a FormatError)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= len(data):
            raise _Damaged("a number runs past the end of its block")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if not byte & 0x80:
            return value, pos
    raise _Damaged("a number longer than 64 bits")


def _handle(data: bytes, pos: int = 0) -> tuple[int, int, int]:
    """``(offset, size, next position)`` of a block handle."""
    offset, pos = _varint(data, pos)
    size, pos = _varint(data, pos)
    return offset, size, pos


def _block(data: bytes, offset: int, size: int) -> Iterator[tuple[bytes, bytes]]:
    """The ``(key, value)`` entries of the block at ``offset`` (its 5-byte trailer follows it)."""
    if offset + size + 5 > len(data) - _FOOTER or size < 4:
        raise _Damaged(f"a block at {offset} of {size} bytes lies outside the table")
    if data[offset + size] != 0:
        raise _Damaged("a compressed block (TensorFlow writes none)")
    block = data[offset:offset + size]
    (restarts,) = struct.unpack("<I", block[-4:])
    end = size - 4 - 4 * restarts
    if end < 0:
        raise _Damaged("a block with more restart points than bytes")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > end:
            raise _Damaged("an entry runs past the end of its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def entries(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of an index table, in order."""
    _, _, pos = _handle(data[-_FOOTER:])    # the metaindex block: unused by checkpoints
    offset, size, _ = _handle(data[-_FOOTER:], pos)
    for _, handle in list(_block(data, offset, size)):
        block_offset, block_size, _ = _handle(handle)
        yield from _block(data, block_offset, block_size)


def check_index(prefix: str, shown: str) -> None:
    """Refuse an index TensorFlow would crash or over-allocate on; ``shown`` names the checkpoint in errors."""
    from tensorflow.core.protobuf import tensor_bundle_pb2 as bundle

    index = prefix + ".index"
    with open(index, "rb") as f:
        data = f.read()
    try:
        found = list(entries(data))
    except _Damaged as e:
        raise fail(shown, f"not a readable TensorFlow checkpoint (damaged index: {e})") from None
    if not found or found[0][0] != b"":
        raise fail(shown, "not a readable TensorFlow checkpoint (damaged index: no header entry)")
    keys = [key for key, _ in found]
    if any(a >= b for a, b in zip(keys, keys[1:])):   # TensorFlow would keep one of two, silently
        raise fail(shown, "not a readable TensorFlow checkpoint (damaged index: keys repeated or out of order)")
    header = _parse(bundle.BundleHeaderProto, found[0][1], shown, "the header")
    if header.num_shards < 1 or header.endianness != bundle.BundleHeaderProto.LITTLE:
        raise fail(shown, f"checkpoint index header says {header.num_shards} shards, endianness "
                          f"{header.endianness}; expected at least 1 shard, little-endian")
    sizes = [_shard_size(prefix, i, header.num_shards, shown) for i in range(header.num_shards)]
    for key, value in found[1:]:
        _check_entry(key.decode("utf-8", "replace"), _parse(bundle.BundleEntryProto, value, shown, key), sizes, shown)


def _parse(message: Any, value: bytes, shown: str, what: object) -> Any:
    from google.protobuf.message import DecodeError

    try:
        return message.FromString(value)
    except (DecodeError, RuntimeError, ValueError):
        raise fail(shown, f"not a readable TensorFlow checkpoint (damaged index: entry {what!r} does not parse)") from None


def _shard_size(prefix: str, i: int, total: int, shown: str) -> int:
    shard = f"{prefix}.data-{i:05d}-of-{total:05d}"
    if not os.path.isfile(shard):
        raise fail(shown, f"data shard {os.path.basename(shard)} ({i + 1} of {total}) is missing")
    return os.path.getsize(shard)


def _check_entry(key: str, entry: Any, sizes: list[int], shown: str) -> None:
    from tensorflow.python.framework import dtypes as tf_dtypes

    try:
        dtype = tf_dtypes.as_dtype(entry.dtype).base_dtype
    except TypeError:
        dtype = None
    if dtype is None or entry.dtype == 0:
        raise fail(shown, f"tensor {key!r}: unknown dtype {entry.dtype} in the checkpoint index")
    dims = [d.size for d in entry.shape.dim]
    if entry.shape.unknown_rank or any(d < 0 for d in dims):
        raise fail(shown, f"tensor {key!r}: shape {dims} is not a list of non-negative sizes")
    if math.prod(dims) >= 2**63:   # TensorFlow CHECKs that the element count fits an int64
        raise fail(shown, f"tensor {key!r}: shape {dims} has more elements than an int64 can count")
    if not 0 <= entry.shard_id < len(sizes):
        raise fail(shown, f"tensor {key!r}: shard {entry.shard_id} of a checkpoint with {len(sizes)}")
    if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > sizes[entry.shard_id]:
        raise fail(shown, f"tensor {key!r}: bytes {entry.offset}..{entry.offset + entry.size} lie outside "
                          f"its {sizes[entry.shard_id]}-byte data shard (truncated?)")
    slices = [_check_slice(key, piece, dims, shown) for piece in entry.slices]
    if len(set(slices)) != len(slices):   # TensorFlow CHECKs that each slice is new
        raise fail(shown, f"tensor {key!r}: the same slice is listed twice")
    if not entry.slices:   # a tensor stored whole (a partitioned one's entry holds no bytes)
        _check_size(key, dtype.name, dims, entry.size, shown)


def _check_size(key: str, dtype: str, dims: list[int], size: int, shown: str) -> None:
    """A numeric tensor's bytes are its shape's; a string's take at least a byte (its length) per element.

    TensorFlow allocates the tensor from its shape before reading a byte.
    """
    row = dtypes.BY_NAME.get(dtype)
    count = math.prod(dims)
    if row is not None and count * row.itemsize != size:
        raise fail(shown, f"tensor {key!r}: shape {dims} of {dtype} needs {count * row.itemsize} bytes, "
                          f"the index gives it {size}")
    if row is None and count > size:
        raise fail(shown, f"tensor {key!r}: shape {dims} of {dtype} needs at least {count} bytes (one per "
                          f"element), the index gives it {size}")


def _check_slice(key: str, piece: Any, dims: list[int], shown: str) -> tuple:
    """A slice of a partitioned variable, as ``(start, length or None)`` per dimension.

    One extent per dimension, each inside it: TensorFlow CHECKs this, stopping the process.
    """
    extents = tuple((e.start, e.length if e.HasField("length") else None) for e in piece.extent)
    inside = len(extents) == len(dims) and all(
        start == 0 if length is None else 0 <= start and 1 <= length and start + length <= dim
        for (start, length), dim in zip(extents, dims))
    if not inside:
        raise fail(shown, f"tensor {key!r}: slice {extents} does not lie inside its shape {dims}")
    return extents
