"""A transplant whose tensors pass unchanged copies them file to file, and still reports on them.

The copied bytes never enter the process, so their NaN/Inf counts and sha256 come from the second
reading of the source (``apply.examine``). These tests hold both to what numpy and hashlib compute
from the tensors themselves, and to what the in-memory path (a ``.pt`` output) reports.
"""

from __future__ import annotations

import hashlib
import json

import ml_dtypes
import numpy as np
import pytest

import surgery
from surgery.formats import safetensors as st_format

rng = np.random.default_rng(7)


def _tensors() -> dict[str, np.ndarray]:
    weight = rng.standard_normal((64, 48)).astype(np.float32)
    weight[3, 5], weight[10, 0], weight[63, 47] = np.nan, np.inf, -np.inf
    half = rng.standard_normal((48,)).astype(ml_dtypes.bfloat16)
    half[7] = np.nan
    return {"fc.weight": weight, "fc.bias": rng.standard_normal((64,)).astype(np.float32),
            "norm.weight": half, "norm.bias": np.zeros(48, ml_dtypes.bfloat16),
            "head.weight": rng.standard_normal((10, 64)).astype(np.float32)}


def _save(tensors: dict[str, np.ndarray], path) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))


def _expected(tensors: dict[str, np.ndarray]) -> dict[str, dict]:
    out = {}
    for key, arr in tensors.items():
        wide = arr.astype(np.float32)
        out[key] = {"nonfinite": int(np.count_nonzero(~np.isfinite(wide))),
                    "sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()}
    return out


@pytest.fixture
def kernel_copies(monkeypatch):
    """The keys whose bytes the safetensors writer copied file to file."""
    copied = []
    real = st_format.copy_span

    def counting(span, out):
        copied.append(span)
        real(span, out)

    monkeypatch.setattr(st_format, "copy_span", counting)
    return copied


def test_copied_tensors_are_reported_from_the_source_bytes(tmp_path, kernel_copies):
    from safetensors.numpy import load_file

    src = _tensors()
    _save(src, tmp_path / "src.safetensors")
    _save({k: np.ones_like(v) for k, v in src.items()}, tmp_path / "dst.safetensors")
    result = surgery.transplant(tmp_path / "src.safetensors", tmp_path / "dst.safetensors")
    surgery.save(result, tmp_path / "out.safetensors", tensor_hashes=True)

    assert len(kernel_copies) == len(src)   # nothing went through the process
    out = load_file(str(tmp_path / "out.safetensors"))
    for key, arr in src.items():
        assert np.array_equal(out[key].view(np.uint8), arr.view(np.uint8)), key
    assert result.stats == _expected(src)
    assert result.source_sha256 == hashlib.sha256((tmp_path / "src.safetensors").read_bytes()).hexdigest()
    assert "fc.weight: 3 NaN/Inf values copied" in result.warnings
    assert "norm.weight: 1 NaN/Inf values copied" in result.warnings

    # the same transplant written where every tensor passes through memory reports the same
    again = surgery.transplant(tmp_path / "src.safetensors", tmp_path / "dst.safetensors")
    surgery.save(again, tmp_path / "out.pt", tensor_hashes=True)
    assert again.stats == result.stats and again.source_sha256 == result.source_sha256
    record = json.loads((tmp_path / "out.safetensors.surgery.json").read_text())
    assert record["source"]["sha256"] == result.source_sha256


def test_a_sharded_source_is_hashed_by_its_index_and_examined_shard_by_shard(tmp_path, kernel_copies):
    src = _tensors()
    keys = list(src)
    shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    for name, names in shards.items():
        _save({k: src[k] for k in names}, tmp_path / name)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    _save({k: np.ones_like(v) for k, v in src.items()}, tmp_path / "dst.safetensors")
    result = surgery.transplant(index, tmp_path / "dst.safetensors")
    surgery.save(result, tmp_path / "out.safetensors", tensor_hashes=True)

    assert len(kernel_copies) == len(src)
    assert result.stats == _expected(src)
    assert result.source_sha256 == hashlib.sha256(index.read_bytes()).hexdigest()


def test_only_tensors_whose_bytes_pass_unchanged_are_copied(tmp_path, kernel_copies):
    src = _tensors()
    _save(src, tmp_path / "src.safetensors")
    dst = {k: np.ones_like(v) for k, v in src.items()}
    dst["norm.weight"] = dst["norm.weight"].astype(np.float32)   # a cast: read, converted, written
    dst["extra.weight"] = np.full((3,), 5, np.float32)            # the destination's own: copied from it
    _save(dst, tmp_path / "dst.safetensors")
    result = surgery.transplant(tmp_path / "src.safetensors", tmp_path / "dst.safetensors", strict=False)
    surgery.save(result, tmp_path / "out.safetensors", tensor_hashes=True)

    from safetensors.numpy import load_file

    out = load_file(str(tmp_path / "out.safetensors"))
    assert {span.path for span in kernel_copies} == {str(tmp_path / "src.safetensors"), str(tmp_path / "dst.safetensors")}
    assert len(kernel_copies) == len(dst) - 1
    assert np.array_equal(out["norm.weight"], src["norm.weight"].astype(np.float32), equal_nan=True)
    assert np.array_equal(out["extra.weight"], dst["extra.weight"])
    expected = _expected(src)
    expected["norm.weight"]["sha256"] = hashlib.sha256(src["norm.weight"].astype(np.float32).tobytes()).hexdigest()
    assert result.stats == expected
