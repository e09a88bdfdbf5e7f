"""Plain-text and YAML renderings of plans, inspections and diffs; the one table renderer.

The verify report's own rendering is ``proof/report.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import json
import re

if TYPE_CHECKING:
    from .graph import LayerGraph
    from .pairing import Plan


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, indent: str = "", rule: bool = True) -> str:
    """A left-aligned text table: the one renderer of every table surgery prints.

    Args:
        indent: put before every line (a table inside a report).
        rule: a line of dashes under the headers.
    """
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: (indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths))).rstrip()  # noqa: E731
    ruled = [line(["-" * w for w in widths])] if rule else []
    return "\n".join([line(headers), *ruled, *map(line, rows)])


def _shapes(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> str:
    return " ".join(f"{role or '-'}{list(shape)}" for role, shape in shapes)


def inspect_rows(graph: "LayerGraph", tensors: bool = False) -> list[list[Any]]:
    rows = []
    for layer in graph:
        kinds = {p.dtype for p in layer.params.values()}
        rows.append([layer.name, layer.kind, _shapes((r, p.shape) for r, p in layer.params.items()),
                     ",".join(sorted(kinds)), f"{layer.numel:,}", "yes" if layer.frozen else ""])
        if tensors:
            for role, p in layer.params.items():
                rows.append([f"  {layer.key(role)}", p.key if p.key != layer.key(role) else "", list(p.shape), p.dtype,
                             f"{p.numel:,}", p.layout])
    return rows


def inspect_text(graph: "LayerGraph", tensors: bool = False) -> str:
    body = table(["layer", "kind", "params", "dtype", "count", "frozen"], inspect_rows(graph, tensors))
    total = f"{len(graph)} layers, {graph.numel:,} parameters, {graph.nbytes / 1e6:,.1f} MB ({graph.format})"
    notes = "".join(f"\nnote: {n}" for n in graph.notes)
    return f"{body}\n{total}{notes}"


def inspect_dict(graph: "LayerGraph") -> dict[str, Any]:
    return {
        "path": graph.path, "format": graph.format, "notes": graph.notes,
        "layers": [{"name": l.name, "kind": l.kind, "frozen": l.frozen, "count": l.numel,
                    "attrs": {k: v for k, v in l.attrs.items() if _jsonable(v)},
                    "params": {r: {"key": p.key, "shape": list(p.shape), "dtype": p.dtype, "layout": p.layout}
                               for r, p in l.params.items()}} for l in graph],
        "total": {"layers": len(graph), "parameters": graph.numel, "bytes": graph.nbytes},
    }


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))


def plan_text(plan: "Plan", warnings: list[str] | None = None) -> str:
    rows = []
    for pair in plan.pairs:
        transforms = sorted({t.transform for t in pair.tensors})
        rows.append([pair.source, ", ".join(pair.destinations), pair.rule, "; ".join(transforms)])
    parts = [table(["source", "destination", "why", "transform"], rows) if rows else "no pairs"]
    sections = (("source layers unused", plan.unused), ("source tensors with no destination", plan.dropped),
                ("source layers skipped by the map", plan.skipped),
                ("destination layers left as initialised", plan.uncovered),
                ("destination layers kept as initialised by the map", plan.kept), ("frozen", plan.frozen),
                ("warnings", plan.warnings if warnings is None else warnings),
                ("notes", [f"source: {n}" for n in plan.src.notes] + [f"destination: {n}" for n in plan.dst.notes]))
    for title, items in sections:
        if items:
            parts.append(f"{title} ({len(items)}):\n" + "\n".join(f"  {i}" for i in items))
    n = sum(len(p.tensors) for p in plan.pairs)
    parts.append(f"{len(plan.pairs)} layer pairs, {n} tensors copied")
    return "\n".join(parts)


def plan_yaml(plan: "Plan") -> str:
    """A proposed map.yaml: every pair explicit, each with a comment saying how it was found."""
    lines = ["version: 1", f"match: {plan.mapping.match}"]
    if plan.mapping.rename:
        lines.append("rename:")
        lines += [f"  {_scalar(p.pattern)}: {_scalar(r)}" for p, r, _ in plan.mapping.rename]
    lines.append("layers:")
    for pair in plan.pairs:
        dst = pair.destinations[0] if len(pair.destinations) == 1 else pair.destinations
        lines.append(f"  {_scalar(pair.source)}: {_scalar(dst)}  # {pair.rule}")
    for title, items in (("skip", plan.skipped + plan.unused), ("keep", plan.kept + plan.uncovered),
                         ("freeze", plan.frozen)):
        if items:
            lines.append(f"{title}:")
            lines += [f"  - {_scalar(i)}" for i in items]
    if plan.unused or plan.uncovered:
        lines.append("# could not pair: " + ", ".join(plan.unused + plan.uncovered))
    lines.append(f"on_mismatch: {plan.mapping.on_mismatch}")
    return "\n".join(lines) + "\n"


_PLAIN = re.compile(r"[A-Za-z_][\w.\-]*")
_WORDS = ("true", "false", "null", "yes", "no", "on", "off")  # plain words YAML would not read as strings


def _scalar(value: Any) -> str:
    """A YAML flow scalar or list: layer names as they are, anything else quoted (JSON is valid YAML)."""
    if isinstance(value, str) and _PLAIN.fullmatch(value) and value.lower() not in _WORDS:
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return json.dumps(value)
