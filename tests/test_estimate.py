"""``--dry-run`` predictions: the files a write would make, their sizes, and the tensor memory it would hold."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest

from tests.conftest import KERAS_FIXTURES, TORCH


def _listing(folder) -> dict[str, int]:
    return {os.path.relpath(os.path.join(root, f), folder): os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(folder) for f in files}


def _dcp(state: dict, folder) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # no process group: one rank
        dcp.save(state, checkpoint_id=str(folder))


def test_convert_dry_run_predicts_sharded_safetensors_byte_for_byte(run, tmp_path):
    out = tmp_path / "hf" / "model.safetensors"
    result = run("convert", TORCH / "cnn_source.pt", out, "--max-shard-size", "2kB", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    planned = json.loads(result.stdout)
    assert not (tmp_path / "hf").exists()
    assert run("convert", TORCH / "cnn_source.pt", out, "--max-shard-size", "2kB").exit_code == 0
    written = _listing(tmp_path / "hf")
    assert len(written) > 2 and all(f["exact"] for f in planned["files"])
    assert {os.path.relpath(f["path"], tmp_path / "hf"): f["nbytes"] for f in planned["files"]} == written
    assert planned["write_bytes"] == sum(written.values())
    assert planned["peak_tensor_bytes"] == 0   # every tensor's bytes copied file to file (Span), none read
    assert planned["peak_terms"] == [f"{len(planned['files']) and sum(f['tensors'] for f in planned['files'])} "
                                     "tensors copied file to file, never in memory"]


def test_dry_run_of_a_dcp_reads_no_tensor(run, tmp_path):
    """A DCP source whose data file is cut short: the dry run predicts from the metadata; the real run fails."""
    import torch

    torch.manual_seed(0)
    state = {"big.weight": torch.randn(64, 32), "small.weight": torch.randn(4)}
    _dcp(state, tmp_path / "ckpt")
    result = run("convert", tmp_path / "ckpt", f"{tmp_path / 'copy'}/", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "big.weight, 8.2 kB" in result.stdout and "__0_0.distcp" in result.stdout
    assert not (tmp_path / "copy").exists()
    assert run("convert", tmp_path / "ckpt", f"{tmp_path / 'copy'}/").exit_code == 0
    planned = json.loads(run("convert", tmp_path / "ckpt", f"{tmp_path / 'other'}/", "--dry-run", "--json").stdout)
    real = sum(_listing(tmp_path / "copy").values())
    assert abs(planned["write_bytes"] - real) < 0.1 * real   # DCP's framing is torch's: predicted, not computed
    assert planned["peak_tensor_bytes"] == 3 * 8192 + 8192   # written, read ahead, serialised; a chunk's bytes

    data = tmp_path / "ckpt" / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:100])
    assert run("convert", tmp_path / "ckpt", tmp_path / "out.safetensors", "--dry-run").exit_code == 0
    failed = run("convert", tmp_path / "ckpt", tmp_path / "out.safetensors")
    assert failed.exit_code == 2 and "truncated" in failed.stderr


def test_transplant_dry_run_adds_the_write_and_keeps_the_exit_codes(run, tmp_path):
    dst = tmp_path / "dst.pt"
    shutil.copy(TORCH / "cnn_target.pt", dst)
    args = ("transplant", TORCH / "cnn_source.pt", dst, "--map", TORCH / "demo_map.yaml", "--dry-run")
    result = run(*args, "-o", tmp_path / "out.safetensors")
    assert result.exit_code == 0, result.stderr
    assert "dry run: would write" in result.stdout and "peak memory: about" in result.stdout
    planned = json.loads(run(*args, "-o", tmp_path / "out.safetensors", "--json").stdout)["write"]
    assert planned["format"] == "safetensors" and planned["files"][0]["exact"]
    # every tensor passes unchanged: copied file to file, never in memory (its NaN/Inf count from the source pass)
    assert planned["peak_tensor_bytes"] == 0 and "20 tensors copied file to file" in result.stdout
    strict = run("transplant", TORCH / "cnn_source.pt", dst, "--dry-run", "-o", tmp_path / "out.safetensors")
    assert strict.exit_code == 1 and "dry run: would write" not in strict.stdout
    assert run(*args, "-o", tmp_path / "out.unknown").exit_code == 2
    assert sorted(os.listdir(tmp_path)) == ["dst.pt"]


def test_transplant_dry_run_counts_the_tensors_it_converts(run, tmp_path):
    args = ("transplant", KERAS_FIXTURES / "vgg.h5", TORCH / "vgg_port10.pt", "--map", TORCH / "keras_full_map.yaml",
            "--dry-run", "--json", "-o", tmp_path / "out.safetensors")
    planned = json.loads(run(*args).stdout)["write"]
    largest = planned["largest_tensor"]["bytes"]   # a Keras kernel is transposed: read, converted, written
    assert largest > 0 and planned["peak_tensor_bytes"] == 2 * largest   # one written, one read ahead


def test_dry_run_into_a_trainer_checkpoint_that_would_be_refused_exits_2(run, tmp_path):
    import torch

    _dcp({"model": {"w.weight": torch.ones(3, 4)}, "optim": {"state": {"w.weight": {"exp_avg": torch.ones(3, 4)}}}},
         tmp_path / "ckpt")
    from safetensors.numpy import save_file

    save_file({"w.weight": np.zeros((5, 4), np.float32)}, str(tmp_path / "wider.safetensors"))
    result = run("convert", tmp_path / "wider.safetensors", tmp_path / "ckpt", "--dry-run")
    assert result.exit_code == 2 and "w.weight [3, 4] -> [5, 4]" in result.stderr


def test_formats_without_their_own_prediction_get_the_tensor_bytes(run, tmp_path):
    result = run("convert", TORCH / "cnn_source.pt", tmp_path / "model.pt", "--dry-run", "--json")
    planned = json.loads(result.stdout)
    assert [f["exact"] for f in planned["files"]] == [False] and planned["files"][0]["nbytes"] == planned["read_bytes"]


@pytest.mark.parametrize("out", ["model.onnx", "model.keras", "model.weights.h5"])
def test_a_write_with_nothing_to_copy_the_structure_from_is_refused_as_the_real_one_is(run, tmp_path, out):
    dry = run("convert", TORCH / "cnn_source.pt", tmp_path / out, "--dry-run")
    real = run("convert", TORCH / "cnn_source.pt", tmp_path / out)
    assert dry.exit_code == real.exit_code == 2 and dry.stderr == real.stderr
    assert "needs one to copy the structure from" in dry.stderr and not os.listdir(tmp_path)
