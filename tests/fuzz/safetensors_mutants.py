"""safetensors mutants: the header's claims edited one field at a time, then the bytes."""

from __future__ import annotations

import json
import struct

from hypothesis import strategies as st

from .common import byte_edit, fixture_bytes, hostile_ints, json_values
from .harness import Mutant

FIXTURES = ("torch/cnn_source.safetensors", "torch/low_precision.safetensors", "torch/tied.safetensors")
DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U64", "F4",
          "f32", "", "F32 ")


def split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


@st.composite
def _dims(draw) -> list:
    return draw(st.lists(st.one_of(hostile_ints, st.integers(0, 64)), max_size=5))


def _is_dims(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def _is_span(value: object) -> bool:
    return _is_dims(value) and len(value) == 2


@st.composite
def header_edit(draw, header: dict) -> str:
    """Edit ``header`` in place: one field of one tensor, a tensor removed or copied, or the metadata."""
    names = [n for n in header if n != "__metadata__"]
    if not names:
        header["__metadata__"] = draw(json_values(4))
        return "metadata only"
    name = draw(st.sampled_from(names))
    entry = header[name]
    kind = draw(st.sampled_from(["dtype", "shape", "dim", "offsets", "offset", "drop_field", "drop", "copy",
                                 "swap", "metadata", "field"]))
    if kind == "dtype":
        entry["dtype"] = draw(st.one_of(st.sampled_from(DTYPES), json_values(2)))
    elif kind == "shape":
        entry["shape"] = draw(st.one_of(_dims(), json_values(3)))
    elif kind == "dim" and _is_dims(entry.get("shape")):
        i = draw(st.integers(0, len(entry["shape"]) - 1))
        entry["shape"][i] = draw(st.one_of(hostile_ints, st.sampled_from([entry["shape"][i] + 1, entry["shape"][i] * 2])))
    elif kind == "offsets":
        entry["data_offsets"] = draw(st.one_of(st.lists(hostile_ints, max_size=3), json_values(3)))
    elif kind == "offset" and _is_span(entry.get("data_offsets")):
        begin, end = entry["data_offsets"]
        delta = draw(st.sampled_from([-8, -1, 1, 8, 1 << 20]))
        entry["data_offsets"] = draw(st.sampled_from([[begin + delta, end], [begin, end + delta],
                                                      [begin + delta, end + delta], [end, begin]]))
    elif kind == "drop_field" and entry:
        entry.pop(draw(st.sampled_from(sorted(entry))), None)
    elif kind == "drop":
        del header[name]
    elif kind == "copy":
        header[draw(st.sampled_from([name + ".copy", "", "__metadata__x", "a" * 500]))] = dict(entry)
    elif kind == "swap" and len(names) > 1:
        other = header[draw(st.sampled_from(names))]
        entry["data_offsets"], other["data_offsets"] = other.get("data_offsets"), entry.get("data_offsets")
    elif kind == "metadata":
        header["__metadata__"] = draw(json_values(4))
    else:
        entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(json_values(4))
    return f"{kind} of {name!r} -> {json.dumps(header.get(name, '<gone>'), default=str)[:200]}"


@st.composite
def safetensors_mutants(draw) -> Mutant:
    """A fixture with 0-3 header edits, then maybe a lying length, lost data or damaged bytes."""
    fixture = draw(st.sampled_from(FIXTURES))
    header, body = split(fixture_bytes(fixture))
    edits = [draw(header_edit(header)) for _ in range(draw(st.integers(0, 3)))]
    raw = json.dumps(header).encode()
    length = len(raw)
    tail = draw(st.sampled_from(["none", "length", "body", "bytes"]))
    if tail == "length":
        length = draw(st.one_of(hostile_ints, st.sampled_from([length - 1, length + 1, length + 8])).filter(
            lambda n: 0 <= n < 2**64))
        edits.append(f"header length says {length}, is {len(raw)}")
    elif tail == "body":
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=16))
        edits.append(f"data cut to {cut} bytes (+ junk)")
    data = struct.pack("<Q", length) + raw + body
    if tail == "bytes" or not edits:
        data, edit = draw(byte_edit(data, focus=8 + len(raw)))
        edits.append(edit)
    return Mutant(fixture, tuple(edits), {"fuzzed.safetensors": data}, "fuzzed.safetensors")
