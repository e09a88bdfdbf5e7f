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


def _dying(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Let ``steps`` renames and removals happen, then die at the next one."""
    done = [0]
    for name in ("replace", "unlink"):
        real = getattr(os, name)

        def step(*args, _real=real, **kwargs):
            if done[0] == steps:
                raise Died(f"killed before step {steps + 1}")
            done[0] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, step)


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
