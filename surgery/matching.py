"""Shape matching by structure: what ``match: shape`` does with the layers no name paired.

Layers are grouped by signature (kind and canonical shapes, a bias left out). One layer
of a signature on each side pairs them. Where several share a signature, the pairs rest
on evidence that does not depend on the order a file stores its tensors in, tried in
this order (docs/matching.md has the full rules and examples):

1. the same name; numbered families (``encoder.layer.3.attention.self.query`` and
   ``blocks.3.attn.q``) paired member by member when their numbers line up;
2. families whose names share telling words (``query``/``q``, ``shortcut``/``downsample``);
3. elimination: a family only one family on the other side could pair with;
4. what feeds a layer (a BatchNorm after its settled conv) and the partners of its
   nearest settled neighbours, repeated until nothing more settles;
5. fused projections (q, k, v into ``in_proj``/``qkv``), either way round.

What is left is paired in each side's order, and each such pair is a decision for the
user (``plan.ambiguous``): equal shapes declared in different orders are the trap a
matcher must not fall into. ``--probe`` (``proof/probe.py``) settles them by running both.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from .kinds import NORM_KINDS
from .plans import Decision

if TYPE_CHECKING:
    from .graph import Layer, LayerGraph
    from .plans import Plan

Pairs = list[tuple[Any, list[str], str]]  # (source layer, or the parts of a merge; destinations; why)

# Words that name the same part in different codebases, each mapped to one spelling.
_SAME = {
    "query": ("q", "wq", "queries"), "key": ("k", "wk", "keys"), "value": ("v", "wv", "values"),
    "out": ("o", "wo", "output", "outputs"), "norm": ("ln", "layernorm", "bn", "batchnorm", "normalization"),
    "dense": ("fc", "linear", "lin"), "attention": ("attn", "att", "mha", "selfattention"),
    "embed": ("embedding", "embeddings", "emb", "embeds"), "word": ("tok", "token", "tokens", "wte", "words"),
    "position": ("pos", "wpe", "positional", "positions"), "type": ("segment", "types"),
    "block": ("layer", "layers", "blocks", "h", "stage", "stages"), "head": ("classifier", "predictions", "logits"),
    "shortcut": ("short", "downsample", "residual", "skip", "identity"), "mlp": ("ffn", "feedforward", "intermediate"),
    "conv": ("convolution", "conv2d", "conv1d", "conv3d"), "encoder": ("enc",), "decoder": ("dec",),
}
_CANON = {alias: word for word, aliases in _SAME.items() for alias in (word, *aliases)}
_GENERIC = {"block", "dense", "conv", "norm", "encoder", "decoder"}  # words of kinds and containers: alike, not telling
_NOISE = {"self", "proj", "weight", "bias", "kernel", "module", "model", "vars", "the", "of"}
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[A-Z]+")


def words(name: str) -> frozenset[str]:
    """The words of a layer name, numbers left out, each in one spelling (``LayerNorm`` -> ``{norm}``)."""
    out = set()
    for part in re.split(r"[^A-Za-z]+", name):
        whole = part.lower()
        if whole in _CANON:
            out.add(_CANON[whole])
            continue
        for w in _WORD.findall(part):
            w = w.lower()
            out.add(_CANON.get(w, w))
    return frozenset(out - _NOISE)


def template(name: str) -> str:
    """The name with every number replaced by ``#``: the family a numbered layer belongs to."""
    return re.sub(r"\d+", "#", name.replace("/", "."))


def numbers(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def storage_order(graph: "LayerGraph", names: list[str]) -> list[str]:
    """``names`` in the graph's order, or in natural order when the file stores them sorted by name.

    A sorted file (safetensors does that) says nothing about the network's order,
    so numbered layers are at least put in the order of their numbers.
    """
    listed = [n for n in graph.layers if n in set(names)]
    if len(listed) >= 3 and listed == sorted(listed):
        return sorted(listed, key=lambda n: [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", n)])
    return listed


def align(plan: "Plan", src_names: list[str], dst_names: list[str]) -> Pairs:
    """Pair ``src_names`` with ``dst_names`` by signature, then structure and names (module docstring).

    A pair whose source is a list is a merge: q, k, v (and o) projections into one
    fused destination layer (``in_proj``, ``qkv``).
    """
    src_order, dst_order = storage_order(plan.src, src_names), storage_order(plan.dst, dst_names)
    pairs = fused(plan, src_order, dst_order)
    merged = {n for source, dsts, _ in pairs for n in [*([source] if isinstance(source, str) else source), *dsts]}
    src_order = [n for n in src_order if n not in merged]
    dst_order = [n for n in dst_order if n not in merged]
    groups: dict[tuple, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for name in src_order:
        groups[_signature(plan.src[name])][0].append(name)
    for name in dst_order:
        sig = _signature(plan.dst[name])
        if sig in groups:
            groups[sig][1].append(name)
    left: dict[tuple, tuple[list[str], list[str]]] = {}
    for sig, (mine, theirs) in groups.items():
        if theirs:
            settled, left[sig] = _settle(sig, mine, theirs)
            pairs += settled
    while True:   # each pair settled may settle more: a conv by its neighbours, then its BatchNorm by its input
        more = _by_inputs(plan, pairs, left) + _by_neighbours(pairs, left)
        if not more:
            break
        pairs += more
    for sig, (rest_a, rest_b) in left.items():
        pairs += _by_order(plan, sig, rest_a, rest_b)
    return pairs


def inputs(graph: "LayerGraph", order: list[str]) -> dict[str, str]:
    """``layer -> the layer with weights that feeds it``, where the file says or its order shows.

    A Keras config says (``attrs["after"]``). A state_dict's declaration order shows it
    within one module: a BatchNorm declared right after its conv, under the same parent
    (``layer1.0.conv1``, ``layer1.0.bn1``). A file sorted by name shows nothing.
    """
    out = {n: graph[n].attrs["after"] for n in order if graph[n].attrs.get("after") in graph.layers}
    listed = list(graph.layers)
    if len(listed) >= 3 and listed == sorted(listed):
        return out
    last: dict[str, str] = {}
    for name in listed:
        spelled = _spelling(name)
        parent = spelled.rpartition(".")[0]
        if "." in spelled and parent in last and name not in out:
            out[name] = last[parent]
        last[parent] = name
    return out


def _by_inputs(plan: "Plan", settled: Pairs, left: dict[tuple, tuple[list[str], list[str]]]) -> Pairs:
    """Alike layers fed by a settled pair: ``conv2_block1_1_bn`` and ``layer.0.normalization`` after their convs.

    Repeated until nothing more settles; a pair needs one such layer on each side.
    """
    mine, theirs = inputs(plan.src, list(plan.src.layers)), inputs(plan.dst, list(plan.dst.layers))
    partner = {s: ds[0] for s, ds, _ in settled if isinstance(s, str) and len(ds) == 1}
    found: Pairs = []
    changed = True
    while changed:
        changed = False
        for sig, (rest_a, rest_b) in left.items():
            fed_a: dict[str, list[str]] = defaultdict(list)
            fed_b: dict[str, list[str]] = defaultdict(list)
            for s in rest_a:
                if mine.get(s) in partner:
                    fed_a[partner[mine[s]]].append(s)
            for d in rest_b:
                if theirs.get(d) is not None:
                    fed_b[theirs[d]].append(d)
            for source_input, (s, *more) in fed_a.items():
                if more or len(fed_b.get(source_input, [])) != 1:
                    continue
                d = fed_b[source_input][0]
                src_input = mine[s]
                found.append((s, [d], f"shape {_describe(sig)}, fed by the pair {src_input} -> {source_input}"))
                partner[s] = d
                rest_a.remove(s)
                rest_b.remove(d)
                changed = True
    return found


def _by_neighbours(settled: Pairs, left: dict[tuple, tuple[list[str], list[str]]]) -> Pairs:
    """Alike layers whose nearest settled neighbours by name are partners: ``conv2_block1_0_conv`` sits
    among ``conv2_block1_*``, whose partners sit in ``stages.0.layers.0``, where only one candidate is.

    Two alike layers of one block have the same neighbours and stay unsettled.
    """
    partner = {_spelling(s): _spelling(ds[0]) for s, ds, _ in settled if isinstance(s, str) and len(ds) == 1}
    theirs = set(partner.values())
    found: Pairs = []
    for sig, (rest_a, rest_b) in left.items():
        near_b = {d: _nearest(_spelling(d), theirs) for d in rest_b}
        support = {s: [d for d in rest_b if {partner[n] for n in _nearest(_spelling(s), partner)} & near_b[d]]
                   for s in rest_a}
        for s, ds in support.items():
            if len(ds) == 1 and sum(ds[0] in other for other in support.values()) == 1:
                found.append((s, [ds[0]], f"shape {_describe(sig)}, among the partners of its neighbours"))
                rest_a.remove(s)
                rest_b.remove(ds[0])
                return found   # one at a time: the next round sees this pair
    return found


def _nearest(name: str, names: Iterable[str]) -> set[str]:
    """The names sharing the longest prefix with ``name`` (at least up to a separator)."""
    best, out = 0, set()
    for other in names:
        common = len(os.path.commonprefix([name, other]))
        common = max(name.rfind(sep, 0, common + 1) for sep in "._/") + 1 if common < len(name) else common
        if common > best:
            best, out = common, {other}
        elif common == best and common:
            out.add(other)
    return out


def _by_order(plan: "Plan", sig: tuple, rest_a: list[str], rest_b: list[str]) -> Pairs:
    """What no evidence settles: paired in each side's order, each pair a decision for the user."""
    shape, pairs = f"shape {_describe(sig)}", []
    for s, d in zip(rest_a, rest_b):
        pairs.append((s, [d], f"{shape}, by order among {len(rest_a)} and {len(rest_b)} alike: CHECK (or --probe)"))
        plan.ambiguous.append(Decision(
            f"{s} -> {d}: paired by order among {len(rest_a)} source and {len(rest_b)} destination "
            f"{sig[0]} layers of the same shapes, which neither their numbers nor their names tell apart; "
            "confirm under `layers` (or run with --probe)", layers={s: d}, among=tuple(rest_a)))
    return pairs


def _signature(layer: "Layer") -> tuple:
    """Kind and canonical shapes, kinds a state_dict cannot tell apart taken as one.

    A matrix is a dense layer's or an embedding table's, a lone weight and
    bias a LayerNorm or an InstanceNorm; the pair's own kind check still runs. A conv
    or dense bias is left out: its shape follows from the weight's, and a bias on one
    side only (a Keras conv before a BatchNorm, a PyTorch one without) is the pair's
    own decision (copy, ``fold`` into the BatchNorm, or ``skip``), not a reason not to pair.
    """
    kind, shapes = layer.signature()
    if kind in ("dense", "embedding"):
        kind = "dense or embedding"
    elif kind in NORM_KINDS:
        kind = "norm"
    if "weight" in dict(shapes) and kind not in ("norm", "batch_norm"):
        shapes = tuple((r, shape) for r, shape in shapes if r != "bias")
    return kind, shapes


def _describe(sig: tuple) -> str:
    """``dense (32, 64)``: the kind and its weight's shape (or every tensor's, for a layer without one)."""
    shapes = dict(sig[1])
    return f"{sig[0]} " + (str(shapes["weight"]) if "weight" in shapes else ", ".join(map(str, shapes.values())))


def _settle(sig: tuple, mine: list[str], theirs: list[str]) -> tuple[Pairs, tuple[list[str], list[str]]]:
    """The pairs names and numbers settle in one signature group, and what is left on each side."""
    shape = f"shape {_describe(sig)}"
    if len(mine) == 1 and len(theirs) == 1:
        return [(mine[0], [theirs[0]], shape)], ([], [])
    spelled = {_spelling(d): d for d in theirs}
    pairs: Pairs = [(s, [spelled[_spelling(s)]], f"{shape}, the same name") for s in mine if _spelling(s) in spelled]
    named = {s for s, _, _ in pairs} | {d for _, (d,), _ in pairs}
    fam_a, fam_b = _families([n for n in mine if n not in named]), _families([n for n in theirs if n not in named])
    for a, b, why in _pair_families(fam_a, fam_b):
        members = zip(sorted(fam_a.pop(a), key=numbers), sorted(fam_b.pop(b), key=numbers))
        pairs += [(s, [d], f"{shape}, {why}") for s, d in members]
    rest_a = [n for n in mine if any(n in f for f in fam_a.values())]
    rest_b = [n for n in theirs if any(n in f for f in fam_b.values())]
    return pairs, (rest_a, rest_b)


def _spelling(name: str) -> str:
    """Keras nests with ``/``, PyTorch with ``.``: compare names in one spelling."""
    return name.replace("/", ".")


def _families(names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for n in names:
        out[template(n)].append(n)
    return dict(out)


def _pair_families(fam_a: dict[str, list[str]], fam_b: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """Families that pair whole: the only ones, the mutual best by name, then the last ones left."""
    found: list[tuple[str, str, str]] = []
    left_a, left_b = dict(fam_a), dict(fam_b)

    def take(a: str, b: str, why: str) -> None:
        found.append((a, b, why))
        del left_a[a], left_b[b]

    if len(left_a) == 1 and len(left_b) == 1:
        (a, ma), (b, mb) = next(iter(left_a.items())), next(iter(left_b.items()))
        if _lined_up(ma, mb):
            take(a, b, "numbered alike" if len(ma) > 1 else "the only ones")
        return found
    while True:
        best = _mutual_best(left_a, left_b)
        if best is None:
            break
        take(*best, f"names alike ({', '.join(sorted(words(best[0]) & words(best[1])))})")
    for a, b in _only_candidates(left_a, left_b):
        take(a, b, "the only ones of their size" if len(left_a[a]) > 1 else "the only ones left")
    return found


def _only_candidates(fam_a: dict[str, list[str]], fam_b: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Families that could pair with one family only, and it with them only (size, numbers)."""
    fits = {(a, b) for a in fam_a for b in fam_b if _lined_up(fam_a[a], fam_b[b])}
    return [(a, b) for a, b in sorted(fits)
            if sum(x == a for x, _ in fits) == 1 and sum(y == b for _, y in fits) == 1]


def _mutual_best(fam_a: dict[str, list[str]], fam_b: dict[str, list[str]]) -> tuple[str, str] | None:
    """The pair of families of one size, most alike in words, each the other's unique best."""
    a_keys, b_keys = list(fam_a), list(fam_b)
    score = np.array([[_alike(a, b) if len(fam_a[a]) == len(fam_b[b]) and _lined_up(fam_a[a], fam_b[b])
                       else -1 for b in b_keys] for a in a_keys]).reshape(len(a_keys), len(b_keys))
    if score.size == 0 or score.max() < 10:
        return None
    for i, j in sorted(np.argwhere(score == score.max()).tolist()):
        row, col = score[i], score[:, j]
        if (row == row[j]).sum() == 1 and (col == col[i]).sum() == 1:
            return a_keys[i], b_keys[j]
    return None


def _alike(a: str, b: str) -> int:
    """Words two names share: ten points for each telling word (``query``, ``pooler``), one for each generic one."""
    shared = words(a) & words(b)
    return 10 * len(shared - _GENERIC) + len(shared & _GENERIC)


def _lined_up(a: list[str], b: list[str]) -> bool:
    """Two families whose members pair in the order of their numbers without doubt.

    As many members on each side, no two members of a side with the same numbers;
    where both sides carry as many numbers, each slot ranks its members alike and
    the last numbers are equal: ``layer1.0.conv3`` pairs with ``conv2_block1_3_conv``,
    but ``conv0, conv1, conv2`` with ``conv1, conv2, conv3`` is asked about (the
    shortcut may be ``conv0`` on one side and ``conv3`` on the other).
    """
    if len(a) != len(b):
        return False
    na, nb = sorted(map(numbers, a)), sorted(map(numbers, b))
    if len(set(na)) != len(na) or len(set(nb)) != len(nb):
        return False
    if len(na[0]) == len(nb[0]):  # the last number says where in a block: it must be the same number
        return _ranked(na) == _ranked(nb) and (not na[0] or [v[-1] for v in na] == [v[-1] for v in nb])
    return True


def _ranked(vectors: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Each slot's numbers replaced by their rank among that slot's values (``conv2``..``conv5`` -> 0..3)."""
    slots = [sorted(set(v[i] for v in vectors)) for i in range(len(vectors[0]))]
    return [tuple(slots[i].index(x) for i, x in enumerate(v)) for v in vectors]



_QKV = ("query", "key", "value")


def fused(plan: "Plan", src_names: list[str], dst_names: list[str]) -> Pairs:
    """Separate q, k, v (and o) projections and the fused layers that hold them, either way round.

    A ``nn.MultiheadAttention`` or Keras ``MultiHeadAttention`` (``in_proj_weight`` and
    ``out_proj``) holds the q, k, v and o projections of one block; a dense layer named
    ``qkv``/``in_proj`` with three times the rows holds q, k and v. Blocks pair in the
    order of their numbers, and every part's shape must fit.
    """
    into = _fused_pairs(plan.src, plan.dst, src_names, dst_names)
    if into:
        return [(parts, [target], f"fused: {why}") for parts, target, why in into]
    return [(target, parts, f"split: {why}") for parts, target, why in _fused_pairs(plan.dst, plan.src, dst_names, src_names)]


def _fused_pairs(separate: "LayerGraph", joined: "LayerGraph", separate_names: list[str],
                 joined_names: list[str]) -> list[tuple[list[str], str, str]]:
    """``(parts, fused layer, why)``: the separate side's projections, block by block, for each fused layer."""
    targets = sorted((n for n in joined_names if _fused_parts(joined[n])), key=numbers)
    if not targets:
        return []
    blocks: dict[tuple[int, ...], dict[str, str]] = defaultdict(dict)
    for name in separate_names:
        said = words(name) & {*_QKV, "out"}
        if separate[name].kind == "dense" and len(said) == 1 and (said != {"out"} or "attention" in words(name)):
            blocks[numbers(name)].setdefault(next(iter(said)), name)
    blocks = {k: v for k, v in blocks.items() if set(_QKV) <= set(v)}
    if len(blocks) != len(targets):
        return []
    found = []
    for (number, block), target in zip(sorted(blocks.items()), targets):
        wanted = _fused_parts(joined[target])
        parts = [block[w] for w in wanted if w in block]
        if len(parts) != len(wanted) or not _fits(separate, parts, joined[target]):
            return []
        letters = "/".join(("q", "k", "v", "o")[:len(parts)])
        found.append((parts, target, f"{letters} projections of block {'.'.join(map(str, number))} "
                                     "(names and block numbers)"))
    return found


def _fused_parts(layer: "Layer") -> tuple[str, ...]:
    """The projections a fused layer holds, in its row order; none for any other layer."""
    if layer.kind == "multi_head_attention" and "in_proj_weight" in layer.params and "out_proj.weight" in layer.params:
        return (*_QKV, "out")
    tokens = {t.lower() for t in re.split(r"[^A-Za-z]+", layer.name)}
    if layer.kind == "dense" and ({"qkv", "in_proj"} & tokens or "in_proj" in layer.name) and \
            layer.params["weight"].shape[0] % 3 == 0:
        return _QKV
    return ()


def _fits(graph: "LayerGraph", parts: list[str], target: "Layer") -> bool:
    weights = [graph[p].params["weight"].shape for p in parts]
    fused = target.params.get("in_proj_weight", target.params.get("weight"))
    rows = sum(w[0] for w in weights[:3])
    return fused is not None and all(len(w) == 2 and w[1] == fused.shape[1] for w in weights) and rows == fused.shape[0]
