"""kill -9 at seeded random moments of a real write: what is on disk is the old output or the new one, whole.

Each case converts a source over an existing output (written by surgery from another source) with the
CLI in a subprocess, kills it at a random moment of the write, then checks what is on disk:

- the output is the old one, every file byte for byte, or a complete new one that the format's own
  library reads with the expected tensors (``safetensors``; ``tf.train.load_checkpoint``), every
  shard its index names present and holding them;
- a temporary file a kill left is gone once the next run has started writing, and a last complete
  run leaves nothing but the output (no temporary file, no shard or data file its index does not name).

The moments: two uninterrupted runs first measure the write (the faster counts), from its first
temporary file to its commit (the rename that makes the new output visible). Each kill then waits
for its run's first temporary file and sleeps a seeded uniform delay over 150% of that duration,
so kills land anywhere in the write, its commit, and just after it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

from tests.faults.conftest import child_env, surgery_command

TENSORS = 10
SHORT_MB, LONG_MB = 20, 200
SPREAD = 1.5  # kills spread over 150% of the measured write: the commit, the clean-up after it and the exit too


@dataclass
class Output:
    """One kind of output: its name for the CLI, extra options, and how its content is read back."""

    name: str
    target: str
    commit: str                                  # the file whose rename commits the output
    options: Callable[[int], list[str]]          # total bytes -> extra CLI options
    content: Callable[[pathlib.Path], dict[str, str]]   # output folder -> tensor name -> sha256, via the library
    kills: dict[int, int] = field(default_factory=dict)  # megabytes -> kills
    source: str = "safetensors"                  # what the converted files are: safetensors, or ONNX with external data


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)).hexdigest()


def _safetensors_content(path: pathlib.Path) -> dict[str, str]:
    """Every tensor through ``safetensors``, each from the shard its index names when ``path`` is an index."""
    from safetensors import safe_open

    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        where = {key: path.parent / shard for key, shard in weight_map.items()}
    else:
        with safe_open(str(path), framework="numpy") as f:
            where = dict.fromkeys(f.keys(), path)
    out = {}
    for shard in sorted(set(where.values())):
        with safe_open(str(shard), framework="numpy") as f:
            for key in (k for k, s in where.items() if s == shard):
                out[key] = _digest(f.get_tensor(key))
    return out


def _dcp_content(folder: pathlib.Path) -> dict[str, str]:
    """Every tensor of a DCP folder through ``torch.distributed.checkpoint.load``."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(folder)).read_metadata()
    state = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype)
             for k, m in meta.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "torch.distributed is disabled": one process loads it all
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    return {k: _digest(v.numpy()) for k, v in state.items()}


def _onnx_content(model: pathlib.Path) -> dict[str, str]:
    """Every initializer of an ONNX model, its external data read by ``onnx`` itself."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    return {t.name: _digest(numpy_helper.to_array(t)) for t in proto.graph.initializer}


def _tf_content(prefix: pathlib.Path) -> dict[str, str]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {key: _digest(np.asarray(reader.get_tensor(key))) for key in reader.get_variable_to_shape_map()}


OUTPUTS = [
    Output("single", "model.safetensors", "model.safetensors", lambda total: [],
           lambda out: _safetensors_content(out / "model.safetensors"), {SHORT_MB: 30, LONG_MB: 50}),
    Output("sharded", "model.safetensors", "model.safetensors.index.json", lambda total: ["--max-shard-size", str(total // 4)],
           lambda out: _safetensors_content(out / "model.safetensors.index.json"), {SHORT_MB: 20, LONG_MB: 50}),
    Output("tf", "ckpt.index", "ckpt.index", lambda total: [],
           lambda out: _tf_content(out / "ckpt"), {SHORT_MB: 2, LONG_MB: 20}),
    Output("dcp", "ckpt/", "ckpt/.metadata", lambda total: [],
           lambda out: _dcp_content(out / "ckpt"), {SHORT_MB: 2, LONG_MB: 30}),
    Output("onnx", "model.onnx", "model.onnx", lambda total: [],
           lambda out: _onnx_content(out / "model.onnx"), {SHORT_MB: 2, LONG_MB: 30}, source="onnx"),
]


def _source(path: pathlib.Path, megabytes: int, seed: int) -> int:
    """A safetensors file of ``TENSORS`` float32 matrices, ``megabytes`` in all; returns its data bytes."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    rows = megabytes * 2**20 // (TENSORS * 1024 * 4)
    save_file({f"layers.{i}.weight": rng.standard_normal((rows, 1024), dtype=np.float32) for i in range(TENSORS)},
              str(path))
    return rows * 1024 * 4 * TENSORS


def _onnx_source(path: pathlib.Path, megabytes: int, seed: int) -> int:
    """An ONNX model of ``TENSORS`` Gemm nodes whose weights are in one external data file; returns their bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    rows = megabytes * 2**20 // (TENSORS * 1024 * 4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])
    nodes, outputs, inits = [], [], []
    for i in range(TENSORS):
        inits.append(numpy_helper.from_array(rng.standard_normal((rows, 1024), dtype=np.float32), f"w{i}"))
        nodes.append(helper.make_node("Gemm", ["x", f"w{i}"], [f"y{i}"], transB=1))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, rows]))
    model = helper.make_model(helper.make_graph(nodes, "layers", [x], outputs, inits))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=0)
    return rows * 1024 * 4 * TENSORS


def _files(folder: pathlib.Path) -> dict[str, str]:
    """Path -> sha256 of every file of the output (names not starting with a dot; a folder's files too)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f.relative_to(folder))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _leftovers(folder: pathlib.Path) -> set[str]:
    """What writers put beside an output on its way: temporary files and folders (``.NAME.XXXX.tmp``)."""
    return {p.name for p in folder.iterdir() if p.name.startswith(".")}


def _has_data(path: pathlib.Path) -> bool:
    """A temporary file or folder a writer started filling (an empty one may be a live writer's: see io.py)."""
    return any(path.iterdir()) if path.is_dir() else path.stat().st_size > 0


class Killer:
    """Runs one convert, waits for its first temporary file, then sleeps and sends SIGKILL."""

    def __init__(self, command: list[str], out: pathlib.Path, commit: pathlib.Path) -> None:
        self.command, self.out, self.commit = command, out, commit

    def measure(self) -> float:
        """Seconds from the first temporary file of an uninterrupted run to its commit (the rename of ``commit``)."""
        old = self.commit.stat().st_ino
        with tempfile.TemporaryFile() as err:
            proc = self._start(err)
            started = time.monotonic()
            while proc.poll() is None and self.commit.stat().st_ino == old:
                time.sleep(0.001)
            window = time.monotonic() - started
            proc.wait(timeout=600)
            err.seek(0)
            assert proc.returncode == 0, f"the uninterrupted run failed: {err.read().decode()[-800:]}"
        return window

    def kill(self, delay: float) -> bool:
        """Kill a run ``delay`` seconds after its first temporary file; whether it had ended by then."""
        proc = self._start(subprocess.DEVNULL)
        time.sleep(delay)
        ended = proc.poll() is not None
        proc.kill()
        proc.wait(timeout=60)
        return ended

    def _start(self, stderr: Any) -> subprocess.Popen:
        """A run, returned once it has made its first temporary file (or ended)."""
        before = _leftovers(self.out)
        proc = subprocess.Popen(self.command, env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        while proc.poll() is None and not _leftovers(self.out) - before:
            time.sleep(0.001)
        return proc


@dataclass
class Old:
    """The output in place before each run: its files' digests, its content, and a copy to put it back."""

    files: dict[str, str]
    content: dict[str, str]
    copy: pathlib.Path

    def intact(self, out: pathlib.Path) -> bool:
        """Every file of the old output there, byte for byte (files it does not name are checked at the end)."""
        files = _files(out)
        return all(files.get(name) == digest for name, digest in self.files.items())

    def restore(self, out: pathlib.Path) -> None:
        """Put the old output back (its files only: what a kill left beside it stays for the next run to sweep)."""
        for p in out.iterdir():
            if not p.name.startswith("."):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in self.copy.iterdir():
            shutil.copytree(p, out / p.name) if p.is_dir() else shutil.copy2(p, out / p.name)


def _prepare(case: Output, tmp_path: pathlib.Path, megabytes: int) -> tuple[Killer, Old]:
    """A new source, an old output written by surgery from another source, and the command between them."""
    import surgery as api

    make, suffix = (_onnx_source, ".onnx") if case.source == "onnx" else (_source, ".safetensors")
    src, out = tmp_path / f"new{suffix}", tmp_path / "out"
    out.mkdir()
    options = case.options(make(src, megabytes, seed=1))
    make(tmp_path / f"old{suffix}", megabytes, seed=2)
    target = f"{out}/{case.target}"   # as typed: a trailing / asks for a folder (DCP)
    api.convert(str(tmp_path / f"old{suffix}"), target,
                max_shard_size=int(options[1]) if options else None)
    shutil.copytree(out, tmp_path / "old")
    old = Old(_files(out), case.content(out), tmp_path / "old")
    return Killer(surgery_command("convert", src, target, "-q", *options), out, out / case.commit), old


def _kill_many(case: Output, tmp_path: pathlib.Path, megabytes: int) -> collections.Counter:
    """The whole experiment for one output kind and size; returns the outcome counts."""
    killer, old = _prepare(case, tmp_path, megabytes)
    out = killer.out
    window = min(killer.measure(), killer.measure())  # the faster of two: the first also warms the caches
    new_content = case.content(out)
    if case.source == "onnx":
        assert new_content == _onnx_content(tmp_path / "new.onnx"), "the new output lacks tensors"
    elif case.name != "tf":
        assert new_content == _safetensors_content(tmp_path / "new.safetensors"), "the new output lacks tensors"
    assert new_content != old.content
    old.restore(out)

    rng = np.random.default_rng(sum(map(ord, case.name)) + megabytes)
    outcomes: collections.Counter = collections.Counter()
    left: set[str] = set()
    for k in range(case.kills[megabytes]):
        delay = float(rng.uniform(0, SPREAD * window))
        outcomes["after exit"] += killer.kill(delay)
        what = f"kill {k + 1} of {case.name} {megabytes} MB at {delay:.3f} s into a {window:.3f} s write"
        swept = left & _leftovers(out)
        assert not swept, f"{what}: the run did not remove what the previous kill left: {sorted(swept)}"
        if old.intact(out):
            outcomes["old"] += 1
        else:
            assert case.content(out) == new_content, f"{what}: the output is neither the old one nor the new one"
            outcomes["new"] += 1
            old.restore(out)
        left = {name for name in _leftovers(out) if _has_data(out / name)}
    _last_run_leaves_only_the_output(case, killer, new_content)
    print(f"\nkill -9 {case.name} {megabytes} MB: {case.kills[megabytes]} kills over a {window:.2f} s write: "
          f"{outcomes['old']} old, {outcomes['new']} new ({outcomes['after exit']} after it ended), 0 lost")
    return outcomes


def _last_run_leaves_only_the_output(case: Output, killer: Killer, new_content: dict[str, str]) -> None:
    """A complete run after the kills succeeds and leaves the new output and nothing else."""
    out = killer.out
    for name in _leftovers(out):  # an empty temporary file is swept once it is old (io._GRACE_SECONDS)
        os.utime(out / name, (time.time() - 3600, time.time() - 3600))
    result = subprocess.run(killer.command, env=child_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-800:]
    assert case.content(out) == new_content
    assert not _leftovers(out), f"left beside the output: {sorted(_leftovers(out))}"
    files = set(_files(out))
    if case.name == "sharded":
        named = set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())
        assert files == named | {"model.safetensors.index.json"}, f"files no index names: {sorted(files - named)}"
    elif case.name == "tf":
        counts = {name.rsplit("-of-", 1)[1] for name in files if ".data-" in name}
        assert len(counts) == 1, f"data files of several checkpoints: {sorted(files)}"
    elif case.name == "onnx":
        import onnx

        proto = onnx.load(str(out / "model.onnx"), load_external_data=False)
        named = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
        assert files == named | {"model.onnx"}, f"files the model does not name: {sorted(files - named)}"


def _check(case: Output, tmp_path: pathlib.Path, megabytes: int) -> None:
    outcomes = _kill_many(case, tmp_path, megabytes)
    assert outcomes["old"] + outcomes["new"] == case.kills[megabytes]
    assert outcomes["old"] > 0 or case.kills[megabytes] < 5, "no kill landed before the commit: the test tests nothing"


@pytest.mark.parametrize("case", OUTPUTS, ids=lambda c: c.name)
def test_a_kill_during_a_write_leaves_the_old_output_or_the_new_one(case, tmp_path):
    if case.name == "tf":
        pytest.importorskip("tensorflow")
    _check(case, tmp_path, SHORT_MB)


@pytest.mark.faults
@pytest.mark.parametrize("case", OUTPUTS, ids=lambda c: c.name)
def test_a_kill_during_a_200_mb_write_leaves_the_old_output_or_the_new_one(case, tmp_path):
    if case.name == "tf":
        pytest.importorskip("tensorflow")
    _check(case, tmp_path, LONG_MB)
