"""What a plan is: every destination tensor with its source and transform, and the decisions left open.

``pairing.make_plan`` builds a ``Plan``; ``apply`` carries it out; ``render`` prints it.
A ``Plan`` refuses to be carried out under the strict default while ``decisions()`` is
not empty (``StrictError``, with the map lines that accept them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import SurgeryError
from .graph import Layer, LayerGraph, Param
from .mapping import Mapping


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
    among: tuple[str, ...] = ()   # an ambiguous pair: every source layer the destination could take (for --probe)


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
    probed: list[Any] = field(default_factory=list)      # --probe's Evidence, question by question
    foldable: list[str] = field(default_factory=list)    # dropped biases a paired BatchNorm takes next (map `fold`)

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
                "warnings": self.warnings, "notes": {"source": self.src.notes, "destination": self.dst.notes},
                "probe": [e.to_dict() for e in self.probed]}

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
