"""TF checkpoint mutants: the index's entries (dtype, shape, shard, offset, size, checksum) and header (shards,
endianness, version) rewritten with valid block checksums; the index's bytes; the data shards cut, damaged,
renamed or missing."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from hypothesis import strategies as st
from tensorflow.core.protobuf import tensor_bundle_pb2 as bundle  # here: importing TF inside a draw upsets hypothesis

from .common import byte_edit, fixture_bytes, hostile_ints
from .harness import Mutant
from .tf_table import read_entries, write_table

FIXTURES = ("tf/tf2/ckpt.index", "tf/tf1/model.ckpt.index")
_int32 = hostile_ints.filter(lambda n: -(2**31) <= n < 2**31)
_int64 = hostile_ints.filter(lambda n: -(2**63) <= n < 2**63)
_uint32 = hostile_ints.filter(lambda n: 0 <= n < 2**32)


@st.composite
def entry_edit(draw, entry) -> str:
    """One field of a ``BundleEntryProto`` changed."""
    kind = draw(st.sampled_from(["dtype", "dims", "dim", "rank", "shard_id", "offset", "size", "crc32c", "slices"]))
    if kind == "dtype":
        entry.dtype = draw(st.one_of(st.integers(0, 30), st.sampled_from([101, 119, 2**31 - 1, -1])))
    elif kind == "dims":
        del entry.shape.dim[:]
        for size in draw(st.lists(_int64, max_size=4)):
            entry.shape.dim.add(size=size)
    elif kind == "dim" and entry.shape.dim:
        dim = entry.shape.dim[draw(st.integers(0, len(entry.shape.dim) - 1))]
        dim.size = draw(st.one_of(_int64, st.sampled_from([dim.size + 1, dim.size * 2])))
    elif kind == "rank":
        entry.shape.unknown_rank = True
    elif kind == "slices":
        piece = entry.slices.add()
        for start, length in draw(st.lists(st.tuples(_int64, _int64), max_size=3)):
            piece.extent.add(start=start, length=length)
    elif kind in ("shard_id", "crc32c"):
        setattr(entry, kind, draw(_int32 if kind == "shard_id" else _uint32))
    else:   # offset or size (also a "dim" edit of a scalar, which has no dim to edit)
        kind = kind if kind == "offset" else "size"
        old = getattr(entry, kind)
        setattr(entry, kind, draw(st.one_of(_int64, st.sampled_from([old + 1, max(old - 1, 0), old * 2]))))
    return kind


@st.composite
def index_edit(draw, entries: list[tuple[bytes, bytes]]) -> str:
    """One entry of the index rewritten, dropped or renamed; or the header changed."""
    i = draw(st.integers(0, len(entries) - 1))
    key, value = entries[i]
    if key == b"":
        try:
            header = bundle.BundleHeaderProto.FromString(value)
        except DecodeError:
            return "header: already garbled"
        field = draw(st.sampled_from(["num_shards", "endianness", "version"]))
        if field == "num_shards":
            header.num_shards = draw(_int32)
        elif field == "endianness":
            header.endianness = 1
        else:
            header.version.min_consumer = draw(_int32)
        entries[i] = (key, header.SerializeToString())
        return f"header {field} -> {str(header).strip()[:120]!r}"
    kind = draw(st.sampled_from(["field", "field", "field", "drop", "rename", "value"]))
    if kind == "drop":
        del entries[i]
    elif kind == "rename":
        entries[i] = (draw(st.sampled_from([key + b"/x", key.upper(), b"a" * 300, entries[0][0]])), value)
    elif kind == "value":
        entries[i] = (key, draw(byte_edit(value))[0])
    else:
        try:
            entry = bundle.BundleEntryProto.FromString(value)
        except DecodeError:   # garbled by an earlier edit
            return f"{key.decode()!r}: already garbled"
        kind = draw(entry_edit(entry))
        entries[i] = (key, entry.SerializeToString())
        return f"{key.decode()!r}: {kind} -> {str(entry).replace(chr(10), ' ')[:160]}"
    return f"{key.decode()!r}: {kind}"


@st.composite
def shard_edit(draw, files: dict[str, bytes], prefix: str) -> str:
    """The data shard cut, damaged, missing, or one of two."""
    name = f"{prefix}.data-00000-of-00001"
    kind = draw(st.sampled_from(["cut", "bytes", "missing", "renamed"]))
    if kind == "cut":
        files[name] = files[name][:draw(st.integers(0, len(files[name])))]
    elif kind == "bytes":
        files[name] = draw(byte_edit(files[name]))[0]
    elif kind == "missing":
        del files[name]
    else:
        files[f"{prefix}.data-00000-of-00002"] = files.pop(name)
    return f"data shard {kind}"


@st.composite
def tf_mutants(draw) -> Mutant:
    """A checkpoint whose index entries, index bytes or data shard are edited (1-3 edits)."""
    fixture = draw(st.sampled_from(FIXTURES))
    folder, _, index = fixture.rpartition("/")
    prefix = index.removesuffix(".index")
    files = {f"{prefix}.data-00000-of-00001": fixture_bytes(f"{folder}/{prefix}.data-00000-of-00001")}
    entries = read_entries(fixture_bytes(fixture))
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 3)) and entries:
            edits.append(draw(index_edit(entries)))
        else:
            edits.append(draw(shard_edit(files, prefix)) if f"{prefix}.data-00000-of-00001" in files else "")
    data = write_table(entries)
    if draw(st.integers(0, 4)) == 0:
        data, edit = draw(byte_edit(data))
        edits.append(f"index bytes: {edit}")
    files[index] = data
    return Mutant(fixture, tuple(e for e in edits if e), files, index)
