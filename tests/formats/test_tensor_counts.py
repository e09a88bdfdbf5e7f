"""Every reader accounts for every tensor of every fixture, counted by the framework's own loader.

Tensors in the file == tensors in the graph (by their name in the file, ``Param.key``)
+ tensors the reader names in ``graph.left_out`` with the reason. A tensor a reader
skips without saying so is how a transplant exits 0 with weights missing.
"""

from __future__ import annotations

import pytest

import surgery
from tests.conftest import FIXTURES, TORCH


def _graph_names(graph) -> set[str]:
    return {p.key for _, p in graph.tensors()} | set(graph.left_out)


def _assert_accounted(in_file: set[str], graph) -> None:
    seen = _graph_names(graph)
    missing = sorted(in_file - seen)
    assert not missing, f"{graph.path}: tensors of the file neither read nor named as left out: {missing[:10]}"
    extra = sorted(seen - in_file)
    assert not extra, f"{graph.path}: names the file does not hold: {extra[:10]}"


def _torch_names(obj, path=""):
    import torch

    if isinstance(obj, torch.Tensor):
        yield path
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _torch_names(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _torch_names(value, f"{path}.{i}" if path else str(i))


@pytest.mark.parametrize("name", sorted(p.name for p in TORCH.glob("*.pt") if "unsafe" not in p.name))
def test_pytorch_checkpoints(name):
    import torch

    graph = surgery.load(TORCH / name)
    obj = torch.load(TORCH / name, map_location="cpu", weights_only=True)
    wrapper, prefix = graph.meta.get("wrapper"), graph.meta.get("prefix") or ""
    in_file = set()
    for full in _torch_names(obj):
        inside = wrapper is None or full.startswith(f"{wrapper}.")
        key = full[len(wrapper) + 1:] if wrapper and inside else full
        in_file.add(key[len(prefix):] if inside and key.startswith(prefix) else key)
    _assert_accounted(in_file, graph)


@pytest.mark.parametrize("path", sorted(FIXTURES.rglob("*.safetensors")), ids=lambda p: p.name)
def test_safetensors_files(path):
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        in_file = set(f.keys())
        aliases = {k: v for k, v in (f.metadata() or {}).items() if v in in_file}
    graph = surgery.load(path)
    # a tied tensor is stored once; its alias is read back from the metadata, under the kept name
    _assert_accounted(in_file, graph)
    assert set(graph.state()) >= in_file | set(aliases), "aliases restored"


def test_torchscript_and_exported_program():
    import torch

    ts = surgery.load(FIXTURES / "torchscript" / "tiny.ts")
    _assert_accounted(set(torch.jit.load(str(FIXTURES / "torchscript" / "tiny.ts")).state_dict()), ts)
    program = torch.export.load(str(FIXTURES / "torchscript" / "tiny.pt2"))
    in_file = set(program.state_dict) | set(program.constants)
    _assert_accounted(in_file, surgery.load(FIXTURES / "torchscript" / "tiny.pt2"))


@pytest.mark.parametrize("name", ["cnn.onnx", "cnn_ext.onnx", "dense.onnx", "rnn.onnx"])
def test_onnx_models(name):
    import onnx

    model = onnx.load(str(FIXTURES / "onnx" / name), load_external_data=False)
    in_file = {t.name for t in model.graph.initializer}
    in_file |= {n.output[0] for n in model.graph.node
                if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)}
    _assert_accounted(in_file, surgery.load(FIXTURES / "onnx" / name))


@pytest.mark.parametrize("prefix", ["tf2/ckpt", "tf1/model.ckpt"])
def test_tensorflow_checkpoints(prefix):
    import tensorflow as tf

    in_file = {name for name, _ in tf.train.list_variables(str(FIXTURES / "tf" / prefix))}
    _assert_accounted(in_file, surgery.load(FIXTURES / "tf" / (prefix + ".index")))
