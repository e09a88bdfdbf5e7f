"""How one ONNX initializer becomes canonical tensors, and back.

An initializer is a ``Slot``: one native tensor cut into one or more
canonical ``Piece``s (an ONNX ``LSTM`` ``B`` holds ``bias_ih`` and ``bias_hh``
for every direction). ``fwd`` turns the native array into one piece; ``back``
turns all pieces into the native array again, which is what the writer needs.

Gate orders (ONNX operator spec vs ``torch.nn.LSTM``/``GRU``) are
``layouts.GATE_ORDERS``: LSTM ONNX ``i,o,f,c`` -> PyTorch ``i,f,c,o`` (PyTorch calls
``c`` ``g``); GRU ONNX ``z,r,n`` -> PyTorch ``r,z,n``. ONNX ``W`` is ``(dirs, G*H, in)``, ``R`` ``(dirs, G*H, H)``,
``B`` ``(dirs, 2*G*H)`` = ``[Wb, Rb]``; direction 1 is PyTorch's ``_reverse``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ... import layouts
from ...errors import SurgeryError
from ...layouts import GATE_ORDERS, gates, permute

Array = np.ndarray


@dataclass(frozen=True)
class Piece:
    role: str                       # canonical role: "weight", "bias_ih_l0_reverse"...
    shape: tuple[int, ...]          # canonical shape
    layout: str                     # "" when native == canonical
    fwd: Callable[[Array], Array]   # native initializer -> this piece


@dataclass(frozen=True)
class Slot:
    tensor: Any                     # the onnx TensorProto
    pieces: tuple[Piece, ...]
    back: Callable[[list[Array]], Array]  # all pieces, in order -> native initializer


def plain_slot(tensor: Any, role: str) -> Slot:
    """An initializer already in canonical layout."""
    return Slot(tensor, (Piece(role, tuple(tensor.dims), "", lambda a: a),), lambda ps: ps[0])


def dense_slot(tensor: Any, *, transposed: bool) -> Slot:
    """A dense weight: ``(out, in)`` as is (Gemm transB=1), ``(in, out)`` transposed (Gemm transB=0, MatMul)."""
    if not transposed:
        return plain_slot(tensor, "weight")
    fwd, back = permute("IO", "OI"), permute("OI", "IO")
    return Slot(tensor, (Piece("weight", fwd.shape(tuple(tensor.dims)), fwd.name, fwd.apply),),
                lambda ps: back(ps[0]))


def channel_slot(tensor: Any, role: str) -> Slot | None:
    """A per-channel tensor stored broadcastable (a PReLU slope ``(C,1,1)`` or ``(1,C,1,1)``) as canonical ``(C,)``.

    None when more than one axis is longer than 1: a slope per position, which
    ``nn.PReLU`` cannot hold.
    """
    dims = tuple(tensor.dims)
    if sum(d != 1 for d in dims) > 1:
        return None
    size = math.prod(dims) if dims else 1
    if dims == (size,):
        return plain_slot(tensor, role)
    shape = layouts.reshape((size,), f"{tuple(dims)}->(C,)")
    return Slot(tensor, (Piece(role, (size,), shape.name, shape.apply),), lambda ps: np.reshape(ps[0], dims))


def rnn_slot(tensor: Any, kind: str, which: str, layer: int = 0) -> Slot:
    """An ONNX ``LSTM``/``GRU`` input ``W``, ``R`` or ``B`` as PyTorch's per-direction tensors of ``layer``."""
    _check_rnn_dims(tensor, kind, which)
    to_torch = gates(GATE_ORDERS[f"onnx_{kind}"], GATE_ORDERS[f"torch_{kind}"])
    to_onnx = gates(GATE_ORDERS[f"torch_{kind}"], GATE_ORDERS[f"onnx_{kind}"])
    name = to_torch.name
    dims = tuple(tensor.dims)
    dirs = dims[0]
    sfx = ["" if d == 0 else "_reverse" for d in range(dirs)]
    if which in ("W", "R"):
        role = f"weight_ih_l{layer}" if which == "W" else f"weight_hh_l{layer}"
        pieces = tuple(
            Piece(role + sfx[d], dims[1:], name, lambda a, d=d: to_torch(a[d])) for d in range(dirs)
        )
        return Slot(tensor, pieces, lambda ps: np.stack([to_onnx(p) for p in ps]))
    half = dims[1] // 2
    pieces = tuple(
        Piece(f"bias_{part}_l{layer}{sfx[d]}", (half,), name,
              lambda a, d=d, lo=lo: to_torch(a[d, lo:lo + half]))
        for d in range(dirs) for part, lo in (("ih", 0), ("hh", half))
    )

    def back(ps: list[Array]) -> Array:
        return np.stack([np.concatenate([to_onnx(ps[2 * d]), to_onnx(ps[2 * d + 1])])
                         for d in range(dirs)])

    return Slot(tensor, pieces, back)


def _check_rnn_dims(tensor: Any, kind: str, which: str) -> None:
    """``W``/``R`` are ``(dirs, G*H, in or H)``, ``B`` is ``(dirs, 2*G*H)``: cut into gates, they must divide evenly."""
    blocks = len(GATE_ORDERS[f"onnx_{kind}"]) * (2 if which == "B" else 1)
    rank = 2 if which == "B" else 3
    dims = list(tensor.dims)
    if len(dims) != rank or dims[0] < 1 or any(d < 0 for d in dims) or dims[1] % blocks:
        raise SurgeryError(f"ONNX {kind.upper()} input {which} {tensor.name!r} has dims {dims}; it needs rank {rank}, "
                           f"at least one direction and a second dimension in {blocks} equal gate blocks")
