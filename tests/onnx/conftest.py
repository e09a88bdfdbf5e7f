"""Fixtures of the ONNX / TorchScript / ExportedProgram tests.

The committed files under ``fixtures/onnx`` and ``fixtures/torchscript`` are
used when present; otherwise they are made once into a temporary folder.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fixtures import onnx_fixtures  # noqa: E402

NEEDED = ("onnx/cnn.onnx", "onnx/cnn_ext.onnx", "onnx/rnn.onnx", "onnx/dense.onnx",
          "onnx/evil/model.onnx", "torchscript/tiny.ts", "torchscript/tiny.pt2")


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> pathlib.Path:
    """The fixtures root holding ``onnx/`` and ``torchscript/``."""
    committed = ROOT / "fixtures"
    if all((committed / name).exists() for name in NEEDED):
        return committed
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
