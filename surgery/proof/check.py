"""The pre-deployment gate: is MODEL sound, and consistent with the BASE it came from?

Three checks, streamed one tensor pair at a time so a checkpoint of any size
fits in memory: every floating tensor is finite; layers that were frozen are
bit-equal to BASE; every tensor keeps BASE's shape and dtype (none added, none
missing).
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .. import dtypes, formats
from ..errors import fail
from ..render import table
from ..graph import BOOKKEEPING, LayerGraph, Param
from ..kinds import split_key



@dataclass
class Problem:
    """One failing tensor: which check failed and what was found."""

    tensor: str
    check: str      # "finite" | "frozen" | "shape" | "dtype" | "missing" | "extra" | "glob"
    detail: str


@dataclass
class CheckReport:
    """The result of ``check``; ``bool(report)`` and ``report.ok`` are the verdict."""

    model: str
    base: str
    frozen: list[str]          # the globs used
    frozen_from: str           # where they came from
    tensors: int = 0           # tensors of MODEL checked
    frozen_tensors: int = 0    # of those, compared bit for bit with BASE
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def __str__(self) -> str:
        lines = [
            f"check {self.model} against {self.base}: {'PASS' if self.ok else 'FAIL'}",
            f"  {self.tensors} tensors checked; {self.frozen_tensors} frozen, compared bit for bit "
            f"(frozen: {', '.join(self.frozen) or 'none'}; {self.frozen_from})",
        ]
        if self.problems:
            lines.append(table(("tensor", "check", "problem"), [(p.tensor, p.check, p.detail) for p in self.problems],
                               indent="    ", rule=False))
        return "\n".join(lines)


def check(model: str | os.PathLike, *, base: str | os.PathLike, frozen: Sequence[str] | None = None) -> CheckReport:
    """Check MODEL before it ships: finite values, frozen layers unchanged, same structure as BASE.

    Args:
        model: the checkpoint to ship (any format ``surgery`` reads).
        base: the checkpoint it started from (e.g. the transplant's output).
        frozen: globs of layer (or tensor) names that must be bit-equal to BASE;
            default: the ``frozen`` list of ``MODEL.surgery.json`` when present.

    Returns:
        A CheckReport; ``bool(report)`` is the verdict.

    Raises:
        SurgeryError: a file cannot be read.

    Example:
        >>> assert check("finetuned.safetensors", base="start.safetensors", frozen=["features.*"])
    """
    model, base = os.fspath(model), os.fspath(base)
    globs, origin = _frozen_globs(model, frozen)
    graph, base_graph = formats.read(model), formats.read(base)
    report = CheckReport(model, base, list(globs), origin)
    frozen_names = _frozen_tensors(graph, globs, report)
    base_params = base_graph.state()
    for name, param in graph.tensors():
        report.tensors += 1
        arr = param.read()
        _check_finite(name, arr, report)
        other = base_params.pop(name, None)
        if other is None:
            if split_key(name)[1] not in BOOKKEEPING:  # a step counter some formats cannot carry (ONNX)
                report.problems.append(Problem(name, "extra", f"{_sig(param)} is not in BASE"))
        elif _same_signature(name, param, other, report) and name in frozen_names:
            report.frozen_tensors += 1
            _check_bit_equal(name, arr, other, report)
    for name, param in base_params.items():
        if split_key(name)[1] not in BOOKKEEPING:
            report.problems.append(Problem(name, "missing", f"{_sig(param)} of BASE is not in MODEL"))
    return report


def _frozen_globs(model: str, frozen: Sequence[str] | None) -> tuple[list[str], str]:
    if frozen:
        return list(frozen), "given"
    sidecar = f"{model}.surgery.json"
    if not os.path.isfile(sidecar):
        return [], "none given and no .surgery.json beside MODEL"
    try:
        with open(sidecar, encoding="utf-8") as f:
            listed = json.load(f).get("frozen", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise fail(sidecar, f"not a readable surgery sidecar ({exc})") from None
    if not isinstance(listed, list) or not all(isinstance(g, str) for g in listed):
        raise fail(sidecar, f"'frozen' must be a list of layer names or globs, found {listed!r}")
    return listed, f"from {os.path.basename(sidecar)}"


def _frozen_tensors(graph: LayerGraph, globs: Iterable[str], report: CheckReport) -> set[str]:
    """Full names of the tensors the globs freeze; a glob matching nothing is itself a failure."""
    names: set[str] = set()
    for glob in globs:
        hit = [layer for layer in graph if fnmatch.fnmatchcase(layer.name, glob)]
        found = {layer.key(role) for layer in hit for role in layer.params}
        found |= {name for name, _ in graph.tensors() if fnmatch.fnmatchcase(name, glob)}
        if not found:
            report.problems.append(Problem(glob, "glob", "frozen glob matches no layer or tensor of MODEL"))
        names |= found
    return names


def _sig(param: Param) -> str:
    return f"{param.dtype}{list(param.shape)}"


def _same_signature(name: str, param: Param, other: Param, report: CheckReport) -> bool:
    same = True
    if param.shape != other.shape:
        report.problems.append(Problem(name, "shape", f"{list(param.shape)}, BASE has {list(other.shape)}"))
        same = False
    if param.dtype != other.dtype:
        report.problems.append(Problem(name, "dtype", f"{param.dtype}, BASE has {other.dtype}"))
        same = False
    return same


def _check_finite(name: str, arr: np.ndarray, report: CheckReport) -> None:
    nan, inf = dtypes.nonfinite(arr)
    if nan or inf:
        report.problems.append(Problem(name, "finite", f"{nan} NaN, {inf} Inf of {arr.size} values"))


def _check_bit_equal(name: str, a: np.ndarray, other: Param, report: CheckReport) -> None:
    b = other.read()
    if a.tobytes() == b.tobytes():
        return
    if a.dtype.kind in "fc":
        changed = int(np.count_nonzero(a != b))
        delta = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if changed else 0.0
        detail = f"frozen, but {changed} of {a.size} values changed (max abs diff {delta:.3g})"
    else:
        detail = f"frozen, but {int(np.count_nonzero(a != b))} of {a.size} values changed"
    report.problems.append(Problem(name, "frozen", detail))
