"""DCP folder mutants: the ``.metadata`` pickle's numbers and names (shapes, chunk offsets and sizes, file
offsets and lengths, class names), a chunk record's pickle re-zipped (its tensor's shape, stride, storage),
or the data file's bytes."""

from __future__ import annotations

from hypothesis import strategies as st

from .common import aligned_zip, byte_edit, fixture_bytes, zip_members
from .harness import Mutant
from .torch_mutants import pickle_edit

FOLDER = "torch/dcp_trainer"
FIXTURES = (FOLDER,)
DATA = "__0_0.distcp"


def _records(meta: bytes) -> list[tuple[int, int]]:
    """``(offset, length)`` of every record the valid metadata places in the data file."""
    import io

    from surgery.formats.torch import records

    loaded = records.load_metadata(io.BytesIO(meta))
    return sorted((info.offset, info.length) for info in loaded.storage_data.values())


@st.composite
def record_edit(draw, data: bytes, meta: bytes) -> tuple[bytes, str]:
    """One chunk's ``torch.save`` record with its pickle edited, re-zipped in its place (its length may change)."""
    offset, length = draw(st.sampled_from(_records(meta)))
    try:
        members = zip_members(data[offset:offset + length])
    except Exception:  # noqa: BLE001 - a non-tensor entry (pickled bytes), not a zip: edit its bytes
        return draw(byte_edit(data))
    i = next((i for i, (n, _) in enumerate(members) if n.endswith("data.pkl")), None)
    if i is None:
        return draw(byte_edit(data))
    pickle, edit = draw(pickle_edit(members[i][1]))
    members[i] = (members[i][0], pickle)
    record = aligned_zip(members)
    return data[:offset] + record + data[offset + length:], f"record at {offset}: {edit}"


@st.composite
def dcp_mutants(draw) -> Mutant:
    meta, data = fixture_bytes(f"{FOLDER}/.metadata"), fixture_bytes(f"{FOLDER}/{DATA}")
    valid_meta = meta
    edits: list[str] = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["metadata", "metadata", "record", "record", "bytes"]))
        if kind == "metadata":
            meta, edit = draw(pickle_edit(meta))
        elif kind == "record":
            data, edit = draw(record_edit(data, valid_meta))
        else:
            data, edit = draw(byte_edit(data, focus=draw(st.sampled_from([None, 4096]))))
        edits.append(f"{kind}: {edit}")
    return Mutant(FOLDER, tuple(edits), {"ckpt/.metadata": meta, f"ckpt/{DATA}": data}, "ckpt")
