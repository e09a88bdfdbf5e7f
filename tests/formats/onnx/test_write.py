"""ONNX writer: the result passes onnx.checker and ORT computes what torch computes with the new weights."""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest

from fixtures import onnx_fixtures
from surgery.errors import FormatError
from surgery.formats.onnx import model as sonnx
from surgery.graph import Param

from tests.conftest import load_canonical, perturbed, run_ort


def check(path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def torch_out(net, graph, x):
    import torch

    load_canonical(net, graph)
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name, factory, shape", [
    ("cnn.onnx", onnx_fixtures.cnn, onnx_fixtures.CNN_INPUT),
    ("rnn.onnx", onnx_fixtures.rnn, onnx_fixtures.RNN_INPUT),
])
def test_round_trip_new_weights(fx, tmp_path, name, factory, shape):
    new = perturbed(sonnx.read(str(fx / "onnx" / name)))
    out = tmp_path / name
    sonnx.write(new, str(out))
    check(out)
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    got, old = run_ort(out, {"x": x}), run_ort(fx / "onnx" / name, {"x": x})
    np.testing.assert_allclose(got, torch_out(factory(), new, x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, old), "the new weights changed nothing"
    again = sonnx.read(str(out))
    for key, param in new.tensors():
        np.testing.assert_array_equal(again.state()[key].read(), param.read(), err_msg=key)


def test_round_trip_dense_transposes_back(fx, tmp_path):
    import onnx
    from onnx import numpy_helper

    graph = sonnx.read(str(fx / "onnx" / "dense.onnx"))
    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # canonical (out, in) of gemm_t0
    graph["gemm_t0"].params["weight"] = Param.from_array(w)
    out = tmp_path / "dense.onnx"
    sonnx.write(graph, str(out))
    check(out)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    np.testing.assert_array_equal(inits["W0"], w.T)  # stored back as (in, out) for transB=0
    x = np.ones((1, 4), np.float32)
    h0 = np.maximum(x @ w.T + inits["b0"], 0)
    want = (h0 @ inits["W1"].T + inits["b1"]) @ inits["W2"] + inits["b2"]
    np.testing.assert_allclose(run_ort(out, {"x": x}), want, rtol=1e-5, atol=1e-4)


def test_external_data_stays_external(fx, tmp_path):
    import onnx

    new = perturbed(sonnx.read(str(fx / "onnx" / "cnn_ext.onnx")))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    sonnx.write(new, str(out_dir / "model.onnx"))
    out = out_dir / "model.onnx"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx", "model.onnx.data"]   # named after the output
    model = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert out.stat().st_size < 10_000
    check(out)
    x = np.random.default_rng(8).standard_normal(onnx_fixtures.CNN_INPUT).astype(np.float32)
    np.testing.assert_allclose(run_ort(out, {"x": x}), torch_out(onnx_fixtures.cnn(), new, x), rtol=1e-4, atol=1e-5)


def test_external_data_of_the_template_is_never_overwritten(fx, tmp_path, monkeypatch):
    """Beside its template, an output gets data files of its own; only replacing the template rewrites its data."""
    for f in ("cnn_ext.onnx", "cnn_ext.onnx.data"):
        shutil.copy(fx / "onnx" / f, tmp_path / f)
    before = (tmp_path / "cnn_ext.onnx.data").read_bytes()
    new = perturbed(sonnx.read(str(tmp_path / "cnn_ext.onnx")))
    # An output beside its template gets its own data file, named after it.
    sonnx.write(new, str(tmp_path / "other.onnx"))
    assert (tmp_path / "cnn_ext.onnx.data").read_bytes() == before
    assert (tmp_path / "other.onnx.data").exists()
    check(tmp_path / "other.onnx")
    x = np.random.default_rng(8).standard_normal(onnx_fixtures.CNN_INPUT).astype(np.float32)
    np.testing.assert_allclose(run_ort(tmp_path / "other.onnx", {"x": x}), torch_out(onnx_fixtures.cnn(), new, x),
                               rtol=1e-4, atol=1e-5)
    check(tmp_path / "cnn_ext.onnx")  # the template still loads with its own, untouched data

    # Replacing the template itself (transplant's default OUT = DST): its data is not written over either.
    # The new data takes a free name; the model's rename is the commit, and the old data goes after it.
    seen_at_commit = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == "cnn_ext.onnx":
            seen_at_commit.append((tmp_path / "cnn_ext.onnx.data").read_bytes() == before)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    sonnx.write(new, str(tmp_path / "cnn_ext.onnx"))
    assert seen_at_commit == [True], "the old model's data changed before the new model was in place"
    check(tmp_path / "cnn_ext.onnx")
    assert not (tmp_path / "cnn_ext.onnx.data").exists(), "the superseded data file was not removed"
    assert (tmp_path / "cnn_ext.onnx.gen2.data").exists()
    np.testing.assert_allclose(run_ort(tmp_path / "cnn_ext.onnx", {"x": x}), torch_out(onnx_fixtures.cnn(), new, x),
                               rtol=1e-4, atol=1e-5)
    # and once more: the plain name is free again, so the data goes back to it
    sonnx.write(perturbed(new, seed=3), str(tmp_path / "cnn_ext.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn_ext.onnx", "cnn_ext.onnx.data", "other.onnx",
                                                           "other.onnx.data"]
    check(tmp_path / "cnn_ext.onnx")


def test_data_a_killed_write_left_is_removed_by_the_next_one_other_models_data_kept(fx, tmp_path):
    for f in ("cnn_ext.onnx", "cnn_ext.onnx.data"):
        shutil.copy(fx / "onnx" / f, tmp_path / f)
    new = perturbed(sonnx.read(str(tmp_path / "cnn_ext.onnx")))
    sonnx.write(new, str(tmp_path / "cnn_ext.onnx"))          # its data now in cnn_ext.onnx.gen2.data
    shutil.copy(fx / "onnx" / "cnn_ext.onnx.data", tmp_path / "cnn_ext.onnx.data")   # a kill after the commit left it
    (tmp_path / "cnn_ext.onnx.gen3.data.surgery.tmp").write_bytes(b"half a copy")   # and a kill mid-copy this
    shutil.copy(fx / "onnx" / "cnn_ext.onnx.data", tmp_path / "keep.gen4.data")     # named by another model: kept
    other = onnx_model_naming(fx / "onnx" / "cnn_ext.onnx", "keep.gen4.data")
    other_path = tmp_path / "keep.onnx"
    other_path.write_bytes(other)
    sonnx.write(perturbed(new, seed=5), str(tmp_path / "cnn_ext.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn_ext.onnx", "cnn_ext.onnx.data", "keep.gen4.data",
                                                           "keep.onnx"]
    check(tmp_path / "cnn_ext.onnx")
    check(other_path)


def onnx_model_naming(model: pathlib.Path, location: str) -> bytes:
    """The bytes of ``model`` with every external initializer pointing at ``location``."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    return proto.SerializeToString()


def test_write_refuses_unknown_tensor_and_wrong_shape(fx, tmp_path):
    graph = sonnx.read(str(fx / "onnx" / "dense.onnx"))
    graph["gemm_t1"].params["extra"] = Param.from_array(np.zeros(2, np.float32))
    with pytest.raises(FormatError, match="no tensor for gemm_t1.extra"):
        sonnx.write(graph, str(tmp_path / "a.onnx"))
    graph = sonnx.read(str(fx / "onnx" / "dense.onnx"))
    graph["gemm_t1"].params["weight"] = Param.from_array(np.zeros((3, 5), np.float32))
    with pytest.raises(FormatError, match=r"gemm_t1.weight: ONNX initializer 'W1' needs float32\[5, 3\]"):
        sonnx.write(graph, str(tmp_path / "a.onnx"))
    assert not (tmp_path / "a.onnx").exists()


def test_write_needs_a_template(tmp_path):
    from surgery.graph import Layer, LayerGraph

    graph = LayerGraph([Layer("fc", "dense", {"weight": Param.from_array(np.zeros((2, 2), np.float32))})])
    with pytest.raises(FormatError, match="writing an ONNX model needs one to copy the structure from"):
        sonnx.write(graph, str(tmp_path / "a.onnx"))


def test_failed_external_write_leaves_nothing_behind(fx, tmp_path):
    graph = sonnx.read(str(fx / "onnx" / "cnn_ext.onnx"))
    graph["fc"].params["weight"] = Param.from_array(np.zeros((5, 64), np.float64))
    out_dir = tmp_path / "out"
    with pytest.raises(FormatError, match=r"fc.weight: ONNX initializer 'fc.weight' needs float32\[5, 64\], got float64"):
        sonnx.write(graph, str(out_dir / "model.onnx"))
    assert sorted(p.name for p in out_dir.iterdir()) == []
