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
    return Transform(
        f"{native}->{canonical}",
        lambda a: np.ascontiguousarray(np.transpose(a, axes)),
        lambda s: tuple(s[i] for i in axes),
    )


def cast(src: str, dst: str) -> Transform:
    """An element-type conversion, named so the report shows it."""
    from . import dtypes

    target = dtypes.get(dst).numpy
    return Transform(f"cast {src}->{dst}", lambda a: a.astype(target), lambda s: tuple(s))

