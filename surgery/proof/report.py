"""The result objects of ``verify``: per-output differences, comparisons, the report.

Results are returned, never logged (as Polygraphy's comparator does): the
report's truth value is the verdict, ``str`` is a table, ``to_dict`` is JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..render import table


@dataclass
class OutputDiff:
    """How one output of the checked side differs from the reference side's."""

    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    mean_abs: float
    rtol: float
    atol: float
    min_atol: float   # the smallest atol that would have passed with this rtol
    passed: bool
    note: str = ""


def compare_arrays(name: str, actual: np.ndarray, reference: np.ndarray, rtol: float, atol: float) -> OutputDiff:
    """Compare like ``numpy.allclose(actual, reference)``; NaN never passes."""
    if actual.shape != reference.shape:
        nan = float("nan")
        return OutputDiff(name, list(actual.shape), nan, nan, nan, rtol, atol, nan, False,
                          f"shape {list(actual.shape)} vs reference {list(reference.shape)}")
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.size == 0:
        return OutputDiff(name, list(a.shape), 0.0, 0.0, 0.0, rtol, atol, 0.0, True)
    err = np.abs(a - b)
    scale = np.abs(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err == 0, 0.0, err / scale)
    passed = bool(np.all(err <= atol + rtol * scale))  # False wherever err is NaN
    note = "NaN in an output" if np.isnan(a).any() or np.isnan(b).any() else ""
    return OutputDiff(name, list(a.shape), _max(err), _max(rel), float(err.mean()), rtol, atol,
                      max(0.0, _max(err - rtol * scale)), passed, note)


def _max(arr: np.ndarray) -> float:
    return float("nan") if np.isnan(arr).any() else float(arr.max())


@dataclass
class LayerDivergence:
    """The first layer whose output diverges (``layer`` None: none found), and why."""

    layer: str | None
    reference_layer: str | None = None
    max_abs: float = float("nan")
    min_atol: float = float("nan")
    reason: str = ""
    compared: int = 0


@dataclass
class Comparison:
    """One side against another: every output, plus what could not be compared."""

    title: str
    actual: str
    reference: str
    outputs: list[OutputDiff] = field(default_factory=list)
    layout: str | None = None          # the NHWC/NCHW adaptation made, if any
    problem: str | None = None         # a failure that is not a number (export failed, output count)
    first_divergent_layer: LayerDivergence | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and all(o.passed for o in self.outputs)

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL"


@dataclass
class VerifyReport:
    """The result of ``verify``; ``bool(report)`` and ``report.ok`` are the verdict."""

    model: str
    against: str | None
    inputs: list[dict]
    rtol: float
    atol: float
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    def __bool__(self) -> bool:
        return self.ok

    @property
    def first_divergent_layer(self) -> LayerDivergence | None:
        """The first divergence any failing comparison found."""
        return next((c.first_divergent_layer for c in self.comparisons
                     if c.first_divergent_layer and c.first_divergent_layer.layer), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; NaN and infinity become the strings "nan" and "inf"."""
        data = _jsonable(asdict(self))
        data["ok"] = self.ok
        for comp, row in zip(self.comparisons, data["comparisons"]):
            row["verdict"] = comp.verdict
        return data

    def __str__(self) -> str:
        lines = [f"verify {self.model}" + (f" against {self.against}" if self.against else "")
                 + f": {'PASS' if self.ok else 'FAIL'}"]
        for spec in self.inputs:
            lines.append(f"  input {spec['name']}: {spec['dtype']}{spec['shape']} ({spec['source']})")
        for i, comp in enumerate(self.comparisons, 1):
            lines += _comparison_lines(i, comp)
        return "\n".join(lines)


_HEADER = ("output", "shape", "max abs", "max rel", "mean abs", "rtol", "atol", "min atol", "pass")


def _comparison_lines(index: int, comp: Comparison) -> list[str]:
    lines = [f"[{index}] {comp.title}: {comp.verdict}"]
    for label, text in (("layout", comp.layout), ("problem", comp.problem)):
        if text:
            lines.append(f"    {label}: {text}")
    rows = [
        (o.name, "x".join(map(str, o.shape)) or "scalar", _num(o.max_abs), _num(o.max_rel), _num(o.mean_abs),
         _num(o.rtol), _num(o.atol), _num(o.min_atol), ("yes" if o.passed else "NO") + (f" ({o.note})" if o.note else ""))
        for o in comp.outputs
    ]
    if rows:
        lines.append(table(_HEADER, rows, indent="    ", rule=False))
    div = comp.first_divergent_layer
    if div is not None:
        if div.layer:
            partner = f" (reference layer {div.reference_layer})" if div.reference_layer != div.layer else ""
            lines.append(f"    first divergent layer: {div.layer}{partner}, max abs {_num(div.max_abs)}, "
                         f"min atol {_num(div.min_atol)}: {div.reason}")
        else:
            lines.append(f"    layers: {div.reason}")
    return lines


def _num(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3g}"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ---- why a layer diverges ------------------------------------------------------------------

def explain(side: Any, ref: Any, name: str, other: str, x: np.ndarray | None, rx: np.ndarray | None,
            rtol: float, atol: float) -> str:
    """Why layer ``name`` (vs ``other``) diverges, from its inputs and its parameters."""
    if x is None or rx is None:
        return (f"{side.label} and {ref.label} agree up to this layer and differ from its output on: "
                "look at how its operations are exported or run")
    if x.shape == rx.shape and compare_arrays(name, x, rx, rtol, atol).passed:
        return "its inputs agree and its output does not: " + _param_hints(side, ref, name, other)
    if x.size == rx.size and np.allclose(np.sort(x, axis=None), np.sort(rx, axis=None), rtol=rtol, atol=atol):
        return ("its input holds the same values in another order: the rows of its weight need the "
                "permutation between the two flatten orders (channels-last H,W,C vs channels-first C,H,W)")
    return "its inputs already differ (an unpaired operation before it differs)"


def _param_hints(side: Any, ref: Any, name: str, other: str) -> str:
    try:
        ours, theirs = side.layer_params(name), ref.layer_params(other)
    except Exception:  # a side without per-layer parameters (ONNX), or a name it lacks
        return "its weights or attributes differ"
    hints = []
    if "eps" in ours and "eps" in theirs and not math.isclose(ours["eps"], theirs["eps"]):
        hints.append(f"eps {ours['eps']:g} vs {theirs['eps']:g}")
    for role, a in ours.items():
        b = theirs.get(role)
        if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
            continue
        if a.shape != b.shape:
            hints.append(f"{role} shape {list(a.shape)} vs {list(b.shape)}")
        elif a.ndim == 2 and a.shape[0] == a.shape[1] and np.allclose(a, b.T) and not np.allclose(a, b):
            hints.append(f"{role} is transposed")
        elif not np.allclose(a, b, rtol=1e-6, atol=0):
            same = np.allclose(np.sort(a, axis=None), np.sort(b, axis=None))
            hints.append(f"{role} holds the same values in another order" if same else
                         f"{role} differs (max abs {float(np.max(np.abs(a - b))):.3g})")
    return "; ".join(hints) or f"weights equal; an attribute differs ({ours.get('kind')} vs {theirs.get('kind')})"
