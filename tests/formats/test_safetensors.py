import json
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model

import surgery
from surgery.errors import FormatError
from surgery.formats import safetensors as st
from tests.conftest import TORCH, assert_same_as_torch


def _oracle(path):
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            out[key] = f.get_tensor(key)
    return out


@pytest.mark.parametrize("name", ["cnn_source.safetensors", "low_precision.safetensors"])
def test_reader_matches_safe_open_key_by_key(name):
    assert_same_as_torch(surgery.load(TORCH / name).state(), _oracle(TORCH / name))


def test_low_precision_is_not_widened():
    state = surgery.load(TORCH / "low_precision.safetensors").state()
    assert state["proj.weight"].dtype == "bfloat16"
    assert state["q.weight"].dtype == "float8_e4m3fn"
    assert state["proj.weight"].read().dtype.name == "bfloat16"


def test_sharded_folder_matches_shards():
    graph = surgery.load(TORCH / "hf_sharded")
    assert graph.format == "safetensors"
    theirs = {}
    for shard in sorted((TORCH / "hf_sharded").glob("*.safetensors")):
        theirs.update(_oracle(shard))
    ours = graph.state()
    assert set(ours) == set(theirs)
    for key, tensor in theirs.items():
        assert np.array_equal(ours[key].read(), tensor.numpy()), key


def test_data_is_read_only_when_asked(tmp_path):
    path = tmp_path / "m.safetensors"
    shutil.copy(TORCH / "cnn_source.safetensors", path)
    param = surgery.load(path).state()["features.0.weight"]
    header, _, start = st.read_header(str(path))
    begin, end = header["features.0.weight"]["data_offsets"]
    with open(path, "r+b") as f:  # change the bytes after the header was read
        f.seek(start + begin)
        f.write(np.full(param.numel, 7.0, dtype=np.float32).tobytes())
    assert np.all(param.read() == 7.0)


def test_tied_tensors_restored_from_metadata():
    state = surgery.load(TORCH / "tied.safetensors").state()
    assert state["lm_head.weight"].ident == state["embed.weight"].ident


def test_write_round_trip_read_by_safetensors(tmp_path):
    graph = surgery.load(TORCH / "low_precision.safetensors")
    out = tmp_path / "out.safetensors"
    surgery.save(graph, out)
    theirs = load_file(str(out))
    original = load_file(str(TORCH / "low_precision.safetensors"))
    assert set(theirs) == set(original)
    for key in original:
        assert theirs[key].dtype == original[key].dtype, key
        assert torch.equal(theirs[key].view(torch.uint8), original[key].view(torch.uint8)), key


def test_tied_write_keeps_one_copy_and_alias(tmp_path):
    graph = surgery.load(TORCH / "tied.pt")
    out = tmp_path / "tied.safetensors"
    surgery.save(graph, out)
    with safe_open(str(out), framework="pt") as f:
        assert list(f.keys()) == ["embed.weight"]
        assert f.metadata()["lm_head.weight"] == "embed.weight"
    module = torch.nn.Module()
    module.embed = torch.nn.Embedding(16, 4)
    module.lm_head = torch.nn.Linear(4, 16, bias=False)
    module.lm_head.weight = module.embed.weight
    load_model(module, str(out))
    assert torch.equal(module.lm_head.weight, torch.load(TORCH / "tied.pt")["embed.weight"])


def test_sharded_write_with_index(tmp_path):
    graph = surgery.load(TORCH / "cnn_source.safetensors")
    out = tmp_path / "model.safetensors"
    files = surgery.save(graph, out, max_shard_size=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / s).exists() for s in shards)
    assert str(tmp_path / "model.safetensors.index.json") in files
    for shard in shards:  # a shard holds at most 20 kB of tensors, unless one tensor alone is bigger
        tensors = [k for k, s in index["weight_map"].items() if s == shard]
        assert len(tensors) == 1 or (tmp_path / shard).stat().st_size <= 20_000 + 4096, shard
    back = surgery.load(tmp_path / "model.safetensors.index.json").state()
    original = load_file(str(TORCH / "cnn_source.safetensors"))
    for key, tensor in original.items():
        assert np.array_equal(back[key].read(), tensor.numpy()), key


def _write_raw(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("header,data,problem", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "past the end"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
    ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "non-negative"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"", "needs dtype, shape and data_offsets"),
])
def test_lying_headers_are_refused(tmp_path, header, data, problem):
    path = _write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(FormatError, match=problem) as info:
        surgery.load(path).state()
    assert str(path) in str(info.value)


def test_truncated_and_absurd_files(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(FormatError, match="truncated"):
        surgery.load(short)
    absurd = tmp_path / "absurd.safetensors"
    absurd.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(FormatError, match="absurd"):
        surgery.load(absurd)
    cut = tmp_path / "cut.safetensors"
    data = (TORCH / "cnn_source.safetensors").read_bytes()
    cut.write_bytes(data[:100])
    with pytest.raises(FormatError, match="runs past the end"):
        surgery.load(cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(FormatError, match="not valid JSON"):
        surgery.load(garbage)


def test_index_pointing_outside_folder_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(TORCH / "hf_sharded", folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../evil.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError, match="not a file name inside"):
        surgery.load(folder)


def test_golden_writer_bytes_are_exactly_the_format(tmp_path):
    """Golden test: every byte of a written file, built independently from the safetensors spec.

    8-byte little-endian header length; the JSON header (``__metadata__`` first, then each
    tensor's dtype, shape and data offsets, compact); spaces to a multiple of 8; the data,
    tensor after tensor, little-endian, C order. safetensors itself orders tensors by
    alignment instead, which the format allows: its reader must see the same values.
    """
    import json
    import struct

    import ml_dtypes
    from safetensors.torch import load_file as torch_load

    from surgery.graph import Param
    from surgery.kinds import graph_of_params

    rng = np.random.default_rng(0)
    arrays = {
        "a.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "a.bias": rng.standard_normal(3).astype(np.float16),
        "b.weight": rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16),
        "b.steps": np.arange(5, dtype=np.int64),
        "c.mask": np.array([True, False, True]),
        "d.empty": np.zeros((0, 4), np.float32),
        "e.scalar": np.array(3.5, np.float32),
    }
    codes = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "bool": "BOOL"}
    header, data, offset = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": codes[str(arr.dtype)], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    expected = struct.pack("<Q", len(text)) + text + data

    out = tmp_path / "golden.safetensors"
    surgery.save(graph_of_params({k: Param.from_array(v, key=k) for k, v in arrays.items()}), out)
    written = out.read_bytes()
    assert written == expected, f"first difference at byte {next(i for i, (a, b) in enumerate(zip(written, expected)) if a != b)}"
    back = torch_load(str(out))
    for name, arr in arrays.items():
        if name == "b.weight":
            assert np.array_equal(back[name].float().numpy(), arr.astype(np.float32)), name
        else:
            assert np.array_equal(back[name].numpy(), arr), name
    assert set(back) == set(arrays)


def test_sharded_write_over_a_set_never_overwrites_a_shard_the_old_index_names(tmp_path):
    """The new set takes free names, the index is swapped last, then the old shards go: old or new, never a mix."""
    graph = surgery.load(TORCH / "hf_sharded")
    out = tmp_path / "model.safetensors"
    index = tmp_path / "model.safetensors.index.json"
    surgery.save(graph, out, max_shard_size=20_000)
    first = set(json.loads(index.read_text())["weight_map"].values())
    surgery.save(graph, out, max_shard_size=20_000)
    second = set(json.loads(index.read_text())["weight_map"].values())
    assert not first & second, f"shards written over in place: {sorted(first & second)}"
    assert all(name.endswith(".2.safetensors") for name in second), sorted(second)
    assert sorted(os.listdir(tmp_path)) == sorted([*second, index.name]), "the old set's shards should be removed"
    surgery.save(graph, out, max_shard_size=20_000)
    assert set(json.loads(index.read_text())["weight_map"].values()) == first, "plain names are free again"
    assert surgery.diff(graph, surgery.load(index))


def test_convert_copies_unchanged_tensors_file_to_file(run, tmp_path, monkeypatch):
    """safetensors -> safetensors: every tensor's bytes go through copy_file_range, none through a read."""
    from safetensors.numpy import load_file, save_file

    tensors = {f"layers.{i}.weight": np.random.default_rng(i).standard_normal((64, 32)).astype(np.float32)
               for i in range(5)}
    tensors["layers.0.bias"] = np.arange(3, dtype=np.int64)
    save_file(tensors, str(tmp_path / "src.safetensors"))
    calls = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a[2]) or real(*a))
    result = run("convert", tmp_path / "src.safetensors", tmp_path / "out" / "model.safetensors", "--max-shard-size", "20kB")
    assert result.exit_code == 0, result.stderr
    assert sum(calls) == sum(t.nbytes for t in tensors.values())
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    for key, array in tensors.items():
        np.testing.assert_array_equal(load_file(str(tmp_path / "out" / index["weight_map"][key]))[key], array, err_msg=key)
