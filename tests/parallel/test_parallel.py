"""``convert`` split across processes: ``--jobs N`` worker processes, and the ranks of a real ``torchrun`` job.

The source is what a trainer writes: a PyTorch Distributed Checkpoint saved by ``torch.distributed.checkpoint``
(``{"model": ..., "optim": ..., "step": ...}``, as torchtitan lays it out) of a GPT-2 built from a
transformers config with seeded random weights. Each split write is judged against DCP's own load of
the model and against the same conversion done by one process, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

import surgery
from surgery.errors import SurgeryError
from surgery.parallel import assign, write_planned
from surgery.parts import Part
from tests.faults.conftest import ROOT, assert_one_line_error, child_env, surgery_command

SHARD = "700KB"   # the GPT-2 below holds ~3.7 MB: six shards or so


@pytest.fixture(scope="module")
def trainer_ckpt(tmp_path_factory) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """A DCP folder as a trainer saves it, and the model's tensors as DCP's own load gives them back."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=1000, n_positions=64,
                                    bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 1000, (2, 16))).logits.square().mean().backward()
    optim.step()
    folder = tmp_path_factory.mktemp("trainer") / "step-10"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # no process group: DCP says it saves as one rank
        dcp.save({"model": model.state_dict(), "optim": optim.state_dict(), "step": 10}, checkpoint_id=str(folder))
        loaded = {"model": {k: torch.empty_like(v) for k, v in model.state_dict().items()}}
        dcp.load(loaded, checkpoint_id=str(folder))
    return folder, {k: v.numpy() for k, v in loaded["model"].items()}


def _set(index: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of a sharded safetensors set, read with the safetensors library through its index."""
    from safetensors.numpy import load_file

    weight_map = json.loads(index.read_text())["weight_map"]
    out: dict[str, np.ndarray] = {}
    for name in sorted(set(weight_map.values())):
        out.update(load_file(str(index.parent / name)))
    assert set(out) == set(weight_map), "the index and the shards disagree"
    return out


def _hashes(folder: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _assert_model(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    stored = {k for k in want if k != "lm_head.weight"}   # tied to transformer.wte.weight: stored once
    assert stored <= set(got), f"missing: {sorted(stored - set(got))}"
    for key in sorted(stored):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_jobs_write_what_one_process_writes(trainer_ckpt, tmp_path):
    folder, model = trainer_ckpt
    one = surgery.convert(folder, tmp_path / "one" / "model.safetensors", max_shard_size=surgery.apply.parse_size(SHARD))
    result = subprocess.run(surgery_command("convert", folder, tmp_path / "two" / "model.safetensors",
                                            "--max-shard-size", SHARD, "--jobs", "2", "-q"),
                            capture_output=True, text=True, timeout=300, env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(one) > 3, "too few shards to split"
    assert [os.path.basename(line) for line in result.stdout.splitlines()] == [os.path.basename(p) for p in one]
    assert _hashes(tmp_path / "two") == _hashes(tmp_path / "one")
    _assert_model(_set(tmp_path / "two" / "model.safetensors.index.json"), model)


def test_a_worker_that_fails_leaves_the_old_set(trainer_ckpt, tmp_path):
    """A full disk in a worker (a file-size limit in the child stands in for it): exit 2, one line, old set kept."""
    import resource
    import signal

    folder, _ = trainer_ckpt
    out = tmp_path / "out"
    surgery.convert(folder, out / "model.safetensors", max_shard_size=surgery.apply.parse_size("400KB"))
    before = _hashes(out)

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))

    result = subprocess.run(surgery_command("convert", folder, out / "model.safetensors", "--max-shard-size", SHARD,
                                            "--jobs", "2", "-q"),
                            capture_output=True, text=True, timeout=300, env=child_env(), preexec_fn=limited)
    assert_one_line_error(result, str(out / "model-"), "file too large", "previous file is unchanged")
    assert _hashes(out) == before


def test_jobs_write_one_file_from_a_sharded_source_in_parts(trainer_ckpt, tmp_path):
    """Sharded in, one file out: the parts of the file, at the offsets its header fixed, written by two workers."""
    folder, model = trainer_ckpt
    sharded = surgery.convert(folder, tmp_path / "sharded" / "model.safetensors",
                              max_shard_size=surgery.apply.parse_size(SHARD))
    index = sharded[-1]
    one = surgery.convert(index, tmp_path / "one" / "model.safetensors")
    result = subprocess.run(surgery_command("convert", index, tmp_path / "two" / "model.safetensors", "--jobs", "2", "-q"),
                            capture_output=True, text=True, timeout=300, env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert _hashes(tmp_path / "two") == _hashes(pathlib.Path(one[0]).parent)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["model.safetensors"], "a temporary file was left"
    from safetensors.numpy import load_file

    _assert_model(load_file(str(tmp_path / "two" / "model.safetensors")), model)


def test_parts_of_one_file_cover_its_data_once_in_order(tmp_path):
    from surgery.formats.safetensors import RUNS_PER_PROCESS, header_bytes, run_work, stored

    rng = np.random.default_rng(0)
    from safetensors.numpy import save_file

    sizes = [3, 700, 5, 64, 64, 1, 900, 2, 40, 40, 40, 7]
    save_file({f"t{i:02d}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)},
              str(tmp_path / "a.safetensors"))
    tensors = list(stored(surgery.load(tmp_path / "a.safetensors")))
    start = len(header_bytes(tensors, {"format": "pt"}))
    for processes in (1, 2, 3, 8):
        runs = run_work("out", tensors, start, processes)
        assert [k for p in runs for k in p.keys] == [k for k, _ in tensors], processes
        offset = start
        for run in runs:
            assert run.offset == offset and run.nbytes == sum(dict(tensors)[k].nbytes for k in run.keys)
            offset += run.nbytes
        assert len(runs) <= processes * RUNS_PER_PROCESS
        share = -(-sum(p.nbytes for _, p in tensors) // (processes * RUNS_PER_PROCESS))
        for run in runs[:-1]:   # each ends with the tensor that brought it to its share
            assert run.nbytes >= share and run.nbytes - dict(tensors)[run.keys[-1]].nbytes < share, run
        assert len(runs) >= min(processes, 3), f"{processes} processes: {len(runs)} parts"


def test_jobs_with_an_output_that_is_not_split_are_refused_before_any_work(trainer_ckpt, tmp_path):
    folder, _ = trainer_ckpt
    for out, options in [("model.pt", ["--max-shard-size", SHARD]), ("model.pt", []), ("model.h5", [])]:
        result = subprocess.run(surgery_command("convert", folder, f"{tmp_path}/{out}", "--jobs", "2", *options),
                                capture_output=True, text=True, timeout=120, env=child_env())
        assert_one_line_error(result, str(tmp_path / out), "--jobs 2", "safetensors output")
        assert not (tmp_path / out).exists()


def test_dry_run_gives_each_process_its_share(trainer_ckpt, run):
    folder, model = trainer_ckpt
    result = run("convert", folder, "/nonexistent/hf/model.safetensors", "--max-shard-size", SHARD, "--jobs", "2",
                 "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output)
    shares = planned["processes"]
    shards = [f for f in planned["files"] if not f["path"].endswith(".index.json")]
    assert len(shares) == 2
    assert sum(s["parts"] for s in shares) == len(shards)
    assert sum(s["read_bytes"] for s in shares) == planned["read_bytes"]
    assert sum(s["write_bytes"] for s in shares) == sum(f["nbytes"] for f in planned["files"])   # the index: process 0
    assert all(0 <= s["peak_bytes"] <= planned["peak_tensor_bytes"] for s in shares)
    assert "copied file to file, never in memory" in planned["peak_terms"][0]   # DCP records in rows: no tensor held
    text = run("convert", folder, "/nonexistent/hf/model.safetensors", "--max-shard-size", SHARD, "-j", "2",
               "--dry-run").output
    assert "split across 2 processes (each shard" in text and "peak memory of all processes together" in text


def test_dry_run_of_one_file_in_parts(trainer_ckpt, run, tmp_path):
    folder, _ = trainer_ckpt
    result = run("convert", folder, tmp_path / "model.safetensors", "--jobs", "3", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output)
    shares = planned["processes"]
    assert len(shares) == 3 and all(s["parts"] >= 1 for s in shares)
    assert sum(s["read_bytes"] for s in shares) == planned["read_bytes"]
    assert sum(s["write_bytes"] for s in shares) == planned["files"][0]["nbytes"]
    surgery.convert(folder, tmp_path / "model.safetensors")
    assert planned["files"][0]["nbytes"] == (tmp_path / "model.safetensors").stat().st_size
    assert "each run of the file's tensors written by one" in run("convert", folder, tmp_path / "x.safetensors", "-j", "2",
                                                          "--dry-run").output


def _dcp_model(folder: pathlib.Path, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's tensors of a trainer's DCP folder (under ``model``), as ``torch.distributed.checkpoint.load`` gives them back."""
    import torch
    import torch.distributed.checkpoint as dcp

    state = {k: torch.empty(v.shape, dtype=getattr(torch, str(v.dtype))) for k, v in like.items() if k != "lm_head.weight"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load({"model": state}, checkpoint_id=str(folder))
    return {k: v.numpy() for k, v in state.items()}


def test_jobs_write_a_dcp_folder_one_data_file_per_worker(trainer_ckpt, tmp_path):
    folder, model = trainer_ckpt
    result = subprocess.run(surgery_command("convert", folder, f"{tmp_path}/dcp/", "--jobs", "2", "-q"),
                            capture_output=True, text=True, timeout=300, env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    files = sorted(p.name for p in (tmp_path / "dcp").iterdir())
    # the trainer's optimizer state and step, kept from the source, in the parent's own __2_0
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp"], files
    sizes = [(tmp_path / "dcp" / name).stat().st_size for name in files[1:3]]
    assert min(sizes) > 0.3 * max(sizes), f"the work was not shared: {sizes}"
    _assert_model(_dcp_model(tmp_path / "dcp", model), model)


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    """A nested state dict (dicts and lists) as ``{"state.0.exp_avg": tensor, ...}``."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix.rstrip("."): tree}
    return {k: v for key, value in items for k, v in _flat(value, f"{prefix}{key}.").items()}


def test_jobs_write_into_a_trainer_checkpoint_and_keep_its_state(trainer_ckpt, tmp_path):
    """Over a trainer's DCP folder: the model's tensors by the workers, the optimizer state and step copied by
    the parent into a data file of its own; torch reads the whole checkpoint back as it was."""
    import shutil

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder, model = trainer_ckpt
    out = tmp_path / "resume"
    shutil.copytree(folder, out)
    result = subprocess.run(surgery_command("convert", folder, f"{out}/", "--jobs", "2", "-q"),
                            capture_output=True, text=True, timeout=300, env=child_env())
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp"]
    dcp_to_torch_save(folder, tmp_path / "before.pt")
    dcp_to_torch_save(out, tmp_path / "after.pt")
    before, after = (torch.load(tmp_path / f"{n}.pt", weights_only=False) for n in ("before", "after"))
    assert before["step"] == after["step"] == 10
    want, got = _flat(before["optim"]), _flat(after["optim"])
    assert set(want) == set(got) and len(want) > 10
    for key in want:
        assert (torch.equal(want[key], got[key]) if isinstance(want[key], torch.Tensor) else want[key] == got[key]), key
    _assert_model({k: v.numpy() for k, v in after["model"].items()}, model)


def test_dry_run_of_a_dcp_folder_names_the_files_the_workers_write(trainer_ckpt, run, tmp_path):
    folder, _ = trainer_ckpt
    result = run("convert", folder, f"{tmp_path}/dcp/", "--jobs", "2", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output)
    assert sum(s["read_bytes"] for s in planned["processes"]) == planned["read_bytes"]
    assert sum(s["write_bytes"] for s in planned["processes"]) == sum(f["nbytes"] for f in planned["files"])
    assert all(s["parts"] == 1 for s in planned["processes"]), "one data file per process"
    surgery.convert(folder, f"{tmp_path}/dcp/", jobs=2)
    written = {p.name: p.stat().st_size for p in (tmp_path / "dcp").iterdir()}
    assert {os.path.basename(f["path"]) for f in planned["files"]} == set(written)
    for f in planned["files"]:
        got = written[os.path.basename(f["path"])]
        assert abs(f["nbytes"] - got) <= 0.02 * got + 4096, (f, got)


def test_shards_are_dealt_evenly_and_each_once():
    sizes = [900, 100, 500, 500, 400, 300, 300, 50]
    work = [Part(f"s{i}", [], n) for i, n in enumerate(sizes)]
    parts = assign(work, 3)
    assert sorted(s.path for part in parts for s in part) == sorted(w.path for w in work)
    loads = [sum(s.nbytes for s in part) for part in parts]
    assert max(loads) - min(loads) <= max(sizes), loads
    assert assign(work, 1) == [sorted(work, key=lambda w: -w.nbytes)]


def test_a_reading_that_disagrees_with_the_plan_is_refused(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((4, 4), np.float32)}, str(tmp_path / "a.safetensors"))
    table = dict(surgery.load(tmp_path / "a.safetensors").tensors())
    shard = Part(str(tmp_path / "out.safetensors"), ["w"], 64)
    with pytest.raises(SurgeryError, match=r"w was float32\[4, 8\] when the conversion was planned and is float32\[4, 4\]"):
        write_planned(table, "a.safetensors", shard, [("w", (4, 8), "float32")])
    assert not (tmp_path / "out.safetensors").exists()


# --- torchrun ------------------------------------------------------------------------------------

def _torchrun(*args: object, log: pathlib.Path, fail_rank: int | None = None) -> subprocess.CompletedProcess:
    log.mkdir(exist_ok=True)
    env = {**child_env(), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "SURGERY_TEST_LOG": str(log)}
    if fail_rank is not None:
        env["SURGERY_TEST_FAIL_RANK"] = str(fail_rank)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(ROOT / "tests" / "parallel" / "ranks_cli.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_two_torchrun_ranks_split_the_shards_and_rank_0_writes_the_index(trainer_ckpt, tmp_path):
    folder, model = trainer_ckpt
    out = tmp_path / "hf" / "model.safetensors"
    result = _torchrun("convert", folder, out, "--max-shard-size", SHARD, log=tmp_path / "log")
    assert result.returncode == 0, result.stderr[-2000:]
    written = {rank: (tmp_path / "log" / f"rank{rank}").read_text().split() for rank in (0, 1)}
    assert written[0] and written[1], f"a rank wrote nothing: {written}"
    index = json.loads((out.parent / "model.safetensors.index.json").read_text())
    assert sorted(written[0] + written[1]) == sorted(set(index["weight_map"].values())), "each shard once"
    wrote = [line for line in result.stdout.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == len(written[0]) + len(written[1]) + 1, "rank 0 alone prints, every file once"
    assert "surgery" not in result.stderr
    _assert_model(_set(out.parent / "model.safetensors.index.json"), model)
    one = surgery.convert(folder, tmp_path / "one" / "model.safetensors", max_shard_size=surgery.apply.parse_size(SHARD))
    assert _hashes(out.parent) == _hashes(pathlib.Path(one[0]).parent)


def test_two_torchrun_ranks_write_parts_of_one_file(trainer_ckpt, tmp_path):
    folder, model = trainer_ckpt
    out = tmp_path / "hf" / "model.safetensors"
    result = _torchrun("convert", folder, out, log=tmp_path / "log")
    assert result.returncode == 0, result.stderr[-2000:]
    written = {rank: (tmp_path / "log" / f"rank{rank}").read_text().split() for rank in (0, 1)}
    assert written[0] and written[1], f"a rank wrote nothing: {written}"
    offsets = sorted(int(part.split("@")[1]) for part in written[0] + written[1])
    assert len(set(offsets)) == len(offsets), "a part written twice"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors"]
    one = surgery.convert(folder, tmp_path / "one" / "model.safetensors")
    assert _hashes(out.parent) == _hashes(pathlib.Path(one[0]).parent)
    from safetensors.numpy import load_file

    _assert_model(load_file(str(out)), model)


def test_two_torchrun_ranks_write_a_dcp_folder_one_data_file_each(trainer_ckpt, tmp_path):
    folder, model = trainer_ckpt
    out = tmp_path / "dcp"
    result = _torchrun("convert", folder, f"{out}/", log=tmp_path / "log")
    assert result.returncode == 0, result.stderr[-2000:]
    written = {rank: (tmp_path / "log" / f"rank{rank}").read_text().split() for rank in (0, 1)}
    assert sorted(written[0] + written[1]) == ["__0_0.distcp", "__1_0.distcp"], written
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp"]
    _assert_model(_dcp_model(out, model), model)


def test_a_rank_that_fails_a_part_of_one_file_leaves_the_old_file(trainer_ckpt, tmp_path):
    folder, _ = trainer_ckpt
    out = tmp_path / "hf" / "model.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"the old file")
    result = _torchrun("convert", folder, out, log=tmp_path / "log", fail_rank=1)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("surgery: ")]
    assert len(ours) == 1 and ours[0].startswith(f"surgery: error: rank 1: {out}: made to fail"), result.stderr[-2000:]
    assert out.read_bytes() == b"the old file"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors"], "a temporary file was left"


def test_a_rank_that_fails_fails_the_job_and_leaves_the_old_set(trainer_ckpt, tmp_path):
    folder, _ = trainer_ckpt
    out = tmp_path / "hf" / "model.safetensors"
    surgery.convert(folder, out, max_shard_size=surgery.apply.parse_size("400KB"))
    before = _hashes(out.parent)
    result = _torchrun("convert", folder, out, "--max-shard-size", SHARD, log=tmp_path / "log", fail_rank=1)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("surgery: ")]
    assert len(ours) == 1, result.stderr[-2000:]
    assert ours[0].startswith("surgery: error: rank 1: ") and "made to fail on rank 1" in ours[0]
    assert "Traceback" not in result.stderr.split("surgery: error")[0]
    assert _hashes(out.parent) == before, "the failed job changed the old set"
