"""A canonical Layer back into Keras variables: the inverse of ``layers.to_layer``, for writers.

Every Keras writer (``.keras``, ``.weights.h5``, legacy ``.h5``, TF checkpoints, a
live ``keras.Model``) asks here which Keras variable each canonical tensor becomes
and through which ``layouts`` entry. Nothing here reads data.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ... import layouts, lazy
from ...errors import SurgeryError
from ...graph import Layer, Param
from ...layouts import IDENTITY, Transform
from .layers import CLASS_OF_KIND, CONV_LAYOUTS, CONV_T_LAYOUTS, MHA_PARTS

derive = Param.derived


def to_native(layer: Layer, class_name: str | None, config: dict | None = None) -> dict[str, Param]:
    """A canonical Layer as Keras variables: name -> lazy Param in Keras layout (the inverse of ``to_layer``).

    Args:
        layer: canonical layer (from any framework).
        class_name: the destination Keras class; None to take it from
            ``layer.attrs["keras_class"]`` or the layer's kind.
        config: the destination layer's Keras config, which wins over ``layer.attrs``
            for what the layout depends on (``depth_multiplier``, ``num_heads``, ``reset_after``...).

    Raises:
        SurgeryError: the layer cannot be expressed in that class exactly (a
        PyTorch GRU into a Keras GRU with ``reset_after=False``).
    """
    cls = class_name or layer.attrs.get("keras_class") or CLASS_OF_KIND.get(layer.kind)
    writer = _WRITERS.get(cls or "")
    if writer is None:
        return dict(layer.params)
    setting = {**layer.attrs, **(config or {})}
    try:
        return writer(layer, layer.params, setting)
    except KeyError as missing:
        raise SurgeryError(f"layer {layer.name!r} as Keras {cls}: canonical tensor {missing} missing; "
                           f"has {sorted(layer.params)}") from None


def _opt(out: dict[str, Param], key: str, param: Param | None, t: Transform = IDENTITY) -> dict[str, Param]:
    if param is not None:
        out[key] = derive(param, t)
    return out


def _dense_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    return _opt({"kernel": derive(p["weight"], layouts.permute("OI", "IO"))}, "bias", p.get("bias"))


def _conv_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    native, canonical = CONV_LAYOUTS[len(p["weight"].shape)]
    return _opt({"kernel": derive(p["weight"], layouts.permute(canonical, native))}, "bias", p.get("bias"))


def _conv_transpose_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    native, canonical = CONV_T_LAYOUTS[len(p["weight"].shape)]
    return _opt({"kernel": derive(p["weight"], layouts.permute(canonical, native))}, "bias", p.get("bias"))


def _depthwise_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    spatial = len(p["weight"].shape) - 2
    kernel = derive(p["weight"], layouts.depthwise_back(int(cfg.get("depth_multiplier") or 1), spatial))
    return _opt({"kernel": kernel}, "bias", p.get("bias"))


def _separable_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    dw, pw = p["depthwise.weight"], p["pointwise.weight"]
    native, canonical = CONV_LAYOUTS[len(pw.shape)]
    out = {"depthwise_kernel": derive(dw, layouts.depthwise_back(int(cfg.get("depth_multiplier") or 1),
                                                                 len(dw.shape) - 2)),
           "pointwise_kernel": derive(pw, layouts.permute(canonical, native))}
    return _opt(out, "bias", p.get("pointwise.bias"))


def _normalization_layer_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    out: dict[str, Param] = {}
    if cfg.get("scale", True) is not False:
        _opt(out, "gamma", p.get("weight"))
    if cfg.get("center", True) is not False:
        _opt(out, "beta", p.get("bias"))
    _opt(out, "moving_mean", p.get("running_mean"))
    return _opt(out, "moving_variance", p.get("running_var"))


def _embedding_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    return {"embeddings": p["weight"]}


def _lstm_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    out = {"kernel": derive(p["weight_ih_l0"], layouts.permute("OI", "IO")),
           "recurrent_kernel": derive(p["weight_hh_l0"], layouts.permute("OI", "IO"))}
    ih, hh = p.get("bias_ih_l0"), p.get("bias_hh_l0")
    if ih is not None and hh is not None:
        out["bias"] = lazy.summed(ih, hh, "bias_ih + bias_hh -> one Keras bias")
    return _opt(out, "bias", ih) if hh is None else out


def _gru_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    reorder = layouts.gates(layouts.GATE_ORDERS["torch_gru"], layouts.GATE_ORDERS["keras_gru"])
    out = {"kernel": derive(p["weight_ih_l0"], reorder.then(layouts.permute("OI", "IO"))),
           "recurrent_kernel": derive(p["weight_hh_l0"], reorder.then(layouts.permute("OI", "IO")))}
    ih, hh = p.get("bias_ih_l0"), p.get("bias_hh_l0")
    reset_after = cfg.get("reset_after", True) is not False
    if ih is None:
        return out
    if reset_after != (hh is not None):
        raise SurgeryError(
            f"GRU layer {layer.name!r}: the source has {'two bias vectors (reset_after=True)' if hh is not None else 'one bias vector (reset_after=False)'} "
            f"but the Keras destination has reset_after={reset_after}; the two GRU variants compute differently")
    if hh is None:
        out["bias"] = derive(ih, reorder)
    else:
        out["bias"] = lazy.stacked([derive(ih, reorder), derive(hh, reorder)], "bias_ih, bias_hh -> (2, 3H)")
    return out


def _mha_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    heads = cfg.get("num_heads")
    if not heads:
        raise SurgeryError(f"attention layer {layer.name!r}: number of heads unknown; give the destination's config")
    heads = int(heads)
    if "in_proj_weight" in p:
        e = p["in_proj_weight"].shape[0] // 3
        projections = [derive(p["in_proj_weight"], layouts.rows(i * e, (i + 1) * e)) for i in range(3)]
    else:
        projections = [p[f"{letter}_proj_weight"] for letter in "qkv"]
    out: dict[str, Param] = {}
    for part, proj in zip(MHA_PARTS, projections):
        out[f"{part}/kernel"] = derive(proj, layouts.heads_in_back(heads))
    bias = p.get("in_proj_bias")
    if bias is not None:
        sizes = [proj.shape[0] for proj in projections]
        starts = np.cumsum([0, *sizes])
        for part, start, size in zip(MHA_PARTS, starts, sizes):
            to_heads = layouts.reshape((heads, size // heads), "(heads*head_dim)->heads,head_dim")
            out[f"{part}/bias"] = derive(bias, layouts.rows(int(start), int(start + size)).then(to_heads))
    out["attention_output/kernel"] = derive(p["out_proj.weight"], layouts.heads_out_back(heads))
    return _opt(out, "attention_output/bias", p.get("out_proj.bias"))


def _prelu_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    weight = p["weight"]
    shape = tuple(cfg.get("alpha_shape") or (1, 1, weight.shape[0]))
    if len(weight.shape) == 1 and int(np.prod(shape)) == weight.shape[0]:
        return {"alpha": derive(weight, layouts.prelu_back(shape))}
    letters = "DHWC"[-len(weight.shape):]
    return {"alpha": derive(weight, layouts.permute(letters[-1] + letters[:-1], letters))}


def _bidirectional_back(layer: Layer, p: dict[str, Param], cfg: dict) -> dict[str, Param]:
    rnn = cfg.get("rnn_class") or ("GRU" if layer.kind == "gru" else "LSTM")
    back = _WRITERS[rnn]
    forward = {r: q for r, q in p.items() if not r.endswith("_reverse")}
    backward = {r[: -len("_reverse")]: q for r, q in p.items() if r.endswith("_reverse")}
    out = {f"forward/{k}": q for k, q in back(layer, forward, cfg).items()}
    out.update({f"backward/{k}": q for k, q in back(layer, backward, cfg).items()})
    return out


_WRITERS: dict[str, Callable[[Layer, dict[str, Param], dict], dict[str, Param]]] = {
    "Dense": _dense_back, "Conv1D": _conv_back, "Conv2D": _conv_back, "Conv3D": _conv_back,
    "Conv1DTranspose": _conv_transpose_back, "Conv2DTranspose": _conv_transpose_back,
    "Conv3DTranspose": _conv_transpose_back,
    "DepthwiseConv1D": _depthwise_back, "DepthwiseConv2D": _depthwise_back,
    "SeparableConv1D": _separable_back, "SeparableConv2D": _separable_back,
    "BatchNormalization": _normalization_layer_back, "LayerNormalization": _normalization_layer_back, "Embedding": _embedding_back,
    "LSTM": _lstm_back, "GRU": _gru_back, "MultiHeadAttention": _mha_back, "PReLU": _prelu_back,
    "Bidirectional": _bidirectional_back, "EinsumDense": _dense_back,
}
