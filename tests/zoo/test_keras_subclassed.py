"""The zoo, a subclassed Keras model: attribute layers, a custom block owning layers, hyphenated names.

Saved with ``save_weights`` (``.weights.h5``: attribute paths at the top of the file) and
``save`` (``.keras``), transplanted into its PyTorch port by shape alone through the CLI,
and judged by running both on one input.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.zoo.judge import judge_torch_port

pytestmark = pytest.mark.zoo
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
X = np.random.default_rng(0).standard_normal((2, 12, 12, 3)).astype(np.float32)


@keras.saving.register_keras_serializable("surgery_zoo")
class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)
        self.norm = keras.layers.BatchNormalization(epsilon=1e-5)

    def call(self, x, training=False):
        return keras.ops.relu(self.norm(self.conv(x), training=training))


@keras.saving.register_keras_serializable("surgery_zoo")
class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem-conv")
        self.block = Block(name="block-1")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head_1 = keras.layers.Dense(10, name="head-1")

    def call(self, x, training=False):
        return self.head_1(self.pool(self.block(self.stem(x), training=training)))


class Port(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.block(torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subclassed")
    keras.utils.set_random_seed(7)
    model = Net()
    model(X)
    for v in model.weights:   # every tensor non-trivial, statistics included
        shape = tuple(v.shape)
        v.assign(keras.random.uniform(shape, 0.5, 1.5) if "variance" in v.path else keras.random.normal(shape) * 0.3)
    model.save_weights(folder / "net.weights.h5")
    model.save(folder / "net.keras")
    return folder, np.asarray(model(X, training=False))


@pytest.mark.parametrize("name", ["net.weights.h5", "net.keras"])
def test_a_subclassed_keras_model_into_its_pytorch_port(run, saved, tmp_path, name):
    folder, expected = saved
    port = Port().eval()
    torch.save(port.state_dict(), tmp_path / "port.pt")
    args = ["transplant", folder / name, tmp_path / "port.pt", "--match", "shape", "-o", tmp_path / "out.pt", "-q"]
    if name.endswith(".weights.h5"):   # no architecture in the file: whether a Flatten feeds the head is asked
        refused = run(*args)
        assert refused.exit_code == 1 and "flatten: {head-1: {shape: [8], source_order: C, dest_order: C}}" in refused.stderr
        (tmp_path / "map.yaml").write_text("flatten:\n  head-1: {shape: [8], source_order: C, dest_order: C}\n")
        args += ["--map", tmp_path / "map.yaml"]
    result = run(*args)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "head-1" in result.stdout  # the Keras layer name, not the attribute head_1
    judge_torch_port(port, torch.load(tmp_path / "out.pt", weights_only=True), X, expected, f"subclassed {name}")
