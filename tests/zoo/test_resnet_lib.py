"""The zoo, library ResNets: Keras applications' ResNet builder and transformers' ResNet, by shape alone.

No layer name in common, Keras' convs carry biases the PyTorch convs lack (folded into the
BatchNorm each feeds, as the Keras config shows), a block's shortcut and the convs of another
stage share shapes, and a safetensors destination lists its tensors alphabetically. Each row is
judged by running both networks on one input.
"""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.zoo import resnet_lib

pytestmark = pytest.mark.zoo
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
X = np.random.default_rng(0).standard_normal((2, *resnet_lib.INPUT)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory, keras):
    path = tmp_path_factory.mktemp("resnet_lib") / "resnet.keras"
    model = resnet_lib.keras_resnet(seed=1)
    model.save(path)
    return path, np.asarray(model(X))


def _logits(net, state) -> np.ndarray:
    net.model.load_state_dict(state)
    with torch.no_grad():
        return net(torch.from_numpy(X).permute(0, 3, 1, 2)).numpy()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_keras_resnet_into_the_transformers_resnet(run, keras_file, tmp_path, suffix):
    from safetensors.torch import load_file, save_file

    source, expected = keras_file
    state = resnet_lib.hf_resnet().state_dict()
    dst = tmp_path / f"hf{suffix}"
    torch.save(state, dst) if suffix == ".pt" else save_file({k: v.contiguous() for k, v in state.items()}, dst)
    result = run("transplant", source, dst, "--match", "shape", "-o", tmp_path / f"out{suffix}", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "minus conv2_block1_0_conv.bias (its bias folded in: exact" in result.stdout
    out = tmp_path / f"out{suffix}"
    got = _logits(resnet_lib.build_hf(), torch.load(out, weights_only=True) if suffix == ".pt" else load_file(out))
    worst = float(np.abs(got - expected).max())
    print(f"zoo row keras ResNet -> transformers ResNet{suffix}: max abs difference {worst:.3g}")
    assert worst <= 1e-4


def test_the_transformers_resnet_back_into_keras(run, keras_file, tmp_path, keras):
    """PyTorch's bias-less convs into Keras' convs with biases: zeros, which compute the same."""
    source, _ = keras_file
    torch.manual_seed(5)
    net = resnet_lib.build_hf()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.2)
        expected = net(torch.from_numpy(X).permute(0, 3, 1, 2)).numpy()
    torch.save(net.model.state_dict(), tmp_path / "hf.pt")
    result = run("transplant", tmp_path / "hf.pt", source, "--match", "shape", "-o", tmp_path / "back.keras", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "zeros (the source layer has no bias)" in result.stdout
    worst = float(np.abs(np.asarray(keras.saving.load_model(tmp_path / "back.keras")(X)) - expected).max())
    print(f"zoo row transformers ResNet -> keras ResNet: max abs difference {worst:.3g}")
    assert worst <= 1e-4
