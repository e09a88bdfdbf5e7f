"""Parsing each section of ``map.yaml`` (rename, layers, merge, tensors, globs, flatten, labels) into checked values.

``mapping.load_map`` hands each section here with the lines YAML found it on; every
error names the map file and the line. Names are checked against the graphs later
(``Mapping.check_names``), when the graphs are known.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mapping import Mapping

FLATTEN_KEYS = ("shape", "source_order", "dest_order")


@dataclass
class MapValue:
    """A value from the map with the line it came from (0 when built in Python)."""

    value: Any
    line: int = 0


def item_line(lines: dict, section: str, key: Any, index: int | None = None) -> int:
    items = lines.get(f"{section}.")
    if isinstance(items, dict):
        return items.get(key, lines.get(section, 0))
    if isinstance(items, list) and index is not None and index < len(items):
        return items[index]
    return lines.get(section, 0)


def parse_rename(m: Mapping, rules: Any, lines: dict) -> list[tuple[re.Pattern, str, int]]:
    if not isinstance(rules, dict):
        raise m.error(lines.get("rename", 0), "rename: must map regexes to replacements")
    out = []
    for pattern, repl in rules.items():
        line = item_line(lines, "rename", pattern)
        if not isinstance(repl, str):
            raise m.error(line, f"rename: replacement for {pattern!r} must be a string, got {repl!r}")
        try:
            compiled = re.compile(str(pattern))
        except re.error as e:
            raise m.error(line, f"rename: bad regex {pattern!r}: {e}") from None
        refs = [int(g) for g in re.findall(r"\\(\d+)", repl)]
        if refs and max(refs) > compiled.groups:
            raise m.error(line, f"rename: replacement {repl!r} refers to group {max(refs)} but {pattern!r} has {compiled.groups}")
        out.append((compiled, repl, line))
    return out


PATTERN_CHARS = set("()[]\\^$|*+?{}")


def is_pattern(name: str) -> bool:
    """A ``layers``/``merge`` key is a regex when it holds regex syntax no layer name has (dots are allowed in both)."""
    return bool(PATTERN_CHARS & set(name))


def full_match(pattern: str, name: str, m: Mapping, line: int) -> re.Match | None:
    try:
        return re.fullmatch(pattern, name)
    except re.error as e:
        raise m.error(line, f"bad regex {pattern!r}: {e}") from None


def parse_layers(m: Mapping, pairs: Any, lines: dict) -> dict[str, MapValue]:
    if not isinstance(pairs, dict):
        raise m.error(lines.get("layers", 0), "layers: must map source layers to destination layers")
    out: dict[str, MapValue] = {}
    taken: dict[str, str] = {}
    for src, dst in pairs.items():
        line = item_line(lines, "layers", src)
        dsts = dst if isinstance(dst, list) else [dst]
        if not dsts or not all(isinstance(d, str) and d for d in dsts):
            raise m.error(line, f"layers: {src!r} must name a destination layer (or a list of them)")
        if is_pattern(str(src)):
            check_template(m, "layers", str(src), dsts, line)
        for d in dsts:
            if d in taken:
                raise m.error(line, f"layers: destination {d!r} is named twice (also for {taken[d]!r})")
            taken[d] = str(src)
        out[str(src)] = MapValue(dsts, line)
    return out


def check_template(m: Mapping, section: str, pattern: str, templates: list[str], line: int) -> None:
    """A pattern compiles and its templates refer only to groups it has."""
    try:
        groups = re.compile(pattern).groups
    except re.error as e:
        raise m.error(line, f"{section}: bad regex {pattern!r}: {e}") from None
    for template in templates:
        refs = [int(g) for g in re.findall(r"\\(\d+)", template)]
        if refs and max(refs) > groups:
            raise m.error(line, f"{section}: {template!r} refers to group {max(refs)} but {pattern!r} has {groups}")


def parse_merge(m: Mapping, entries: Any, lines: dict) -> dict[str, MapValue]:
    """``destination: [source, source, ...]``: several source layers fill one destination layer together."""
    if not isinstance(entries, dict):
        raise m.error(lines.get("merge", 0), "merge: must map a destination layer to a list of source layers")
    named = {d: s for s, e in m.layers.items() for d in e.value}
    out: dict[str, MapValue] = {}
    used: dict[str, str] = {}
    for dst, parts in entries.items():
        line = item_line(lines, "merge", dst)
        if not isinstance(parts, list) or len(parts) < 2 or not all(isinstance(p, str) and p for p in parts):
            raise m.error(line, f"merge: {dst!r} needs a list of two or more source layers")
        if dst in named:
            raise m.error(line, f"merge: destination {dst!r} is also named under layers (for {named[dst]!r})")
        if is_pattern(str(dst)):
            check_template(m, "merge", str(dst), list(parts), line)
            out[str(dst)] = MapValue(list(parts), line)
            continue
        for part in parts:
            if part in m.layers or part in used:
                raise m.error(line, f"merge: source {part!r} is already paired ({'layers' if part in m.layers else used[part]})")
            used[part] = str(dst)
        out[str(dst)] = MapValue(list(parts), line)
    return out


def parse_tensors(m: Mapping, pairs: Any, lines: dict) -> dict[str, MapValue]:
    """``source tensor: destination tensor`` (full names), for what layer pairs cannot say."""
    if not isinstance(pairs, dict):
        raise m.error(lines.get("tensors", 0), "tensors: must map source tensors to destination tensors")
    out: dict[str, MapValue] = {}
    taken: dict[str, str] = {}
    for src, dst in pairs.items():
        line = item_line(lines, "tensors", src)
        if not isinstance(dst, str) or not dst:
            raise m.error(line, f"tensors: {src!r} must name one destination tensor")
        if dst in taken:
            raise m.error(line, f"tensors: destination {dst!r} is named twice (also for {taken[dst]!r})")
        taken[dst] = str(src)
        out[str(src)] = MapValue(dst, line)
    return out


def parse_globs(m: Mapping, section: str, values: Any, lines: dict) -> list[MapValue]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise m.error(lines.get(section, 0), f"{section}: must be a list of glob patterns")
    return [MapValue(v, item_line(lines, section, v, i)) for i, v in enumerate(values)]


def parse_flatten(m: Mapping, entries: Any, lines: dict) -> dict[str, MapValue]:
    if not isinstance(entries, dict):
        raise m.error(lines.get("flatten", 0), "flatten: must map source dense layers to {shape, source_order, dest_order}")
    out = {}
    for name, spec in entries.items():
        line = item_line(lines, "flatten", name)
        if not isinstance(spec, dict) or set(spec) - set(FLATTEN_KEYS):
            raise m.error(line, f"flatten: {name!r} takes only {', '.join(FLATTEN_KEYS)}")
        shape = spec.get("shape")
        if shape is not None and (not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape)):
            raise m.error(line, f"flatten: {name!r} shape must be a list of positive integers, got {shape!r}")
        for key in ("source_order", "dest_order"):
            order = spec.get(key)
            if order is not None and (not isinstance(order, str) or sorted(order) != sorted(set(order))):
                raise m.error(line, f"flatten: {name!r} {key} must be axis letters like HWC or CHW, got {order!r}")
        out[str(name)] = MapValue(dict(spec), line)
    return out


def parse_labels(m: Mapping, spec: Any, lines: dict) -> MapValue:
    """``labels: {layer: fc, source: classes_src.txt, dest: classes_dst.txt}``: one class name a line.

    The files are read now (relative to the map's folder), so a missing one is a map error.
    """
    line = lines.get("labels", 0)
    if not isinstance(spec, dict) or set(spec) != {"layer", "source", "dest"}:
        raise m.error(line, "labels: needs exactly layer (the destination head), source and dest (class list files)")
    folder = os.path.dirname(os.path.abspath(m.source)) if m.source != "<map>" else os.getcwd()
    names = {}
    for side in ("source", "dest"):
        path = os.path.join(folder, str(spec[side]))
        try:
            with open(path, encoding="utf-8") as f:
                names[side] = [c.strip() for c in f.read().splitlines() if c.strip()]
        except OSError as e:
            raise m.error(line, f"labels: cannot read the {side} class list {path} ({e.strerror})") from None
        if len(set(names[side])) != len(names[side]):
            raise m.error(line, f"labels: the {side} class list {path} names a class twice")
    return MapValue({"layer": str(spec["layer"]), **names}, line)
