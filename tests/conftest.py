"""Shared fixtures: paths to the committed fixture files, a CLI runner."""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `fixtures` is importable as a package from the repository root
    sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "fixtures"
TORCH = FIXTURES / "torch"


@pytest.fixture
def run():
    """Run the CLI in-process: ``run("inspect", path)`` -> click Result (stdout, stderr, exit_code)."""
    from surgery.cli import cli

    def invoke(*args: object):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def raw(arr):
    """The bytes of an array as uint8, for bit-exact comparisons of any dtype (0-d included)."""
    import numpy as np

    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def assert_same_as_torch(state, tensors):
    """Every ``name -> Param`` equals the framework's ``name -> torch.Tensor``: names, shapes, dtypes, bits.

    The failing key is named in the assertion message.
    """
    import numpy as np

    from surgery.formats.torch.common import to_numpy

    assert set(state) == set(tensors), sorted(set(state) ^ set(tensors))
    for key, tensor in tensors.items():
        param = state[key]
        assert param.shape == tuple(tensor.shape), key
        assert param.dtype == str(tensor.dtype).removeprefix("torch."), key
        assert np.array_equal(raw(param.read()), raw(to_numpy(tensor))), key


# ---- Keras and TensorFlow: imported once per session, quietly, only by the tests that ask ----

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

KERAS_FIXTURES = FIXTURES / "keras"


@pytest.fixture(scope="session")
def keras():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    return keras


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_close(a, b, atol=1e-5, what=""):
    """Outputs agree within ``atol`` (absolute), with the worst difference in the message."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    worst = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert worst <= atol, f"{what}: max abs diff {worst:.3g} > {atol}"


TF_FIXTURES = FIXTURES / "tf"
TF2 = TF_FIXTURES / "tf2" / "ckpt"
TF1 = TF_FIXTURES / "tf1" / "model.ckpt"
SAVED_MODEL = TF_FIXTURES / "saved_model"


@pytest.fixture(scope="session")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


# ---- ONNX / TorchScript / ExportedProgram fixture files ----

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


NEEDED = ("onnx/cnn.onnx", "onnx/cnn_ext.onnx", "onnx/rnn.onnx", "onnx/dense.onnx",
          "onnx/evil/model.onnx", "torchscript/tiny.ts", "torchscript/tiny.pt2")


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> pathlib.Path:
    """The fixtures root holding ``onnx/`` and ``torchscript/``."""
    committed = ROOT / "fixtures"
    if all((committed / name).exists() for name in NEEDED):
        return committed
    from fixtures import onnx_fixtures

    out = tmp_path_factory.mktemp("fixtures")
    onnx_fixtures.make(out)
    return out


def run_ort(path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of an ONNX model run in ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def load_canonical(module, graph) -> None:
    """Load a canonical graph into a torch module by full name (strict: every key must match)."""
    import torch

    state = {key: torch.from_numpy(np.array(param.read())) for key, param in graph.tensors()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected, f"graph tensors the module lacks: {unexpected}"
    assert not [k for k in missing if not k.endswith("num_batches_tracked")], f"module tensors not in graph: {missing}"


def perturbed(graph, seed: int = 1):
    """A copy of the graph with every float tensor replaced by new random values (same shapes)."""
    from surgery.graph import Layer, LayerGraph, Param

    rng = np.random.default_rng(seed)
    layers = []
    for layer in graph:
        params = {}
        for role, p in layer.params.items():
            arr = p.read()
            if arr.dtype.kind == "f":
                arr = (rng.standard_normal(arr.shape) * 0.5).astype(arr.dtype)
                if role == "running_var":
                    arr = np.abs(arr) + 0.5
            params[role] = Param.from_array(np.array(arr), key=p.key)
        layers.append(Layer(layer.name, layer.kind, params, dict(layer.attrs)))
    return LayerGraph(layers, path=graph.path, format=graph.format, meta=dict(graph.meta))


# ---- verify: a factory and tiny saved networks ----

FACTORY = "tests.proof.nets:build"


@pytest.fixture(scope="session")
def small_pt(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The state_dict of ``nets.build()``."""
    import torch as torch_module  # `torch` is the fixture above

    from tests.proof import nets

    path = tmp_path_factory.mktemp("small") / "small.pt"
    torch_module.save(nets.build().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """``nets.build()`` exported by the TorchScript exporter (fast; node names carry module paths)."""
    import torch as torch_module

    from tests.proof import nets

    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    torch_module.onnx.export(nets.build(), (torch_module.zeros(nets.INPUT_SHAPE),), str(path), dynamo=False,
                      input_names=["x"], output_names=["logits"])
    return path
