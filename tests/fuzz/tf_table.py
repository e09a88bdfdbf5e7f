"""Just enough of the LevelDB-style table a TF checkpoint's ``.index`` is, to read its entries and write new ones.

Each entry maps a tensor's key to a ``BundleEntryProto`` (dtype, shape, shard, offset, size, crc32c); the
empty key holds the ``BundleHeaderProto``. Byte flips in the file mostly fail its block checksums, so the
structured mutants edit the entries and write a table whose checksums are right: the reader then has to
catch the lie itself. Layout: data block, metaindex block, index block (each + a 5-byte trailer), footer.
"""

from __future__ import annotations

import struct

MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)
_FOOTER = 48


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if not byte & 0x80:
            return value, pos


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """The entries of one uncompressed block (prefix-compressed keys expanded)."""
    block = data[offset:offset + size]
    (restarts,) = struct.unpack("<I", block[-4:])
    end = len(block) - 4 - 4 * restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + length]))
        pos += length
    return entries


def read_entries(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of a table, in order."""
    footer = data[-_FOOTER:]
    _, pos = _varint(footer, _varint(footer, 0)[1])     # skip the metaindex handle
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    entries = []
    for _, handle in _block(data, index_offset, index_size):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        entries += _block(data, offset, size)
    return entries


def _write_block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(_put_varint(0) + _put_varint(len(k)) + _put_varint(len(v)) + k + v for k, v in entries)
    body += struct.pack("<II", 0, 1)     # one restart point, at offset 0
    return body + b"\x00" + struct.pack("<I", masked_crc32c(body + b"\x00"))


def write_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A table holding ``entries`` (sorted by key, as the format requires) in one data block."""
    entries = sorted(entries)
    data = _write_block(entries)
    meta = _write_block([])
    last = entries[-1][0] if entries else b""
    handle = _put_varint(0) + _put_varint(len(data) - 5)
    index = _write_block([(last, handle)])
    footer = (_put_varint(len(data)) + _put_varint(len(meta) - 5)
              + _put_varint(len(data) + len(meta)) + _put_varint(len(index) - 5))
    return data + meta + index + footer.ljust(_FOOTER - 8, b"\x00") + MAGIC
