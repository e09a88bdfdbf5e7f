"""The zoo, Keras 2 rows: a network built and saved by `tf_keras` (TF-Keras 2), every way it saves.

Legacy `.h5` (`model.save`), `save_weights` to `.h5` and to a TF checkpoint, and the `.keras`
archive: each read by surgery, transplanted into the PyTorch port through the CLI, and judged by
running the Keras 2 model and the port on the same input.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.test_keras_pytorch import VGG_MAP, torch_vgg
from tests.zoo.judge import judge_torch_port

pytestmark = pytest.mark.zoo
tf_keras = pytest.importorskip("tf_keras")
X = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)


def keras2_vgg():
    layers = tf_keras.layers
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([
        layers.Input((16, 16, 3)),
        layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1"),
        layers.BatchNormalization(name="block1_bn"), layers.MaxPooling2D(name="block1_pool"),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="block2_conv1"),
        layers.BatchNormalization(name="block2_bn"), layers.MaxPooling2D(name="block2_pool"),
        layers.Flatten(name="flatten"), layers.Dense(32, activation="relu", name="fc1"),
        layers.Dense(10, name="predictions")])
    rng = np.random.default_rng(2)
    for v in model.weights:   # every tensor non-trivial, statistics included
        shape = tuple(v.shape)
        v.assign(rng.uniform(0.5, 1.5, shape) if "variance" in v.name else rng.standard_normal(shape) * 0.3)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras2")
    model = keras2_vgg()
    model.save(folder / "legacy.h5")
    model.save_weights(folder / "weights.h5")
    model.save_weights(str(folder / "ckpt"))   # TF format: ckpt.index + ckpt.data-00000-of-00001
    model.save(folder / "model.keras")
    return folder, np.asarray(model(X, training=False))


@pytest.mark.parametrize("name", ["legacy.h5", "weights.h5", "ckpt.index", "model.keras"])
def test_keras2_files_into_the_pytorch_port(run, saved, tmp_path, torch, name):
    import yaml

    folder, expected = saved
    net = torch_vgg(torch)
    torch.save(net.state_dict(), tmp_path / "port.pt")
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(VGG_MAP))
    result = run("transplant", folder / name, tmp_path / "port.pt", "--map", tmp_path / "map.yaml",
                 "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    judge_torch_port(net, torch.load(tmp_path / "out.pt", weights_only=True), X, expected, f"tf_keras {name}")


@pytest.mark.parametrize("name", ["legacy.h5", "weights.h5", "ckpt.index", "model.keras"])
def test_every_tensor_accounted_for(saved, name):
    """What surgery read, and what it names as left out, is every weight Keras 2 saved."""
    import surgery

    folder, _ = saved
    graph = surgery.load(folder / name)
    read = {k for k, _ in graph.tensors()}
    assert len(read) == len(keras2_vgg().weights) == 16, sorted(read)
    assert all("fc1" not in str(entry) and "conv" not in str(entry) for entry in graph.left_out), graph.left_out
