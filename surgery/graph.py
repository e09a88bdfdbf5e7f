"""The framework-neutral layer graph: LayerGraph, Layer, Param.

A ``Param`` is a lazy tensor in the canonical (PyTorch/ONNX) layout: its shape
and dtype are known from the file's header; its bytes are read only when
``read()`` is called. Formats build graphs at their edges; the rest of
surgery sees only these three classes and numpy arrays.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Iterator, NamedTuple

import numpy as np

from . import dtypes
from .errors import SurgeryError


# Buffers that carry no trained value: never paired by shape, never reported as left unfilled.
BOOKKEEPING = frozenset({"num_batches_tracked"})
# Kinds that hold the same tensors as another kind: a depthwise conv is a conv with groups == channels.
KIND_ALIASES = {"depthwise_conv2d": "conv2d"}


class Span(NamedTuple):
    """Where a param's bytes lie in a file exactly as ``read()`` returns them (C order, little-endian).

    A writer that stores raw bytes may copy the span file to file, in the kernel, instead of
    reading the tensor (``io.copy_span``). ``done`` is called once it is copied (progress).
    """

    path: str
    offset: int
    nbytes: int
    done: Callable[[], None] | None = None
    more: tuple["Span", ...] = ()   # where the bytes go on, in order (a tensor saved in row chunks)

    def pieces(self) -> tuple["Span", ...]:
        """Every piece of the tensor's bytes, in order."""
        return (self, *self.more)


class Param:
    """A lazy tensor: shape and dtype now, data on ``read()``.

    Args:
        shape: canonical shape.
        dtype: a surgery dtype name (``"float32"``, ``"bfloat16"``...).
        load: returns the data as a numpy array in canonical layout.
        key: the tensor's name in its file, as the format spells it.
        layout: how the native layout was turned into the canonical one
            (``"HWIO->OIHW"``), empty when they are the same.
        ident: equal for two params that are one storage (tied weights).
        span: where its bytes lie unchanged in a file, when they do (a derived param has none);
            or a function that finds out, called the first time ``span`` is asked for (a
            reader for which finding out costs reads: DCP records), returning None when they
            do not lie so after all.
    """

    __slots__ = ("shape", "dtype", "_load", "key", "layout", "ident", "_span")

    def __init__(
        self,
        shape: Iterable[int],
        dtype: str,
        load: Callable[[], np.ndarray],
        *,
        key: str = "",
        layout: str = "",
        ident: Hashable | None = None,
        span: "Span | Callable[[], Span | None] | None" = None,
    ) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self._load = load
        self.key = key
        self.layout = layout
        self.ident = ident
        self._span = span

    @property
    def span(self) -> Span | None:
        """Where its bytes lie unchanged in files, found out now if the reader left that for later."""
        if self._span is not None and not isinstance(self._span, Span):
            self._span = self._span()
        return self._span

    @property
    def copyable(self) -> bool:
        """Whether its bytes lie (or, not yet found out, should lie) unchanged in files; reads nothing."""
        return self._span is not None

    def renamed(self, key: str, *, layout: str = "", ident: Hashable | None = None) -> "Param":
        """The same bytes under another name (a transplant's unchanged copy), its span kept, found out or not."""
        return Param(self.shape, self.dtype, self.read, key=key, layout=layout, ident=ident, span=self._span)

    @classmethod
    def from_array(cls, arr: np.ndarray, *, key: str = "", ident: Hashable | None = None) -> "Param":
        """A param holding an array already in memory."""
        return cls(arr.shape, dtypes.of_array(arr), lambda: arr, key=key, ident=ident)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.itemsize(self.dtype)

    def read(self) -> np.ndarray:
        """Read the data; raises SurgeryError if it disagrees with the header."""
        arr = np.asarray(self._load())
        if tuple(arr.shape) != self.shape or dtypes.of_array(arr) != self.dtype:
            raise SurgeryError(
                f"tensor {self.key or '?'}: header says {self.dtype}{list(self.shape)}, "
                f"data is {dtypes.of_array(arr)}{list(arr.shape)}"
            )
        return arr

    def derived(self, transform: Any, *, dtype: str | None = None, key: str | None = None) -> "Param":
        """A lazy param that is ``transform`` (a ``layouts.Transform``) applied to this one.

        Nothing is read now. ``dtype`` is the result's dtype when the transform
        changes it (a cast). An identity with nothing else changed returns self.
        """
        if transform.name == "identity" and dtype is None and key is None:
            return self
        layout = self.layout if transform.name == "identity" else transform.name
        return Param(transform.shape(self.shape), dtype or self.dtype, lambda: transform(self.read()),
                     key=self.key if key is None else key, layout=layout)

    def __repr__(self) -> str:
        return f"Param({self.key!r}, {self.dtype}{list(self.shape)})"


@dataclass
class Layer:
    """A layer: named params in canonical roles, arithmetic attributes, frozen flag."""

    name: str
    kind: str = "unknown"
    params: dict[str, Param] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    frozen: bool = False

    def key(self, role: str) -> str:
        """The full canonical tensor name of one of this layer's roles."""
        if not role:
            return self.name
        return f"{self.name}.{role}" if self.name else role

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params.values())

    def signature(self) -> tuple:
        """Kind and canonical shapes: what ``match: shape`` compares.

        Bookkeeping buffers are left out; a depthwise conv compares as the grouped
        conv it is; a BatchNorm compares by its statistics, so one without
        ``gamma``/``beta`` (Keras ``scale=False``) still pairs with PyTorch's.
        """
        kind = KIND_ALIASES.get(self.kind, self.kind)
        roles = ("running_mean", "running_var") if kind == "batch_norm" else sorted(self.params)  # not storage order
        return (kind, tuple((r, self.params[r].shape) for r in roles if r in self.params and r not in BOOKKEEPING))


class LayerGraph:
    """An ordered collection of layers read from (or bound for) one checkpoint.

    Args:
        layers: in execution order where the format knows it.
        path: the file or folder it was read from, if any.
        format: the registry name of that file's format.
        meta: format-specific facts a writer of the same format may need, and
            ``notes``: things the reader recognised and the user should hear
            (a stripped ``module.`` prefix, an unwrapped ``{"state_dict": ...}``), and
            ``left_out``: every tensor the file holds that is not a param of a layer,
            by its name in the file, with the reason (optimizer slot, step counter).
            ``architecture``: True when the file records the network (layer order,
            what feeds what), not only its weights.
            Readers account for every tensor: ``len(graph.state()) + len(graph.left_out)``
            (tied tensors counted once per name) is what the file holds.
    """

    def __init__(
        self,
        layers: Iterable[Layer],
        *,
        path: str | None = None,
        format: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.layers: dict[str, Layer] = {}
        for layer in layers:
            if layer.name in self.layers:
                raise SurgeryError(f"{path or 'graph'}: layer {layer.name!r} appears twice")
            self.layers[layer.name] = layer
        self.path = path
        self.format = format
        self.meta = meta if meta is not None else {}
        self.meta.setdefault("notes", [])
        self.meta.setdefault("left_out", {})

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers.values())

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __getitem__(self, name: str) -> Layer:
        return self.layers[name]

    def tensors(self) -> Iterator[tuple[str, Param]]:
        """Every tensor as ``(canonical full name, Param)``, in layer order."""
        for layer in self.layers.values():
            for role, param in layer.params.items():
                yield layer.key(role), param

    def state(self) -> dict[str, Param]:
        return dict(self.tensors())

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for _, p in self.tensors())

    @property
    def notes(self) -> list[str]:
        return self.meta["notes"]

    @property
    def left_out(self) -> dict[str, str]:
        """Tensors of the file that are not layer params: ``{name in file: why}``."""
        return self.meta["left_out"]

    def __repr__(self) -> str:
        return f"LayerGraph({self.path or '<memory>'}, {len(self)} layers, {self.numel:,} params)"


def tied_aliases(tensors: Iterable[tuple[str, Param]]) -> dict[str, str]:
    """``alias -> kept`` for every tensor that is one storage with an earlier one (tied weights)."""
    first: dict = {}
    out = {}
    for key, param in tensors:
        if param.ident is None:
            continue
        if param.ident in first:
            out[key] = first[param.ident]
        else:
            first[param.ident] = key
    return out


def tied_notes(tensors: Iterable[tuple[str, Param]]) -> list[str]:
    """One note per tied tensor, for ``graph.notes``."""
    return [f"{alias} is tied to {kept} (one storage)" for alias, kept in tied_aliases(tensors).items()]


_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """Sort key that puts ``layer.2`` before ``layer.10``."""
    return [int(part) if part.isdigit() else part for part in _NUM.split(name)]
