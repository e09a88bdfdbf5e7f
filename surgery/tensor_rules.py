"""Tensor-level rules of a plan: copying one tensor (shapes, slices, casts, adapted inputs, label rows),
the map's ``tensors`` pairs and ``fold`` biases, and the flatten questions only the user can answer.

``pairing`` pairs layers; every destination tensor it fills goes through ``tensor_copy`` here.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from . import adapters, layouts, lazy, matching
from .settings import LINEAR
from .errors import PlanError
from .graph import BOOKKEEPING, Layer, LayerGraph, Param
from .kinds import CONV_KINDS
from .plans import Decision, Pair, Plan, TensorCopy


def any_glob(name: str, entries: list) -> bool:
    return any(fnmatch.fnmatchcase(name, e.value) for e in entries)


def kept(plan: Plan, layer: Layer, role: str) -> bool:
    """The map keeps this destination tensor as initialised, by its layer's name or its own."""
    return any_glob(layer.name, plan.mapping.keep) or any_glob(layer.key(role), plan.mapping.keep)


def add_tensor_pairs(plan: Plan) -> None:
    """The map's ``tensors``: one source tensor into one destination tensor, each a pair of its own.

    Tensors of those layers that nothing fills or takes are decisions, as for layer pairs.
    """
    if not plan.mapping.tensors:
        return
    where_src = {layer.key(r): (layer, r) for layer in plan.src for r in layer.params}
    where_dst = {layer.key(r): (layer, r) for layer in plan.dst for r in layer.params}
    filled = {t.destination for p in plan.pairs for t in p.tensors}
    paired_src = {n for p in plan.pairs for n in p.parts}
    paired_dst = {d for p in plan.pairs for d in p.destinations}
    for src_key, entry in plan.mapping.tensors.items():
        (src, role), (dst, dst_role) = where_src[src_key], where_dst[entry.value]
        if entry.value in filled:
            raise plan.mapping.error(entry.line, f"tensors: {entry.value!r} is already filled by a layer pair")
        param = src.params[role]
        fed = adapters.Feed(param, (src_key,), param.layout or "identity")
        copy = tensor_copy(plan, entry.value, dst.params[dst_role], fed)
        if copy is None:
            continue
        plan.pairs.append(Pair(src.name, [dst.name], f"tensor pair (map line {entry.line})" if entry.line
                               else "tensor pair", [copy], [src.name]))
        filled.add(entry.value)
        plan.unfilled = [k for k in plan.unfilled if k != entry.value]
        plan.dropped = [k for k in plan.dropped if k != src_key]
    taken = set(plan.mapping.tensors)
    for layer in {where_src[k][0].name: where_src[k][0] for k in plan.mapping.tensors}.values():
        if layer.name not in paired_src:
            plan.dropped += [layer.key(r) for r in layer.params if layer.key(r) not in taken and r not in BOOKKEEPING
                             and not any_glob(layer.key(r), plan.mapping.skip)]
    for layer in {where_dst[e.value][0].name: where_dst[e.value][0] for e in plan.mapping.tensors.values()}.values():
        if layer.name not in paired_dst:
            plan.unfilled += [layer.key(r) for r in layer.params if layer.key(r) not in filled and r not in BOOKKEEPING
                              and not kept(plan, layer, r)]


def fold_biases(plan: Plan) -> None:
    """A conv/dense bias the destination has no tensor for, folded into the BatchNorm that takes its output.

    ``BN(conv(x) + b)`` is ``BN'(conv(x))`` with ``running_mean' = running_mean - b``: exact, so the
    bias is carried instead of dropped, and reported as a transform. It is done when the map's
    ``fold`` names the bias, or by itself when the source's Keras config shows the BatchNorm taking
    the layer's output directly (no activation inside the layer, none between). A bare state_dict
    records neither, so there the map says so; the plan checks that the BatchNorms are paired.
    """
    src_next, dst_next = _consumers(plan.src), _consumers(plan.dst)
    bn_copies = {(p.source, p.destinations[0]): {t.destination: t for t in p.tensors}
                 for p in plan.pairs if len(p.destinations) == 1}
    for pair in [p for p in plan.pairs if len(p.destinations) == 1 and p.source in plan.src.layers]:
        src, dst = plan.src[pair.source], plan.dst[pair.destinations[0]]
        bias = src.key("bias")
        if bias not in plan.dropped or "bias" in dst.params:
            continue
        asked = any_glob(bias, plan.mapping.fold)
        nxt_src, nxt_dst = src_next.get(src.name), dst_next.get(dst.name)
        proven = nxt_src is not None and _takes_directly(plan.src, src.name, nxt_src)
        copies = bn_copies.get((nxt_src, nxt_dst)) or {}
        mean = copies.get(f"{nxt_dst}.running_mean")
        paired = (mean is not None and plan.src[nxt_src].kind == "batch_norm" and plan.dst[nxt_dst].kind == "batch_norm"
                  and mean.shape == src.params["bias"].shape)
        if not (asked or proven):
            if paired:
                plan.foldable.append(bias)   # proposed with the refusal: exact if nothing runs in between
            continue
        if not paired:
            if not asked:
                continue   # the BatchNorms are not paired: the bias stays a decision
            raise PlanError(f"fold {bias!r}: the layers after {src.name} and {dst.name} are not a paired BatchNorm "
                            f"({nxt_src} -> {nxt_dst}); only a bias feeding a BatchNorm directly can be folded")
        why = "" if asked else f"; the source's config shows {nxt_src} takes {src.name}'s output"
        note = f"{mean.transform}, minus {bias} (its bias folded in: exact{why})"
        mean.param = lazy.difference(mean.param, src.params["bias"], note)
        mean.transform, mean.sources = note, (*mean.sources, bias)
        plan.dropped.remove(bias)
        plan.warnings = [w for w in plan.warnings if not w.startswith(f"{bias}: has no destination")]


def _consumers(graph: LayerGraph) -> dict[str, str]:
    """``layer -> the one layer with weights it feeds``: from the file's structure where it says
    (``matching.inputs``), else the next layer in the file's order."""
    fed: dict[str, list[str]] = {}
    for layer, source in matching.inputs(graph, list(graph.layers)).items():
        fed.setdefault(source, []).append(layer)
    order = list(graph.layers)
    out = dict(zip(order, order[1:]))
    out.update({source: layers[0] for source, layers in fed.items() if len(layers) == 1})
    return {source: layer for source, layer in out.items() if source not in fed or len(fed[source]) == 1}


def _takes_directly(graph: LayerGraph, layer: str, norm: str) -> bool:
    """Whether the source's config shows ``norm`` (a BatchNorm) taking ``layer``'s output as it is."""
    attrs = graph[norm].attrs
    return (graph[norm].kind == "batch_norm" and attrs.get("after") == layer and bool(attrs.get("after_direct"))
            and graph[layer].attrs.get("activation") in LINEAR)


def mismatch(plan: Plan, problem: str) -> None:
    if plan.mapping.on_mismatch == "error":
        raise PlanError(f"{problem}; set `on_mismatch: skip` or `slice` in the map, or `keep` the destination layer")
    plan.warnings.append(f"{problem}; skipped (on_mismatch: {plan.mapping.on_mismatch})")


def tensor_copy(plan: Plan, dst_key: str, dst_param: Param, fed: adapters.Feed) -> TensorCopy | None:
    param, transform = fed.param, fed.transform
    layer_name = dst_key.rpartition(".")[0]
    if (param.shape != dst_param.shape and dst_key.endswith(".weight") and len(param.shape) >= 3
            and param.shape[0] == dst_param.shape[0] and param.shape[2:] == dst_param.shape[2:]
            and any_glob(layer_name, plan.mapping.adapt_input)):
        adapt = layouts.input_channels(dst_param.shape[1])
        param, transform = param.derived(adapt), f"{transform}, {adapt.name}"
    labels = plan.mapping.labels
    if labels is not None and layer_name == labels.value["layer"]:
        param, transform = _by_label(plan, dst_key, param, dst_param, labels.value), f"{transform}, rows by class label"
    if param.shape != dst_param.shape:
        if plan.mapping.on_mismatch != "slice" or len(param.shape) != len(dst_param.shape):
            mismatch(plan, f"{', '.join(fed.sources)} {list(param.shape)} -> {dst_key} {list(dst_param.shape)}: shapes differ")
            return None
        param, transform = _pasted(param, dst_param), f"{transform}, slice overlap into {list(dst_param.shape)}"
        plan.warnings.append(f"{dst_key}: only the overlapping block of {', '.join(fed.sources)} was copied (slice)")
    if param.dtype != dst_param.dtype:
        cast = layouts.cast(param.dtype, dst_param.dtype)
        param, transform = param.derived(cast, dtype=dst_param.dtype), f"{transform}, {cast.name}"
        plan.warnings.append(f"{dst_key}: dtype cast {fed.param.dtype} -> {dst_param.dtype}")
    ident = ("copy", fed.param.ident, transform) if fed.param.ident is not None else None
    if param is fed.param:   # unchanged bytes: its span kept, so a raw writer copies them file to file
        final = param.renamed(dst_key, layout=transform, ident=ident)
    else:
        final = Param(param.shape, param.dtype, param.read, key=dst_key, layout=transform, ident=ident)
    return TensorCopy(dst_key, fed.sources, transform, fed.param.shape, dst_param.shape, final)


def _by_label(plan: Plan, dst_key: str, src: Param, dst: Param, labels: dict) -> Param:
    """The rows (first axis) of the classes both lists name, in the destination's order; the rest as initialised."""
    source, dest = labels["source"], labels["dest"]
    if src.shape[0] != len(source) or dst.shape[0] != len(dest):
        raise PlanError(f"labels: {dst_key} has {dst.shape[0]} rows and its source {src.shape[0]}, but the class lists "
                        f"name {len(dest)} and {len(source)} classes")
    at = {name: i for i, name in enumerate(source)}
    pairs = [(i, at[name]) for i, name in enumerate(dest) if name in at]
    new = [name for name in dest if name not in at]
    if new:
        shown = ", ".join(new[:8]) + (f" (+{len(new) - 8} more)" if len(new) > 8 else "")
        plan.warnings.append(f"{dst_key}: {len(new)} classes the source does not know are left as initialised: {shown}")
    rows_to, rows_from = np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)

    def load() -> np.ndarray:
        out = np.array(dst.read(), copy=True)
        out[rows_to] = src.read()[rows_from].astype(out.dtype)
        return out

    return Param(dst.shape, dst.dtype, load, key=src.key)


def _pasted(src: Param, dst: Param) -> Param:
    """The destination's own values with the overlapping block replaced by the source's."""
    block = tuple(slice(0, min(a, b)) for a, b in zip(src.shape, dst.shape))

    def load() -> np.ndarray:
        out = np.array(dst.read(), copy=True)
        out[block] = src.read()[block].astype(out.dtype)
        return out

    return Param(dst.shape, dst.dtype, load, key=src.key)


def flatten_unknown(plan: Plan) -> list[Decision]:
    """Dense pairs that may follow a channels-last Flatten where no file says whether they do.

    A Keras file without a config (``.weights.h5``, a TF checkpoint) cannot tell;
    a dense layer right after convolutions there is reported, never guessed.
    """
    out = []
    for pair in plan.pairs:
        src = plan.source_layer(pair.source)
        for dst in (plan.dst[name] for name in pair.destinations):
            if src.kind != "dense" or dst.kind != "dense" or pair.source in plan.mapping.flatten:
                continue
            if "flatten" in src.attrs or "flatten" in dst.attrs:
                continue
            last = [(g, l) for g, l in ((plan.src, src), (plan.dst, dst)) if l.attrs.get("data_format") == "channels_last"]
            if len(last) == 1 and not last[0][0].meta.get("architecture") and _maybe_after_flatten(*last[0]):
                out.append(Decision(
                    f"{src.name} -> {dst.name}: the file records no architecture, so whether a Flatten of a "
                    "channels-last feature map feeds this dense layer is unknown; if one does, its rows need "
                    f"reordering: give `flatten: {{{src.name}: {{shape: [H, W, C], source_order: HWC}}}}` in the map; "
                    f"if none does, `flatten: {{{src.name}: {{shape: [{src.params['weight'].shape[-1]}], "
                    "source_order: C, dest_order: C}}`"))
    return out


def _maybe_after_flatten(graph: LayerGraph, dense: Layer) -> bool:
    """A dense layer in a network with convolutions whose input is no other dense layer's output.

    Files without an architecture keep no layer order, so order is not used.
    """
    if not any(layer.kind in CONV_KINDS for layer in graph):
        return False
    inputs = dense.params["weight"].shape[-1]
    return not any(l.kind == "dense" and l.params["weight"].shape[0] == inputs for l in graph if l is not dense)
