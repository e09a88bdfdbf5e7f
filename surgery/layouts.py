"""The layout table: how a tensor's native layout becomes the canonical one.

Every conversion is data: a named permutation of axes, or a named function
with its inverse. Formats look entries up here by ``(native, canonical)``
names; nothing else in surgery transposes a tensor. Each entry has a
round-trip test, and the Keras entries a numeric test against the real layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import SurgeryError

# (native, canonical) -> axes for np.transpose. Canonical is PyTorch/ONNX:
# dense (out, in); conv (out, in/groups, *kernel); conv_transpose (in, out/groups, *kernel).
PERMUTATIONS: dict[tuple[str, str], tuple[int, ...]] = {
    ("IO", "OI"): (1, 0),
    ("WIO", "OIW"): (2, 1, 0),
    ("HWIO", "OIHW"): (3, 2, 0, 1),
    ("DHWIO", "OIDHW"): (4, 3, 0, 1, 2),
    # Keras transposed convs store (*kernel, out, in); PyTorch (in, out, *kernel).
    ("WOI", "IOW"): (2, 1, 0),
    ("HWOI", "IOHW"): (3, 2, 0, 1),
    ("DHWOI", "IODHW"): (4, 3, 0, 1, 2),
    # Channels-last feature-shaped tensors (a per-position PReLU alpha) to channels-first.
    ("WC", "CW"): (1, 0),
    ("HWC", "CHW"): (2, 0, 1),
    ("DHWC", "CDHW"): (3, 0, 1, 2),
}
# Every permutation is also registered backwards, so writers use the same table.
PERMUTATIONS.update(
    {(dst, src): tuple(int(i) for i in np.argsort(axes)) for (src, dst), axes in list(PERMUTATIONS.items())}
)


@dataclass(frozen=True)
class Transform:
    """A named, shape-aware tensor conversion.

    Args:
        name: shown in plans and reports (``"HWIO->OIHW"``).
        apply: array -> array.
        shape: shape -> shape, so plans know results without reading data.
    """

    name: str
    apply: Callable[[np.ndarray], np.ndarray]
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        return self.apply(arr)

    def then(self, other: "Transform") -> "Transform":
        """This transform followed by ``other``."""
        if self is IDENTITY:
            return other
        if other is IDENTITY:
            return self
        return Transform(
            f"{self.name}, {other.name}",
            lambda a: other.apply(self.apply(a)),
            lambda s: other.shape(self.shape(s)),
        )


IDENTITY = Transform("identity", lambda a: a, lambda s: tuple(s))


def permute(native: str, canonical: str) -> Transform:
    """The transform for one entry of ``PERMUTATIONS``."""
    try:
        axes = PERMUTATIONS[(native, canonical)]
    except KeyError:
        raise SurgeryError(f"no layout rule from {native} to {canonical}") from None
    def shape(s: tuple[int, ...]) -> tuple[int, ...]:
        if len(s) != len(axes):
            raise SurgeryError(f"layout {native} needs a tensor of rank {len(axes)}, got shape {list(s)}")
        return tuple(s[i] for i in axes)

    return Transform(f"{native}->{canonical}", lambda a: np.ascontiguousarray(np.transpose(a, axes)), shape)


def kernel_axes(ndim: int) -> tuple[int, ...]:
    """Axes taking a Keras kernel of any rank, ``(*kernel, in, out)``, to canonical ``(out, in, *kernel)``.

    Rank 2 is ``IO->OI``, rank 4 ``HWIO->OIHW``: the ``PERMUTATIONS`` entries, for any rank.
    """
    return (ndim - 1, ndim - 2, *range(ndim - 2))


def data_format_axes(ndim: int, src: str | None, dst: str | None) -> tuple[int, ...] | None:
    """Axes moving a batch of activations (rank 3-5) between ``channels_last`` and ``channels_first``.

    None when nothing moves (same or unknown formats, or a rank without channels).
    """
    if ndim not in (3, 4, 5) or not src or not dst or src == dst:
        return None
    return (0, *range(2, ndim), 1) if src == "channels_first" else (0, ndim - 1, *range(1, ndim - 1))


def to_data_format(arr: np.ndarray, src: str | None, dst: str | None) -> np.ndarray:
    """``arr`` moved from data format ``src`` to ``dst`` (NCHW <-> NHWC and the 1D/3D forms); unchanged otherwise."""
    axes = data_format_axes(arr.ndim, src, dst)
    return arr if axes is None else np.ascontiguousarray(np.transpose(arr, axes))


def data_format_shape(shape: tuple[int, ...], src: str | None, dst: str | None) -> tuple[int, ...]:
    """The shape ``to_data_format`` gives, without data."""
    axes = data_format_axes(len(shape), src, dst)
    return tuple(shape) if axes is None else tuple(shape[i] for i in axes)


def cast(src: str, dst: str) -> Transform:
    """An element-type conversion, named so the report shows it."""
    from . import dtypes

    target = dtypes.get(dst).numpy
    return Transform(f"cast {src}->{dst}", lambda a: a.astype(target), lambda s: tuple(s))



# ---------------------------------------------------------------------------
# Keras <-> canonical rules that are more than an axis permutation.
# Each is a function returning a named Transform, so a plan can show it and
# compute shapes before any data is read.
# ---------------------------------------------------------------------------

# Gate orders along the 4H / 3H axis, spelt with shared letters: LSTM gates
# i (input), f (forget), c (cell candidate: PyTorch calls it g), o (output);
# GRU gates z (update), r (reset), n (candidate: Keras calls it h).
# Keras LSTM and PyTorch LSTM use the same order; GRU differs.
GATE_ORDERS: dict[str, str] = {
    "keras_lstm": "ifco",
    "torch_lstm": "ifco",
    "onnx_lstm": "iofc",
    "keras_gru": "zrn",
    "torch_gru": "rzn",
    "onnx_gru": "zrn",
}


def _wrap(name: str, apply: Callable[[np.ndarray], np.ndarray],
          shape: Callable[[tuple[int, ...]], tuple[int, ...]]) -> Transform:
    return Transform(name, lambda a: np.ascontiguousarray(apply(a)), lambda s: tuple(int(d) for d in shape(tuple(s))))


def gates(src: str, dst: str, axis: int = 0) -> Transform:
    """Reorder the gate blocks along ``axis`` from order ``src`` to ``dst`` (e.g. ``"zrn"`` -> ``"rzn"``)."""
    if sorted(src) != sorted(dst):
        raise SurgeryError(f"gate orders {src} and {dst} name different gates")
    if src == dst:
        return IDENTITY
    order = [src.index(g) for g in dst]

    def apply(a: np.ndarray) -> np.ndarray:
        blocks = np.split(a, len(src), axis=axis)
        return np.concatenate([blocks[i] for i in order], axis=axis)

    return _wrap(f"gates {src}->{dst}", apply, lambda s: s)


def depthwise(spatial: int = 2) -> Transform:
    """Keras depthwise kernel ``(*k, C, M)`` -> canonical ``(C*M, 1, *k)`` (PyTorch ``groups=C``).

    Keras orders a depthwise layer's outputs as ``c*M + m``, which is also
    the order of PyTorch's grouped conv with ``M`` outputs per group.
    """
    axes = (spatial, spatial + 1, *range(spatial))
    letters = "DHW"[-spatial:] if spatial <= 3 else "K" * spatial

    def shape(s: tuple[int, ...]) -> tuple[int, ...]:
        return (s[spatial] * s[spatial + 1], 1, *s[:spatial])

    def apply(a: np.ndarray) -> np.ndarray:
        return np.transpose(a, axes).reshape(shape(a.shape))

    return _wrap(f"{letters}CM->(C*M)1{letters}", apply, shape)


def depthwise_back(multiplier: int, spatial: int = 2) -> Transform:
    """Canonical ``(C*M, 1, *k)`` -> Keras depthwise ``(*k, C, M)``, given the depth multiplier ``M``."""
    letters = "DHW"[-spatial:] if spatial <= 3 else "K" * spatial

    def shape(s: tuple[int, ...]) -> tuple[int, ...]:
        if s[0] % multiplier:
            raise SurgeryError(f"depthwise weight {list(s)}: {s[0]} channels not divisible by multiplier {multiplier}")
        return (*s[2:], s[0] // multiplier, multiplier)

    def apply(a: np.ndarray) -> np.ndarray:
        c = a.shape[0] // multiplier
        split = a.reshape(c, multiplier, *a.shape[2:])
        return np.transpose(split, (*range(2, 2 + spatial), 0, 1))

    return _wrap(f"(C*M)1{letters}->{letters}CM", apply, shape)


def heads_in() -> Transform:
    """Keras attention projection kernel ``(d, heads, head_dim)`` -> canonical ``(heads*head_dim, d)``."""
    return _wrap("d,heads,head_dim->(heads*head_dim),d",
                 lambda a: a.reshape(a.shape[0], -1).T,
                 lambda s: (s[1] * s[2], s[0]))


def heads_in_back(heads: int) -> Transform:
    """Canonical ``(heads*head_dim, d)`` -> Keras ``(d, heads, head_dim)``."""
    return _wrap("(heads*head_dim),d->d,heads,head_dim",
                 lambda a: a.T.reshape(a.shape[1], heads, a.shape[0] // heads),
                 lambda s: (s[1], heads, s[0] // heads))


def heads_out() -> Transform:
    """Keras attention output kernel ``(heads, head_dim, d)`` -> canonical ``(d, heads*head_dim)``."""
    return _wrap("heads,head_dim,d->d,(heads*head_dim)",
                 lambda a: a.reshape(-1, a.shape[-1]).T,
                 lambda s: (s[2], s[0] * s[1]))


def heads_out_back(heads: int) -> Transform:
    """Canonical ``(d, heads*head_dim)`` -> Keras ``(heads, head_dim, d)``."""
    return _wrap("d,(heads*head_dim)->heads,head_dim,d",
                 lambda a: a.T.reshape(heads, a.shape[1] // heads, a.shape[0]),
                 lambda s: (heads, s[1] // heads, s[0]))


def reshape(shape: tuple[int, ...], name: str) -> Transform:
    """A row-major reshape to a fixed shape (attention biases ``(heads, head_dim)`` <-> ``(heads*head_dim,)``)."""
    target = tuple(int(d) for d in shape)
    return _wrap(name, lambda a: a.reshape(target), lambda s: target)


def flatten_order(sizes: dict[str, int], src: str, dst: str) -> np.ndarray:
    """Index array ``idx`` with ``flat_dst = flat_src[idx]``, for a feature map flattened in two orders.

    Args:
        sizes: size of each named axis, e.g. ``{"H": 7, "W": 7, "C": 512}``.
        src, dst: the axis letters in flattening order, slowest first (``"HWC"``, ``"CHW"``).
    """
    if sorted(src) != sorted(dst) or set(src) != set(sizes):
        raise SurgeryError(f"flatten orders {src!r} and {dst!r} do not name the same axes as {sorted(sizes)}")
    positions = np.arange(int(np.prod([sizes[a] for a in src]))).reshape([sizes[a] for a in src])
    return np.transpose(positions, [src.index(a) for a in dst]).reshape(-1)


def flatten_columns(sizes: dict[str, int], src: str, dst: str) -> Transform:
    """Permute the input axis (last) of a canonical dense weight ``(out, in)`` from flatten order ``src`` to ``dst``."""
    if src == dst:
        return IDENTITY
    idx = flatten_order(sizes, src, dst)

    def apply(a: np.ndarray) -> np.ndarray:
        if a.shape[-1] != idx.size:
            raise SurgeryError(f"flatten {src}->{dst}: dense input has {a.shape[-1]} features, the map says {idx.size}")
        return a[..., idx]

    return _wrap(f"flatten rows {src}->{dst}", apply, lambda s: s)


def prelu() -> Transform:
    """Keras PReLU ``alpha`` ``(1, ..., 1, C)`` (shared spatial axes) -> canonical ``weight`` ``(C,)``."""
    return _wrap("(1,..,1,C)->(C,)", lambda a: a.reshape(-1), lambda s: (s[-1],))


def prelu_back(shape: tuple[int, ...]) -> Transform:
    """Canonical PReLU ``weight`` ``(C,)`` -> Keras ``alpha`` of the given shape ``(1, ..., 1, C)``."""
    return reshape(shape, "(C,)->(1,..,1,C)")


def rows(start: int, stop: int) -> Transform:
    """Rows ``start:stop`` of the first axis (one of q/k/v in a fused projection, one bias row of a GRU)."""
    return _wrap(f"rows {start}:{stop}", lambda a: a[start:stop], lambda s: (stop - start, *s[1:]))


def row(index: int) -> Transform:
    """Row ``index`` of the first axis, dropping that axis (Keras GRU bias ``(2, 3H)`` -> ``(3H,)``)."""
    return _wrap(f"row {index}", lambda a: a[index], lambda s: tuple(s[1:]))


def input_channels(channels: int) -> Transform:
    """A conv weight ``(O, I, *k)`` made to read ``channels`` input channels, as timm's ``adapt_input_conv`` does.

    One channel: the sum over the input channels (a grey image is R = G = B). More:
    the weights repeated cyclically, scaled by ``I / channels`` so the activations
    keep their magnitude.
    """
    def apply(a: np.ndarray) -> np.ndarray:
        if channels == 1:
            return a.sum(axis=1, keepdims=True)
        repeats = -(-channels // a.shape[1])
        return np.concatenate([a] * repeats, axis=1)[:, :channels] * (a.shape[1] / channels)

    return _wrap(f"input channels -> {channels} (adapted)", apply, lambda s: (s[0], channels, *s[2:]))
