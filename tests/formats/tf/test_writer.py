"""Writing TF checkpoints: round trips read back by ``tf.train.load_checkpoint`` and restored by TF."""

from __future__ import annotations

import os

import numpy as np
import pytest

from surgery.errors import FormatError
from surgery.graph import Layer, Param
from surgery.formats.tf import saved_model
from surgery.formats.tf import checkpoint as tf_checkpoint

from tests.conftest import SAVED_MODEL, TF1, TF2
from surgery.kinds import graph_of_params


def entries(prefix, tf) -> dict[str, object]:
    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize("prefix", [TF1, TF2], ids=["tf1", "tf2"])
def test_unchanged_graph_writes_the_template_back(prefix, tmp_path, tf):
    out = tmp_path / "out.ckpt"
    tf_checkpoint.write(tf_checkpoint.read(str(prefix)), str(out))
    before, after = entries(prefix, tf), entries(out, tf)
    assert set(after) == set(before)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert sorted(os.listdir(tmp_path)) == ["out.ckpt.data-00000-of-00001", "out.ckpt.index"]


def test_changed_weights_land_in_native_layout_and_restore_into_keras(tmp_path, tf):
    from fixtures.tf_fixtures import build_keras_cnn

    graph = tf_checkpoint.read(str(TF2))
    new = np.arange(5 * 72, dtype=np.float32).reshape(5, 72)
    graph["fc"].params["weight"] = Param.from_array(new)
    out = tmp_path / "new.index"
    tf_checkpoint.write(graph, str(out))
    model = build_keras_cnn()
    tf.train.Checkpoint(model=model).read(str(tmp_path / "new")).assert_existing_objects_matched().expect_partial()
    np.testing.assert_array_equal(model.get_layer("fc").kernel.numpy(), new.T)
    np.testing.assert_array_equal(tf_checkpoint.read(str(out))["fc"].params["weight"].read(), new)


def test_graph_from_elsewhere_becomes_a_fresh_tf2_checkpoint(tmp_path, tf):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    graph = graph_of_params({
        "features.0.weight": Param.from_array(weight),
        "features.0.bias": Param.from_array(np.ones(4, np.float32)),
        "head.weight": Param.from_array(rng.normal(size=(2, 4)).astype(np.float32)),
    })
    tf_checkpoint.write(graph, str(tmp_path / "fresh"))
    native = entries(tmp_path / "fresh", tf)
    assert tf_checkpoint.OBJECT_GRAPH in native
    # TF escapes "." in object names as ".."
    np.testing.assert_array_equal(native["layers/features..0/kernel/.ATTRIBUTES/VARIABLE_VALUE"],
                                  weight.transpose(2, 3, 1, 0), err_msg="features.0 kernel is HWIO")
    back = tf_checkpoint.read(str(tmp_path / "fresh"))
    assert {n: p.shape for n, p in back.tensors()} == {n: p.shape for n, p in graph.tensors()}
    for name, param in graph.tensors():
        np.testing.assert_array_equal(back.state()[name].read(), param.read(), err_msg=name)


def test_write_replaces_an_old_checkpoint_and_leaves_no_temporary(tmp_path, tf):
    """The new data files never take the old ones' names, so the old index reads the old data until replaced."""
    out = tmp_path / "m"
    tf_checkpoint.write(tf_checkpoint.read(str(TF1)), str(out))
    assert sorted(os.listdir(tmp_path)) == ["m.data-00000-of-00001", "m.index"]
    tf_checkpoint.write(tf_checkpoint.read(str(TF2)), str(out))
    assert sorted(os.listdir(tmp_path)) == ["m.data-00000-of-00002", "m.data-00001-of-00002", "m.index"]
    assert set(entries(out, tf)) == set(entries(TF2, tf))
    tf_checkpoint.write(tf_checkpoint.read(str(TF1)), str(out))
    assert sorted(os.listdir(tmp_path)) == ["m.data-00000-of-00001", "m.index"]
    assert set(entries(out, tf)) == set(entries(TF1, tf))


def test_failed_write_leaves_the_target_untouched(tmp_path):
    graph = tf_checkpoint.read(str(TF1))
    graph.layers["extra"] = Layer("extra", "unknown", {"w": Param.from_array(np.zeros(2, np.float32))})
    with pytest.raises(FormatError, match=r"layer 'extra' variable 'w' has no key in the template"):
        tf_checkpoint.write(graph, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_saved_model_output_is_refused(tmp_path):
    with pytest.raises(FormatError, match=r"writing a SavedModel is not supported.*TensorFlow checkpoint"):
        saved_model.write(saved_model.read(str(SAVED_MODEL)), str(tmp_path / "sm"))


def test_saved_model_graph_writes_a_checkpoint_with_its_keys(tmp_path, tf):
    tf_checkpoint.write(saved_model.read(str(SAVED_MODEL)), str(tmp_path / "from_sm"))
    assert set(entries(tmp_path / "from_sm", tf)) == set(entries(SAVED_MODEL / "variables" / "variables", tf))
