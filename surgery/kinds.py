"""Grouping flat tensor names into layers, and inferring each layer's kind.

A ``state_dict`` says nothing about layer kinds; the roles (``weight``,
``running_mean``, ``weight_ih_l0``...) and the ranks of the tensors do. The
rules below are ordered from the most to the least specific; whatever none of
them recognises is ``unknown`` and passes through unchanged.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from .graph import Layer, LayerGraph, Param, natural_key

KINDS = (
    "dense", "conv1d", "conv2d", "conv3d", "conv_transpose", "depthwise_conv2d",
    "separable_conv1d", "separable_conv2d", "batch_norm", "layer_norm", "instance_norm", "embedding", "lstm", "gru",
    "lstm_cell", "gru_cell",
    "multi_head_attention", "prelu", "unknown",
)

# ---- What a framework's own class says -------------------------------------------------
# A class name is better evidence than ranks: every reader that knows the class uses these.

# torch.nn class name -> kind: TorchScript and ExportedProgram module trees, and live modules
# (which also match a listed base class: ``_BatchNorm`` covers every BatchNorm). A class not
# listed is inferred from its tensors.
TORCH_MODULE_KINDS: dict[str, str] = {
    "Linear": "dense", "LazyLinear": "dense", "Bilinear": "unknown",
    "Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d",
    "ConvTranspose1d": "conv_transpose", "ConvTranspose2d": "conv_transpose", "ConvTranspose3d": "conv_transpose",
    "BatchNorm1d": "batch_norm", "BatchNorm2d": "batch_norm", "BatchNorm3d": "batch_norm",
    "SyncBatchNorm": "batch_norm", "_BatchNorm": "batch_norm", "LayerNorm": "layer_norm", "Embedding": "embedding",
    "InstanceNorm1d": "instance_norm", "InstanceNorm2d": "instance_norm", "InstanceNorm3d": "instance_norm",
    "LSTM": "lstm", "GRU": "gru", "MultiheadAttention": "multi_head_attention", "PReLU": "prelu",
    "LSTMCell": "lstm_cell", "GRUCell": "gru_cell",
}

# Keras class name -> kind. Classes not listed pass through as ``unknown``.
KERAS_CLASS_KINDS: dict[str, str] = {
    "Dense": "dense",
    "Conv1D": "conv1d", "Conv2D": "conv2d", "Conv3D": "conv3d",
    "Conv1DTranspose": "conv_transpose", "Conv2DTranspose": "conv_transpose", "Conv3DTranspose": "conv_transpose",
    "DepthwiseConv1D": "conv1d", "DepthwiseConv2D": "depthwise_conv2d",
    "SeparableConv1D": "separable_conv1d", "SeparableConv2D": "separable_conv2d",
    "BatchNormalization": "batch_norm", "LayerNormalization": "layer_norm",
    "Embedding": "embedding", "LSTM": "lstm", "GRU": "gru",
    "MultiHeadAttention": "multi_head_attention", "PReLU": "prelu",
    "EinsumDense": "dense",   # only for an equation that is a Dense (formats/keras/layers.einsum_form)
}

# A cell (one step) and a single-layer, single-direction RNN hold the same tensors under other role names.
CELL_OF = {"lstm": "lstm_cell", "gru": "gru_cell"}

# Normalizations holding the same (C,) weight and bias: a kind guessed from names and ranks cannot tell them apart.
NORM_KINDS = frozenset({"layer_norm", "instance_norm"})

# Kinds whose layers slide a kernel over a feature map (a graph with none has no Flatten of one).
CONV_KINDS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose", "depthwise_conv2d", "separable_conv1d",
                        "separable_conv2d"})


def torch_class_kind(class_names: Iterable[str]) -> str | None:
    """The kind of the first listed class name (a module's class, then its bases), or None."""
    for name in class_names:
        if name in TORCH_MODULE_KINDS:
            return TORCH_MODULE_KINDS[name]
    return None


_RNN_ROLE = re.compile(r"^(weight|bias)_(ih|hh)_l\d+(_reverse)?$")
_MHA_CHILD = "out_proj"


def split_key(key: str) -> tuple[str, str]:
    """``features.0.weight`` -> (``features.0``, ``weight``); a bare ``cls_token`` -> (``cls_token``, "")."""
    layer, dot, role = key.rpartition(".")
    return (layer, role) if dot else (key, "")


def graph_of_params(params: Mapping[str, Param], *, natural_order: bool = False, **kwargs: Any) -> LayerGraph:
    """A LayerGraph from a flat ``name -> Param`` mapping: grouped into layers, kinds inferred.

    ``kwargs`` go to ``LayerGraph`` (``path``, ``format``, ``meta``).
    """
    return LayerGraph(group(params, natural_order=natural_order), **kwargs)


def group(params: Mapping[str, Param], *, natural_order: bool = False) -> list[Layer]:
    """Group ``full name -> Param`` into layers, in first-seen (or natural) order."""
    names = sorted(params, key=natural_key) if natural_order else list(params)
    layers: dict[str, Layer] = {}
    for key in names:
        name, role = split_key(key)
        layers.setdefault(name, Layer(name)).params[role] = params[key]
    fold_attention_outputs(layers)
    for layer in layers.values():
        layer.kind = infer_kind(layer.name, layer.params)
        if layer.kind != "unknown":
            layer.attrs["kind_from"] = "names and ranks"  # a guess a format with a graph would not need
    return list(layers.values())


def fold_attention_outputs(layers: dict[str, Layer]) -> None:
    """Make ``attn.out_proj`` part of ``attn`` when ``attn`` has a fused in-projection.

    ``nn.MultiheadAttention`` keeps its output projection as a child module;
    as a layer it is one unit, which is how Keras sees it too.
    """
    for name in list(layers):
        layer = layers.get(name)
        child = layers.get(f"{name}.{_MHA_CHILD}")
        if layer is None or child is None or "in_proj_weight" not in layer.params:
            continue
        for role, param in child.params.items():
            layer.params[f"{_MHA_CHILD}.{role}"] = param
        del layers[child.name]


def infer_kind(name: str, params: Mapping[str, Param]) -> str:
    """The layer kind from role names, ranks and (last) the layer's name."""
    roles = set(params)
    lowered = name.lower()
    if {"running_mean", "running_var"} <= roles:
        return "batch_norm"
    if "in_proj_weight" in roles or "q_proj_weight" in roles:
        return "multi_head_attention"
    if "weight_ih_l0" in roles and "weight_hh_l0" in roles:
        return _rnn_kind(params, "_l0")
    if {"weight_ih", "weight_hh"} <= roles:   # nn.LSTMCell / nn.GRUCell: one step, no layer suffix
        return {"lstm": "lstm_cell", "gru": "gru_cell"}.get(_rnn_kind(params, ""), "unknown")
    weight = params.get("weight")
    if weight is None:
        return "unknown"
    rank = len(weight.shape)
    if rank == 2:
        return "embedding" if "emb" in lowered or lowered.endswith(("wte", "wpe")) else "dense"
    if rank in (3, 4, 5):
        if "transpose" in lowered or "deconv" in lowered:
            return "conv_transpose"
        return f"conv{rank - 2}d"
    if rank == 1:
        if "prelu" in lowered:
            return "prelu"
        return "layer_norm"
    return "unknown"


def _rnn_kind(params: Mapping[str, Param], suffix: str) -> str:
    hidden = params[f"weight_hh{suffix}"].shape[-1]
    gates = params[f"weight_ih{suffix}"].shape[0] // max(hidden, 1)
    return {4: "lstm", 3: "gru"}.get(gates, "unknown")
