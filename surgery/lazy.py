"""Lazy params made of other params: constants, sums, stacks, concatenations.

Adapters and layout code build these when one destination tensor is made of
several source tensors (q, k, v into a fused projection) or of none (the
second PyTorch RNN bias a Keras layer does not have). Nothing is read until
the result's ``read()`` is called.
"""

from __future__ import annotations

import numpy as np

from . import dtypes
from .graph import Param


def constant(shape: tuple[int, ...], like: Param, value: float, note: str) -> Param:
    """A tensor of ``shape`` filled with ``value``, in ``like``'s dtype."""
    np_type = dtypes.get(like.dtype).numpy
    return Param(shape, like.dtype, lambda: np.full(shape, value, np_type), key=like.key, layout=note)


def summed(a: Param, b: Param, note: str) -> Param:
    """``a + b`` (PyTorch's two RNN biases folded into Keras' one)."""
    return Param(a.shape, a.dtype, lambda: a.read() + b.read(), key=a.key, layout=note)


def difference(a: Param, b: Param, note: str) -> Param:
    """``a - b`` in ``a``'s dtype (a conv bias folded into the running mean of the BatchNorm after it)."""
    np_type = dtypes.get(a.dtype).numpy
    return Param(a.shape, a.dtype, lambda: (a.read() - b.read().astype(np_type)).astype(np_type), key=a.key, layout=note)


def stacked(parts: list[Param], note: str) -> Param:
    """``np.stack(parts)`` (the two Keras GRU bias rows)."""
    return Param((len(parts), *parts[0].shape), parts[0].dtype,
                 lambda: np.stack([p.read() for p in parts]), key=parts[0].key, layout=note)


def concat(parts: list[Param], note: str) -> Param:
    """Concatenation along the first axis (q, k, v into a fused projection)."""
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    return Param(shape, parts[0].dtype, lambda: np.concatenate([p.read() for p in parts]),
                 key=parts[0].key, layout=note)
