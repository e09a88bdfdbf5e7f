"""Plain-text and YAML renderings of plans, inspections and diffs; the one table renderer.

The verify report's own rendering is ``proof/report.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import json
import re

if TYPE_CHECKING:
    from .estimate import WritePlan
    from .graph import LayerGraph
    from .plans import Plan


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


def size(nbytes: int) -> str:
    """``1234567`` -> ``1.2 MB``: decimal units, as the sizes users pass (``--max-shard-size 5GB``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} B"


def write_plan_text(plan: "WritePlan") -> str:
    """What a dry run would write: a row per file, the bytes read and written, the predicted peak memory."""
    rows = [[f.path, f"{'' if f.exact else '~'}{f.nbytes:,}", f.tensors or ""] for f in plan.files]
    about = "" if all(f.exact for f in plan.files) else "about "
    name, largest = plan.largest
    largest_text = f"; the largest read is {name}, {size(largest)}" if largest else ""
    return "\n".join([
        f"dry run: would write {plan.output} ({plan.format}); no tensor read, nothing written",
        table(["file", "bytes", "tensors"], rows, indent="  "),
        f"reads {size(plan.read_bytes)} of tensors, writes {about}{size(plan.write_bytes)} in {len(plan.files)} file{'s' * (len(plan.files) > 1)}",
        f"peak memory: about {size(plan.peak_bytes)} of tensor data at once ({'; '.join(plan.peak_terms)}"
        f"{largest_text}), plus the interpreter and libraries",
        *_shares_text(plan),
    ])


def _shares_text(plan: "WritePlan") -> list[str]:
    if not plan.processes:
        return []
    rows = [[i, p.parts, size(p.read_bytes), size(p.write_bytes), size(p.peak_bytes)] for i, p in enumerate(plan.processes)]
    total = sum(p.peak_bytes for p in plan.processes)
    unit, last = {"dcp": ("data file", "the .metadata"), "safetensors": ("run of the file's tensors", "the header")
                  }.get(plan.format, ("shard", "the index"))
    return [f"split across {len(plan.processes)} processes (each {unit} written by one; {last} by process 0, "
            "which commits last):",
            table(["process", "parts", "reads", "writes", "peak memory"], rows, indent="  "),
            f"peak memory of all processes together: about {size(total)} of tensor data"]


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))


def plan_text(plan: "Plan", warnings: list[str] | None = None) -> str:
    """The report: the pairs, then three levels: needs a decision, check this, notes."""
    rows = []
    for pair in plan.pairs:
        transforms = sorted({t.transform for t in pair.tensors})
        rows.append([pair.source, ", ".join(pair.destinations), pair.rule, "; ".join(transforms)])
    parts = [table(["source", "destination", "why", "transform"], rows) if rows else "no pairs"]
    decided = "accepted with --allow-partial" if plan.allow_partial else "needs a decision"
    sections = (
        (decided, plan.decisions()),
        ("settled by running both networks (--probe)", [e.line() for e in plan.probed]),
        ("check this", group_warnings(plan.warnings if warnings is None else warnings)),
        ("source layers and tensors skipped by the map", plan.skipped),
        ("destination layers and tensors kept as initialised by the map", plan.kept), ("frozen", plan.frozen),
        ("notes", [f"source: {n}" for n in plan.src.notes] + [f"destination: {n}" for n in plan.dst.notes]),
    )
    for title, items in sections:
        if items:
            parts.append(f"{title} ({len(items)}):\n" + "\n".join(f"  {i}" for i in items))
    n = sum(len(p.tensors) for p in plan.pairs)
    parts.append(f"{len(plan.pairs)} layer pairs, {n} tensors copied")
    return "\n".join(parts)


def group_warnings(warnings: list[str]) -> list[str]:
    """Warnings that say the same thing of several layers, as one line naming them all.

    A warning reads ``<where>: <what>``; the same ``<what>`` seven times trains
    users to skip the list, so it is said once, after every ``<where>``.
    """
    by_text: dict[str, list[str]] = {}
    for warning in warnings:
        where, sep, what = warning.partition(": ")
        key = what if sep else warning
        by_text.setdefault(key, []).append(where if sep else "")
    out = []
    for what, wheres in by_text.items():
        named = [w for w in wheres if w]
        if len(named) <= 1:
            out.append(f"{named[0]}: {what}" if named else what)
        else:
            shown = ", ".join(named[:6]) + (f" (+{len(named) - 6} more)" if len(named) > 6 else "")
            out.append(f"{shown}: {what}")
    return out


def accept_yaml(plan: "Plan") -> str:
    """The map lines that accept a plan's open decisions as planned (``StrictError.accept_lines``)."""
    lines = []
    flatten = {k: v for d in plan.assumed for k, v in d.flatten.items()}
    layers = {k: v for d in plan.ambiguous for k, v in d.layers.items()}
    for title, items in (("skip", plan.unused + plan.dropped), ("keep", plan.uncovered + plan.unfilled)):
        if items:
            lines.append(f"{title}: [{', '.join(_scalar(i) for i in items)}]")
    if plan.foldable:
        lines.append(f"# exact instead of skipping, if each BatchNorm takes its layer's output directly (no "
                     f"activation between): fold: [{', '.join(_scalar(i) for i in plan.foldable)}]")
    if layers:
        lines.append("layers:")
        lines += [f"  {_scalar(s)}: {_scalar(d)}" for s, d in layers.items()]
    if flatten:
        lines.append("flatten:")
        lines += [f"  {_scalar(s)}: {{shape: {list(v['shape'])}, source_order: {v['source_order']}, "
                  f"dest_order: {v['dest_order']}}}" for s, v in flatten.items()]
    unsettled = [d.message for d in plan.assumed if not d.flatten]
    lines += [f"# decide yourself: {m}" for m in unsettled]
    return "\n".join(lines) + ("\n" if lines else "")


def plan_yaml(plan: "Plan") -> str:
    """A proposed map.yaml: every pair explicit, each with a comment saying how it was found."""
    lines = ["version: 1", f"match: {plan.mapping.match}"]
    if plan.mapping.rename:
        lines.append("rename:")
        lines += [f"  {_scalar(p.pattern)}: {_scalar(r)}" for p, r, _ in plan.mapping.rename]
    plain = [p for p in plan.pairs if p.source not in plan.merged]
    merged = [p for p in plan.pairs if p.source in plan.merged]
    lines.append("layers:" if plain else "layers: {}")
    for pair in plain:
        dst = pair.destinations[0] if len(pair.destinations) == 1 else pair.destinations
        lines.append(f"  {_scalar(pair.source)}: {_scalar(dst)}  # {pair.rule}")
    if merged:
        lines.append("merge:")
        lines += [f"  {_scalar(p.destinations[0])}: {_scalar(p.parts)}  # {p.rule}" for p in merged]
    for title, items in (("skip", plan.skipped), ("keep", plan.kept), ("freeze", plan.frozen)):
        if items:
            lines.append(f"{title}:")
            lines += [f"  - {_scalar(i)}" for i in items]
    # What no rule paired stays a decision: proposed in comments, so a transplant with this map
    # still refuses until someone pairs them or uncomments the lines on purpose.
    for title, items, why in (("skip", plan.unused, "source layers no rule paired"),
                              ("keep", plan.uncovered, "destination layers no rule filled")):
        if items:
            lines.append(f"# {title}:  # {why}: pair them under `layers`, or uncomment to accept")
            lines += [f"#   - {_scalar(i)}" for i in items]
    flatten = {k: v for d in plan.assumed for k, v in d.flatten.items()}
    if flatten:
        lines.append("flatten:  # assumed from each side's framework, not recorded in the files: check")
        lines += [f"  {_scalar(s)}: {{shape: {list(v['shape'])}, source_order: {v['source_order']}, "
                  f"dest_order: {v['dest_order']}}}" for s, v in flatten.items()]
    lines += [f"# decide yourself: {d.message}" for d in plan.assumed if not d.flatten]
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
