"""Pairing two graphs: explicit pairs, names after rename, shape alignment.

``make_plan`` reads headers only. It returns a ``Plan`` that records, for every
destination tensor, where its value comes from, why the pair was made and which
transform turns one into the other; plus what is left unused, what is left as
initialised, what is frozen, and warnings. Applying a plan is ``apply.py``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from . import adapters, layouts, lazy, settings
from .errors import PlanError, SurgeryError
from .graph import BOOKKEEPING, KIND_ALIASES, Layer, LayerGraph, Param
from .kinds import CONV_KINDS, NORM_KINDS
from .mapping import UP_TO, Mapping, load_map



@dataclass
class TensorCopy:
    """One destination tensor and where its value comes from."""

    destination: str
    sources: tuple[str, ...]
    transform: str
    source_shape: tuple[int, ...]
    shape: tuple[int, ...]
    param: Param = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"destination": self.destination, "sources": list(self.sources), "transform": self.transform,
                "source_shape": list(self.source_shape), "shape": list(self.shape), "dtype": self.param.dtype}


@dataclass
class Pair:
    source: str
    destinations: list[str]
    rule: str
    tensors: list[TensorCopy] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)   # the source layers, several for a `merge`

    def to_dict(self) -> dict[str, Any]:
        dst = self.destinations[0] if len(self.destinations) == 1 else self.destinations
        return {"source": self.source, "destination": dst, "rule": self.rule,
                "tensors": [t.to_dict() for t in self.tensors]}


@dataclass
class Decision:
    """Something only the user (or ``--probe``) can settle, and the map entries that settle it as planned."""

    message: str
    flatten: dict[str, Any] = field(default_factory=dict)   # source layer -> {shape, source_order, dest_order}
    layers: dict[str, str] = field(default_factory=dict)    # source layer -> destination layer


@dataclass
class Plan:
    """What a transplant will do, before it does it. ``str(plan)`` is the report."""

    src: LayerGraph
    dst: LayerGraph
    mapping: Mapping
    pairs: list[Pair] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)      # source layers copied nowhere, not skipped
    skipped: list[str] = field(default_factory=list)     # source layers (or tensors) the map skips
    kept: list[str] = field(default_factory=list)        # destination layers (or tensors) the map keeps as initialised
    uncovered: list[str] = field(default_factory=list)   # destination layers left as initialised, not kept
    dropped: list[str] = field(default_factory=list)     # source tensors of paired layers that go nowhere
    unfilled: list[str] = field(default_factory=list)    # destination tensors of paired layers left as initialised
    assumed: list[Decision] = field(default_factory=list)    # layouts taken on trust
    ambiguous: list[Decision] = field(default_factory=list)  # pairs that rest on storage order alone
    allow_partial: bool = False                          # accepted with open decisions (strict=False)
    frozen: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    merged: dict[str, Any] = field(default_factory=dict, repr=False)   # virtual source layers of `merge`

    def source_layer(self, name: str) -> Layer:
        """A source layer by name, or the virtual layer a `merge` makes of several."""
        merged = self.merged.get(name)
        return merged if merged is not None else self.src[name]

    def copies(self) -> dict[str, TensorCopy]:
        return {t.destination: t for p in self.pairs for t in p.tensors}

    @property
    def strict_ok(self) -> bool:
        """Nothing left for the user to decide: see ``decisions``."""
        return not self.decisions()

    def decisions(self) -> list[str]:
        """What the plan cannot settle by itself, one line each; empty when exit 0 can mean "right"."""
        groups = (("destination layers left as initialised", self.uncovered),
                  ("destination tensors left as initialised", self.unfilled),
                  ("source layers unused", self.unused), ("source tensors with no destination", self.dropped))
        out = [f"{title}: {', '.join(names)}" for title, names in groups if names]
        return out + [d.message for d in self.assumed + self.ambiguous]

    def accept_lines(self) -> str:
        """The map lines that accept every open decision as the plan stands (YAML, ready to paste)."""
        from .render import accept_yaml

        return accept_yaml(self)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.src.path, "destination": self.dst.path, "map": self.mapping.to_dict(),
                "pairs": [p.to_dict() for p in self.pairs], "unused": self.unused, "skipped": self.skipped,
                "dropped": self.dropped, "unfilled": self.unfilled,
                "assumed": [d.message for d in self.assumed], "ambiguous": [d.message for d in self.ambiguous],
                "decisions": self.decisions(), "allow_partial": self.allow_partial,
                "kept": self.kept, "uncovered": self.uncovered, "frozen": self.frozen,
                "warnings": self.warnings, "notes": {"source": self.src.notes, "destination": self.dst.notes}}

    def to_yaml(self) -> str:
        from .render import plan_yaml

        return plan_yaml(self)

    def __str__(self) -> str:
        from .render import plan_text

        return plan_text(self)


class StrictError(SurgeryError):
    """A transplant refused because the plan leaves decisions open (strict, the default). Carries the plan.

    ``accept_lines`` is the map text that accepts them as planned.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.accept_lines = plan.accept_lines()
        super().__init__("strict: " + "; ".join(plan.decisions())
                         + " (add the map lines shown to accept, or pass --allow-partial / strict=False)")


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
    plan.skipped = [n for n in src.layers if _any_glob(n, m.skip)]
    plan.kept = [n for n in dst.layers if _any_glob(n, m.keep)]
    order = {name: i for i, name in enumerate(src.layers)}
    for source, dsts, rule in sorted(_pairings(plan), key=lambda p: order[_first_part(plan, p[0])]):
        _add_pair(plan, source, dsts, rule)
    _add_tensor_pairs(plan)
    _fold_biases(plan)
    used = {n for p in plan.pairs for n in p.parts}
    filled = {d for p in plan.pairs for d in p.destinations}
    plan.unused = [n for n in src.layers if n not in used and n not in plan.skipped]
    plan.uncovered = [n for n in dst.layers if n not in filled and n not in plan.kept]
    plan.assumed.extend(_flatten_unknown(plan))
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


def _add_tensor_pairs(plan: Plan) -> None:
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
        copy = _tensor_copy(plan, entry.value, dst.params[dst_role], fed)
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
                             and not _any_glob(layer.key(r), plan.mapping.skip)]
    for layer in {where_dst[e.value][0].name: where_dst[e.value][0] for e in plan.mapping.tensors.values()}.values():
        if layer.name not in paired_dst:
            plan.unfilled += [layer.key(r) for r in layer.params if layer.key(r) not in filled and r not in BOOKKEEPING
                              and not _kept(plan, layer, r)]


def _fold_biases(plan: Plan) -> None:
    """The map's ``fold``: a conv/dense bias the destination has no tensor for, folded into the BatchNorm after it.

    ``BN(conv(x) + b)`` is ``BN'(conv(x))`` with ``running_mean' = running_mean - b``: exact, so the
    bias is carried instead of dropped, and reported as a transform. Whether the BatchNorm takes the
    layer's output directly (no activation between) no weights file records, so the map says so;
    the plan checks that the next layers on both sides are paired BatchNorms.
    """
    if not plan.mapping.fold:
        return
    src_next = dict(zip(plan.src.layers, list(plan.src.layers)[1:]))
    dst_next = dict(zip(plan.dst.layers, list(plan.dst.layers)[1:]))
    bn_copies = {(p.source, p.destinations[0]): {t.destination: t for t in p.tensors}
                 for p in plan.pairs if len(p.destinations) == 1}
    for pair in [p for p in plan.pairs if len(p.destinations) == 1 and p.source in plan.src.layers]:
        src, dst = plan.src[pair.source], plan.dst[pair.destinations[0]]
        bias = src.key("bias")
        if bias not in plan.dropped or "bias" in dst.params or not _any_glob(bias, plan.mapping.fold):
            continue
        nxt_src, nxt_dst = src_next.get(src.name), dst_next.get(dst.name)
        copies = bn_copies.get((nxt_src, nxt_dst)) or {}
        mean = copies.get(f"{nxt_dst}.running_mean")
        if (mean is None or plan.src[nxt_src].kind != "batch_norm" or plan.dst[nxt_dst].kind != "batch_norm"
                or mean.shape != src.params["bias"].shape):
            raise PlanError(f"fold {bias!r}: the layers after {src.name} and {dst.name} are not a paired BatchNorm "
                            f"({nxt_src} -> {nxt_dst}); only a bias feeding a BatchNorm directly can be folded")
        note = f"{mean.transform}, minus {bias} (its bias folded in: exact)"
        mean.param = lazy.difference(mean.param, src.params["bias"], note)
        mean.transform, mean.sources = note, (*mean.sources, bias)
        plan.dropped.remove(bias)
        plan.warnings = [w for w in plan.warnings if not w.startswith(f"{bias}: has no destination")]


def _any_glob(name: str, entries: list) -> bool:
    return any(fnmatch.fnmatchcase(name, e.value) for e in entries)


def _kept(plan: Plan, layer: Layer, role: str) -> bool:
    """The map keeps this destination tensor as initialised, by its layer's name or its own."""
    return _any_glob(layer.name, plan.mapping.keep) or _any_glob(layer.key(role), plan.mapping.keep)


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
    if m.match == "name":
        by_name = {_one_spelling(n): n for n in dst.layers if n not in taken_dst}
        for name in src.layers:
            if name in taken_src:
                continue
            renamed, patterns = m.renamed(name)
            target = by_name.pop(_one_spelling(renamed), None)
            if target is not None:
                rule = "name" if not patterns else "name after rename " + ", ".join(f"`{p}`" for p in patterns)
                out.append((name, [target], rule))
    elif m.match == "shape":
        taken_dst |= {d for _, ds, _ in out for d in ds}
        out += align_by_shape(plan, [n for n in src.layers if n not in taken_src],
                              [n for n in dst.layers if n not in taken_dst])
    return out


def align_by_shape(plan: Plan, src_names: list[str], dst_names: list[str]) -> list[tuple[str, list[str], str]]:
    """Pair layers in order by kind and canonical shapes, with a longest-common-subsequence alignment.

    An inserted or removed layer on either side does not shift the pairs after
    it. Where a signature occurs more than once on either side, the pairs among
    those layers rest on the order the files store them in: each is a decision
    (``plan.ambiguous``) unless the two names agree, and the map's ``layers`` settles it.
    """
    a = [plan.src[n].signature() for n in src_names]
    b = [plan.dst[n].signature() for n in dst_names]
    table = np.zeros((len(a) + 1, len(b) + 1), dtype=np.int64)
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            table[i, j] = table[i + 1, j + 1] + 1 if a[i] == b[j] else max(table[i + 1, j], table[i, j + 1])
    pairs, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            shapes = ", ".join(str(p) for _, p in a[i][1])
            pairs.append((src_names[i], [dst_names[j]], f"shape {a[i][0]} {shapes}"))
            i, j = i + 1, j + 1
        elif table[i + 1, j] >= table[i, j + 1]:
            i += 1
        else:
            j += 1
    for source, (dst,), _ in pairs:
        sig = plan.src[source].signature()
        if (a.count(sig) > 1 or b.count(sig) > 1) and _one_spelling(source) != _one_spelling(dst):
            plan.ambiguous.append(Decision(
                f"{source} -> {dst}: paired by storage order among {a.count(sig)} source and {b.count(sig)} "
                f"destination {sig[0]} layers of the same shapes; confirm under `layers`", layers={source: dst}))
    return pairs


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
            _mismatch(plan, f"{source} -> {', '.join(dsts)}: in {layer.name}, {layer.attrs['folded']}, so its weights "
                            "are not the layer's own; export the ONNX model with the BatchNorm kept "
                            "(torch.onnx.export(..., optimize=False), or dynamo=False with do_constant_folding=False)")
            return
    if len(dst_layers) == 1 and _transposed_guess(src_layer, dst_layers[0]):
        plan.warnings.append(f"{source} -> {dsts[0]}: one side says conv_transpose, the other was guessed a plain conv "
                             "from its tensor ranks (a state_dict does not say); paired because the shapes agree")
    elif len(dst_layers) == 1 and not _kinds_agree(src_layer, dst_layers[0]):
        _mismatch(plan, f"{source} ({src_layer.kind}) -> {dsts[0]} ({dst_layers[0].kind}): layer kinds differ")
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
                if _kept(plan, dst_layer, role):
                    plan.kept.append(dst_layer.key(role))
                else:
                    plan.unfilled.append(dst_layer.key(role))
                    plan.warnings.append(settings.unfilled(src_layer, dst_layer, role))
                continue
            if fed.assumed is not None and source not in plan.mapping.flatten:
                plan.assumed.append(Decision(f"{dst_layer.key(role)}: {fed.transform}",
                                             flatten={source: fed.assumed}))
            copy = _tensor_copy(plan, dst_layer.key(role), dst_param, fed)
            if copy is not None:
                pair.tensors.append(copy)
    used = {s for t in pair.tensors for s in t.sources} | {s for f in feeds.values() for s in f.sources}
    for role in src_layer.params:
        if src_layer.key(role) not in used and role not in BOOKKEEPING:
            if _any_glob(src_layer.key(role), plan.mapping.skip):
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


def _mismatch(plan: Plan, problem: str) -> None:
    if plan.mapping.on_mismatch == "error":
        raise PlanError(f"{problem}; set `on_mismatch: skip` or `slice` in the map, or `keep` the destination layer")
    plan.warnings.append(f"{problem}; skipped (on_mismatch: {plan.mapping.on_mismatch})")


def _tensor_copy(plan: Plan, dst_key: str, dst_param: Param, fed: adapters.Feed) -> TensorCopy | None:
    param, transform = fed.param, fed.transform
    layer_name = dst_key.rpartition(".")[0]
    if (param.shape != dst_param.shape and dst_key.endswith(".weight") and len(param.shape) >= 3
            and param.shape[0] == dst_param.shape[0] and param.shape[2:] == dst_param.shape[2:]
            and _any_glob(layer_name, plan.mapping.adapt_input)):
        adapt = layouts.input_channels(dst_param.shape[1])
        param, transform = param.derived(adapt), f"{transform}, {adapt.name}"
    labels = plan.mapping.labels
    if labels is not None and layer_name == labels.value["layer"]:
        param, transform = _by_label(plan, dst_key, param, dst_param, labels.value), f"{transform}, rows by class label"
    if param.shape != dst_param.shape:
        if plan.mapping.on_mismatch != "slice" or len(param.shape) != len(dst_param.shape):
            _mismatch(plan, f"{', '.join(fed.sources)} {list(param.shape)} -> {dst_key} {list(dst_param.shape)}: shapes differ")
            return None
        param, transform = _pasted(param, dst_param), f"{transform}, slice overlap into {list(dst_param.shape)}"
        plan.warnings.append(f"{dst_key}: only the overlapping block of {', '.join(fed.sources)} was copied (slice)")
    if param.dtype != dst_param.dtype:
        cast = layouts.cast(param.dtype, dst_param.dtype)
        param, transform = param.derived(cast, dtype=dst_param.dtype), f"{transform}, {cast.name}"
        plan.warnings.append(f"{dst_key}: dtype cast {fed.param.dtype} -> {dst_param.dtype}")
    ident = ("copy", fed.param.ident, transform) if fed.param.ident is not None else None
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


def _flatten_unknown(plan: Plan) -> list[Decision]:
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
