"""A model folder (Hugging Face style) resolved to its weight files.

Preference: safetensors (index, then single file), then PyTorch (index, then
single file), then Keras ``tf_model.h5``, then a SavedModel, then the TensorFlow
checkpoint a ``checkpoint`` file names, then a single weight file of a known
suffix. The graph that comes back is the resolved file's, so writers treat it
like that file.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from ..errors import fail
from .shard_index import read_shard_index
from ..graph import LayerGraph
from ..kinds import graph_of_params

SUFFIXES: tuple[str, ...] = ()
CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "tf_model.h5",
    "saved_model.pb",
)


def sniff(path: str) -> bool:
    return os.path.isdir(path)


def resolve(path: str) -> str:
    """The weight file (or index, or SavedModel folder) a model folder stands for."""
    for name in CANDIDATES:
        candidate = os.path.join(path, name)
        if os.path.exists(candidate):
            return path if name == "saved_model.pb" else candidate
    latest = _latest_tf_checkpoint(path)
    if latest:
        return latest
    for pattern in ("*.safetensors.index.json", "*.safetensors", "*.pt", "*.pth", "*.bin", "*.keras", "*.h5", "*.onnx",
                    "*.index"):
        found = sorted(glob.glob(os.path.join(path, pattern)))
        if len(found) == 1:
            return found[0]
        if len(found) > 1 and not pattern.endswith(".safetensors"):
            raise fail(path, f"several weight files match {pattern}: {', '.join(map(os.path.basename, found))}; name one")
    raise fail(path, "folder holds no weight file surgery knows (model.safetensors, pytorch_model.bin, tf_model.h5, saved_model.pb...)")


def _latest_tf_checkpoint(path: str) -> str | None:
    """The checkpoint a TensorFlow ``checkpoint`` file names (``model_checkpoint_path: "ckpt-3"``)."""
    state = os.path.join(path, "checkpoint")
    if not os.path.isfile(state):
        return None
    with open(state, encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model_checkpoint_path":
                prefix = os.path.join(path, value.strip().strip('"'))
                if os.path.exists(prefix + ".index"):
                    return prefix + ".index"
    return None


def read(path: str, **options: Any) -> LayerGraph:
    from . import detect, module

    target = resolve(path)
    if target.endswith("pytorch_model.bin.index.json"):
        return _read_torch_shards(target, **options)
    name = "saved_model" if target == path else detect(target)
    graph = module(name).read(target, **options)
    graph.meta["folder"] = path
    return graph


def _read_torch_shards(index_path: str, **options: Any) -> LayerGraph:
    """A sharded ``pytorch_model.bin`` set: each shard read lazily, one graph."""
    from .torch import state_dict as torch_format

    index = read_shard_index(index_path)
    params = {}
    notes = []
    for shard_path in index.shards.values():
        graph = torch_format.read(shard_path, **options)
        params.update(graph.state())
        notes.extend(graph.notes)
    graph = graph_of_params(params, path=index_path, format="torch_shards")
    graph.notes.extend(notes)
    return graph


def write(graph: LayerGraph, path: str, **_: Any) -> None:
    raise fail(path, "cannot write a folder; name an output file (e.g. model.safetensors)")
