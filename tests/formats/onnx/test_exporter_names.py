"""Tensors the exporters leave anonymous take the layer of the node that reads them, with its kind and layout.

``torch.onnx.export`` names a PReLU slope ``onnx::PRelu_18`` (TorchScript exporter) or
``val_1`` (dynamo), reshaped to ``(C, 1, 1)`` / ``(1, C, 1, 1)``; InstanceNorm's scale and
bias likewise. Read from the consuming node's scope, they pair by name with the
state_dict of the same network, and the copy computes what ONNX Runtime computes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import surgery
from tests.conftest import run_ort

pytestmark = pytest.mark.zoo  # a zoo row: make zoo runs every test so marked


class PReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.prelu1 = nn.PReLU(4)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.fc = nn.Linear(4, 2)
        self.prelu2 = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.prelu1(self.conv(x)))
        return self.prelu2(self.fc(x.mean((2, 3))))


def _randomised(net: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return net.eval()


@pytest.mark.parametrize("dynamo", [False, True])
def test_prelu_and_instance_norm_from_both_exporters_into_pytorch(tmp_path, dynamo):
    x = torch.randn(2, 3, 8, 8)
    source = _randomised(PReLUNet(), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(source, (x,), str(tmp_path / "net.onnx"), dynamo=dynamo, input_names=["x"])
    graph = surgery.load(tmp_path / "net.onnx")
    kinds = {layer.name: layer.kind for layer in graph}
    assert kinds["prelu1"] == "prelu" and kinds["prelu2"] == "prelu" and kinds["norm"] == "instance_norm", kinds
    assert graph["prelu1"].params["weight"].shape == (4,)

    fresh = _randomised(PReLUNet(), 2)
    torch.save(fresh.state_dict(), tmp_path / "fresh.pt")
    result = surgery.transplant(tmp_path / "net.onnx", tmp_path / "fresh.pt", output=tmp_path / "out.pt")
    assert result.plan.strict_ok, result.plan.decisions()
    fresh.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    with torch.no_grad():
        ours = fresh(x).numpy()
    assert np.abs(ours - run_ort(tmp_path / "net.onnx", {"x": x.numpy()})).max() < 1e-5


def test_prelu_written_back_into_onnx_keeps_its_native_shape(tmp_path):
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_randomised(PReLUNet(), 1), (x,), str(tmp_path / "t.onnx"), dynamo=False, input_names=["x"])
    trained = _randomised(PReLUNet(), 3)
    torch.save(trained.state_dict(), tmp_path / "trained.pt")
    surgery.transplant(tmp_path / "trained.pt", tmp_path / "t.onnx", output=tmp_path / "out.onnx")
    with torch.no_grad():
        expected = trained(x).numpy()
    assert np.abs(run_ort(tmp_path / "out.onnx", {"x": x.numpy()}) - expected).max() < 1e-5


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.query(x) @ self.key(x).transpose(1, 2), -1) @ x


class Encoder(nn.Module):
    """Nested like a Hugging Face encoder: a ModuleList (never called) of blocks holding linears."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Attention(), Attention()])
        self.head = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return self.head(x)


@pytest.mark.parametrize("dynamo", [False, True])
def test_anonymous_matmul_weights_take_the_full_module_path(tmp_path, dynamo):
    x = torch.randn(2, 5, 8)
    source = _randomised(Encoder(), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(source, (x,), str(tmp_path / "enc.onnx"), dynamo=dynamo, input_names=["x"])
    graph = surgery.load(tmp_path / "enc.onnx")
    names = {layer.name for layer in graph if layer.kind == "dense"}
    assert {"layer.0.query", "layer.1.key", "head.0", "head.2"} <= names, sorted(names)
    fresh = _randomised(Encoder(), 5)
    torch.save(fresh.state_dict(), tmp_path / "fresh.pt")
    result = surgery.transplant(tmp_path / "enc.onnx", tmp_path / "fresh.pt", output=tmp_path / "out.pt")
    assert result.plan.strict_ok
    fresh.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    with torch.no_grad():
        assert np.abs(fresh(x).numpy() - run_ort(tmp_path / "enc.onnx", {"x": x.numpy()})).max() < 1e-5
