"""PyTorch Distributed Checkpoint folders: read tensor by tensor, against torch.distributed.checkpoint's own load."""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

import surgery
from surgery.errors import FormatError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _save(state: dict, folder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # no process group: DCP says it saves as one rank
        dcp.save(state, checkpoint_id=str(folder))


def _oracle(folder, like: dict) -> dict:
    out = {k: torch.empty_like(v) if isinstance(v, torch.Tensor) else v for k, v in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(out, checkpoint_id=str(folder))
    return out


def test_a_plain_state_dict_key_by_key(tmp_path):
    state = _net().state_dict()
    _save(state, tmp_path / "ckpt")
    graph = surgery.load(tmp_path / "ckpt")
    assert graph.format == "dcp"
    expected = _oracle(tmp_path / "ckpt", state)
    ours = graph.state()
    assert set(ours) == set(expected)
    for key, tensor in expected.items():
        np.testing.assert_array_equal(ours[key].read(), tensor.numpy(), err_msg=key)


def test_a_trainer_checkpoint_keeps_the_model_and_names_the_rest(tmp_path):
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 4)).sum().backward()
    opt.step()
    _save({"model": net.state_dict(), "optim": opt.state_dict(), "step": 3}, tmp_path / "ckpt")
    graph = surgery.load(tmp_path / "ckpt")
    assert set(graph.state()) == set(net.state_dict())
    assert all(k.startswith("optim.state.") for k in graph.left_out) and len(graph.left_out) == 3 * 6
    meta = dcp.FileSystemReader(str(tmp_path / "ckpt")).read_metadata()
    tensors = {k for k, m in meta.state_dict_metadata.items() if hasattr(m, "chunks")}
    assert {f"model.{k}" for k in graph.state()} | set(graph.left_out) == tensors  # every tensor accounted for
    # transplanted into a plain PyTorch checkpoint, the network computes what it computed
    fresh = _net()
    torch.save(fresh.state_dict(), tmp_path / "fresh.pt")
    surgery.transplant(tmp_path / "ckpt", tmp_path / "fresh.pt", output=tmp_path / "out.pt")
    fresh.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net.eval()(x))


def test_a_tensor_in_chunks_across_files_is_assembled(tmp_path):
    """Two ranks' shards of one tensor (rows 0-2 and 3-5), laid out as DCP writes them; torch's own load agrees."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    full = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    chunks, storage = [], {}
    for rank, rows in enumerate((slice(0, 3), slice(3, 6))):
        buffer = io.BytesIO()
        torch.save(full[rows].clone(), buffer)
        (folder / f"__{rank}_0.distcp").write_bytes(buffer.getvalue())
        offsets = torch.Size([rows.start, 0])
        chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=torch.Size([3, 4])))
        storage[MetadataIndex("w.weight", offsets, rank)] = _StorageInfo(f"__{rank}_0.distcp", 0, len(buffer.getvalue()))
    meta = Metadata({"w.weight": TensorStorageMetadata(TensorProperties(dtype=torch.float32), full.shape, chunks)},
                    storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    np.testing.assert_array_equal(surgery.load(folder)["w"].params["weight"].read(), full.numpy())
    assert torch.equal(_oracle(folder, {"w.weight": torch.zeros(6, 4)})["w.weight"], full)


def test_metadata_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(FormatError, match=r"\.metadata: not a readable DCP metadata file .*system is not a DCP"):
        surgery.load(folder)
    assert not marker.exists()


def test_written_dcp_loads_with_torch_own_load(run, tmp_path):
    """A safetensors file (as a Hugging Face folder holds) into a DCP folder, read back by dcp.load and by surgery."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _net().state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    result = run("convert", tmp_path / "model.safetensors", f"{tmp_path / 'ckpt'}/")
    assert result.exit_code == 0, result.stderr
    loaded = _oracle(tmp_path / "ckpt", state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key
    back = surgery.load(tmp_path / "ckpt").state()
    assert set(back) == set(state) and all(np.array_equal(back[k].read(), state[k].numpy()) for k in state)
    # written again over itself: replaced whole, never half-written
    assert run("convert", tmp_path / "model.safetensors", tmp_path / "ckpt").exit_code == 0
    assert sorted(os.listdir(tmp_path / "ckpt")) == [".metadata", "__0_0.distcp"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ckpt")]


def test_dcp_to_sharded_safetensors_with_the_standard_index(run, tmp_path):
    from safetensors.numpy import load_file

    state = _net().state_dict()
    _save({"model": state, "step": 7}, tmp_path / "step-1000")
    (tmp_path / "hf").mkdir()
    result = run("convert", tmp_path / "step-1000", tmp_path / "hf" / "model.safetensors", "--max-shard-size", "100B")
    assert result.exit_code == 0, result.stderr
    index = __import__("json").loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state) and len(set(index["weight_map"].values())) > 1
    for key, tensor in state.items():
        shard = load_file(str(tmp_path / "hf" / index["weight_map"][key]))
        np.testing.assert_array_equal(shard[key], tensor.numpy(), err_msg=key)


def _trainer_checkpoint(folder) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A trainer's DCP checkpoint: the model and its Adam state after two steps, as ``get_state_dict`` gives them."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    net = _net()
    optim = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(2):
        net(torch.randn(8, 4)).square().sum().backward()
        optim.step()
    model_state, optim_state = get_state_dict(net, optim)
    _save({"model": model_state, "optim": optim_state, "step": 2}, folder)
    return net, optim


def _resume(folder) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    """Resume as a trainer does: a fresh model and optimizer filled from the checkpoint by torch's own load."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    optim = torch.optim.Adam(net.parameters(), lr=0.1)
    model_state, optim_state = get_state_dict(net, optim)
    state = {"model": model_state, "optim": optim_state, "step": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(net, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return net, optim, state["step"]


def _assert_same_optimizer_state(got: torch.optim.Optimizer, want: torch.optim.Optimizer) -> None:
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state["param_groups"] == want_state["param_groups"]
    for index, slots in want_state["state"].items():
        for name, value in slots.items():
            assert torch.equal(got_state["state"][index][name], value), f"param {index}: {name}"


def test_transplant_into_a_trainer_checkpoint_keeps_its_optimizer_state(run, tmp_path):
    """New weights written in place into a trainer's DCP: it resumes with them, and with its Adam state and step."""
    from safetensors.torch import save_file

    trained, optim = _trainer_checkpoint(tmp_path / "step-2")
    torch.manual_seed(3)
    new = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in _net().state_dict().items()}
    save_file(new, str(tmp_path / "new.safetensors"))
    result = run("transplant", tmp_path / "new.safetensors", tmp_path / "step-2")
    assert result.exit_code == 0, result.stderr
    net, resumed, step = _resume(tmp_path / "step-2")
    assert step == 2
    for key, tensor in net.state_dict().items():
        assert torch.equal(tensor, new[key]), key
    _assert_same_optimizer_state(resumed, optim)
    assert not any(torch.equal(a, b) for a, b in zip(net.parameters(), trained.parameters()))
    net(torch.randn(8, 4)).square().sum().backward()
    resumed.step()   # and it trains on


def test_convert_into_a_trainer_checkpoint_keeps_its_state_only_where_it_fits(run, tmp_path):
    from safetensors.torch import save_file

    _, optim = _trainer_checkpoint(tmp_path / "ckpt")
    same = {k: v + 1 for k, v in _net().state_dict().items()}
    save_file(same, str(tmp_path / "same.safetensors"))
    assert run("convert", tmp_path / "same.safetensors", tmp_path / "ckpt").exit_code == 0
    net, resumed, step = _resume(tmp_path / "ckpt")
    assert step == 2 and all(torch.equal(v, same[k]) for k, v in net.state_dict().items())
    _assert_same_optimizer_state(resumed, optim)

    before = {p: (tmp_path / "ckpt" / p).read_bytes() for p in os.listdir(tmp_path / "ckpt")}
    wider = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)).state_dict()
    save_file(wider, str(tmp_path / "wider.safetensors"))
    refused = run("convert", tmp_path / "wider.safetensors", tmp_path / "ckpt")
    assert refused.exit_code == 2
    assert "0.weight [3, 4] -> [5, 4]" in refused.stderr and "Nothing written" in refused.stderr
    assert {p: (tmp_path / "ckpt" / p).read_bytes() for p in os.listdir(tmp_path / "ckpt")} == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ckpt")]
    assert run("convert", tmp_path / "wider.safetensors", f"{tmp_path / 'fresh'}/").exit_code == 0   # the weights alone


def test_the_model_non_tensor_entries_of_a_trainer_checkpoint_are_kept(run, tmp_path):
    """A module's extra state (a pickled value beside its tensors, as TransformerEngine keeps) is not a weight:
    written over, the checkpoint keeps it, so the trainer's own dcp.load still finds every key."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    _save({"model": {"w.weight": torch.zeros(2, 3), "w._extra_state": "fp8 recipe v2"}, "step": 9}, tmp_path / "ckpt")
    save_file({"w.weight": torch.ones(2, 3)}, str(tmp_path / "new.safetensors"))
    assert run("transplant", tmp_path / "new.safetensors", tmp_path / "ckpt").exit_code == 0
    dcp_to_torch_save(tmp_path / "ckpt", tmp_path / "all.pt")
    everything = torch.load(tmp_path / "all.pt", weights_only=True)
    assert everything["step"] == 9 and everything["model"]["w._extra_state"] == "fp8 recipe v2"
    assert torch.equal(everything["model"]["w.weight"], torch.ones(2, 3))


def _chunked_dcp(folder, tensors: dict[str, tuple[torch.Tensor, list[tuple[tuple[slice, ...], int]]]],
                 view: set[str] = frozenset()) -> None:
    """A DCP folder of ``tensors``, each saved as the chunks given (``(index, rank)``: which rank's file holds it),
    one ``torch.save`` record per chunk appended to its rank's file, as DCP's writer lays them out. A tensor in
    ``view`` has its chunks saved as strided views (column-major storage) instead of clones."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    folder.mkdir()
    entries, storage, files = {}, {}, {}
    for name, (full, chunks) in tensors.items():
        metas = []
        for index, rank in chunks:
            piece = full[index].t().contiguous().t() if name in view else full[index].clone()
            buffer = io.BytesIO()
            torch.save(piece, buffer)
            data = files.setdefault(rank, bytearray())
            offsets = torch.Size([s.start or 0 for s in index] + [0] * (full.dim() - len(index)))
            storage[MetadataIndex(name, offsets, len(metas))] = _StorageInfo(f"__{rank}_0.distcp", len(data),
                                                                             len(buffer.getvalue()))
            data += buffer.getvalue()
            metas.append(ChunkStorageMetadata(offsets=offsets, sizes=piece.shape))
        entries[name] = TensorStorageMetadata(TensorProperties(dtype=full.dtype), full.shape, metas)
    for rank, data in files.items():
        (folder / f"__{rank}_0.distcp").write_bytes(bytes(data))
    (folder / ".metadata").write_bytes(pickle.dumps(Metadata(entries, storage_data=storage)))


def test_tensors_saved_in_rows_go_file_to_file_the_others_are_read(tmp_path, monkeypatch):
    """Row chunks (FSDP's Shard(0)) are the tensor's bytes in order: DCP -> safetensors copies them in the
    kernel, never reading them; column chunks and strided records are read and assembled. Every tensor as
    torch's own load gives it."""
    from safetensors.torch import load_file

    from surgery.formats.torch import records

    g = torch.Generator().manual_seed(0)
    rows = torch.randn(7, 5, generator=g)
    cols = torch.randn(4, 6, generator=g)
    strided = torch.randn(6, 3, generator=g)
    tensors = {
        "rows.weight": (rows, [((slice(0, 3),), 0), ((slice(3, 5),), 1), ((slice(5, 7),), 0)]),
        "half.weight": (torch.randn(4, 8, generator=g).to(torch.bfloat16), [((slice(0, 2),), 1), ((slice(2, 4),), 0)]),
        "one.bias": (torch.randn(9, generator=g), [((slice(0, 9),), 1)]),
        "scalar": (torch.tensor(3.5), [((), 0)]),
        "cols.weight": (cols, [((slice(None), slice(0, 3)), 0), ((slice(None), slice(3, 6)), 1)]),
        "strided.weight": (strided, [((slice(0, 3),), 0), ((slice(3, 6),), 1)]),
    }
    folder = tmp_path / "ckpt"
    _chunked_dcp(folder, tensors, view={"strided.weight"})
    graph = surgery.load(folder)
    params = dict(graph.tensors())
    assert len(params["rows.weight"].span.pieces()) == 3 and sum(p.nbytes for p in params["rows.weight"].span.pieces()) == rows.numel() * 4
    assert not params["cols.weight"].copyable
    assert params["strided.weight"].copyable and params["strided.weight"].span is None   # found out: read instead

    read = []
    real = records.read_record
    monkeypatch.setattr(records, "read_record", lambda path, offset, length: read.append(path) or real(path, offset, length))
    surgery.convert(folder, tmp_path / "model.safetensors")
    assert len(read) == 4, f"only the column and strided chunks are read: {read}"
    got = load_file(str(tmp_path / "model.safetensors"))
    want = _oracle(folder, {name: torch.zeros_like(full) for name, (full, _) in tensors.items()})
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
        assert torch.equal(want[name], tensors[name][0]), name   # the oracle agrees with what was saved


def test_dry_run_counts_rows_as_copied_file_to_file(run, tmp_path):
    g = torch.Generator().manual_seed(1)
    _chunked_dcp(tmp_path / "ckpt", {"a.weight": (torch.randn(8, 4, generator=g), [((slice(0, 4),), 0), ((slice(4, 8),), 1)])})
    result = run("convert", tmp_path / "ckpt", tmp_path / "model.safetensors", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output)
    assert planned["peak_tensor_bytes"] == 0 and "1 tensors copied file to file" in planned["peak_terms"][0]


@pytest.mark.parametrize("where", ["../outside.distcp", "/tmp/outside.distcp", "sub/../../outside.distcp"])
def test_a_chunk_named_outside_the_folder_is_refused(tmp_path, where):
    """A data file the metadata names outside the checkpoint's folder is never read (nor copied file to file)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    _chunked_dcp(tmp_path / "ckpt", {"a.weight": (torch.ones(2, 2), [((slice(0, 2),), 0)])})
    (tmp_path / "outside.distcp").write_bytes((tmp_path / "ckpt" / "__0_0.distcp").read_bytes())
    meta = pickle.loads((tmp_path / "ckpt" / ".metadata").read_bytes())
    meta.storage_data = {index: _StorageInfo(where, info.offset, info.length) for index, info in meta.storage_data.items()}
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(surgery.errors.SurgeryError, match="outside the checkpoint's folder"):
        surgery.load(tmp_path / "ckpt")


@pytest.mark.parametrize("tensor_hashes", [False, True])
def test_a_transplant_from_rows_counts_nonfinite_values_piece_by_piece(tmp_path, monkeypatch, tensor_hashes):
    """DCP rows into a safetensors destination: copied file to file and counted piece by piece (NaN/Inf in two
    chunks of two files add up); with a report, whose sha256 needs the bytes in order, read instead."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from surgery.formats.torch import records

    g = torch.Generator().manual_seed(3)
    weight = torch.randn(12, 5, generator=g)
    weight[1, 2], weight[7, 0], weight[11, 4] = float("nan"), float("inf"), float("nan")
    bias = torch.randn(5, generator=g)
    _chunked_dcp(tmp_path / "ckpt", {"fc.weight": (weight, [((slice(0, 4),), 0), ((slice(4, 9),), 1), ((slice(9, 12),), 2)]),
                                     "fc.bias": (bias, [((slice(0, 5),), 1)])})
    save_file({"fc.weight": torch.zeros(12, 5), "fc.bias": torch.zeros(5)}, str(tmp_path / "dst.safetensors"))
    read = []
    real = records.read_record
    monkeypatch.setattr(records, "read_record", lambda path, offset, length: read.append(path) or real(path, offset, length))
    result = surgery.transplant(tmp_path / "ckpt", tmp_path / "dst.safetensors", strict=False)
    surgery.save(result, tmp_path / "out.safetensors", tensor_hashes=tensor_hashes)

    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out["fc.weight"].nan_to_num(), weight.nan_to_num()) and torch.equal(out["fc.bias"], bias)
    assert result.stats["fc.weight"]["nonfinite"] == 3 and result.stats["fc.bias"]["nonfinite"] == 0
    if tensor_hashes:
        assert len(read) == 3, "the tensor in three pieces is read for its sha256"
        assert result.stats["fc.weight"]["sha256"] == hashlib.sha256(weight.numpy().tobytes()).hexdigest()
        assert result.stats["fc.bias"]["sha256"] == hashlib.sha256(bias.numpy().tobytes()).hexdigest()
    else:
        assert read == [], "every tensor went file to file"
