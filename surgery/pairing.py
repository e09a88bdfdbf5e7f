"""Pairing two graphs: explicit pairs, names after rename, then structure and shapes (``matching.py``).

``make_plan`` reads headers only. It returns a ``Plan`` that records, for every
destination tensor, where its value comes from, why the pair was made and which
transform turns one into the other; plus what is left unused, what is left as
initialised, what is frozen, and warnings. Applying a plan is ``apply.py``.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

from . import adapters, matching, settings
from .errors import PlanError
from .graph import BOOKKEEPING, KIND_ALIASES, Layer, LayerGraph
from .kinds import NORM_KINDS
from .mapping import UP_TO, load_map
from .plans import Decision, Pair, Plan
from .tensor_rules import add_tensor_pairs, any_glob, flatten_unknown, fold_biases, kept, mismatch, tensor_copy



def make_plan(src: LayerGraph, dst: LayerGraph, mapping: Any = None, *, freeze: Iterable[str] = (),
              match: str | None = None) -> Plan:
    """Pair ``src`` with ``dst`` as ``mapping`` says; read no tensor data.

    Raises:
        MapError: the map names a layer that does not exist or a glob matches nothing.
        PlanError: a paired layer's shapes differ and ``on_mismatch`` is ``error``.
    """
    m = load_map(mapping)
    if match:
        m.match = match
    m.check_names(src.layers, dst.layers, [k for k, _ in src.tensors()], [k for k, _ in dst.tensors()])
    plan = Plan(src, dst, m)
    plan.skipped = [n for n in src.layers if any_glob(n, m.skip)]
    plan.kept = [n for n in dst.layers if any_glob(n, m.keep)]
    order = {name: i for i, name in enumerate(matching.storage_order(src, list(src.layers)))}
    for source, dsts, rule in sorted(_pairings(plan), key=lambda p: order[_first_part(plan, p[0])]):
        _add_pair(plan, source, dsts, rule)
    add_tensor_pairs(plan)
    fold_biases(plan)
    used = {n for p in plan.pairs for n in p.parts}
    filled = {d for p in plan.pairs for d in p.destinations}
    plan.unused = [n for n in src.layers if n not in used and n not in plan.skipped]
    plan.uncovered = [n for n in dst.layers if n not in filled and n not in plan.kept]
    plan.assumed.extend(flatten_unknown(plan))
    plan.frozen = _frozen(dst, [e.value for e in m.freeze], list(freeze))
    return plan


def _frozen(dst: LayerGraph, from_map: list[str], given: list[str]) -> list[str]:
    """Destination layers to freeze: globs, and ``..X`` for every layer up to and including X in graph order."""
    order = list(dst.layers)
    chosen = {n for n, layer in dst.layers.items() if layer.frozen}
    for entry in from_map + given:
        if entry.startswith(UP_TO):
            if entry[len(UP_TO):] not in dst.layers:
                raise PlanError(f"freeze {entry!r}: no destination layer {entry[len(UP_TO):]!r}")
            chosen.update(order[:order.index(entry[len(UP_TO):]) + 1])
            continue
        matched = [n for n in order if fnmatch.fnmatchcase(n, entry)]
        if not matched and entry in given:
            raise PlanError(f"--freeze {entry!r} matches no destination layer")
        chosen.update(matched)
    return [n for n in order if n in chosen]


def _one_spelling(name: str) -> str:
    """Keras nests with ``/``, PyTorch with ``.``: compare names in one spelling."""
    return name.replace("/", ".")


def _pairings(plan: Plan) -> list[tuple[str, list[str], str]]:
    m, src, dst = plan.mapping, plan.src, plan.dst
    out = [(s, e.value, f"explicit (map line {e.line})" if e.line else "explicit") for s, e in m.layers.items()]
    for dst_name, e in m.merge.items():
        merged = adapters.MergedLayer([src[n] for n in e.value])
        plan.merged[merged.name] = merged
        out.append((merged.name, [dst_name], f"merged (map line {e.line})" if e.line else "merged"))
    taken_src = set(m.layers) | set(plan.skipped) | {n for e in m.merge.values() for n in e.value}
    taken_dst = {d for e in m.layers.values() for d in e.value} | set(m.merge) | set(plan.kept)
    if m.match in ("name", "auto"):
        by_name = {_one_spelling(n): n for n in dst.layers if n not in taken_dst}
        for name in src.layers:
            if name in taken_src:
                continue
            renamed, patterns = m.renamed(name)
            target = by_name.pop(_one_spelling(renamed), None)
            if target is not None:
                rule = "name" if not patterns else "name after rename " + ", ".join(f"`{p}`" for p in patterns)
                out.append((name, [target], rule))
    if m.match in ("shape", "auto"):
        taken_src |= {s for s, _, _ in out}
        taken_dst |= {d for _, ds, _ in out for d in ds}
        for source, dsts, rule in matching.align(plan, [n for n in src.layers if n not in taken_src],
                                                 [n for n in dst.layers if n not in taken_dst]):
            if isinstance(source, list):  # a merge the structure proposed
                merged = adapters.MergedLayer([src[n] for n in source])
                plan.merged[merged.name] = merged
                source = merged.name
            out.append((source, dsts, rule))
    return out


def _first_part(plan: Plan, name: str) -> str:
    """A source layer's name, or for the virtual layer of a `merge` its first part's."""
    merged = plan.merged.get(name)
    return merged.parts[0].name if merged is not None else name


def _add_pair(plan: Plan, source: str, dsts: list[str], rule: str) -> None:
    src_layer = plan.source_layer(source)
    dst_layers = [plan.dst[d] for d in dsts]
    unknown = [layer for layer in (src_layer, *dst_layers) if layer.attrs.get("layout_known") is False]
    if unknown:  # never copied with a guessed layout: left unpaired, so strict asks to skip or keep it
        plan.warnings.extend(f"{layer.name}: {layer.attrs.get('layout_note') or 'its tensors layout is not known'}; "
                             "not copied" for layer in unknown)
        return
    for layer in (src_layer, *dst_layers):
        if layer.attrs.get("folded"):
            mismatch(plan, f"{source} -> {', '.join(dsts)}: in {layer.name}, {layer.attrs['folded']}, so its weights "
                            "are not the layer's own; export the ONNX model with the BatchNorm kept "
                            "(torch.onnx.export(..., optimize=False), or dynamo=False with do_constant_folding=False)")
            return
    if len(dst_layers) == 1 and _transposed_guess(src_layer, dst_layers[0]):
        plan.warnings.append(f"{source} -> {dsts[0]}: one side says conv_transpose, the other was guessed a plain conv "
                             "from its tensor ranks (a state_dict does not say); paired because the shapes agree")
    elif len(dst_layers) == 1 and not _kinds_agree(src_layer, dst_layers[0]):
        mismatch(plan, f"{source} ({src_layer.kind}) -> {dsts[0]} ({dst_layers[0].kind}): layer kinds differ")
        return
    options = {"flatten": plan.mapping.flatten[source].value} if source in plan.mapping.flatten else {}
    feeds = adapters.feed(src_layer, dst_layers, options)
    pair = Pair(source, dsts, rule, parts=[p.name for p in getattr(src_layer, "parts", [src_layer])])
    for dst_layer in dst_layers:
        for role, dst_param in dst_layer.params.items():
            fed = feeds.get((dst_layer.name, role))
            if fed is None:
                if role in BOOKKEEPING:
                    continue
                if kept(plan, dst_layer, role):
                    plan.kept.append(dst_layer.key(role))
                else:
                    plan.unfilled.append(dst_layer.key(role))
                    plan.warnings.append(settings.unfilled(src_layer, dst_layer, role))
                continue
            if fed.assumed is not None and source not in plan.mapping.flatten:
                plan.assumed.append(Decision(f"{dst_layer.key(role)}: {fed.transform}",
                                             flatten={source: fed.assumed}))
            copy = tensor_copy(plan, dst_layer.key(role), dst_param, fed)
            if copy is not None:
                pair.tensors.append(copy)
    used = {s for t in pair.tensors for s in t.sources} | {s for f in feeds.values() for s in f.sources}
    for role in src_layer.params:
        if src_layer.key(role) not in used and role not in BOOKKEEPING:
            if any_glob(src_layer.key(role), plan.mapping.skip):
                plan.skipped.append(src_layer.key(role))  # the map skips this tensor by name
                continue
            plan.dropped.append(src_layer.key(role))
            plan.warnings.append(f"{src_layer.key(role)}: has no destination in {', '.join(dsts)}; not copied")
    plan.warnings.extend(settings.setting_warnings(src_layer, dst_layers))
    if pair.tensors:
        plan.pairs.append(pair)


def _transposed_guess(a: Layer, b: Layer) -> bool:
    """A conv guessed from ranks on one side, a known transposed conv with the same shapes on the other."""
    conv = a if b.kind == "conv_transpose" else b
    other = b if conv is a else a
    if other.kind != "conv_transpose" or conv.kind not in ("conv1d", "conv2d", "conv3d") or "kind_from" not in conv.attrs:
        return False
    return {r: p.shape for r, p in a.params.items()} == {r: p.shape for r, p in b.params.items()}


def _kinds_agree(a: Layer, b: Layer) -> bool:
    same = KIND_ALIASES.get(a.kind, a.kind) == KIND_ALIASES.get(b.kind, b.kind)
    guessed = "kind_from" in a.attrs or "kind_from" in b.attrs
    guessed_norm = guessed and {a.kind, b.kind} <= NORM_KINDS
    # A bias-less 2D weight guessed "dense" from a state_dict may be an embedding table: same canonical tensor.
    guessed_table = guessed and {a.kind, b.kind} == {"dense", "embedding"} and not ({"bias"} & (set(a.params) | set(b.params)))
    cell = {a.kind, b.kind} in ({"lstm", "lstm_cell"}, {"gru", "gru_cell"})
    return same or guessed_norm or guessed_table or cell or bool({"unknown", "merged"} & {a.kind, b.kind})


