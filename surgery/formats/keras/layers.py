"""The one place where a Keras layer's variables become a canonical Layer, and back.

Every Keras reader (``.keras``, ``.weights.h5``, legacy ``.h5``, TF-Keras
checkpoints, a live ``keras.Model``) hands this module a dict of Keras
variable names (``kernel``, ``moving_mean``, ``query/kernel``...) to lazy
params in the native Keras layout; ``to_layer`` returns the canonical layer
(PyTorch roles and layouts, arithmetic attributes); ``native.to_native`` undoes it
for writers. The transforms themselves are entries of ``layouts``; this module
only says which one applies to which variable. Nothing here reads data.
"""

from __future__ import annotations

from typing import Any, Callable


from ... import layouts, lazy
from ...errors import SurgeryError
from ...graph import Layer, Param
from ...kinds import KERAS_CLASS_KINDS
from ...layouts import IDENTITY, Transform

# The reverse, for writing a canonical layer into a Keras file with no template.
CLASS_OF_KIND: dict[str, str] = {
    "dense": "Dense", "conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D",
    "depthwise_conv2d": "DepthwiseConv2D", "separable_conv2d": "SeparableConv2D",
    "batch_norm": "BatchNormalization", "layer_norm": "LayerNormalization", "embedding": "Embedding",
    "lstm": "LSTM", "gru": "GRU", "multi_head_attention": "MultiHeadAttention", "prelu": "PReLU",
}
# The order in which Keras 3 creates (and ``.weights.h5`` numbers) each class's variables.
VARIABLE_ORDER: dict[str, tuple[str, ...]] = {
    **{c: ("kernel", "bias") for c in KERAS_CLASS_KINDS if c.startswith(("Dense", "Conv", "Depthwise"))},
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "LayerNormalization": ("gamma", "beta"),
    "Embedding": ("embeddings",),
    "LSTM": ("kernel", "recurrent_kernel", "bias"),
    "GRU": ("kernel", "recurrent_kernel", "bias"),
    "PReLU": ("alpha",),
    "EinsumDense": ("kernel", "bias"),
}
MHA_PARTS = ("query", "key", "value", "attention_output")
CONV_LAYOUTS = {3: ("WIO", "OIW"), 4: ("HWIO", "OIHW"), 5: ("DHWIO", "OIDHW")}
CONV_T_LAYOUTS = {3: ("WOI", "IOW"), 4: ("HWOI", "IOHW"), 5: ("DHWOI", "IODHW")}


# A lazy param that is a transform applied to another; nothing is read now.
derive = Param.derived


def var_name(weight_name: str, layer_name: str = "") -> str:
    """A Keras variable's name inside its layer: ``seq/gru/gru_cell/kernel:0`` -> ``kernel``.

    Attention sub-layers keep their part: ``mha/query/kernel`` -> ``query/kernel``.
    """
    parts = [p for p in weight_name.split(":")[0].split("/") if p]
    if len(parts) >= 2 and parts[-2] in MHA_PARTS:
        return "/".join(parts[-2:])
    return parts[-1] if parts else weight_name


def infer_class(variables: dict[str, Param]) -> str | None:
    """The Keras class a set of variables most likely belongs to, from names and ranks."""
    names = set(variables)
    kernel = variables.get("kernel")
    if "query/kernel" in names:
        return "MultiHeadAttention"
    if {"depthwise_kernel", "pointwise_kernel"} <= names:
        return f"SeparableConv{len(variables['depthwise_kernel'].shape) - 2}D"
    if "depthwise_kernel" in names:
        return f"DepthwiseConv{len(variables['depthwise_kernel'].shape) - 2}D"
    if "recurrent_kernel" in names and kernel is not None:
        gates = kernel.shape[1] // max(variables["recurrent_kernel"].shape[0], 1)
        return {4: "LSTM", 3: "GRU"}.get(gates)
    if "moving_mean" in names:
        return "BatchNormalization"
    if names & {"gamma", "beta"}:
        return "LayerNormalization"
    if "embeddings" in names:
        return "Embedding"
    if "alpha" in names:
        return "PReLU"
    if kernel is not None:
        return {2: "Dense", 3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}.get(len(kernel.shape))
    return None


def attrs_of(class_name: str | None, config: dict | None) -> dict[str, Any]:
    """The attributes that change the arithmetic, in canonical (PyTorch) meaning.

    ``momentum`` is PyTorch's (``1 - keras_momentum``). Values not in a config
    are Keras' defaults, listed under ``assumed`` so reports can say so.
    """
    cfg = config or {}
    # ``data_format``: Keras' own default where the config records none (a Dense has none), so the
    # core knows how a Flatten before this layer ordered its features without asking "is this Keras?".
    # ``settings_recorded``: every setting is here (read, or Keras' default listed under ``assumed``),
    # so a missing one must not be filled with PyTorch's default.
    attrs: dict[str, Any] = {"keras_class": class_name, "data_format": "channels_last", "settings_recorded": True}
    assumed: list[str] = []

    def take(key: str, attr: str, default: Any = None, convert: Callable[[Any], Any] = lambda v: v) -> None:
        if key in cfg:
            attrs[attr] = convert(cfg[key])
        elif default is not None:
            attrs[attr] = convert(default)
            assumed.append(attr)

    for key in ("use_bias", "padding", "strides", "dilation_rate", "groups", "data_format", "kernel_size",
                "depth_multiplier", "units", "recurrent_activation", "return_sequences", "go_backwards",
                "num_heads", "key_dim", "value_dim", "center", "scale", "shared_axes"):
        take(key, key)
    if "activation" in cfg:
        act = cfg["activation"]
        attrs["activation"] = act.get("config", {}).get("name", act.get("class_name")) if isinstance(act, dict) else act
    if class_name in ("BatchNormalization", "LayerNormalization"):
        take("epsilon", "eps", 1e-3)
    if class_name == "BatchNormalization":
        take("momentum", "momentum", 0.99, lambda m: round(1.0 - float(m), 10))
    if class_name == "GRU":
        take("reset_after", "reset_after")
    if class_name == "Bidirectional":
        inner = cfg.get("layer") or {}
        attrs["layer"] = {"class_name": inner.get("class_name")}
        attrs.update({k: v for k, v in attrs_of(inner.get("class_name"), inner.get("config")).items()
                      if k in ("units", "reset_after", "activation", "recurrent_activation")})
        take("merge_mode", "merge_mode")
    if class_name == "EinsumDense":
        take("equation", "equation")
        take("bias_axes", "bias_axes")
    if assumed:
        attrs["assumed"] = assumed
    return attrs


def to_layer(name: str, class_name: str | None, variables: dict[str, Param], config: dict | None = None) -> Layer:
    """A Keras layer's variables as a canonical Layer.

    Args:
        name: the Keras layer name (becomes ``Layer.name``).
        class_name: ``"Dense"``, ``"Conv2D"``...; None to infer it from names and ranks.
        variables: Keras variable name (``kernel``, ``query/kernel``...) -> lazy Param in Keras layout.
        config: the layer's Keras config (the inner ``config`` dict), if known.

    Returns:
        The layer with canonical kind, roles, lazy canonical params and attrs.

    Example:
        >>> to_layer("fc1", "Dense", {"kernel": k, "bias": b}).params["weight"].shape  # k is (in, out)
        (out, in)
    """
    cls = class_name or infer_class(variables)
    attrs = attrs_of(cls, config)
    if (cls in ("BatchNormalization", "LayerNormalization") and not {"scale", "center"} & set(config or {})
            and not {"gamma", "beta"} <= set(variables)):
        # Without a config, which of gamma/beta a 3-variable layer lacks is a guess (see formats.h5).
        attrs.setdefault("assumed", []).append("scale=False" if "beta" in variables else "center=False")
    if cls == "GRU" and "reset_after" not in attrs and "bias" in variables:
        attrs["reset_after"] = len(variables["bias"].shape) == 2   # two bias rows <=> reset_after
    reader = _READERS.get(cls or "")
    if cls == "EinsumDense" and einsum_form(config) is None:
        reader = None          # a contraction no PyTorch layer computes: passed through, marked below
    try:
        params = _convert(reader, variables, attrs) if reader else dict(variables)
    except KeyError as missing:
        raise SurgeryError(f"Keras layer {name!r} ({cls}): variable {missing} missing; has {sorted(variables)}") from None
    kind = KERAS_CLASS_KINDS.get(attrs.get("rnn_class") or cls or "", "unknown") if reader else "unknown"
    if attrs.get("untranslated"):
        kind = "unknown"       # a Dense with LoRA or quantization variables is not a plain dense layer
    if kind == "unknown" and params:
        # Its tensors are in Keras' own layout, which no canonical role describes: a plan must not
        # copy them into another framework's layer as if they were canonical (docs/keras.md).
        attrs["layout_known"] = False
        attrs["layout_note"] = f"Keras {cls or 'layer of unknown class'}: tensors kept in Keras layout"
    frozen = bool(config) and config.get("trainable") is False
    return Layer(name, kind, params, attrs, frozen)


class _Seen(dict):
    """The variables a reader looked at, so none it does not know is dropped."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: set[str] = set()

    def __getitem__(self, key: str) -> Param:
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)


def _convert(reader: Callable[[dict[str, Param], dict], dict[str, Param]], variables: dict[str, Param],
             attrs: dict) -> dict[str, Param]:
    """The reader's canonical params, plus every variable it did not use, kept under its Keras name."""
    seen = _Seen(variables)
    params = reader(seen, attrs)
    extra = [k for k in variables if k not in seen.seen and not any(k.startswith(s + "/") for s in seen.seen)]
    if extra:
        attrs["untranslated"] = extra
        params.update({k: variables[k] for k in extra})
    return params


def _dense(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    out = {"weight": derive(v["kernel"], layouts.permute("IO", "OI"))}
    return _with(out, "bias", v.get("bias"))


def _with(out: dict[str, Param], role: str, param: Param | None, t: Transform = IDENTITY) -> dict[str, Param]:
    if param is not None:
        out[role] = derive(param, t)
    return out


def _conv(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    out = {"weight": derive(v["kernel"], layouts.permute(*CONV_LAYOUTS[len(v["kernel"].shape)]))}
    return _with(out, "bias", v.get("bias"))


def _conv_transpose(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    out = {"weight": derive(v["kernel"], layouts.permute(*CONV_T_LAYOUTS[len(v["kernel"].shape)]))}
    return _with(out, "bias", v.get("bias"))


def _depthwise(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    kernel = v["depthwise_kernel"] if "depthwise_kernel" in v else v["kernel"]
    attrs["groups"] = kernel.shape[-2]
    attrs["depth_multiplier"] = kernel.shape[-1]
    out = {"weight": derive(kernel, layouts.depthwise(len(kernel.shape) - 2))}
    return _with(out, "bias", v.get("bias"))


def _separable(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    dw = v["depthwise_kernel"]
    attrs["groups"] = dw.shape[-2]
    attrs["depth_multiplier"] = dw.shape[-1]
    out = {
        "depthwise.weight": derive(dw, layouts.depthwise(len(dw.shape) - 2)),
        "pointwise.weight": derive(v["pointwise_kernel"], layouts.permute(*CONV_LAYOUTS[len(dw.shape)])),
    }
    return _with(out, "pointwise.bias", v.get("bias"))


def _normalization_layer(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    out: dict[str, Param] = {}
    _with(out, "weight", v.get("gamma"))
    _with(out, "bias", v.get("beta"))
    _with(out, "running_mean", v.get("moving_mean"))
    return _with(out, "running_var", v.get("moving_variance"))


def _embedding(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    return {"weight": v["embeddings"]}


def _lstm(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    # Keras' i,f,c,o is PyTorch's i,f,g,o: only the transposes differ.
    out = {"weight_ih_l0": derive(v["kernel"], layouts.permute("IO", "OI")),
           "weight_hh_l0": derive(v["recurrent_kernel"], layouts.permute("IO", "OI"))}
    bias = v.get("bias")
    if bias is not None:
        out["bias_ih_l0"] = derive(bias, IDENTITY, key=bias.key)
        out["bias_hh_l0"] = lazy.constant(bias.shape, bias, 0.0, "zeros (Keras has one LSTM bias)")
    return out


def _gru(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    reorder = layouts.gates(layouts.GATE_ORDERS["keras_gru"], layouts.GATE_ORDERS["torch_gru"])
    out = {"weight_ih_l0": derive(v["kernel"], layouts.permute("IO", "OI").then(reorder)),
           "weight_hh_l0": derive(v["recurrent_kernel"], layouts.permute("IO", "OI").then(reorder))}
    bias = v.get("bias")
    if bias is not None and len(bias.shape) == 2:
        out["bias_ih_l0"] = derive(bias, layouts.row(0).then(reorder))
        out["bias_hh_l0"] = derive(bias, layouts.row(1).then(reorder))
    elif bias is not None:
        out["bias_ih_l0"] = derive(bias, reorder)
    return out


def _mha(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    q, k, val = v["query/kernel"], v["key/kernel"], v["value/kernel"]
    attrs.setdefault("num_heads", q.shape[1])
    attrs.setdefault("key_dim", q.shape[2])
    projections = [derive(p, layouts.heads_in()) for p in (q, k, val)]
    fused = q.shape == k.shape == val.shape and q.shape[0] == q.shape[1] * q.shape[2]
    out: dict[str, Param] = {}
    if fused:
        out["in_proj_weight"] = lazy.concat(projections, "q,k,v (d,heads,head_dim) -> in_proj_weight")
    else:
        for letter, proj in zip("qkv", projections):
            out[f"{letter}_proj_weight"] = proj
    biases = [v.get(f"{part}/bias") for part in MHA_PARTS[:3]]
    if all(b is not None for b in biases):
        flat = [derive(b, layouts.reshape((b.shape[0] * b.shape[1],), "heads,head_dim->(heads*head_dim)"))
                for b in biases]
        out["in_proj_bias"] = lazy.concat(flat, "q,k,v biases -> in_proj_bias")
    out["out_proj.weight"] = derive(v["attention_output/kernel"], layouts.heads_out())
    return _with(out, "out_proj.bias", v.get("attention_output/bias"))


def _prelu(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    alpha = v["alpha"]
    attrs["alpha_shape"] = list(alpha.shape)
    if all(d == 1 for d in alpha.shape[:-1]):
        return {"weight": derive(alpha, layouts.prelu())}
    # A per-position alpha has no PyTorch equivalent: keep it channels-first so a plan reports the shape,
    # and say the layout is not one PyTorch's PReLU has.
    attrs["layout_known"] = False
    attrs["layout_note"] = f"PReLU alpha {list(alpha.shape)} is per position; PyTorch's PReLU has one per channel"
    letters = "DHWC"[-len(alpha.shape):]
    return {"weight": derive(alpha, layouts.permute(letters, letters[-1] + letters[:-1]))}


def einsum_form(config: dict | None) -> str | None:
    """``"dense"`` when an EinsumDense equation is a Dense over the last axis (``...b,bc->...c``,
    ``abc,cd->abd``) with a bias on the output axis or none; None for any other contraction."""
    equation = (config or {}).get("equation", "").replace(" ", "")
    if "->" not in equation or equation.count(",") != 1:
        return None
    lhs, out = equation.split("->")
    inp, ker = lhs.split(",")
    bias_axes = (config or {}).get("bias_axes") or ""
    if len(ker) == 2 and inp and ker[0] == inp[-1] and out == inp[:-1] + ker[1] and bias_axes in ("", ker[1]):
        return "dense"
    return None


def _bidirectional(v: dict[str, Param], attrs: dict) -> dict[str, Param]:
    """Both directions of a Bidirectional LSTM/GRU as one PyTorch ``bidirectional=True`` layer."""
    forward = {k.split("/", 1)[1]: v[k] for k in list(v) if k.startswith("forward/")}
    backward = {k.split("/", 1)[1]: v[k] for k in list(v) if k.startswith("backward/")}
    inner = ((attrs.get("layer") or {}).get("class_name") if isinstance(attrs.get("layer"), dict) else None)
    rnn = inner or infer_class(forward)
    if rnn not in ("LSTM", "GRU"):
        raise KeyError(f"forward/kernel of an LSTM or GRU (found a {rnn})")
    attrs["rnn_class"] = rnn
    attrs["bidirectional"] = True
    if rnn == "GRU" and "reset_after" not in attrs and "bias" in forward:
        attrs["reset_after"] = len(forward["bias"].shape) == 2
    out = _convert(_READERS[rnn], forward, attrs)
    out.update({f"{role}_reverse": p for role, p in _convert(_READERS[rnn], backward, attrs).items()})
    return out


_READERS: dict[str, Callable[[dict[str, Param], dict], dict[str, Param]]] = {
    "Dense": _dense, "Conv1D": _conv, "Conv2D": _conv, "Conv3D": _conv,
    "Conv1DTranspose": _conv_transpose, "Conv2DTranspose": _conv_transpose, "Conv3DTranspose": _conv_transpose,
    "DepthwiseConv1D": _depthwise, "DepthwiseConv2D": _depthwise,
    "SeparableConv1D": _separable, "SeparableConv2D": _separable,
    "BatchNormalization": _normalization_layer, "LayerNormalization": _normalization_layer, "Embedding": _embedding,
    "LSTM": _lstm, "GRU": _gru, "MultiHeadAttention": _mha, "PReLU": _prelu,
    "Bidirectional": _bidirectional, "EinsumDense": _dense,
}
