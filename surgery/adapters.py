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

from .graph import Layer, Param


@dataclass
class Feed:
    """The recipe for one destination tensor."""

    param: Param                 # lazy, canonical layout, source dtype
    sources: tuple[str, ...]     # full canonical names of the source tensors used
    transform: str               # shown in the plan: "identity", "gates ifco->ifgo"...


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
    return feeds


ADAPTERS: list[Adapter] = [by_role]


def feed(src: Layer, dsts: list[Layer], options: dict[str, Any] | None = None) -> dict[tuple[str, str], Feed]:
    """The feeds for one pairing, from the first adapter that applies."""
    for adapter in ADAPTERS:
        result = adapter(src, dsts, options or {})
        if result is not None:
            return result
    return {}
