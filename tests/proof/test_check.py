"""check: the pre-deployment gate (finite values, frozen layers, unchanged shapes and dtypes)."""

from __future__ import annotations

import json
import pathlib

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from surgery.proof.check import check
from surgery.errors import FormatError


def _base() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "features.0.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "features.0.bias": rng.standard_normal(4).astype(np.float32),
        "fc.weight": rng.standard_normal((5, 16)).astype(np.float32),
        "fc.bias": np.zeros(5, np.float32),
        "steps": np.array([3], np.int64),
    }


def _write(path: pathlib.Path, tensors: dict[str, np.ndarray]) -> pathlib.Path:
    save_file(tensors, str(path))
    return path


@pytest.fixture()
def pair(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """BASE on disk, and a MODEL dict fine-tuned from it (the head changed, features frozen)."""
    base = _write(tmp_path / "base.safetensors", _base())
    model = _base()
    model["fc.weight"] = model["fc.weight"] + 0.01
    return base, model


def test_clean_model_passes(pair, tmp_path: pathlib.Path) -> None:
    base, tensors = pair
    report = check(_write(tmp_path / "m.safetensors", tensors), base=base, frozen=["features.*"])
    assert report.ok and bool(report), report
    assert (report.tensors, report.frozen_tensors) == (5, 2)
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True
    assert "PASS" in str(report)


def test_nan_and_inf_fail(pair, tmp_path: pathlib.Path) -> None:
    base, tensors = pair
    tensors["fc.weight"][0, :3] = [np.nan, np.inf, -np.inf]
    report = check(_write(tmp_path / "m.safetensors", tensors), base=base)
    assert not report
    assert [(p.tensor, p.check, p.detail) for p in report.problems] == [
        ("fc.weight", "finite", "1 NaN, 2 Inf of 80 values")]


def test_nan_in_bfloat16_fails(tmp_path: pathlib.Path) -> None:
    tensors = {"w": np.array([1.0, np.nan], dtype=ml_dtypes.bfloat16)}
    base = _write(tmp_path / "b.safetensors", {"w": np.zeros(2, dtype=ml_dtypes.bfloat16)})
    report = check(_write(tmp_path / "m.safetensors", tensors), base=base)
    assert [p.check for p in report.problems] == ["finite"]


def test_changed_frozen_layer_fails(pair, tmp_path: pathlib.Path) -> None:
    base, tensors = pair
    tensors["features.0.bias"] = tensors["features.0.bias"].copy()
    tensors["features.0.bias"][1] += 1e-7  # one ulp-sized change is still a change
    report = check(_write(tmp_path / "m.safetensors", tensors), base=base, frozen=["features.*"])
    assert [(p.tensor, p.check) for p in report.problems] == [("features.0.bias", "frozen")]
    assert "1 of 4 values changed" in report.problems[0].detail
    assert "features.0.bias" in str(report) and "FAIL" in str(report)


def test_frozen_list_from_sidecar(pair, tmp_path: pathlib.Path) -> None:
    base, tensors = pair
    model = _write(tmp_path / "m.safetensors", tensors)
    (tmp_path / "m.safetensors.surgery.json").write_text(json.dumps({"frozen": ["fc"]}))
    report = check(model, base=base)
    assert report.frozen == ["fc"] and "from m.safetensors.surgery.json" in report.frozen_from
    assert [(p.tensor, p.check) for p in report.problems] == [("fc.weight", "frozen")]


def test_changed_shape_dtype_and_structure_fail(pair, tmp_path: pathlib.Path) -> None:
    base, tensors = pair
    tensors["fc.weight"] = np.zeros((6, 16), np.float32)
    tensors["fc.bias"] = tensors["fc.bias"].astype(np.float16)
    tensors["extra.weight"] = np.zeros(2, np.float32)
    del tensors["steps"]
    report = check(_write(tmp_path / "m.safetensors", tensors), base=base)
    found = {(p.tensor, p.check) for p in report.problems}
    assert found == {("fc.weight", "shape"), ("fc.bias", "dtype"), ("extra.weight", "extra"), ("steps", "missing")}
    shape = next(p for p in report.problems if p.check == "shape")
    assert shape.detail == "[6, 16], BASE has [5, 16]"


def test_frozen_glob_matching_nothing_fails(pair, tmp_path: pathlib.Path) -> None:
    base, tensors = pair
    report = check(_write(tmp_path / "m.safetensors", tensors), base=base, frozen=["backbone.*"])
    assert [(p.tensor, p.check) for p in report.problems] == [("backbone.*", "glob")]


def test_torch_checkpoint_against_safetensors_base(pair, tmp_path: pathlib.Path) -> None:
    torch = pytest.importorskip("torch")
    base, tensors = pair
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / "m.pt")
    assert check(tmp_path / "m.pt", base=base, frozen=["features.*"]).ok


def test_bad_sidecar_is_a_format_error(pair, tmp_path: pathlib.Path) -> None:
    base, tensors = pair
    model = _write(tmp_path / "m.safetensors", tensors)
    (tmp_path / "m.safetensors.surgery.json").write_text(json.dumps({"frozen": "fc"}))
    with pytest.raises(FormatError, match="surgery.json: 'frozen' must be a list"):
        check(model, base=base)


def test_truncated_model_is_a_format_error(pair, tmp_path: pathlib.Path) -> None:
    base, tensors = pair
    data = _write(tmp_path / "m.safetensors", tensors).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.safetensors"):
        check(tmp_path / "cut.safetensors", base=base)
