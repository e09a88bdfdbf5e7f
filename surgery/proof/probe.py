"""``--probe``: settle what the files cannot say by running both networks, layer by layer.

The open questions are the plan's own decisions: an ambiguous pair (which of several
equal-shape source layers fills this destination layer) and an assumed flatten order
(how the destination orders its features before its first dense layer). For each, in
the destination's execution order, every candidate is tried: the destination is
built with the candidate's weights, both networks run on one seeded input, and the
destination layer's output is compared with the output of the source layer the
candidate says it is. The candidate whose output matches, alone, is kept. Earlier
questions are settled first, so a layer's input is already right when it is judged.

What cannot be settled this way (no candidate matches, or several do, or a layer the
runner cannot see) stays a decision for the user. The per-candidate errors go into the
report and the sidecar either way.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..errors import SurgeryError
from ..graph import LayerGraph
from ..apply import apply_plan, save
from ..map_sections import MapValue
from ..mapping import Mapping, load_map
from ..pairing import make_plan
from ..plans import Plan
from .verify import adapt_output, feeds_for, make_inputs, open_side

ROUNDS = 256   # questions settled in one probe, at most


@dataclass
class Evidence:
    """One question, the candidates tried and each one's max abs error at the layer in question."""

    question: str
    layer: str
    errors: dict[str, float] = field(default_factory=dict)
    chosen: str | None = None
    why: str = ""
    settled: dict[str, Any] = field(default_factory=dict)   # the map entries it added: {"layers": ..., "flatten": ...}

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "layers": self.layer, "chosen": self.chosen, "why": self.why,
                "max_abs_error": {k: (v if np.isfinite(v) else None) for k, v in self.errors.items()}}

    def summary(self) -> str:
        """The chosen candidate's error against the best of the others: the margin that settled it."""
        others = [v for k, v in self.errors.items() if k != self.chosen]
        rest = (f", the other {min(others):.2g}" if len(others) == 1 else
                f", the {len(others)} others >= {min(others):.2g}" if others else "")
        return f"max abs error {self.errors[self.chosen]:.2g}{rest}" if self.chosen else self.why

    def line(self) -> str:
        if self.chosen:
            return f"{self.question}: kept {self.chosen} ({self.summary()})"
        tried = ", ".join(f"{k}: {v:.2g}" for k, v in self.errors.items())
        return f"{self.question}: not settled, {self.why}" + (f" (max abs errors: {tried})" if tried else "")


@dataclass
class _Question:
    text: str
    members: list[str]                              # the destination layers it is about
    candidates: list[tuple[str, dict]]              # (label, map patch)


MAX_GROUP = 5   # equal-shape layers one question may permute (5! = 120 runs)


def probe(src: LayerGraph, dst: LayerGraph, mapping: Any, *, factory: str | None, input_shape: Any = None,
          rtol: float = 1e-4, atol: float = 1e-5, **plan_options: Any) -> tuple[Mapping, list[Evidence]]:
    """The map with every question a run of both networks settles; and the evidence, question by question.

    The source must run from its file (``.keras`` with its config, ONNX; per-layer
    outputs need a functional Keras model, a live module or an ONNX graph); the
    destination from its file or ``factory``. ``plan_options`` go to ``make_plan``.
    """
    m = copy.deepcopy(load_map(mapping))
    source = open_side(src.path, None, "SRC")
    evidence: list[Evidence] = []
    given_up: set[str] = set()
    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="surgery-probe-") as tmp:
        def run(trial: Mapping) -> tuple[list[tuple[str, np.ndarray]], dict[str, str]]:
            """The destination's layer outputs in execution order with ``trial``, and its pairs (dst -> src)."""
            plan = make_plan(src, dst, trial, **plan_options)
            path = os.path.join(tmp, "candidate" + _suffix(dst.path))
            save(apply_plan(plan).graph, path)
            runner = open_side(path, factory, "DST")
            if not state:
                feeds, _ = make_inputs(runner, source, None, input_shape)
                ref_feeds, state["move"] = feeds_for(source, feeds, runner.data_format)
                state["feeds"] = feeds
                state["theirs"] = {name: y for name, _, y in source.trace(ref_feeds)}
            pairs = {d: p.source for p in plan.pairs for d in p.destinations if p.source not in plan.merged}
            return [(name, y) for name, _, y in runner.trace(state["feeds"])], pairs

        for _ in range(ROUNDS):
            questions = [q for q in _questions(make_plan(src, dst, m, **plan_options))
                         if not given_up & set(q.members)]
            if not questions:
                break
            order = [name for name, _ in run(m)[0]]
            seen = [q for q in questions if all(layer in order for layer in q.members)]
            if not seen:
                evidence += [Evidence(q.text, ", ".join(q.members), why="the destination runner does not show "
                                      "these layers' outputs (a live module or a functional model shows them)")
                             for q in questions]
                break
            question = min(seen, key=lambda q: min(order.index(layer) for layer in q.members))
            others = {layer for q in questions if q is not question for layer in q.members}
            found = _judge(question, others, m, run, state, rtol, atol)
            evidence.append(found)
            if found.chosen is None:
                given_up.update(question.members)
                continue
            found.settled = dict(question.candidates)[found.chosen]
            m = _patched(m, found.settled)
    return m, evidence


def _judge(question: _Question, others: set[str], m: Mapping, run: Any, state: dict[str, Any],
           rtol: float, atol: float) -> Evidence:
    """Each candidate's worst error over the paired layers the run reaches before another open question."""
    found = Evidence(question.text, ", ".join(question.members))
    passed = []
    for label, patch in question.candidates:
        try:
            trace, pairs = run(_patched(m, patch))
        except SurgeryError as exc:
            found.errors[label] = float("inf")
            found.why = str(exc)
            continue
        worst, ok = 0.0, True
        for i, (name, _) in enumerate(trace):
            if name in others:
                break   # what comes after another open question cannot judge this one
            reference = state["theirs"].get(pairs.get(name, ""))
            if reference is None:
                continue
            err, fits = _closest(trace, i, pairs, reference, state["move"], rtol, atol)
            worst, ok = max(worst, err), ok and fits
        found.errors[label] = worst
        if ok:
            passed.append(label)
    if len(passed) == 1:
        found.chosen, found.why = passed[0], ""
    else:
        found.why = "no candidate matches" if not passed else f"{len(passed)} candidates match"
    return found


def _closest(trace: list, i: int, pairs: dict[str, str], reference: np.ndarray, move: tuple | None,
             rtol: float, atol: float) -> tuple[float, bool]:
    """How far ``trace[i]``'s output is from ``reference``, counting the unpaired layers right after it.

    A Keras layer applies its activation inside (``Conv2D(activation="relu")``); the
    other side runs it as a layer of its own (``nn.ReLU``), whose output is the one to compare.
    """
    best, end = float("inf"), i + 1
    while end < len(trace) and trace[end][0] not in pairs:
        end += 1
    for _, ours in trace[i:end]:
        theirs = adapt_output(reference, move, ours)
        if theirs.shape != ours.shape:
            continue
        err = np.abs(ours.astype(np.float64) - theirs)
        if np.all(err <= atol + rtol * np.abs(theirs)):
            return (float(err.max()) if err.size else 0.0), True
        best = min(best, float(err.max()) if err.size else 0.0)
    return best, False


def _questions(plan: Plan) -> list[_Question]:
    """Every open decision a run can settle: equal-shape layers to permute, a flatten order to choose."""
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for decision in plan.ambiguous:
        (s, d), = decision.layers.items()
        groups.setdefault((decision.among, _block(d)), []).append((s, d))
    out = []
    for pairs in groups.values():
        sources, members = [s for s, _ in pairs], [d for _, d in pairs]
        if len(pairs) > MAX_GROUP:
            continue
        candidates = []
        for perm in itertools.permutations(sources):
            label = ", ".join(f"{s} -> {d}" for s, d in zip(perm, members))
            candidates.append((label, {"layers": dict(zip(perm, members))}))
        out.append(_Question(f"which of {', '.join(sources)} fills which of {', '.join(members)}", members, candidates))
    destinations = {p.source: p.destinations[0] for p in plan.pairs}
    for decision in plan.assumed:
        for source_layer, facts in decision.flatten.items():
            target = destinations.get(source_layer)
            if target is not None:
                out.append(_Question(f"the order {target} flattens its input in", [target],
                                     [(order, {"flatten": {source_layer: {**facts, "dest_order": order}}})
                                      for order in _orders(facts)]))
    return out


def _block(name: str) -> tuple[int, ...]:
    """The block a layer sits in, by its numbers but the last (``blocks.3.ln1`` -> (3,))."""
    found = tuple(int(n) for n in re.findall(r"\d+", name))
    return found[:-1] if len(found) > 1 else ()


def _orders(facts: dict[str, Any]) -> list[str]:
    """Flatten orders to try: channels first and channels last (a destination may permute before flattening)."""
    axes = str(facts["source_order"])
    spatial = "".join(a for a in axes if a != "C")
    return list(dict.fromkeys([str(facts["dest_order"]), "C" + spatial, spatial + "C"]))


def _patched(m: Mapping, patch: dict[str, Any]) -> Mapping:
    """A copy of ``m`` with the patch's ``layers`` and ``flatten`` entries added (a pair moved, not doubled)."""
    out = copy.deepcopy(m)
    for s, d in patch.get("layers", {}).items():
        for other in [k for k, v in out.layers.items() if d in v.value and k != s]:
            del out.layers[other]
        out.layers[s] = MapValue([d])
    for s, facts in patch.get("flatten", {}).items():
        out.flatten[s] = MapValue(facts)
    return out


def _suffix(path: str) -> str:
    """The destination's own suffix, so the candidate is written in its format (``.pt``, ``.keras``...)."""
    name = os.path.basename(path.rstrip(os.sep))
    for multi in (".weights.h5", ".safetensors.index.json"):
        if name.endswith(multi):
            return multi
    return os.path.splitext(name)[1]


def lines(evidence: Iterable[Evidence]) -> list[str]:
    return [e.line() for e in evidence]
