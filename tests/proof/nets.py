"""Tiny networks for the verify tests; ``tests.proof.nets:build`` is a factory."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Small(nn.Module):
    """Conv, BatchNorm, ReLU, flatten, two dense layers (the second square, so a transposed copy still loads)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc1 = nn.Linear(4 * 6 * 6, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))


def build() -> Small:
    """A deterministic Small: fixed seed, non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = Small()
    bn = net.features[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.05, 0.2)  # small variances make the eps visible
    return net.eval()


INPUT_SHAPE = (2, 3, 6, 6)


class Twin(nn.Module):
    """The PyTorch twin of ``keras_model``: channels-first, plain flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU())
        self.fc1 = nn.Linear(6 * 6 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(torch.flatten(self.features(x), 1))


def build_twin() -> Twin:
    """Factory for the twin (its weights come from the checkpoint)."""
    return Twin().eval()


def keras_model():
    """A tiny channels-last Keras network: conv, batch norm, relu, flatten, dense."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(5, name="fc1")(x)
    model = keras.Model(inp, out, name="small_keras")
    bn = model.get_layer("bn")
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 1.5, 4), rng.uniform(-0.5, 0.5, 4),
                    rng.uniform(-0.5, 0.5, 4), rng.uniform(0.05, 0.2, 4)])
    return model


def twin_state(model, *, flatten_permutation: bool = True) -> dict[str, torch.Tensor]:
    """The Keras model's weights in the twin's layout, converted by hand.

    ``flatten_permutation=False`` leaves the dense rows in Keras' H,W,C flatten
    order: the classic transplant mistake verify must catch.
    """
    kernel, bias = model.get_layer("conv").get_weights()
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    dense, dense_bias = model.get_layer("fc1").get_weights()
    if flatten_permutation:
        rows = dense.reshape(6, 6, 4, -1).transpose(3, 2, 0, 1).reshape(dense.shape[1], -1)
    else:
        rows = dense.T
    arrays = {
        "features.0.weight": kernel.transpose(3, 2, 0, 1), "features.0.bias": bias,
        "features.1.weight": gamma, "features.1.bias": beta,
        "features.1.running_mean": mean, "features.1.running_var": var,
        "fc1.weight": rows, "fc1.bias": dense_bias,
    }
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    state["features.1.num_batches_tracked"] = torch.tensor(0)
    return state


PAIRS = [{"source": "conv", "destination": "features.0"}, {"source": "bn", "destination": "features.1"},
         {"source": "fc1", "destination": "fc1"}]
