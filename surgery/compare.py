"""Tensor-by-tensor comparison of two checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .graph import LayerGraph, Param
from .render import table


@dataclass
class TensorDiff:
    name: str
    status: str                    # equal | changed | only_a | only_b | shape | dtype
    max_abs: float | None = None
    a: str = ""                    # dtype[shape] in A
    b: str = ""                    # dtype[shape] in B


@dataclass
class DiffReport:
    """The comparison; ``bool(report)`` is True when A and B hold the same tensors, bit for bit."""

    a: str | None
    b: str | None
    entries: list[TensorDiff] = field(default_factory=list)

    def __bool__(self) -> bool:
        return all(e.status == "equal" for e in self.entries)

    @property
    def same(self) -> bool:
        return bool(self)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.status] = out.get(e.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "same": self.same, "counts": self.counts(),
                "tensors": [vars(e) for e in self.entries]}

    def __str__(self) -> str:
        rows = [[e.name, e.status, "" if e.max_abs is None else f"{e.max_abs:.3g}", e.a, e.b]
                for e in self.entries if e.status != "equal"]
        summary = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        head = table(["tensor", "status", "max abs diff", "A", "B"], rows) + "\n" if rows else ""
        return f"{head}{summary or 'no tensors'}: {'same' if self.same else 'differ'}"


def _desc(p: Param) -> str:
    return f"{p.dtype}{list(p.shape)}"


def compare(name: str, pa: Param, pb: Param) -> TensorDiff:
    """Compare one tensor present on both sides, reading one pair of arrays."""
    if pa.shape != pb.shape:
        return TensorDiff(name, "shape", None, _desc(pa), _desc(pb))
    if pa.dtype != pb.dtype:
        return TensorDiff(name, "dtype", None, _desc(pa), _desc(pb))
    xa, xb = pa.read(), pb.read()
    if np.ascontiguousarray(xa).tobytes() == np.ascontiguousarray(xb).tobytes():
        return TensorDiff(name, "equal", 0.0, _desc(pa), _desc(pb))
    fa, fb = xa.astype(np.float64), xb.astype(np.float64)
    with np.errstate(invalid="ignore"):
        delta = np.abs(fa - fb)
    return TensorDiff(name, "changed", float(np.nanmax(delta)) if delta.size else 0.0, _desc(pa), _desc(pb))


def diff(a: LayerGraph, b: LayerGraph) -> DiffReport:
    """Compare two graphs by canonical tensor name, streaming one tensor pair at a time."""
    ta, tb = a.state(), b.state()
    report = DiffReport(a.path, b.path)
    for name, pa in ta.items():
        pb = tb.get(name)
        report.entries.append(compare(name, pa, pb) if pb is not None else TensorDiff(name, "only_a", None, _desc(pa), ""))
    report.entries += [TensorDiff(n, "only_b", None, "", _desc(p)) for n, p in tb.items() if n not in ta]
    return report
