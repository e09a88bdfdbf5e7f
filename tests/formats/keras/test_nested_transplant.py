"""A Keras encoder network with layers inside layers (Bidirectional LSTM, EinsumDense, an encoder
block owning a MultiHeadAttention, a Sequential inside) into the same network in PyTorch: strict,
and the two compute the same on one input."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import FIXTURES

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

import surgery  # noqa: E402
from fixtures import keras_nested_fixtures as nested  # noqa: E402

pytestmark = pytest.mark.zoo  # a zoo row: make zoo runs every test so marked


class TorchFunctional(torch.nn.Module):
    """``keras_nested_fixtures.functional`` written in PyTorch (Keras LayerNorm eps 1e-3)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.bi = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(8, 8)
        self.self_attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.attention_norm = nn.LayerNorm(8, eps=1e-3)
        self.ff_in, self.ff_out = nn.Linear(8, 8), nn.Linear(8, 8)
        self.ff_norm = nn.LayerNorm(8, eps=1e-3)
        self.s1, self.s2 = nn.Linear(40, 6), nn.Linear(6, 2)

    def forward(self, x):
        x = self.proj(self.bi(x)[0])
        x = self.attention_norm(x + self.self_attention(x, x, x, need_weights=False)[0])
        x = self.ff_norm(x + self.ff_out(torch.relu(self.ff_in(x))))
        return self.s2(self.s1(x.flatten(1)))


def test_functional_keras_with_nested_layers_into_pytorch(tmp_path):
    source = FIXTURES / "keras_nested" / "functional.keras"
    nested._classes()
    model = keras.saving.load_model(source)
    x = np.random.default_rng(5).normal(size=(2, *nested.SEQUENCE)).astype("float32")
    expected = np.asarray(model(x))
    mapping = tmp_path / "map.yaml"
    mapping.write_text('version: 1\nrename:\n  "^encoder/": ""\n')
    net = TorchFunctional()
    result = surgery.load_into(net, str(source), mapping=str(mapping), strict=True)
    assert len(result.plan.pairs) == 9
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg="Keras functional.keras vs PyTorch")
