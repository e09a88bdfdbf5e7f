"""`surgery map` proposes, the user accepts, `transplant` is right: judged by running both networks.

The destination is a torchvision-style port stored as safetensors, whose header lists
``classifier.*`` before ``features.*`` and ``features.10`` before ``features.2``:
the storage order says nothing, the structure and the shapes say everything.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import KERAS_FIXTURES, assert_close
from tests.e2e.test_keras_pytorch import torch_vgg

pytestmark = pytest.mark.zoo


def _propose(run, src, dst, path):
    result = run("map", src, dst, "-o", path)
    assert result.exit_code == 0, result.stderr
    text = path.read_text()
    assert "# skip:" not in text and "# keep:" not in text, text  # every layer paired
    return text


def test_keras_cnn_into_its_pytorch_port_stored_as_safetensors(run, torch, tmp_path):
    from safetensors.torch import save_file

    net = torch_vgg(torch)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "port.safetensors")
    text = _propose(run, KERAS_FIXTURES / "vgg.keras", tmp_path / "port.safetensors", tmp_path / "map.yaml")
    assert "fc1: classifier.1  # shape dense or embedding (32, 256)" in text and "dest_order: CHW" in text
    result = run("transplant", KERAS_FIXTURES / "vgg.keras", tmp_path / "port.safetensors", "--map", tmp_path / "map.yaml",
                 "-o", tmp_path / "out.safetensors", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    from safetensors.torch import load_file

    net.load_state_dict(load_file(tmp_path / "out.safetensors"))
    x = np.load(KERAS_FIXTURES / "input.npy")
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert_close(out, np.load(KERAS_FIXTURES / "output.npy"), atol=1e-4, what="proposed map, keras -> safetensors")


def test_the_pytorch_port_back_into_the_keras_cnn(run, torch, keras, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(7)
    net = torch_vgg(torch)
    with torch.no_grad():  # trained weights of its own, statistics included
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "port.safetensors")
    _propose(run, tmp_path / "port.safetensors", KERAS_FIXTURES / "vgg.keras", tmp_path / "map.yaml")
    result = run("transplant", tmp_path / "port.safetensors", KERAS_FIXTURES / "vgg.keras", "--map", tmp_path / "map.yaml",
                 "-o", tmp_path / "back.keras", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    x = np.load(KERAS_FIXTURES / "input.npy")
    with torch.no_grad():
        expected = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    back = keras.saving.load_model(tmp_path / "back.keras")
    assert_close(np.asarray(back(x)), expected, atol=1e-4, what="proposed map, safetensors -> keras")
