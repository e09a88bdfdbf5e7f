"""Fuzzing the readers: any exception other than a SurgeryError, from any mutated file, is a bug.

Hypothesis mutates valid fixtures two ways: bytes (flips, truncations, insertions, zeroed
runs, half of them in the first 4 KB where headers live), and structure, where a format has
one a byte flip rarely reaches: a safetensors header's fields, an ONNX initializer's dims,
type, data and external-data entries, and a PyTorch zip's members. Each mutant is read with
``surgery.load`` and every tensor is read, since the readers are lazy and damage can hide
in the data. A mutant may be read or refused; it may not crash, hang (a 10 s deadline) or
raise anything else.

``make test`` runs FUZZ_EXAMPLES (default 25) examples per target with a fixed seed;
``make fuzz`` runs many more, with Hypothesis' statistics (tests/fuzz/README.md).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import surgery
from surgery.errors import SurgeryError
from tests.conftest import FIXTURES, TORCH

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=list(HealthCheck), database=None)
BYTE_TARGETS = {
    "safetensors": TORCH / "cnn_source.safetensors", "pt": TORCH / "cnn_source.pt",
    "legacy.pt": TORCH / "legacy.pt", "keras": FIXTURES / "keras" / "vgg.keras",
    "h5": FIXTURES / "keras" / "vgg.h5", "weights.h5": FIXTURES / "keras" / "vgg.weights.h5",
    "onnx": FIXTURES / "onnx" / "cnn.onnx",
}


def read_all(path) -> None:
    """Read the file and every tensor in it; a SurgeryError is an answer, anything else a bug."""
    try:
        graph = surgery.load(path)
        for _, param in graph.tensors():
            param.read()
    except SurgeryError:
        pass


edits = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "zero"]),
                           st.integers(0, 1 << 32), st.integers(0, 255), st.booleans()), min_size=1, max_size=6)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, where, value, head in ops:
        if not buf:
            break
        pos = where % (min(len(buf), 4096) if head else len(buf))
        if op == "flip":
            buf[pos] = value
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = bytes([value]) * (value % 9 + 1)
        else:
            buf[pos:pos + value + 1] = bytes(len(buf[pos:pos + value + 1]))
    return bytes(buf)


@pytest.mark.parametrize("target", sorted(BYTE_TARGETS))
def test_byte_mutations(target, tmp_path_factory):
    original = BYTE_TARGETS[target].read_bytes()
    folder = tmp_path_factory.mktemp(target.replace(".", "_"))

    @FUZZ
    @seed(len(target))
    @given(edits)
    def run(ops):
        path = folder / BYTE_TARGETS[target].name
        path.write_bytes(mutate(original, ops))
        read_all(path)

    run()


# ---- safetensors: the header's fields -------------------------------------------------------

values = st.one_of(st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True), st.text(max_size=8), st.none(),
                   st.lists(st.integers(-(1 << 40), 1 << 40), max_size=4), st.booleans())
dtype_names = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "F99", "", "f32"])


@FUZZ
@seed(1)
@given(st.data())
def test_safetensors_header_fields(tmp_path_factory, data):
    raw = (TORCH / "cnn_source.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "extra"]))
    if field == "dtype":
        header[name]["dtype"] = data.draw(st.one_of(dtype_names, values))
    elif field == "drop":
        del header[name][data.draw(st.sampled_from(sorted(header[name])))]
    elif field == "extra":
        header[data.draw(st.text(max_size=6))] = data.draw(values)
    else:
        header[name][field] = data.draw(st.one_of(values, st.lists(values, max_size=3)))
    text = json.dumps(header).encode()
    length = data.draw(st.one_of(st.just(len(text)), st.integers(0, 1 << 64 - 1)))
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    path.write_bytes(struct.pack("<Q", length) + text + body[: data.draw(st.integers(0, len(body)))])
    read_all(path)


# ---- ONNX: initializers' dims, types, data and external data --------------------------------

@FUZZ
@seed(2)
@given(st.data())
def test_onnx_initializer_fields(tmp_path_factory, data):
    import onnx

    model = onnx.load(str(FIXTURES / "onnx" / "cnn.onnx"))
    tensor = model.graph.initializer[data.draw(st.integers(0, len(model.graph.initializer) - 1))]
    field = data.draw(st.sampled_from(["dims", "data_type", "raw_data", "external", "float_data"]))
    if field == "dims":
        del tensor.dims[:]
        tensor.dims.extend(data.draw(st.lists(st.integers(-(1 << 40), 1 << 40), max_size=5)))
    elif field == "data_type":
        tensor.data_type = data.draw(st.integers(0, 30))
    elif field == "raw_data":
        tensor.raw_data = tensor.raw_data[: data.draw(st.integers(0, len(tensor.raw_data)))]
    elif field == "float_data":
        tensor.float_data.extend(data.draw(st.lists(st.floats(width=32), max_size=5)))
    else:
        tensor.data_location = onnx.TensorProto.EXTERNAL
        keys = st.sampled_from(["location", "offset", "length", "checksum", "bogus"])
        strings = st.one_of(st.sampled_from(["w.bin", "../w.bin", "/etc/passwd", "", "a/../../b", "x\x00y"]),
                            st.integers(-(1 << 63), 1 << 63).map(str), st.text(max_size=6))
        for key, value in data.draw(st.lists(st.tuples(keys, strings), max_size=4)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    folder = tmp_path_factory.mktemp("onnx")
    (folder / "w.bin").write_bytes(bytes(range(256)) * 4)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    read_all(path)


# ---- PyTorch zip: its members ---------------------------------------------------------------

@FUZZ
@seed(3)
@given(st.data())
def test_torch_zip_members(tmp_path_factory, data):
    with zipfile.ZipFile(TORCH / "cnn_source.pt") as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    name = data.draw(st.sampled_from(sorted(members)))
    action = data.draw(st.sampled_from(["drop", "truncate", "mutate", "rename", "grow"]))
    if action == "drop":
        del members[name]
    elif action == "truncate":
        members[name] = members[name][: data.draw(st.integers(0, max(len(members[name]) - 1, 0)))]
    elif action == "mutate":
        members[name] = mutate(members[name], data.draw(edits))
    elif action == "rename":
        members[name + data.draw(st.sampled_from(["x", "/", ".."]))] = members.pop(name)
    else:
        members[name] += bytes(data.draw(st.integers(1, 64)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for member, payload in members.items():
            z.writestr(member, payload)
    path = tmp_path_factory.mktemp("pt") / "m.pt"
    path.write_bytes(buffer.getvalue())
    read_all(path)


# ---- TF checkpoint: the index and its data shard --------------------------------------------

@FUZZ
@seed(4)
@given(edits, st.integers(0, 1 << 20), st.booleans())
def test_tf_checkpoint(tmp_path_factory, ops, cut, mutate_index):
    index = (FIXTURES / "tf" / "tf2" / "ckpt.index").read_bytes()
    shard = (FIXTURES / "tf" / "tf2" / "ckpt.data-00000-of-00001").read_bytes()
    folder = tmp_path_factory.mktemp("tf")
    (folder / "ckpt.index").write_bytes(mutate(index, ops) if mutate_index else index)
    (folder / "ckpt.data-00000-of-00001").write_bytes(shard if mutate_index else shard[: cut % (len(shard) + 1)])
    read_all(folder / "ckpt.index")
