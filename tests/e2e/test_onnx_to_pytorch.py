"""ONNX -> PyTorch through `transplant --verify`: the CNN and the LSTM/GRU exported by torch.onnx."""

import json

import pytest
import torch

from fixtures import onnx_fixtures
from tests.conftest import FIXTURES

pytestmark = pytest.mark.zoo  # a zoo row: make zoo runs every test so marked


@pytest.fixture
def chdir_root(monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)  # the factory module lives in the repository


@pytest.mark.parametrize("model,factory,shape", [
    ("cnn.onnx", "fixtures.onnx_fixtures:cnn", "1,3,8,8"),
    ("cnn_ext.onnx", "fixtures.onnx_fixtures:cnn", "1,3,8,8"),
    ("rnn.onnx", "fixtures.onnx_fixtures:rnn", "2,5,4"),
])
def test_onnx_into_a_fresh_pytorch_network_is_proven(run, tmp_path, chdir_root, model, factory, shape):
    net = getattr(onnx_fixtures, factory.rsplit(":", 1)[1])()
    with torch.no_grad():  # a destination whose every value differs from the source's
        for p in net.state_dict().values():
            if p.is_floating_point():
                p.add_(1.0)
    dst = tmp_path / "dst.pt"
    torch.save(net.state_dict(), dst)
    out = tmp_path / "out.pt"
    result = run("transplant", FIXTURES / "onnx" / model, dst, "-o", out, "--strict", "--verify",
                 "--factory", factory, "--input-shape", shape, "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    verdict = next(line for line in result.stdout.splitlines() if line.startswith("verify "))
    assert verdict.endswith(f"({model}): PASS"), verdict
    assert json.loads((tmp_path / "out.pt.surgery.json").read_text())["verify"]["ok"] is True
    changed = run("diff", dst, out)
    assert changed.exit_code == 1
