"""TorchScript (.ts) and ExportedProgram (.pt2): oracle against torch's own loaders, round trips that run."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from fixtures import onnx_fixtures
from surgery.errors import FormatError
from surgery.formats import detect
from surgery.formats.torch import exported_program as sep
from surgery.formats.torch import torchscript as sts
from surgery.graph import Param

from tests.conftest import load_canonical, perturbed

CNN_LAYERS = [("features.0", "conv2d"), ("features.1", "batch_norm"), ("fc", "dense")]


def oracle(graph, state) -> None:
    """Every tensor of torch's own state_dict, key by key, equals the graph's."""
    from surgery.formats.torch.common import to_numpy

    ours = graph.state()
    assert set(ours) == set(state), f"keys differ: only ours {set(ours) - set(state)}, only torch {set(state) - set(ours)}"
    for key, tensor in state.items():
        np.testing.assert_array_equal(ours[key].read(), to_numpy(tensor), err_msg=key)
        assert ours[key].shape == tuple(tensor.shape), key


def test_torchscript_oracle(fx):
    import torch

    path = fx / "torchscript" / "tiny.ts"
    graph = sts.read(str(path))
    oracle(graph, torch.jit.load(str(path), map_location="cpu").state_dict())
    assert [(l.name, l.kind) for l in graph] == CNN_LAYERS
    assert graph["features.1"].attrs["eps"] == 1e-5
    assert graph["features.0"].attrs["groups"] == 1


def test_exported_program_oracle(fx):
    import torch

    path = fx / "torchscript" / "tiny.pt2"
    graph = sep.read(str(path))
    oracle(graph, torch.export.load(str(path)).state_dict)
    assert [(l.name, l.kind) for l in graph] == CNN_LAYERS
    assert graph["features.1"].attrs["eps"] == 1e-5


def test_sniff(fx, tmp_path):
    import torch

    assert detect(fx / "torchscript" / "tiny.ts") == "torchscript"
    assert detect(fx / "torchscript" / "tiny.pt2") == "exported_program"
    renamed = tmp_path / "scripted.pt"  # a .pt TorchScript archive is found by content
    renamed.write_bytes((fx / "torchscript" / "tiny.ts").read_bytes())
    assert detect(renamed) == "torchscript"
    state = tmp_path / "state.pt"
    torch.save(onnx_fixtures.cnn().state_dict(), state)
    assert not sts.sniff(str(state)) and not sep.sniff(str(state))


def run(module, x):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def expected(graph, x):
    net = onnx_fixtures.cnn()
    load_canonical(net, graph)
    return run(net, x)


def test_torchscript_round_trip(fx, tmp_path):
    import torch

    new = perturbed(sts.read(str(fx / "torchscript" / "tiny.ts")))
    out = tmp_path / "out.ts"
    sts.write(new, str(out))
    x = np.random.default_rng(9).standard_normal(onnx_fixtures.CNN_INPUT).astype(np.float32)
    got = run(torch.jit.load(str(out)), x)
    np.testing.assert_allclose(got, expected(new, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, run(torch.jit.load(str(fx / "torchscript" / "tiny.ts")), x))


def test_exported_program_round_trip(fx, tmp_path):
    import torch

    new = perturbed(sep.read(str(fx / "torchscript" / "tiny.pt2")))
    out = tmp_path / "out.pt2"
    sep.write(new, str(out))
    x = np.random.default_rng(10).standard_normal(onnx_fixtures.CNN_INPUT).astype(np.float32)
    got = run(torch.export.load(str(out)).module(), x)
    np.testing.assert_allclose(got, expected(new, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, run(torch.export.load(str(fx / "torchscript" / "tiny.pt2")).module(), x))


@pytest.mark.parametrize("fmt", [sts, sep])
def test_write_refuses_wrong_shape_and_unknown_names(fx, tmp_path, fmt):
    name = "tiny.ts" if fmt is sts else "tiny.pt2"
    graph = fmt.read(str(fx / "torchscript" / name))
    graph["fc"].params["weight"] = Param.from_array(np.zeros((64, 5), np.float32))
    with pytest.raises(FormatError, match=r"fc.weight: the template holds float32\[5, 64\], the graph gives float32\[64, 5\]"):
        fmt.write(graph, str(tmp_path / name))
    graph = fmt.read(str(fx / "torchscript" / name))
    graph["fc"].params["scale"] = Param.from_array(np.zeros(5, np.float32))
    with pytest.raises(FormatError, match="the template has no tensor named fc.scale"):
        fmt.write(graph, str(tmp_path / name))


def test_zip_that_is_not_torchscript(tmp_path):
    import torch

    path = tmp_path / "weights.ts"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(FormatError, match="weights.ts: not a TorchScript archive"):
        sts.read(str(path))
    with pytest.raises(FormatError, match="weights.ts: not an ExportedProgram archive"):
        sep.read(str(path))


def test_broken_torchscript_archive(fx, tmp_path):
    """A zip with code/ whose program torch cannot load: FormatError, not a RuntimeError."""
    src = zipfile.ZipFile(fx / "torchscript" / "tiny.ts")
    path = tmp_path / "broken.ts"
    with zipfile.ZipFile(path, "w") as out:
        for item in src.infolist():
            if not item.filename.endswith("data.pkl"):
                out.writestr(item, src.read(item))
    with pytest.raises(FormatError, match="broken.ts: torch.jit.load could not read this TorchScript archive"):
        sts.read(str(path))


def test_broken_exported_program(fx, tmp_path):
    src = zipfile.ZipFile(fx / "torchscript" / "tiny.pt2")
    path = tmp_path / "broken.pt2"
    with zipfile.ZipFile(path, "w") as out:
        for item in src.infolist():
            data = src.read(item)
            out.writestr(item, data[: len(data) // 2] if item.filename.endswith("model.json") else data)
    with pytest.raises(FormatError, match="broken.pt2: torch.export.load could not read this archive"):
        sep.read(str(path))


def test_truncated_archives_are_not_sniffed(fx, tmp_path):
    for name in ("tiny.ts", "tiny.pt2"):
        data = (fx / "torchscript" / name).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(FormatError, match="not a"):
            (sts if name.endswith(".ts") else sep).read(str(path))


@pytest.mark.parametrize("fmt", [sts, sep])
def test_frozen_layers_are_saved_without_grad(fx, tmp_path, fmt):
    """A frozen layer's parameters are written with requires_grad=False, and read back as frozen."""
    import torch

    name = "tiny.ts" if fmt is sts else "tiny.pt2"
    graph = fmt.read(str(fx / "torchscript" / name))
    assert not any(layer.frozen for layer in graph)
    graph["features.0"].frozen = True
    out = tmp_path / name
    fmt.write(graph, str(out))
    again = fmt.read(str(out))
    assert [l.name for l in again if l.frozen] == ["features.0"]
    if fmt is sts:
        grads = {k: p.requires_grad for k, p in torch.jit.load(str(out)).named_parameters()}
    else:
        grads = {k: p.requires_grad for k, p in torch.export.load(str(out)).module().named_parameters()}
    assert grads["features.0.weight"] is False and grads["fc.weight"] is True, grads
