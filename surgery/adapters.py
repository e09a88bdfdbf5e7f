"""How the tensors of one source layer feed the tensors of its destination layer(s).

An adapter looks at one source layer and the destination layer(s) it is paired
with and returns, for each destination tensor it can fill, a ``Feed``: a lazy
param in the destination's canonical layout plus the names of the source
tensors it is made of and the name of the transform, for the report.

Adapters are tried in ``ADAPTERS`` order; the first that returns a dict wins.
``by_role`` (same roles on both sides) is the last resort. Adapters that need
more than one destination layer (a separable conv into depthwise + pointwise)
or that re-arrange roles (a fused attention projection into q/k/v) go before it.
Shape checks, casts and slicing happen afterwards, in ``plan``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


from . import layouts, lazy
from .errors import PlanError
from .graph import BOOKKEEPING, Layer, Param
from .kinds import CELL_OF


@dataclass
class Feed:
    """The recipe for one destination tensor."""

    param: Param                 # lazy, canonical layout, source dtype
    sources: tuple[str, ...]     # full canonical names of the source tensors used
    transform: str               # shown in the plan: "identity", "gates ifco->ifgo"...
    assumed: dict[str, Any] | None = None  # a layout taken on trust: the map's ``flatten`` entry that confirms it


class MergedLayer(Layer):
    """Several source layers that together fill one destination layer (the map's ``merge``).

    Its params are keyed by the parts' full tensor names, so feeds name the real
    source tensors. Example: four linears ``q/k/v/o_proj`` into one Keras
    MultiHeadAttention, or a depthwise and a pointwise conv into one SeparableConv2D.
    """

    def __init__(self, parts: list[Layer]) -> None:
        params = {part.key(role): p for part in parts for role, p in part.params.items()}
        super().__init__("+".join(part.name for part in parts), "merged", params)
        self.parts = parts

    def key(self, role: str) -> str:
        return role


# (source layer, destination layers, options from the map) -> {(dst layer name, role): Feed}
Adapter = Callable[[Layer, list[Layer], dict[str, Any]], Optional[dict[tuple[str, str], Feed]]]


def by_role(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """One destination layer with the same role names: tensor to tensor."""
    if len(dsts) != 1:
        return None
    dst = dsts[0]
    feeds = {}
    for role in dst.params:
        param = src.params.get(role)
        if param is not None:
            feeds[(dst.name, role)] = Feed(param, (src.key(role),), param.layout or "identity")
    if feeds and role_zero_bias(src, dst):  # a conv without a bias is one with a zero bias: exact
        feeds[(dst.name, "bias")] = Feed(_zeros(dst.params["bias"]), (), "zeros (the source layer has no bias)")
    return feeds or _lone_tensors(src, dst)


def role_zero_bias(src: Layer, dst: Layer) -> bool:
    """A conv or dense destination bias the source layer does not have (PyTorch ``bias=False`` into Keras)."""
    kinds = ("dense", "conv1d", "conv2d", "conv3d", "conv_transpose", "depthwise_conv2d")
    return ("bias" in dst.params and "bias" not in src.params and "weight" in src.params
            and src.kind in kinds and dst.kind in kinds)


def _lone_tensors(src: Layer, dst: Layer) -> dict[tuple[str, str], Feed]:
    """One tensor on each side, of one shape, under other role names (a buffer kept as a conv ``weight``)."""
    mine = [r for r in src.params if r not in BOOKKEEPING]
    theirs = [r for r in dst.params if r not in BOOKKEEPING]
    if len(mine) != 1 or len(theirs) != 1 or src.params[mine[0]].shape != dst.params[theirs[0]].shape:
        return {}
    param = src.params[mine[0]]
    note = f"the only tensor on each side: {mine[0] or '(unnamed)'} -> {theirs[0] or '(unnamed)'}"
    return {(dst.name, theirs[0]): Feed(param, (src.key(mine[0]),), f"{param.layout or 'identity'} ({note})")}


def rnn_cell(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """An LSTM/GRU cell (``weight_ih``) and a single-layer, single-direction LSTM/GRU (``weight_ih_l0``)."""
    if len(dsts) != 1 or (src.kind, dsts[0].kind) not in {(k, c) for k, c in CELL_OF.items()} | {
            (c, k) for k, c in CELL_OF.items()}:
        return None
    dst = dsts[0]
    layered = src if src.kind in CELL_OF else dst
    if any(not r.endswith("_l0") for r in layered.params):  # stacked or bidirectional: a cell is one of them only
        raise PlanError(f"{src.name} -> {dst.name}: {layered.name} has {sorted(layered.params)}; a cell matches "
                        "only a single-layer, single-direction RNN")
    to_dst = (lambda r: r.removesuffix("_l0")) if src is layered else (lambda r: f"{r}_l0")
    return {(dst.name, to_dst(r)): Feed(p, (src.key(r),), f"{p.layout or 'identity'} ({r} -> {to_dst(r)})")
            for r, p in src.params.items() if to_dst(r) in dst.params}


def _zeros(like: Param) -> Param:
    return lazy.constant(like.shape, like, 0.0, "zeros")


def gru_variant(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> None:
    """Refuse a GRU pair whose ``reset_after`` differ: the two variants compute differently.

    PyTorch's GRU is Keras' ``reset_after=True``; a layer without the attribute
    (any non-Keras GRU) counts as that.
    """
    if src.kind != "gru":
        return None
    mine = src.attrs.get("reset_after", True) is not False
    for dst in dsts:
        theirs = dst.attrs.get("reset_after", True) is not False
        if dst.kind == "gru" and mine != theirs:
            raise PlanError(
                f"GRU {src.name!r} -> {dst.name!r}: reset_after={mine} in the source but {theirs} in the destination "
                "(PyTorch's GRU is reset_after=True); there is no exact conversion. Rebuild the Keras GRU with "
                "reset_after=True, or `keep` the layer and train it")
    return None


def separable_split(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """A separable conv into two destination convs ``[depthwise, pointwise]`` (map: ``sep1: [dw, pw]``).

    Keras has one bias, after the pointwise step; a depthwise destination with a
    bias gets zeros, so the pair computes exactly what the source did.
    """
    if not src.kind.startswith("separable_conv") or len(dsts) != 2:
        return None
    depth, point = dsts
    dw, pw = src.params["depthwise.weight"], src.params["pointwise.weight"]
    feeds = {(depth.name, "weight"): Feed(dw, (src.key("depthwise.weight"),), dw.layout or "identity"),
             (point.name, "weight"): Feed(pw, (src.key("pointwise.weight"),), pw.layout or "identity")}
    if "bias" in depth.params:
        feeds[(depth.name, "bias")] = Feed(_zeros(depth.params["bias"]), (), "zeros (no depthwise bias in the source)")
    if "bias" in point.params:
        bias = src.params.get("pointwise.bias")
        feeds[(point.name, "bias")] = (Feed(bias, (src.key("pointwise.bias"),), bias.layout or "identity") if bias is not None
                                       else Feed(_zeros(point.params["bias"]), (), "zeros (source has no bias)"))
    return feeds


def separable_merge(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """A depthwise conv and a pointwise conv (``merge: {sep1: [dw, pw]}``) into one separable layer.

    A separable layer has no bias between its two steps: a depthwise bias is
    reported as not copied (the result matches only if it was zero).
    """
    parts = getattr(src, "parts", None)
    if not parts or len(parts) != 2 or len(dsts) != 1 or not dsts[0].kind.startswith("separable_conv"):
        return None
    dst, (depth, point) = dsts[0], parts
    feeds = {(dst.name, "depthwise.weight"): _whole(depth, "weight"),
             (dst.name, "pointwise.weight"): _whole(point, "weight")}
    if "bias" in point.params and "pointwise.bias" in dst.params:
        feeds[(dst.name, "pointwise.bias")] = _whole(point, "bias")
    return feeds


def attention_merge(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """Four linears ``[q, k, v, o]`` (``merge: {mha: [q_proj, k_proj, v_proj, o_proj]}``) into one attention layer."""
    parts = getattr(src, "parts", None)
    if not parts or len(parts) != 4 or len(dsts) != 1 or dsts[0].kind != "multi_head_attention":
        return None
    dst, (q, k, v, o) = dsts[0], parts
    feeds: dict[tuple[str, str], Feed] = {}
    if "in_proj_weight" in dst.params:
        feeds[(dst.name, "in_proj_weight")] = _joined([q, k, v], "weight", "q, k, v weights -> in_proj_weight")
    else:
        for letter, part in zip("qkv", (q, k, v)):
            feeds[(dst.name, f"{letter}_proj_weight")] = _whole(part, "weight")
    if "in_proj_bias" in dst.params and all("bias" in p.params for p in (q, k, v)):
        feeds[(dst.name, "in_proj_bias")] = _joined([q, k, v], "bias", "q, k, v biases -> in_proj_bias")
    for role in ("weight", "bias"):
        if role in o.params and f"out_proj.{role}" in dst.params:
            feeds[(dst.name, f"out_proj.{role}")] = _whole(o, role)
    return feeds


def dense_merge(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """Dense layers stacked row-wise into one (``merge: {qkv: [q, k, v]}``): weights and biases concatenated."""
    parts = getattr(src, "parts", None)
    if not parts or len(dsts) != 1 or dsts[0].kind != "dense" or any(p.kind != "dense" for p in parts):
        return None
    dst, names = dsts[0], ", ".join(p.name for p in parts)
    feeds = {(dst.name, "weight"): _joined(parts, "weight", f"rows of {names} stacked")}
    if "bias" in dst.params and all("bias" in p.params for p in parts):
        feeds[(dst.name, "bias")] = _joined(parts, "bias", f"biases of {names} stacked")
    return feeds


def dense_split(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """One dense layer's rows split among several (``qkv: [q, k, v]``): each takes its block of rows."""
    if src.kind != "dense" or len(dsts) < 2 or any(d.kind != "dense" for d in dsts):
        return None
    rows = [d.params["weight"].shape[0] for d in dsts]
    if sum(rows) != src.params["weight"].shape[0]:
        raise PlanError(f"{src.name} -> {', '.join(d.name for d in dsts)}: {src.params['weight'].shape[0]} rows "
                        f"do not split into {' + '.join(map(str, rows))}")
    feeds, start = {}, 0
    for dst, size in zip(dsts, rows):
        for role in ("weight", "bias"):
            param = src.params.get(role)
            if param is not None and role in dst.params:
                feeds[(dst.name, role)] = Feed(param.derived(layouts.rows(start, start + size)), (src.key(role),),
                                               f"rows {start}:{start + size} of {role}")
        start += size
    return feeds


def _whole(layer: Layer, role: str) -> Feed:
    param = layer.params[role]
    return Feed(param, (layer.key(role),), param.layout or "identity")


def _joined(layers: list[Layer], role: str, note: str) -> Feed:
    return Feed(lazy.concat([layer.params[role] for layer in layers], note),
                tuple(layer.key(role) for layer in layers), note)


def attention_split(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """Fused attention (``in_proj_weight``, ``out_proj.*``) into four linears ``[q, k, v, o]``."""
    if src.kind != "multi_head_attention" or len(dsts) != 4:
        return None
    feeds: dict[tuple[str, str], Feed] = {}
    fused, bias = src.params.get("in_proj_weight"), src.params.get("in_proj_bias")
    start = 0
    for letter, dst in zip("qkv", dsts[:3]):
        if fused is not None:
            size = fused.shape[0] // 3
            part, role = fused.derived(layouts.rows(start, start + size)), "in_proj_weight"
        else:
            part, role = src.params[f"{letter}_proj_weight"], f"{letter}_proj_weight"
            size = part.shape[0]
        feeds[(dst.name, "weight")] = Feed(part, (src.key(role),), f"{letter} rows of {role}")
        if bias is not None and "bias" in dst.params:
            feeds[(dst.name, "bias")] = Feed(bias.derived(layouts.rows(start, start + size)),
                                             (src.key("in_proj_bias"),), f"{letter} rows of in_proj_bias")
        start += size
    out = dsts[3]
    for role in ("weight", "bias"):
        param = src.params.get(f"out_proj.{role}")
        if param is not None and role in out.params:
            feeds[(out.name, role)] = Feed(param, (src.key(f"out_proj.{role}"),), param.layout or "identity")
    return feeds


def batch_norm_fill(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """A BatchNorm without ``gamma`` (``scale=False``) or ``beta`` (``center=False``) into one that has them."""
    if src.kind != "batch_norm" or len(dsts) != 1 or dsts[0].kind != "batch_norm":
        return None
    dst = dsts[0]
    feeds = by_role(src, dsts, options) or {}
    for role, value, why in (("weight", 1.0, "ones (source has scale=False)"), ("bias", 0.0, "zeros (source has center=False)")):
        if role in dst.params and role not in src.params:
            feeds[(dst.name, role)] = Feed(lazy.constant(dst.params[role].shape, dst.params[role], value, why), (), why)
    return feeds


def _flatten_side(layer: Layer, given: dict[str, Any], key: str) -> tuple[str, str]:
    """The order one side flattens in, and where that came from."""
    if given.get(key):
        return str(given[key]).upper(), "map"
    facts = layer.attrs.get("flatten")
    if facts:
        return facts["order"], "config"
    if layer.attrs.get("data_format") == "channels_last":
        return "", "channels_last"  # its reader says: channels-last maps, flattened in spatial order
    return "", "assumed"            # a bare state_dict: PyTorch's flatten of an NCHW map


def flatten_rows(src: Layer, dsts: list[Layer], options: dict[str, Any]) -> dict[tuple[str, str], Feed] | None:
    """The first dense layer after a Flatten: its input rows permuted from the source's order to the destination's.

    Driven by ``src.attrs["flatten"]`` / ``dst.attrs["flatten"]`` (``{"shape": [...], "order": "HWC"}``
    from a Keras config) and by the map's ``flatten: {fc1: {shape: [7, 7, 512], source_order: HWC,
    dest_order: CHW}}`` (``shape`` listed in ``source_order``). A side with neither is assumed to flatten
    channels-last (Keras) or ``C`` then the spatial axes (PyTorch); the transform text says so.
    """
    if src.kind != "dense" or len(dsts) != 1 or "weight" not in src.params:
        return None
    dst, given = dsts[0], options.get("flatten") or {}
    if not (given or src.attrs.get("flatten") or dst.attrs.get("flatten")):
        return None
    src_order, src_how = _flatten_side(src, given, "source_order")
    dst_order, dst_how = _flatten_side(dst, given, "dest_order")
    sizes = _flatten_sizes(src, dst, given, src_order)
    if sizes is None:
        raise PlanError(f"{src.name} -> {dst.name}: follows a Flatten but the feature map's shape is unknown; "
                        f"give `flatten: {{{src.name}: {{shape: [H, W, C], source_order: HWC}}}}` in the map")
    spatial = "".join(a for a in "DHWL" if a in sizes)
    src_order = src_order or (spatial + "C" if src_how == "channels_last" else "C" + spatial)
    dst_order = dst_order or (spatial + "C" if dst_how == "channels_last" else "C" + spatial)
    transform = layouts.flatten_columns(sizes, src_order, dst_order)
    weight = src.params["weight"]
    step = transform.name if transform is not layouts.IDENTITY else f"flatten order {src_order} kept"
    text = f"{weight.layout}, {step}" if weight.layout else step
    assumed = None
    if "assumed" in (src_how, dst_how):
        side, order = ("destination", dst_order) if dst_how == "assumed" else ("source", src_order)
        text += (f" (assumed: the {side} flattens its NCHW map in {order} order; "
                 "override with the map's `flatten:`)")
        assumed = {"shape": [sizes[a] for a in src_order], "source_order": src_order, "dest_order": dst_order}
    feeds = by_role(src, dsts, options) or {}
    feeds[(dst.name, "weight")] = Feed(weight.derived(transform), (src.key("weight"),), text, assumed)
    return feeds


def _flatten_sizes(src: Layer, dst: Layer, given: dict[str, Any], src_order: str) -> dict[str, int] | None:
    if given.get("shape"):
        order = src_order or (src.attrs.get("flatten") or {}).get("order") or ("HWC" if len(given["shape"]) == 3 else "")
        if len(order) != len(given["shape"]):
            raise PlanError(f"flatten entry for {src.name}: shape {given['shape']} needs a source_order naming "
                            f"{len(given['shape'])} axes (e.g. HWC)")
        return dict(zip(order.upper(), (int(d) for d in given["shape"])))
    for layer in (src, dst):
        facts = layer.attrs.get("flatten")
        if facts:
            return dict(zip(facts["order"], facts["shape"]))
    return None


ADAPTERS: list[Adapter] = [gru_variant, separable_split, separable_merge, attention_split, attention_merge, dense_merge, dense_split,
                           flatten_rows, batch_norm_fill, rnn_cell, by_role]


def feed(src: Layer, dsts: list[Layer], options: dict[str, Any] | None = None) -> dict[tuple[str, str], Feed]:
    """The feeds for one pairing, from the first adapter that applies."""
    for adapter in ADAPTERS:
        result = adapter(src, dsts, options or {})
        if result is not None:
            return result
    return {}
