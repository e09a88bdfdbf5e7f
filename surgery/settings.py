"""Settings that are not weights but change the arithmetic, compared on every pair.

Users lose days to differences no weight copy shows: a BatchNorm epsilon of
1e-3 read into a network built with 1e-5, an activation Keras applies inside
a Dense layer that the PyTorch network must apply itself, Keras ``same``
padding that pads more at the bottom-right than a symmetric ``padding=`` can.
Each finding is a warning naming the pair and both values. Attributes are in
PyTorch's meaning (a Keras BatchNorm momentum ``m`` is read as ``1 - m``).
"""

from __future__ import annotations

from typing import Any

from .graph import Layer

# Compared whenever both sides know them.
COMPARED = ("eps", "momentum", "groups", "use_bias", "activation", "reset_after")
# What a PyTorch layer has when its state_dict (which records no settings) is all we know.
TORCH_DEFAULTS = {"batch_norm": {"eps": 1e-5, "momentum": 0.1}, "layer_norm": {"eps": 1e-5}}
LINEAR = (None, "linear", "identity")
# Kinds whose Keras layer applies an activation after its arithmetic, which PyTorch leaves to a separate module.
FUSES_ACTIVATION = ("dense", "conv1d", "conv2d", "conv3d", "conv_transpose", "depthwise_conv2d",
                    "separable_conv1d", "separable_conv2d")


def effective(layer: Layer) -> dict[str, Any]:
    """A layer's settings; for a layer from a PyTorch-side file, which records none, PyTorch's defaults."""
    if layer.attrs.get("settings_recorded"):
        return layer.attrs
    return {**TORCH_DEFAULTS.get(layer.kind, {}), **layer.attrs}


def setting_warnings(src: Layer, dsts: list[Layer]) -> list[str]:
    """Every setting difference between a source layer and its destination layer(s)."""
    out = _assumed(src, "source")
    mine = effective(src)
    for dst in dsts:
        theirs = effective(dst)
        pair = f"{src.name} -> {dst.name}"
        for key in COMPARED:
            if key == "groups" and (len(dsts) > 1 or src.kind.startswith("separable")):
                continue  # a separable layer's groups belong to its depthwise half only
            if key in mine and key in theirs and mine[key] != theirs[key]:
                out.append(f"{pair}: {key} is {mine[key]!r}{_default(src, key)} in the source but "
                           f"{theirs[key]!r}{_default(dst, key)} in the destination")
        out += _fused_activation(pair, src, dst) + _padding(pair, src, dst) + _merge_mode(pair, src, dst)
        out += _assumed(dst, "destination")
    return out


def _default(layer: Layer, key: str) -> str:
    return " (PyTorch default)" if key not in layer.attrs else ""


def _assumed(layer: Layer, side: str) -> list[str]:
    guessed = layer.attrs.get("assumed")
    if not guessed:
        return []
    values = ", ".join(f"{k}={layer.attrs[k]!r}" if k in layer.attrs else k for k in guessed)
    return [f"{layer.name}: the {side} file records no config for this layer; assumed Keras defaults: {values}"]


def _fused_activation(pair: str, src: Layer, dst: Layer) -> list[str]:
    act = src.attrs.get("activation")
    if act in LINEAR or "activation" in dst.attrs or src.kind not in FUSES_ACTIVATION:
        return []  # an RNN's activation is part of its cell, in both frameworks
    return [f"{pair}: the source applies activation {act!r} inside the layer; the destination network "
            "must apply it itself after this layer"]


_MERGED = {"sum": "sums", "mul": "multiplies", "ave": "averages", None: "returns as a list"}


def _merge_mode(pair: str, src: Layer, dst: Layer) -> list[str]:
    """A Bidirectional RNN whose two directions are merged otherwise than PyTorch's concatenation."""
    mine = src.attrs.get("merge_mode", "concat") if src.attrs.get("bidirectional") else "concat"
    theirs = dst.attrs.get("merge_mode", "concat") if dst.attrs.get("bidirectional") else "concat"
    if mine == theirs or not (src.attrs.get("bidirectional") or dst.attrs.get("bidirectional")):
        return []
    side, mode = ("source", mine) if mine != "concat" else ("destination", theirs)
    return [f"{pair}: the {side} {_MERGED.get(mode, mode)} its two directions (merge_mode={mode!r}) where the other "
            "concatenates them; the weights are exact, but that network must merge its two output halves the same way"]


def _padding(pair: str, src: Layer, dst: Layer) -> list[str]:
    if src.attrs.get("padding") != "same":
        return []
    kernel = _ints(src.attrs.get("kernel_size"))
    strides = _ints(src.attrs.get("strides"))
    if any(k % 2 == 0 for k in kernel) or any(s > 1 for s in strides):
        return [f"{pair}: Keras padding 'same' with kernel {kernel} and strides {strides} pads more at the end "
                "than the start; a symmetric PyTorch padding= cannot express it: pad with nn.ZeroPad2d/F.pad "
                "(left/top smaller) before the layer, or check the outputs with `surgery verify`"]
    wanted = [k // 2 for k in kernel]
    have = dst.attrs.get("padding")
    if isinstance(have, (list, tuple)) and list(have) != wanted:
        return [f"{pair}: Keras padding 'same' is {wanted} for kernel {kernel}, the destination pads {list(have)}"]
    return []


def _ints(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def unfilled(src: Layer, dst: Layer, role: str) -> str:
    """Why a destination tensor of a paired layer gets no value."""
    key = dst.key(role)
    if role == "bias" and src.attrs.get("use_bias") is False:
        return (f"{key}: the source layer {src.name} has no bias (use_bias=False); the destination's bias keeps "
                "its initial values: zero it, or build the layer with bias=False")
    return f"{key}: no source tensor in {src.name}; left as initialised"
