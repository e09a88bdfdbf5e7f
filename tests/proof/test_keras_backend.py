"""verify across frameworks: a channels-last Keras model and its channels-first PyTorch twin."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from surgery.errors import FormatError
from surgery.proof.verify import verify

from tests.proof import nets

TWIN = "tests.proof.nets:build_twin"


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("keras") / "src.keras"
    nets.keras_model().save(path)
    return path


def _transplant(keras_file: pathlib.Path, out: pathlib.Path, *, flatten_permutation: bool) -> pathlib.Path:
    """What a transplant writes: the twin's state_dict and its sidecar with the pairs."""
    import keras

    model = keras.saving.load_model(keras_file)
    torch.save(nets.twin_state(model, flatten_permutation=flatten_permutation), out)
    out.with_name(out.name + ".surgery.json").write_text(json.dumps({"pairs": nets.PAIRS, "frozen": []}))
    return out


def test_keras_source_and_pytorch_twin_agree(keras_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = _transplant(keras_file, tmp_path / "twin.pt", flatten_permutation=True)
    report = verify(out, factory=TWIN, against=keras_file)
    assert report.ok, report
    native = report.comparisons[1]
    assert native.layout and "NCHW -> NHWC" in native.layout  # stated in the report
    assert report.inputs[0]["shape"] == [1, 3, 6, 6]  # from the Keras signature, moved to NCHW
    assert "shapes from REF's signature" in report.inputs[0]["source"]


def test_missing_flatten_permutation_is_found_and_explained(keras_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = _transplant(keras_file, tmp_path / "twin.pt", flatten_permutation=False)
    report = verify(out, factory=TWIN, against=keras_file, layers=True)
    assert not report.ok
    div = report.first_divergent_layer
    assert (div.layer, div.reference_layer) == ("fc1", "fc1"), report
    assert "flatten" in div.reason and "same values in another order" in div.reason


def test_wrong_eps_across_frameworks(keras_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The PyTorch twin left at BatchNorm's default eps (1e-5) where Keras used 1e-3."""
    out = _transplant(keras_file, tmp_path / "twin.pt", flatten_permutation=True)
    twin = nets.build_twin()
    twin.load_state_dict(torch.load(out, weights_only=True))
    twin.features[1].eps = 1e-5
    report = verify(twin, against=keras_file, layers=True, pairs=nets_pairs())
    assert not report.ok
    div = report.first_divergent_layer
    assert div.layer == "features.1" and "eps 1e-05 vs 0.001" in div.reason, report


def nets_pairs() -> dict[str, str]:
    return {row["destination"]: row["source"] for row in nets.PAIRS}


def test_keras_model_as_model_side(keras_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A Keras MODEL is exported with Keras' own ONNX export (tf2onnx) and compared with its PyTorch twin."""
    out = _transplant(keras_file, tmp_path / "twin.pt", flatten_permutation=True)
    x = np.random.default_rng(5).standard_normal((2, 6, 6, 3)).astype(np.float32)
    report = verify(keras_file, against=out, factory=TWIN, inputs={"image": x})
    assert report.ok, report
    assert "model.export(format='onnx')" in report.comparisons[0].title and report.comparisons[0].ok
    assert "NHWC -> NCHW" in report.comparisons[1].layout


def test_keras_alone_is_proven_against_onnx_runtime(keras_file: pathlib.Path) -> None:
    report = verify(keras_file)
    assert report.ok and len(report.comparisons) == 1, report


def test_bad_keras_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(FormatError, match="broken.keras: cannot load it as a Keras model"):
        verify(tmp_path / "broken.keras")


def test_legacy_h5_reference(keras_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import keras

    keras.saving.load_model(keras_file).save(tmp_path / "src.h5")  # legacy HDF5 whole-model format
    out = _transplant(keras_file, tmp_path / "twin.pt", flatten_permutation=True)
    assert verify(out, factory=TWIN, against=tmp_path / "src.h5").ok
