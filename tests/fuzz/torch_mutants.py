"""PyTorch zip mutants: the pickle's numbers and names (shapes, strides, storage keys and sizes), the storages,
the archive's members; and legacy files, byte by byte."""

from __future__ import annotations

import pickletools
import struct

from hypothesis import strategies as st

from .common import aligned_zip, byte_edit, fixture_bytes, hostile_ints, hostile_text, zip_members
from .harness import Mutant

ZIPS = ("torch/cnn_source.pt", "torch/tied.pt", "torch/low_precision.pt", "torch/wrapped.pt")
FIXTURES = (*ZIPS, "torch/legacy.pt")
_INTS = ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG")
_STRINGS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING")


def _pickled_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw   # LONG1


def _pickled_str(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw   # BINUNICODE


def _ops(pickle: bytes, names: tuple[str, ...]) -> list[tuple[int, int, object]]:
    """``(start, end, argument)`` of every opcode named in ``names``, up to where an earlier edit broke it."""
    ops = []
    try:
        for op in pickletools.genops(pickle):
            ops.append(op)
    except Exception:  # noqa: BLE001 - a pickle already damaged by an earlier edit: keep its readable start
        pass
    ends = [pos for _, _, pos in ops[1:]] + [len(pickle)]
    return [(pos, end, arg) for (op, arg, pos), end in zip(ops, ends) if op.name in names]


@st.composite
def pickle_edit(draw, pickle: bytes) -> tuple[bytes, str]:
    """A number (a dim, a stride, an offset, a storage size) or a name (a storage key, a class) replaced."""
    kind = draw(st.sampled_from(["int", "int", "string", "bytes"]))
    found = _ops(pickle, _INTS if kind == "int" else _STRINGS)
    if kind == "bytes" or not found:
        return draw(byte_edit(pickle))
    start, end, old = draw(st.sampled_from(found))
    if kind == "int":
        new = draw(st.one_of(hostile_ints, st.sampled_from([old + 1, old - 1, old * 2, -old])))
        return pickle[:start] + _pickled_int(new) + pickle[end:], f"pickle int {old} at {start} -> {new}"
    others = sorted({str(arg) for _, _, arg in found})
    new = draw(st.one_of(st.sampled_from(others), hostile_text))
    return pickle[:start] + _pickled_str(new) + pickle[end:], f"pickle string {old!r} at {start} -> {new!r}"


@st.composite
def member_edit(draw, members: list[tuple[str, bytes]]) -> str:
    """Edit ``members`` in place: a storage cut or grown, a member dropped, doubled, renamed or garbled."""
    i = draw(st.integers(0, len(members) - 1))
    name, data = members[i]
    kind = draw(st.sampled_from(["cut", "grow", "drop", "double", "rename", "bytes"]))
    if kind == "cut":
        members[i] = (name, data[:draw(st.integers(0, max(len(data) - 1, 0)))])
    elif kind == "grow":
        members[i] = (name, data + bytes(draw(st.integers(1, 4096))))
    elif kind == "drop":
        del members[i]
    elif kind == "double":
        members.append((name, draw(st.sampled_from([data, b"", data[::-1]]))))
    elif kind == "rename":
        members[i] = (draw(st.sampled_from([name.replace("/data/", "/data/9"), name.upper(), "../" + name,
                                            name.split("/", 1)[-1], "other/" + name.split("/", 1)[-1]])), data)
    else:
        members[i] = (name, draw(byte_edit(data))[0])
    return f"member {name!r}: {kind}"


@st.composite
def torch_mutants(draw) -> Mutant:
    """A zip checkpoint with its pickle and members edited, or any fixture with its bytes edited."""
    fixture = draw(st.sampled_from(FIXTURES))
    data = fixture_bytes(fixture)
    edits: list[str] = []
    if fixture in ZIPS and draw(st.integers(0, 3)):
        members = zip_members(data)
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.booleans()):
                i = next(i for i, (n, _) in enumerate(members) if n.endswith("data.pkl")) if any(
                    n.endswith("data.pkl") for n, _ in members) else None
                if i is not None:
                    pickle, edit = draw(pickle_edit(members[i][1]))
                    members[i] = (members[i][0], pickle)
                    edits.append(edit)
                    continue
            if members:
                edits.append(draw(member_edit(members)))
        data = aligned_zip(members)
    else:
        data, edit = draw(byte_edit(data, focus=draw(st.sampled_from([None, 4096]))))
        edits.append(edit)
    return Mutant(fixture, tuple(edits), {"fuzzed.pt": data}, "fuzzed.pt")
