"""DCP across two real ranks: a 2-process gloo job on CPU (FSDP2 ``fully_shard``, rows split across ranks).

One job (``dcp_ranks.main``, about 15 s, most of it importing torch twice) serves both tests: the ranks
load a checkpoint surgery wrote, then save one of their own for surgery to read.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import surgery
from surgery.formats.torch.dcp import read_metadata

from . import dcp_ranks


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> types.SimpleNamespace:
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)
    source = {k: torch.randn_like(v) for k, v in dcp_ranks.net().state_dict().items()}   # LayerNorm's too
    save_file(source, str(tmp / "model.safetensors"))
    surgery.convert(tmp / "model.safetensors", f"{tmp / 'written'}/")
    surgery.convert(tmp / "model.safetensors", f"{tmp / 'split'}/", jobs=2)   # one data file per worker
    mp.spawn(dcp_ranks.main, args=(str(tmp / "written"), str(tmp / "saved"), str(tmp), str(tmp / "store"),
                                   str(tmp / "split")), nprocs=dcp_ranks.WORLD, join=True)
    loaded = {name: [torch.load(tmp / f"{name}-{rank}.pt", weights_only=True) for rank in range(dcp_ranks.WORLD)]
              for name in ("loaded", "loaded-split")}
    trained = torch.load(tmp / "trained.pt", weights_only=True)
    return types.SimpleNamespace(tmp=tmp, source=source, loaded=loaded, trained=trained, saved=tmp / "saved")


@pytest.mark.parametrize("written", ["loaded", "loaded-split"])
def test_written_by_surgery_each_rank_loads_its_own_rows(job, written):
    initial = (torch.manual_seed(1), dcp_ranks.net().state_dict())[1]
    for key, tensor in job.source.items():
        assert not torch.equal(initial[key], tensor), f"{key}: the ranks' own initial values would pass"
        rows = torch.chunk(tensor, dcp_ranks.WORLD, dim=0)   # how Shard(0) splits, unevenly where it must
        for rank, got in enumerate(job.loaded[written]):
            assert torch.equal(got["shards"][key], rows[rank]), f"rank {rank}: {key}"
            assert torch.equal(got["full"][key], tensor), f"rank {rank}: {key} (full state_dict)"


def test_written_by_two_workers_is_one_data_file_each(job):
    """The folder the ranks loaded above as written by ``jobs=2``: each worker's data file, named by the metadata."""
    meta = read_metadata(str(job.tmp / "split"))
    assert {info.relative_path for info in meta.storage_data.values()} == {"__0_0.distcp", "__1_0.distcp"}
    assert sorted(p.name for p in (job.tmp / "split").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_saved_by_two_ranks_is_read_by_surgery(job, run):
    meta = read_metadata(str(job.saved))
    files = {info.relative_path for info in meta.storage_data.values()}
    assert files == {"__0_0.distcp", "__1_0.distcp"}
    assert all(len(meta.state_dict_metadata[f"model.{k}"].chunks) == 2 for k in job.trained)   # really sharded
    graph = surgery.load(job.saved)
    state = graph.state()
    assert set(state) == set(job.trained)
    for key, tensor in job.trained.items():
        np.testing.assert_array_equal(state[key].read(), tensor.numpy(), err_msg=key)
    assert sorted({k.split(".")[-1] for k in graph.left_out}) == ["exp_avg", "exp_avg_sq", "step"]
    assert len(graph.left_out) == 3 * len(job.trained) and all(k.startswith("optim.") for k in graph.left_out)

    from safetensors.torch import load_file

    assert run("convert", job.saved, job.tmp / "hf" / "model.safetensors").exit_code == 0
    converted = load_file(str(job.tmp / "hf" / "model.safetensors"))
    assert set(converted) == set(job.trained)
    assert all(torch.equal(converted[k], job.trained[k]) for k in job.trained)


def test_transplant_into_the_two_ranks_checkpoint_keeps_their_sharded_state(job, run):
    """New weights into the ranks' trainer checkpoint (-o a new folder): the model replaced, every other entry
    (Adam state in row chunks from both ranks' files, param_groups, step) as torch reads it from the original."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    new = {k: v + 1 for k, v in job.trained.items()}
    save_file(new, str(job.tmp / "new.safetensors"))
    result = run("transplant", job.tmp / "new.safetensors", job.saved, "-o", f"{job.tmp / 'resumed'}/")
    assert result.exit_code == 0, result.stderr
    for folder in ("saved", "resumed"):
        dcp_to_torch_save(job.tmp / folder, job.tmp / f"{folder}.pt")
    before, after = (torch.load(job.tmp / f"{f}.pt", weights_only=True) for f in ("saved", "resumed"))
    assert set(after) == set(before) == {"model", "optim", "step"}
    assert after["step"] == 1 and after["optim"]["param_groups"] == before["optim"]["param_groups"]
    assert after["optim"]["state"].keys() == before["optim"]["state"].keys()
    for name, slots in before["optim"]["state"].items():
        assert all(torch.equal(after["optim"]["state"][name][k], v) for k, v in slots.items()), name
    assert after["model"].keys() == new.keys() and all(torch.equal(after["model"][k], new[k]) for k in new)
