"""Reading TF checkpoints and SavedModels, checked against TensorFlow's own loader key by key."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import surgery
from surgery import formats
from surgery.errors import FormatError
from surgery.formats.tf import saved_model
from surgery.formats.tf import checkpoint as tf_checkpoint

from tests.conftest import FIXTURES, SAVED_MODEL, TF1, TF2


def native_to_canonical(kind: str, role: str, arr: np.ndarray) -> np.ndarray:
    """The layout rules written out independently of surgery.layouts, as the oracle."""
    if role != "weight":
        return arr
    if kind == "dense":
        return arr.T
    if kind == "conv2d":
        return arr.transpose(3, 2, 0, 1)
    if kind == "depthwise_conv2d":
        h, w, c, m = arr.shape
        return arr.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w)
    return arr


def check_oracle(graph, prefix, tf) -> int:
    reader = tf.train.load_checkpoint(str(prefix))
    count = 0
    for layer in graph:
        for role, param in layer.params.items():
            native = reader.get_tensor(param.key)
            expected = native_to_canonical(layer.kind, role, native)
            got = param.read()
            assert got.shape == param.shape, param.key
            np.testing.assert_array_equal(got, expected, err_msg=f"{param.key} ({layer.name}.{role})")
            count += 1
    return count


def test_tf2_object_graph_names_and_values(tf):
    graph = tf_checkpoint.read(str(TF2))
    assert [(layer.name, layer.kind) for layer in graph] == [
        ("conv1", "conv2d"), ("bn", "batch_norm"), ("depthwise", "depthwise_conv2d"), ("fc", "dense"),
    ]
    assert graph["fc"].params["weight"].shape == (5, 72)
    assert check_oracle(graph, TF2, tf) == 10


def test_tf1_names_roles_and_values(tf):
    graph = tf_checkpoint.read(str(TF1))
    assert {layer.name: layer.kind for layer in graph} == {"bn": "batch_norm", "conv1": "conv2d", "dense": "dense"}
    assert graph["conv1"].params["weight"].key == "conv1/weights"
    assert graph["conv1"].params["bias"].key == "conv1/biases"
    assert check_oracle(graph, TF1, tf) == 8


@pytest.mark.parametrize("prefix", [TF1, TF2], ids=["tf1", "tf2"])
def test_optimizer_state_is_left_out_and_counted(prefix, tf):
    every = set(tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map()) - {tf_checkpoint.OBJECT_GRAPH}
    graph = tf_checkpoint.read(str(prefix))
    kept = {p.key for _, p in graph.tensors()}
    left = every - kept
    assert left and all(("Adam" in k or "power" in k or "global_step" in k or k.startswith(("optimizer/", "save_counter")))
                        for k in left), sorted(left)
    assert any(f"left out {len(left)} optimizer/counter" in note for note in graph.notes), graph.notes
    full = tf_checkpoint.read(str(prefix), include_optimizer=True)
    assert {p.key for _, p in full.tensors()} == every


def test_tf1_slot_named_after_its_variable():
    graph = tf_checkpoint.read(str(TF1), include_optimizer=True)
    assert graph["conv1/weights"].params["Adam_1"].shape == (3, 3, 3, 4)
    assert graph["global_step"].params["global_step"].dtype == "int64"


def test_prefix_with_or_without_index_suffix():
    index = str(TF1) + ".index"
    assert tf_checkpoint.sniff(str(TF1)) and tf_checkpoint.sniff(index)
    assert formats.detect(index) == "tf_checkpoint"
    plain, suffixed = tf_checkpoint.read(str(TF1)), tf_checkpoint.read(index)
    assert [(n, p.key, p.shape) for n, p in plain.tensors()] == [(n, p.key, p.shape) for n, p in suffixed.tensors()]
    assert suffixed.path == index and suffixed.meta["tf_prefix"] == str(TF1)


def test_saved_model_against_tf_saved_model_load(tf):
    assert formats.detect(str(SAVED_MODEL)) == "saved_model"
    graph = saved_model.read(str(SAVED_MODEL))
    assert [layer.name for layer in graph] == ["conv1", "bn", "depthwise", "fc"]
    check_oracle(graph, SAVED_MODEL / "variables" / "variables", tf)
    loaded = {v.name.split(":")[0]: v.numpy() for v in tf.saved_model.load(str(SAVED_MODEL)).variables}
    np.testing.assert_array_equal(graph["fc"].params["weight"].read(), loaded["cnn/fc/kernel"].T, err_msg="fc.weight")
    np.testing.assert_array_equal(graph["bn"].params["running_var"].read(), loaded["cnn/bn/moving_variance"])


def test_keras_network_matches_torch_with_canonical_weights(tf):
    """The layout rules numerically: the restored Keras CNN vs torch ops fed the canonical tensors."""
    torch = pytest.importorskip("torch")
    import keras
    from torch.nn import functional as F

    from fixtures.tf_fixtures import INPUT_SHAPE, build_keras_cnn

    model = build_keras_cnn()
    tf.train.Checkpoint(model=model).read(str(TF2)).expect_partial()
    x = np.random.default_rng(1).normal(size=(2, *INPUT_SHAPE)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(model(x, training=False))

    g = {name: torch.from_numpy(p.read()) for name, p in tf_checkpoint.read(str(TF2)).tensors()}
    h = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), g["conv1.weight"], g["conv1.bias"])
    h = F.batch_norm(h, g["bn.running_mean"], g["bn.running_var"], g["bn.weight"], g["bn.bias"], eps=1e-3)
    h = F.conv2d(h, g["depthwise.weight"], g["depthwise.bias"], groups=4)
    h = h.permute(0, 2, 3, 1).flatten(1)  # Keras flattens H, W, C
    got = F.linear(h, g["fc.weight"], g["fc.bias"]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def copy_prefix(prefix, folder):
    for f in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(f, folder / f.name)
    return folder / prefix.name


def test_truncated_index_names_the_file(tmp_path):
    prefix = copy_prefix(TF1, tmp_path)
    index = tmp_path / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:100])
    with pytest.raises(FormatError, match=r"model\.ckpt\.index: truncated"):
        tf_checkpoint.read(str(prefix))


def test_garbage_index_with_right_footer_is_a_format_error(tmp_path):
    prefix = copy_prefix(TF1, tmp_path)
    index = tmp_path / "model.ckpt.index"
    index.write_bytes(b"\x00" * 200 + index.read_bytes()[-8:])
    with pytest.raises(FormatError, match=r"model\.ckpt.*not a readable TensorFlow checkpoint"):
        tf_checkpoint.read(str(prefix))


def test_missing_data_file_names_it(tmp_path):
    prefix = copy_prefix(TF1, tmp_path)
    (tmp_path / "model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(FormatError, match=r"model\.ckpt\.data-00000-of-00001: missing"):
        tf_checkpoint.read(str(prefix) + ".index")


def test_short_data_file_is_refused_before_reading_naming_the_tensor(tmp_path):
    prefix = copy_prefix(TF1, tmp_path)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:64])
    with pytest.raises(FormatError, match=r"model\.ckpt: tensor 'bn/gamma': bytes 56\.\.72 lie outside its 64-byte"):
        tf_checkpoint.read(str(prefix))


def test_damaged_data_fails_on_read_naming_the_tensor(tmp_path):
    prefix = copy_prefix(TF1, tmp_path)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[1550] ^= 0xFF   # inside dense/kernel (bytes 1540..2820): its checksum no longer matches
    data.write_bytes(bytes(raw))
    graph = tf_checkpoint.read(str(prefix))
    with pytest.raises(FormatError, match=r"data-\*: tensor dense/kernel"):
        graph["dense"].params["weight"].read()


def test_missing_index_and_empty_saved_model(tmp_path):
    with pytest.raises(FormatError, match=r"no checkpoint index"):
        tf_checkpoint.read(str(tmp_path / "nothing"))
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(FormatError, match=r"no variables/variables.index"):
        saved_model.read(str(tmp_path))


def test_sniffing_and_import_need_no_tensorflow():
    code = (
        "import sys; from surgery import formats; "
        f"assert formats.detect({str(TF1) + '.index'!r}) == 'tf_checkpoint'; "
        f"assert formats.detect({str(SAVED_MODEL)!r}) == 'saved_model'; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clashing_variable_names_fall_back_to_object_paths(tmp_path, tf):
    module = tf.Module()
    module.w = tf.Variable(np.ones((3, 2), np.float32), name="w")
    module.inner = tf.Module()
    module.inner.w = tf.Variable(np.zeros(2, np.float32), name="w")
    tf.saved_model.save(module, str(tmp_path / "sm"))
    graph = saved_model.read(str(tmp_path / "sm"))
    assert {name: p.shape for name, p in graph.tensors()} == {"w.w": (3, 2), "inner.w": (2,)}
    assert any("object path" in note for note in graph.notes)


def test_a_tensorflow_checkpoint_named_by_its_prefix():
    by_prefix = surgery.load(FIXTURES / "tf" / "tf2" / "ckpt")
    assert by_prefix.format == "tf_checkpoint" and set(by_prefix.layers) == set(surgery.load(FIXTURES / "tf" / "tf2" / "ckpt.index").layers)
