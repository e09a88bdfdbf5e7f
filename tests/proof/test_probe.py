"""``transplant --probe``: questions the files cannot answer, settled by running both networks.

Each test is judged by running the source natively and the destination, loaded by
its own framework from what surgery wrote, on the same input.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import KERAS_FIXTURES, ROOT

torch = pytest.importorskip("torch")
from fixtures import nets  # noqa: E402
from fixtures.zoo import attention, resnet  # noqa: E402


def _transplant(run, *args):
    return run("transplant", *map(str, args), "-q")


def _evidence(out):
    return json.loads(open(f"{out}.surgery.json").read())["probe"]


@pytest.fixture(scope="module")
def keras_resnet(tmp_path_factory, keras):
    folder = tmp_path_factory.mktemp("probe")
    model = resnet.keras_resnet(seed=1)
    model.save(folder / "resnet.keras")
    return folder / "resnet.keras", model


def test_an_identical_shape_swap(run, keras_resnet, tmp_path):
    """A shortcut conv of the block convs' shape, named conv0 and declared first: no name or number says which."""
    source, model = keras_resnet
    torch.manual_seed(2)
    port = resnet.port_conv0()
    torch.save(port.state_dict(), tmp_path / "port.pt")
    refused = _transplant(run, source, tmp_path / "port.pt", "--match", "shape", "-o", tmp_path / "out.pt")
    assert refused.exit_code == 1 and "block.conv0" in refused.stderr
    result = _transplant(run, source, tmp_path / "port.pt", "--match", "shape", "--probe",
                         "--factory", "fixtures.zoo.resnet:port_conv0", "-o", tmp_path / "out.pt")
    assert result.exit_code == 0, result.stdout + result.stderr
    # conv2 is settled by what feeds it (bn1); the shortcut and conv1 both read the stem: only a run tells
    assert "kept b1_short -> block.conv0, b1_conv1 -> block.conv1" in result.stdout
    (found,) = _evidence(tmp_path / "out.pt")
    errors = found["max_abs_error"]
    assert len(errors) == 2 and errors[found["chosen"]] < 1e-4 and sorted(errors.values())[1] > 0.1
    port.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    x = np.random.default_rng(0).standard_normal((2, *resnet.INPUT)).astype(np.float32)
    with torch.no_grad():
        got = port(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert float(np.abs(got - np.asarray(model(x))).max()) <= 1e-4


@pytest.mark.parametrize("factory, order", [("build_vgg_port10", "CHW"), ("build_vgg_port10_channels_last", "HWC")])
def test_a_flatten_order(run, tmp_path, factory, order):
    """A bare state_dict does not say how its network flattens; the run does, even through a permute."""
    text = (ROOT / "fixtures" / "torch" / "keras_full_map.yaml").read_text()
    (tmp_path / "map.yaml").write_text(text[:text.index("flatten:")])   # the flatten order left open
    net = getattr(nets, factory)().eval()
    torch.save(net.state_dict(), tmp_path / "port.pt")
    args = (KERAS_FIXTURES / "vgg.keras", tmp_path / "port.pt", "--map", tmp_path / "map.yaml")
    assert _transplant(run, *args, "-o", tmp_path / "out.pt").exit_code == 1   # assumed: a decision
    result = _transplant(run, *args, "--probe", "--factory", f"fixtures.nets:{factory}", "-o", tmp_path / "out.pt")
    assert result.exit_code == 0, result.stdout + result.stderr
    (found,) = _evidence(tmp_path / "out.pt")
    assert found["chosen"] == order, found
    net.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    x = np.load(KERAS_FIXTURES / "input.npy")
    with torch.no_grad():
        got = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert float(np.abs(got - np.load(KERAS_FIXTURES / "output.npy")).max()) <= 1e-4


def test_a_q_k_v_order(run, keras, tmp_path):
    """Projections named proj_1..3, used as value, query, key: only the attention's output tells them apart."""
    model = attention.keras_attention(seed=3)
    model.save(tmp_path / "attn.keras")
    torch.manual_seed(4)
    port = attention.build()
    torch.save(port.state_dict(), tmp_path / "port.pt")
    args = (tmp_path / "attn.keras", tmp_path / "port.pt", "--match", "shape")
    refused = _transplant(run, *args, "-o", tmp_path / "out.pt")
    assert refused.exit_code == 1 and "paired by order" in refused.stderr
    result = _transplant(run, *args, "--probe", "--factory", "fixtures.zoo.attention:build", "-o", tmp_path / "out.pt")
    assert result.exit_code == 0, result.stdout + result.stderr
    (found,) = _evidence(tmp_path / "out.pt")
    assert found["chosen"] == "proj_2 -> q, proj_3 -> k, proj_1 -> v", found
    port.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    x = np.random.default_rng(0).standard_normal((2, attention.TOKENS, attention.HIDDEN)).astype(np.float32)
    with torch.no_grad():
        got = port(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - np.asarray(model(x))).max()) <= 1e-4


def test_without_a_runnable_destination_the_question_stays_a_decision(run, keras_resnet, tmp_path):
    source, _ = keras_resnet
    torch.save(resnet.port_conv0().state_dict(), tmp_path / "port.pt")
    result = _transplant(run, source, tmp_path / "port.pt", "--match", "shape", "--probe", "-o", tmp_path / "out.pt")
    assert result.exit_code == 2 and "--factory" in result.stderr and not (tmp_path / "out.pt").exists()
