"""Keras readers against Keras' own loader and h5py, key by key; writers read back by Keras; bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

import surgery
from surgery.formats.keras import layers as K
from surgery.errors import FormatError
from surgery.formats import detect
from surgery.formats.keras import h5
from surgery.formats.keras import archive as keras_format

from tests.conftest import KERAS_FIXTURES, assert_close

FILES = ["vgg.keras", "vgg.h5", "vgg.weights.h5", "vgg_legacy_weights.h5"]


@pytest.fixture(scope="module")
def oracle(keras):
    """Keras' own view: layer name -> {variable name: array}."""
    model = keras.saving.load_model(KERAS_FIXTURES / "vgg.keras")
    return model, {layer.name: {K.var_name(v.path): np.asarray(v.numpy()) for v in layer.weights}
                   for layer in model.layers if layer.weights}


def expected_canonical(name: str, var: str, arr: np.ndarray) -> tuple[str, np.ndarray]:
    """An independent statement of the layout rules for the fixture's layers."""
    role = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
            "moving_mean": "running_mean", "moving_variance": "running_var"}[var]
    if var == "kernel":
        arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T
    return role, arr


@pytest.mark.parametrize("file", FILES)
def test_reader_oracle_key_by_key(oracle, file):
    _, weights = oracle
    graph = surgery.load(KERAS_FIXTURES / file)
    assert set(graph.layers) == set(weights), file
    for name, variables in weights.items():
        for var, arr in variables.items():
            role, want = expected_canonical(name, var, arr)
            got = graph[name].params[role].read()
            np.testing.assert_array_equal(got, want, err_msg=f"{file}: {name}.{role} ({var})")


def test_detect_by_content(tmp_path):
    assert detect(KERAS_FIXTURES / "vgg.keras") == "keras"
    copy = tmp_path / "weights.bin"
    shutil.copy(KERAS_FIXTURES / "vgg.h5", copy)
    assert detect(copy) == "h5"


def test_config_gives_order_kinds_attrs_and_flatten():
    graph = surgery.load(KERAS_FIXTURES / "vgg.keras")
    assert list(graph.layers) == ["block1_conv1", "block1_bn", "block2_conv1", "block2_bn", "fc1", "predictions"]
    assert graph["block1_bn"].attrs["eps"] == 0.001 and "assumed" not in graph["block1_bn"].attrs
    assert graph["block1_conv1"].attrs["activation"] == "relu"
    assert graph["fc1"].attrs["flatten"] == {"shape": [4, 4, 16], "order": "HWC", "via": ["flatten"]}
    assert "flatten" not in graph["predictions"].attrs
    legacy = surgery.load(KERAS_FIXTURES / "vgg.h5")
    assert list(legacy.layers) == list(graph.layers) and legacy["fc1"].attrs["flatten"]["order"] == "HWC"


def test_reading_h5_imports_no_framework():
    code = ("import sys, surgery\n"
            f"for f in {[str(KERAS_FIXTURES / f) for f in FILES]!r}:\n"
            "    g = surgery.load(f)\n"
            "    [p.read() for _, p in g.tensors()]\n"
            "bad = [m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("file", ["vgg.weights.h5", "vgg.h5"])
def test_h5_write_read_back_by_keras(keras, tmp_path, file):
    graph = surgery.load(KERAS_FIXTURES / file)
    scaled = surgery.LayerGraph(
        [surgery.Layer(l.name, l.kind, {r: surgery.Param.from_array(p.read() * 2) for r, p in l.params.items()},
                       l.attrs) for l in graph], path=graph.path, format="h5", meta=graph.meta)
    out = tmp_path / file
    h5.write(scaled, str(out))
    model = keras.saving.load_model(KERAS_FIXTURES / "vgg.keras")
    if file.endswith(".weights.h5"):
        model.load_weights(out)
    else:
        model = keras.saving.load_model(out, compile=False)
    for layer in model.layers:
        for v in layer.weights:
            want = h5py.File(KERAS_FIXTURES / "vgg.h5")  # legacy file keeps names: the oracle for values
            with want:
                name = K.var_name(v.path)
                orig = want[f"model_weights/{layer.name}/{layer.name}/{name}"][()]
            np.testing.assert_allclose(np.asarray(v.numpy()), orig * 2, err_msg=f"{file}: {v.path}")


def test_keras_write_frozen_eps_and_weights(keras, tmp_path):
    graph = surgery.load(KERAS_FIXTURES / "vgg.keras")
    graph["block1_conv1"].frozen = True
    graph["block1_bn"].frozen = True
    graph["block1_bn"].attrs["set"] = {"eps": 1e-5}
    new_fc = np.full(graph["fc1"].params["weight"].shape, 0.5, np.float32)
    graph["fc1"].params["weight"] = surgery.Param.from_array(new_fc)
    out = tmp_path / "out.keras"
    keras_format.write(graph, str(out))
    model = keras.saving.load_model(out)
    assert not model.get_layer("block1_conv1").trainable and not model.get_layer("block1_bn").trainable
    assert model.get_layer("block2_conv1").trainable
    assert model.get_layer("block1_bn").epsilon == pytest.approx(1e-5)
    np.testing.assert_array_equal(np.asarray(model.get_layer("fc1").kernel.numpy()), new_fc.T)
    again = surgery.load(out)
    for name, param in again.state().items():
        if not name.startswith("fc1.weight"):
            np.testing.assert_array_equal(param.read(), graph.state()[name].read(), err_msg=name)
    assert again["block1_conv1"].frozen and not again["fc1"].frozen


def test_fixture_output_reproduced_by_keras(keras):
    model = keras.saving.load_model(KERAS_FIXTURES / "vgg.keras")
    x = np.load(KERAS_FIXTURES / "input.npy")
    assert_close(np.asarray(model(x, training=False)), np.load(KERAS_FIXTURES / "output.npy"), what="fixture output")


@pytest.mark.parametrize("content,problem", [
    (b"not hdf5 at all", "not a readable Keras HDF5"),
    (None, "HDF5 file without Keras weights"),
])
def test_bad_h5(tmp_path, content, problem):
    path = tmp_path / "bad.h5"
    if content is None:
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.zeros(2))
    else:
        path.write_bytes(content)
    with pytest.raises(FormatError, match=f"bad.h5: {problem}"):
        surgery.load(path)


def test_truncated_h5(tmp_path):
    path = tmp_path / "cut.h5"
    path.write_bytes((KERAS_FIXTURES / "vgg.h5").read_bytes()[:3000])
    with pytest.raises(FormatError, match="cut.h5"):
        surgery.load(path)


def test_bad_keras_archives(tmp_path):
    bad_json = tmp_path / "json.keras"
    with zipfile.ZipFile(bad_json, "w") as z:
        z.writestr("config.json", "{not json")
        z.writestr("model.weights.h5", b"")
    with pytest.raises(FormatError, match="json.keras: config.json is not JSON"):
        keras_format.read(str(bad_json))
    no_weights = tmp_path / "empty.keras"
    with zipfile.ZipFile(no_weights, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"layers": []}}))
    with pytest.raises(FormatError, match="empty.keras: no model.weights.h5"):
        keras_format.read(str(no_weights))
    not_zip = tmp_path / "x.keras"
    not_zip.write_bytes(b"garbage")
    with pytest.raises(FormatError, match="x.keras"):
        keras_format.read(str(not_zip))


def test_h5_write_needs_template(tmp_path):
    graph = surgery.LayerGraph([surgery.Layer("fc", "dense", {"weight": surgery.Param.from_array(np.zeros((2, 2)))})])
    with pytest.raises(surgery.SurgeryError, match="writing a Keras .h5 needs one to copy the structure from"):
        h5.write(graph, str(tmp_path / "o.h5"))
