"""A death at every step of a multi-file commit, one after the other: the output is always the old one or the new.

A kill lands in a rename window of microseconds only by luck; here the writer dies (a ``BaseException``
that nothing catches, as a kill) just before its 1st, 2nd, ... rename or removal, until one write goes
through. Before the fix, a TF checkpoint written over one with the same shard count died between its
data and index renames with the old index over new data, and a shard set with old index over new shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from typing import Callable

import numpy as np
import pytest

import surgery
from tests.conftest import TF2, TORCH, perturbed


class Died(BaseException):
    """The writer stopped here, as under ``kill -9``."""


def _dying(monkeypatch: pytest.MonkeyPatch, steps: int, also: dict | None = None) -> None:
    """Let ``steps`` renames and removals happen, then die at the next one.

    ``also``: more functions that count as steps, by name, with the module that holds each.
    """
    done = [0]
    for name, module in {"replace": os, "unlink": os, **(also or {})}.items():
        real = getattr(module, name)

        def step(*args, _real=real, **kwargs):
            if done[0] == steps:
                raise Died(f"killed before step {steps + 1}")
            done[0] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, step)


def _every_death(write: Callable[[], None], out: pathlib.Path, read: Callable[[], object], old: object,
                 new: object, monkeypatch: pytest.MonkeyPatch) -> int:
    """Die before each step of ``write`` in turn; after each death the output reads as ``old`` or ``new``."""
    snapshot = out.parent.with_name("old")
    shutil.copytree(out.parent, snapshot)
    for steps in range(100):
        with monkeypatch.context() as patch:
            _dying(patch, steps)
            try:
                write()
                return steps
            except Died:
                pass
        assert read() in (old, new), f"killed before step {steps + 1}: the output is neither old nor new"
        shutil.rmtree(out.parent)
        shutil.copytree(snapshot, out.parent)
    raise AssertionError("the write never completed")


def _digests(pairs) -> dict[str, str]:
    return {key: hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest() for key, value in pairs}


def test_a_tf_checkpoint_commit_dies_at_every_step(tmp_path, tf, monkeypatch):
    from surgery.formats.tf import checkpoint as tf_checkpoint

    out = tmp_path / "out" / "ckpt"
    out.parent.mkdir()
    graph = tf_checkpoint.read(str(TF2))
    tf_checkpoint.write(graph, str(out))
    changed = perturbed(graph)

    def read(prefix: pathlib.Path = out) -> object:
        try:
            reader = tf.train.load_checkpoint(str(prefix))
            return _digests((key, reader.get_tensor(key)) for key in reader.get_variable_to_shape_map())
        except Exception as e:  # noqa: BLE001 - a checkpoint TF cannot read is the failure looked for
            return f"unreadable: {e}"

    old = read()
    tf_checkpoint.write(changed, str(tmp_path / "reference"))
    new = read(tmp_path / "reference")
    steps = _every_death(lambda: tf_checkpoint.write(changed, str(out)), out, read, old, new, monkeypatch)
    assert steps >= 3, f"only {steps} steps: the commit should move the data files, then the index, then clean up"
    assert read() == new


def test_a_shard_set_commit_dies_at_every_step(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    graph = surgery.load(TORCH / "hf_sharded")
    surgery.save(graph, out, max_shard_size=20_000)
    changed = perturbed(graph)
    index = out.with_name("model.safetensors.index.json")

    def read() -> object:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return _digests((key, load_file(str(out.parent / shard))[key]) for key, shard in weight_map.items())
        except Exception as e:  # noqa: BLE001 - a missing or broken shard is the failure being looked for
            return f"unreadable: {e}"

    old = read()
    surgery.save(changed, tmp_path / "reference.safetensors")
    new = _digests(load_file(str(tmp_path / "reference.safetensors")).items())
    steps = _every_death(lambda: surgery.save(changed, out, max_shard_size=20_000), out, read, old, new, monkeypatch)
    assert steps >= 3, f"only {steps} steps: shards, then the index, then the old shards' removal"
    assert read() == new


def _dcp_state(folder: pathlib.Path) -> object:
    """The tensors of a DCP folder as torch's own loader reads them, or why it cannot."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        meta = dcp.FileSystemReader(str(folder)).read_metadata()
        state = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype)
                 for k, m in meta.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)
        return _digests((k, v.numpy()) for k, v in state.items())
    except Exception as e:  # noqa: BLE001 - a missing or broken folder is the failure being looked for
        return f"unreadable: {type(e).__name__}: {e}"


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_dcp_folder_commit_dies_at_every_step(tmp_path, monkeypatch, swap):
    """With ``renameat2(RENAME_EXCHANGE)`` every death leaves the old folder or the new one at the target.

    Without it (other systems, file systems that cannot), a death between the two renames leaves no
    folder at the target and the old one whole beside it, which the next write puts back first.
    """
    import warnings

    from surgery import io as surgery_io

    out = tmp_path / "out" / "ckpt"
    out.parent.mkdir()
    graph = surgery.load(TORCH / "cnn_source.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        surgery.save(graph, f"{out}/")
        changed = perturbed(graph)
        old = _dcp_state(out)
        surgery.save(changed, f"{tmp_path / 'reference'}/")
        new = _dcp_state(tmp_path / "reference")
    assert isinstance(old, dict) and isinstance(new, dict) and old != new
    if swap == "two renames":
        monkeypatch.setattr(surgery_io, "exchange", lambda a, b: False)
    elif not surgery_io.exchange(str(tmp_path / "reference"), str(out)) or not surgery_io.exchange(
            str(tmp_path / "reference"), str(out)):
        pytest.skip("this file system cannot swap two folders (renameat2 RENAME_EXCHANGE)")
    real_exchange = surgery_io.exchange

    def read() -> object:
        state = _dcp_state(out)
        if swap == "two renames" and not out.exists():
            surgery_io.recover_folder(str(out.parent), out.name)   # what the next write does first
            state = _dcp_state(out)
        return state

    def write() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            surgery.save(changed, f"{out}/")

    snapshot = tmp_path / "old"
    shutil.copytree(out.parent, snapshot)
    deaths = 0
    for steps in range(100):
        with monkeypatch.context() as patch:
            _dying(patch, steps, also={"rename": os, "exchange": surgery_io} if swap == "exchange" else {"rename": os})
            if swap == "exchange":
                assert surgery_io.exchange is not real_exchange
            try:
                write()
                break
            except Died:
                deaths += 1
        assert read() in (old, new), f"killed before step {steps + 1}: the output is neither old nor new"
        shutil.rmtree(out.parent)
        shutil.copytree(snapshot, out.parent)
    assert deaths >= 2 and read() == new
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt"], "a temporary or old folder was left"
