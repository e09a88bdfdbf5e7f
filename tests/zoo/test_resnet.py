"""The zoo, residual rows: a Keras functional ResNet block into its PyTorch port, every way Keras saves it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures.zoo import resnet
from tests.zoo.judge import judge_torch_port

pytestmark = pytest.mark.zoo
X = np.random.default_rng(0).standard_normal((2, *resnet.INPUT)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, keras):
    folder = tmp_path_factory.mktemp("resnet")
    model = resnet.keras_resnet(seed=1)
    model.save(folder / "resnet.keras")
    model.save_weights(folder / "resnet.weights.h5")
    model.save(folder / "resnet.h5")
    import tensorflow as tf

    tf.train.Checkpoint(model=model).write(str(folder / "resnet.ckpt"))  # a TF2 object-graph checkpoint
    return folder, np.asarray(model(X))


@pytest.mark.parametrize("name", ["resnet.keras", "resnet.weights.h5", "resnet.h5", "resnet.ckpt.index"])
def test_keras_resnet_into_its_pytorch_port(run, saved, tmp_path, name):
    folder, expected = saved
    torch.manual_seed(2)
    port = resnet.TorchResNet().eval()
    torch.save(port.state_dict(), tmp_path / "port.pt")
    text = resnet.NAME_MAP
    if name.endswith((".weights.h5", ".index")):  # no architecture in the file: no Flatten feeds the head
        text += "flatten:\n  head: {shape: [8], source_order: C, dest_order: C}\n"
    (tmp_path / "map.yaml").write_text(text)
    result = run("transplant", folder / name, tmp_path / "port.pt", "--map", tmp_path / "map.yaml",
                 "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    judge_torch_port(port, torch.load(tmp_path / "out.pt", weights_only=True), X, expected, name)


def test_equal_shapes_declared_in_another_order_settle_by_name(run, saved, tmp_path):
    """``b1_short`` and ``block.shortcut``: the shortcut's name tells it from the block's convs of its shape."""
    folder, expected = saved
    torch.manual_seed(2)
    port = resnet.TorchResNet().eval()
    torch.save(port.state_dict(), tmp_path / "port.pt")
    result = run("transplant", folder / "resnet.keras", tmp_path / "port.pt", "--match", "shape",
                 "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    judge_torch_port(port, torch.load(tmp_path / "out.pt", weights_only=True), X, expected, "resnet.keras by shape")


def test_equal_shapes_no_name_tells_apart_are_never_swapped(run, saved, tmp_path):
    """The port's shortcut renamed ``conv0``: three numbered convs against two and a shortcut; exit 1, asked."""
    folder, _ = saved
    state = {k.replace("block.shortcut", "block.conv0"): v for k, v in resnet.TorchResNet().state_dict().items()}
    torch.save(state, tmp_path / "port.pt")
    result = run("transplant", folder / "resnet.keras", tmp_path / "port.pt", "--match", "shape",
                 "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 1 and not (tmp_path / "out.pt").exists()
    assert "paired by order" in result.stderr and "block.conv0" in result.stderr


def test_pytorch_port_back_into_the_keras_resnet(run, saved, tmp_path, keras):
    folder, _ = saved
    torch.manual_seed(5)
    port = resnet.TorchResNet().eval()
    with torch.no_grad():   # trained weights of its own, statistics included
        for name, t in port.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.3)
        expected = port(torch.from_numpy(X).permute(0, 3, 1, 2)).numpy()
    torch.save(port.state_dict(), tmp_path / "port.pt")
    reverse = "version: 1\nlayers:\n" + "".join(
        f"  {d}: {s}\n" for s, d in (line.split(": ") for line in resnet.NAME_MAP.splitlines()[2:]))
    (tmp_path / "map.yaml").write_text(reverse + "flatten:\n  fc: {shape: [8], source_order: C, dest_order: C}\n")
    result = run("transplant", tmp_path / "port.pt", folder / "resnet.keras", "--map", tmp_path / "map.yaml",
                 "-o", tmp_path / "back.keras", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    back = keras.saving.load_model(tmp_path / "back.keras")
    worst = float(np.abs(np.asarray(back(X)) - expected).max())
    print(f"zoo row port.pt -> resnet.keras: max abs difference {worst:.3g}")
    assert worst <= 1e-4
