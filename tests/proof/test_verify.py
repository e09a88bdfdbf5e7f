"""verify on PyTorch and ONNX models: passes on a faithful copy, fails on a broken one, names the layer."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from surgery.errors import FormatError, SurgeryError
from surgery.proof.verify import verify
from surgery.proof.report import compare_arrays

from tests.proof import nets
from tests.conftest import FACTORY


def _broken(path: pathlib.Path, change) -> pathlib.Path:
    net = nets.build()
    with torch.no_grad():
        change(net)
    torch.save(net.state_dict(), path)
    return path


def test_faithful_copy_passes(small_pt: pathlib.Path, tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "copy.pt"
    torch.save(nets.build().state_dict(), copy)
    report = verify(copy, factory=FACTORY, against=small_pt, input_shape=nets.INPUT_SHAPE)
    assert report.ok and bool(report), report
    assert [c.verdict for c in report.comparisons] == ["PASS", "PASS"]
    assert "dynamo" in report.comparisons[0].title  # the exporter used is stated
    out = report.comparisons[1].outputs[0]
    assert out.shape == [2, 8] and out.max_abs == 0.0 and out.passed
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["inputs"][0]["shape"] == list(nets.INPUT_SHAPE)
    assert "PASS" in str(report) and "max abs" in str(report)


def test_transposed_dense_kernel_fails_and_layers_names_it(small_pt: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bad = _broken(tmp_path / "bad.pt", lambda n: n.fc2.weight.copy_(n.fc2.weight.T.clone()))
    report = verify(bad, factory=FACTORY, against=small_pt, input_shape=nets.INPUT_SHAPE, layers=True)
    assert not report, report
    assert report.comparisons[0].ok  # ONNX Runtime agrees with the (wrong) model itself
    div = report.first_divergent_layer
    assert div is not None and div.layer == "fc2", report
    assert "transposed" in div.reason
    assert "first divergent layer: fc2" in str(report)


def test_wrong_batchnorm_eps_fails_and_layers_names_it() -> None:
    wrong = nets.build()
    wrong.features[1].eps = 1e-3  # Keras' default where PyTorch's is 1e-5
    report = verify(wrong, against=nets.build(), input_shape=nets.INPUT_SHAPE, layers=True)
    assert not report.ok
    div = report.first_divergent_layer
    assert div.layer == "features.1" and "eps 0.001 vs 1e-05" in div.reason, report


def test_without_layers_no_layer_is_named(small_pt: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bad = _broken(tmp_path / "bad.pt", lambda n: n.fc1.bias.add_(1.0))
    report = verify(bad, factory=FACTORY, against=small_pt, input_shape=nets.INPUT_SHAPE)
    assert not report.ok and report.first_divergent_layer is None


def test_onnx_model_checked_by_two_backends(small_onnx: pathlib.Path) -> None:
    report = verify(small_onnx)  # shapes from the graph's own inputs
    assert report.ok, report
    assert "reference evaluator" in report.comparisons[0].title
    assert report.inputs[0]["name"] == "x" and "MODEL's signature" in report.inputs[0]["source"]


def test_onnx_against_module(small_onnx: pathlib.Path) -> None:
    assert verify(small_onnx, against=nets.build()).ok


def test_onnx_mark_all_names_the_layer(small_onnx: pathlib.Path) -> None:
    """Per-layer outputs of ONNX Runtime (every intermediate marked) against torch forward hooks."""
    wrong = nets.build()
    with torch.no_grad():
        wrong.fc1.weight.mul_(1.5)
    report = verify(small_onnx, against=wrong, layers=True)
    assert not report.ok
    assert report.first_divergent_layer.layer == "fc1", report


def test_inputs_from_npz_by_name(small_pt: pathlib.Path, tmp_path: pathlib.Path) -> None:
    x = np.random.default_rng(3).standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    report = verify(small_pt, factory=FACTORY, inputs=tmp_path / "in.npz")
    assert report.ok, report
    assert report.inputs == [{"name": "x", "shape": [1, 3, 6, 6], "dtype": "float32", "source": "from in.npz"}]


def test_npz_with_wrong_names_is_refused(small_onnx: pathlib.Path, tmp_path: pathlib.Path) -> None:
    np.savez(tmp_path / "in.npz", a=np.zeros((1, 3, 6, 6), np.float32), b=np.zeros(2, np.float32))
    with pytest.raises(SurgeryError, match=r"model's inputs are \['x'\]; missing \['x'\]"):
        verify(small_onnx, inputs=tmp_path / "in.npz")


def test_inputs_from_shape_are_seeded(small_pt: pathlib.Path) -> None:
    a = verify(small_pt, factory=FACTORY, input_shape=(3, 3, 6, 6))
    b = verify(small_pt, factory=FACTORY, input_shape=[(3, 3, 6, 6)])
    assert a.inputs[0]["shape"] == [3, 3, 6, 6] and "seed 0" in a.inputs[0]["source"]
    assert a.comparisons[0].outputs[0].max_abs == b.comparisons[0].outputs[0].max_abs


def test_torchscript_and_exported_program(tmp_path: pathlib.Path) -> None:
    net, x = nets.build(), torch.zeros(nets.INPUT_SHAPE)
    torch.jit.save(torch.jit.trace(net, x), tmp_path / "m.ts.pt")
    torch.export.save(torch.export.export(net, (x,)), tmp_path / "m.pt2")
    ts = verify(tmp_path / "m.ts.pt", input_shape=nets.INPUT_SHAPE, against=net)
    assert ts.ok and "dynamo=False" in ts.comparisons[0].title, ts
    ep = verify(tmp_path / "m.pt2", against=net)  # shapes from the program's own example inputs
    assert ep.ok and "ExportedProgram" in ep.comparisons[0].title, ep


def test_weights_only_needs_a_factory(small_pt: pathlib.Path) -> None:
    with pytest.raises(FormatError, match=r"small.pt: MODEL holds weights only: give --factory"):
        verify(small_pt, input_shape=nets.INPUT_SHAPE)


def test_unknown_input_shape_is_asked_for(small_pt: pathlib.Path) -> None:
    with pytest.raises(SurgeryError, match="cannot tell its input shape; give --input-shape"):
        verify(small_pt, factory=FACTORY)


@pytest.mark.parametrize("factory, message", [
    ("nofactory", "expected MODULE:FUNCTION"),
    ("tests.proof.nets:nothing", "cannot import it"),
    ("tests.proof.nets:INPUT_SHAPE", "failed: TypeError"),
])
def test_bad_factory(small_pt: pathlib.Path, factory: str, message: str) -> None:
    with pytest.raises(SurgeryError, match=message):
        verify(small_pt, factory=factory, input_shape=nets.INPUT_SHAPE)


def test_checkpoint_that_does_not_fit_the_factory(tmp_path: pathlib.Path) -> None:
    torch.save({"fc1.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(FormatError, match="other.pt: cannot load it into the factory's network"):
        verify(tmp_path / "other.pt", factory=FACTORY, input_shape=nets.INPUT_SHAPE)


def test_malformed_onnx_is_a_format_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage that is not a model")
    with pytest.raises(FormatError, match=r"junk.onnx: not a valid ONNX model"):
        verify(tmp_path / "junk.onnx")


def test_compare_arrays_min_atol_is_the_smallest_that_passes() -> None:
    ref = np.array([1.0, -2.0, 0.0, 4.0])
    got = ref + np.array([1e-3, -2e-3, 5e-4, 0.0])
    diff = compare_arrays("y", got, ref, rtol=1e-4, atol=1e-5)
    assert not diff.passed and diff.max_abs == pytest.approx(2e-3)
    assert compare_arrays("y", got, ref, 1e-4, diff.min_atol * (1 + 1e-9)).passed
    assert not compare_arrays("y", got, ref, 1e-4, diff.min_atol * 0.99).passed
    assert diff.max_rel == float("inf")  # an error where the reference is 0
    assert compare_arrays("y", got[:2], ref[:2], 1e-4, 1e-5).max_rel == pytest.approx(1e-3)
    nan = compare_arrays("y", np.array([np.nan]), np.array([np.nan]), 1e-4, 1e-5)
    assert not nan.passed and "NaN" in nan.note
    shape = compare_arrays("y", np.zeros(3), np.zeros(4), 1e-4, 1e-5)
    assert not shape.passed and "shape [3] vs reference [4]" in shape.note


def test_dynamo_export_scopes_name_the_layer(tmp_path: pathlib.Path) -> None:
    """The dynamo exporter fuses Conv+BatchNorm under the BatchNorm's scope; the layer is still found."""
    from surgery.proof import torch as torch_run

    runner = torch_run.TorchRunner(nets.build(), "torch Small")
    feeds = {"x": np.random.default_rng(0).standard_normal(nets.INPUT_SHAPE).astype(np.float32)}
    how = runner.export_onnx(str(tmp_path / "d.onnx"), feeds)
    assert how.startswith("dynamo")
    wrong = nets.build()
    wrong.features[1].eps = 1e-1
    report = verify(tmp_path / "d.onnx", against=wrong, inputs=feeds, layers=True)
    assert not report.ok
    assert report.first_divergent_layer.layer == "features.1", report
