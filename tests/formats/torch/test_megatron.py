"""A Megatron-Core ``torch_dist`` checkpoint, written and loaded back by Megatron's own ``dist_checkpointing``
on 2 ranks with tensor parallelism 2 (``fixtures/megatron_fixtures.py``, run in a venv of its own), read key
by key against the full tensors the ranks were cut from."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import surgery
from surgery.errors import FormatError
from surgery.formats.torch.dcp import scan_metadata
from tests.conftest import FIXTURES

CKPT = FIXTURES / "torch" / "megatron_tp2" / "ckpt"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(CKPT.parent / "expected.safetensors"))


def test_every_tensor_equals_the_one_the_ranks_were_cut_from(expected):
    graph = surgery.load(CKPT)
    got = dict(graph.tensors())
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        np.testing.assert_array_equal(got[key].read(), want, err_msg=key)
    assert graph.meta["megatron"] == "torch_dist"
    assert any("Megatron-Core torch_dist" in note and "stacked on a leading layer axis" in note for note in graph.notes)


def test_the_checkpoint_really_is_split_across_ranks_and_layers():
    meta = scan_metadata(str(CKPT))
    qkv = meta.state_dict_metadata["decoder.layers.self_attention.linear_qkv.weight"]
    assert len(qkv.chunks) == 4   # 2 layers x 2 tensor-parallel ranks
    files = {info.relative_path for info in meta.storage_data.values()}
    assert {"__0_0.distcp", "__1_0.distcp"} <= files


def test_converted_to_sharded_safetensors(expected, tmp_path):
    from safetensors.numpy import load_file

    files = surgery.convert(CKPT, tmp_path / "model.safetensors", max_shard_size=1024)
    got = {}
    for name in files[:-1]:
        got.update(load_file(name))
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        np.testing.assert_array_equal(got[key], want, err_msg=key)


def test_a_missing_rank_file_is_refused_naming_it(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(CKPT, folder)
    (folder / "__1_0.distcp").unlink()
    with pytest.raises(FormatError, match=r"its data file __1_0\.distcp is missing"):
        surgery.load(folder)
