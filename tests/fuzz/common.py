"""Mutations every format shares: hostile numbers and strings, byte edits, zip archives rebuilt.

Each strategy returns the new value together with a short description of the edit,
so a failing example says exactly which mutation produced it.
"""

from __future__ import annotations

import io
import struct
import zipfile

from hypothesis import strategies as st

from tests.conftest import FIXTURES

# Sizes and counts that break arithmetic: the edges of int32/int64, negatives, absurd sizes.
EDGE_INTS = (0, 1, -1, 2, 7, 255, 256, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**40, 2**53 + 1, 2**63 - 1, 2**63,
             2**64, -(2**31), -(2**63))
hostile_ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-16, 4096))
hostile_text = st.one_of(st.sampled_from(["", ".", "..", "../x", "/etc/passwd", "a" * 300, "\x00", "é", "0", "-1",
                                          "1e9", "nan", "NaN", "None", "data/0"]),
                         st.text(max_size=12))


def json_values(max_leaves: int = 6) -> st.SearchStrategy:
    """Any JSON value, biased to the hostile numbers and strings above."""
    scalars = st.one_of(st.none(), st.booleans(), hostile_ints, hostile_text,
                        st.floats(allow_nan=True, allow_infinity=True))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(hostile_text, inner, max_size=3)),
                        max_leaves=max_leaves)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@st.composite
def byte_edit(draw, data: bytes, focus: int | None = None) -> tuple[bytes, str]:
    """One low-level edit of ``data``: truncation, byte flips (often within the first ``focus`` bytes),
    a span overwritten, removed or repeated."""
    if not data:
        return draw(st.binary(max_size=16)), "replaced empty data"
    n = len(data)
    span = min(focus or n, n)
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "overwrite", "delete", "repeat"]))
    at = draw(st.integers(0, span - 1))
    if kind == "truncate":
        return data[:at], f"truncated to {at} of {n} bytes"
    if kind == "flip":
        buf = bytearray(data)
        spots = draw(st.lists(st.tuples(st.integers(0, span - 1), st.integers(0, 255)), min_size=1, max_size=8))
        for pos, value in spots:
            buf[pos] = value
        return bytes(buf), f"bytes set {spots}"
    size = draw(st.integers(1, 64))
    if kind == "overwrite":
        fill = draw(st.sampled_from([b"\x00", b"\xff", b"\x7f"]))
        return data[:at] + fill * size + data[at + size:], f"{size} bytes at {at} set to {fill!r}"
    if kind == "delete":
        return data[:at] + data[at + size:], f"{size} bytes deleted at {at}"
    return data[:at] + data[at:at + size] * 2 + data[at + size:], f"{size} bytes repeated at {at}"


def zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def aligned_zip(members: list[tuple[str, bytes]], align: int = 64) -> bytes:
    """A stored zip whose member data start on ``align``-byte boundaries, as ``torch.save`` writes them.

    torch memory-maps the records; an unaligned archive would test torch's fallback, not the reader.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            start = out.tell() + 30 + len(name.encode()) + 4
            pad = -start % align
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # torch's own padding record ("FB")
            z.writestr(info, data)
    return out.getvalue()
