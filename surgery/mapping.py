"""``map.yaml``: which source layer feeds which destination layer.

The map is validated before any tensor is read, in two steps: ``load_map``
checks its own structure (unknown keys, bad regexes, a destination named
twice); ``Mapping.check_names`` checks every name and glob against the two
graphs' headers. Every error names the map file and the line.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from .errors import MapError
from .map_sections import (MapValue, full_match, is_pattern, parse_flatten, parse_globs, parse_labels,
                           parse_layers, parse_merge, parse_rename, parse_tensors)

KEYS = ("version", "match", "rename", "layers", "merge", "tensors", "skip", "keep", "freeze", "fold", "on_mismatch",
        "flatten", "adapt_input", "labels")
MATCH = ("name", "shape", "auto", "none")
ON_MISMATCH = ("error", "skip", "slice")
UP_TO = ".."   # `freeze: ["..layer3"]`: every destination layer up to and including layer3, in graph order


@dataclass
class Mapping:
    """A validated map. Build with ``load_map``."""

    source: str = "<map>"
    match: str = "name"
    rename: list[tuple[re.Pattern, str, int]] = field(default_factory=list)
    layers: dict[str, MapValue] = field(default_factory=dict)      # source layer -> MapValue([destination layers])
    merge: dict[str, MapValue] = field(default_factory=dict)       # destination layer -> MapValue([source layers])
    tensors: dict[str, MapValue] = field(default_factory=dict)     # source tensor -> MapValue(destination tensor)
    skip: list[MapValue] = field(default_factory=list)
    keep: list[MapValue] = field(default_factory=list)
    freeze: list[MapValue] = field(default_factory=list)
    fold: list[MapValue] = field(default_factory=list)    # source biases folded into the BatchNorm after their layer
    adapt_input: list[MapValue] = field(default_factory=list)  # destination convs whose input channels differ (globs)
    labels: MapValue | None = None   # {layer, source, dest}: class rows copied by label, read from the two lists
    on_mismatch: str = "error"
    flatten: dict[str, MapValue] = field(default_factory=dict)     # source layer -> MapValue({shape, source_order, dest_order})

    def where(self, line: int) -> str:
        return f"{self.source}:{line}" if line else self.source

    def error(self, line: int, problem: str) -> MapError:
        return MapError(f"{self.where(line)}: {problem}")

    def renamed(self, name: str) -> tuple[str, list[str]]:
        """A source layer name after the ``rename`` rules, and the patterns that changed it."""
        used = []
        for pattern, repl, _ in self.rename:
            new = pattern.sub(repl, name)
            if new != name:
                used.append(pattern.pattern)
                name = new
        return name, used

    def expand_patterns(self, src: list[str], dst: list[str]) -> None:
        """Turn the pattern entries of ``layers`` and ``merge`` into one plain entry per layer they match.

        ``layers``: a regex over source layer names, its destinations templates with back-references
        (``'encoder\\.layer\\.(\\d+)\\.attention\\.self\\.query': 'blocks.\\1.attn.q'``).
        ``merge``: a regex over destination layer names, its parts source templates
        (``'blocks\\.(\\d+)\\.attn': ['layer.\\1.q', 'layer.\\1.k', 'layer.\\1.v', 'layer.\\1.o']``).
        """
        layers = self._expanded("layers", self.layers, src, "source")
        merge = self._expanded("merge", self.merge, dst, "destination")
        taken: dict[str, str] = {}
        for name, entry in layers.items():
            for d in entry.value:
                if d in taken or d in merge:
                    raise self.error(entry.line, f"layers: destination {d!r} is named twice "
                                                 f"(also for {taken.get(d) or 'merge'!r})")
                taken[d] = name
        self.layers, self.merge = layers, merge

    def _expanded(self, section: str, entries: dict[str, MapValue], names: list[str], side: str) -> dict[str, MapValue]:
        """One section with each pattern key replaced by the names it matches, their templates filled in."""
        out: dict[str, MapValue] = {}
        for key, entry in entries.items():
            if not is_pattern(key):
                out[key] = entry
                continue
            found = [(name, match) for name in names if (match := full_match(key, name, self, entry.line))]
            if not found:
                raise self.error(entry.line, f"{section}: pattern {key!r} matches no {side} layer")
            for name, match in found:
                if name in out:
                    raise self.error(entry.line, f"{section}: {side} layer {name!r} is paired twice (pattern {key!r})")
                out[name] = MapValue([match.expand(t) for t in entry.value], entry.line)
        return out

    def check_names(self, src_names: Iterable[str], dst_names: Iterable[str], src_keys: Iterable[str] = (),
                    dst_keys: Iterable[str] = ()) -> None:
        """Every explicit name and every glob must match a layer (``skip``/``keep``: or a tensor) of the right graph."""
        src, dst = list(src_names), list(dst_names)
        self.expand_patterns(src, dst)
        tensors = {"skip": src + list(src_keys), "keep": dst + list(dst_keys), "freeze": dst, "fold": list(src_keys),
                   "adapt_input": dst}
        src_set, dst_set = set(src), set(dst)
        for name, entry in self.layers.items():
            if name not in src_set:
                raise self.error(entry.line, f"layers: source layer {name!r} does not exist{_close(name, src)}")
            for d in entry.value:
                if d not in dst_set:
                    raise self.error(entry.line, f"layers: destination layer {d!r} does not exist{_close(d, dst)}")
        for name, entry in self.merge.items():
            if name not in dst_set:
                raise self.error(entry.line, f"merge: destination layer {name!r} does not exist{_close(name, dst)}")
            for part in entry.value:
                if part not in src_set:
                    raise self.error(entry.line, f"merge: source layer {part!r} does not exist{_close(part, src)}")
        for section, names, side in (("skip", src, "source"), ("keep", dst, "destination"), ("freeze", dst, "destination"),
                                     ("fold", src, "source tensor"), ("adapt_input", dst, "destination")):
            for entry in getattr(self, section):
                if section == "freeze" and entry.value.startswith(UP_TO):
                    if entry.value[len(UP_TO):] not in dst:
                        raise self.error(entry.line, f"freeze: {entry.value!r}: no destination layer "
                                                     f"{entry.value[len(UP_TO):]!r}{_close(entry.value[len(UP_TO):], dst)}")
                    continue
                if not fnmatch.filter(tensors[section], entry.value):
                    raise self.error(entry.line, f"{section}: {entry.value!r} matches no {side} layer")
        src_tensors, dst_tensors = set(src_keys), set(dst_keys)
        for name, entry in self.tensors.items():
            if name not in src_tensors:
                raise self.error(entry.line, f"tensors: source tensor {name!r} does not exist{_close(name, sorted(src_tensors))}")
            if entry.value not in dst_tensors:
                raise self.error(entry.line, f"tensors: destination tensor {entry.value!r} does not exist"
                                             f"{_close(entry.value, sorted(dst_tensors))}")
        if self.labels is not None and self.labels.value["layer"] not in dst_set:
            layer = self.labels.value["layer"]
            raise self.error(self.labels.line, f"labels: destination layer {layer!r} does not exist{_close(layer, dst)}")
        for name, entry in self.flatten.items():
            if name not in src_set:
                raise self.error(entry.line, f"flatten: source layer {name!r} does not exist{_close(name, src)}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": 1, "match": self.match}
        if self.rename:
            out["rename"] = {p.pattern: r for p, r, _ in self.rename}
        if self.layers:
            out["layers"] = {s: (e.value[0] if len(e.value) == 1 else e.value) for s, e in self.layers.items()}
        if self.merge:
            out["merge"] = {d: e.value for d, e in self.merge.items()}
        if self.tensors:
            out["tensors"] = {s: e.value for s, e in self.tensors.items()}
        for section in ("skip", "keep", "freeze", "fold", "adapt_input"):
            if getattr(self, section):
                out[section] = [e.value for e in getattr(self, section)]
        out["on_mismatch"] = self.on_mismatch
        if self.flatten:
            out["flatten"] = {s: e.value for s, e in self.flatten.items()}
        return out


def _close(name: str, names: list[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, names, n=3)
    return f" (did you mean {', '.join(map(repr, near))}?)" if near else ""


def load_map(spec: "str | os.PathLike | dict | Mapping | None") -> Mapping:
    """A validated Mapping from a ``map.yaml`` path, a dict, an existing Mapping, or None (defaults).

    Raises:
        MapError: naming the file and line of the first problem.

    Example:
        >>> load_map({"rename": {"^module\\\\.": ""}, "freeze": ["features.*"]}).match
        'name'
    """
    if spec is None:
        return Mapping()
    if isinstance(spec, Mapping):
        return spec
    if isinstance(spec, dict):
        return _build(spec, {}, "<map>")
    path = os.fspath(spec)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except OSError as e:
        raise MapError(f"{path}: cannot read the map ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise MapError(f"{path}{line}: not valid YAML ({' '.join(str(problem).split())})") from None
    if root is None:
        return Mapping(source=path)
    _refuse_tags(root, path)
    if not isinstance(root, yaml.MappingNode):
        raise MapError(f"{path}:{root.start_mark.line + 1}: the map must be a mapping of keys (version, match, ...)")
    data, lines = _plain(root, path)
    return _build(data, lines, path)


_PLAIN_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
               "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:seq",
               "tag:yaml.org,2002:map")


def _refuse_tags(root: yaml.Node, path: str) -> None:
    """Refuse any tag beyond plain data (``!!python/object`` ...): a map names layers, never objects."""
    seen: set[int] = set()  # aliases share nodes: visit each once, so a billion-laughs map stays cheap
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag not in _PLAIN_TAGS:
            raise MapError(f"{path}:{node.start_mark.line + 1}: the tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} "
                           "is not allowed; a map holds only strings, numbers, lists and mappings")
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            todo.extend(n for pair in node.value for n in pair)


def _plain(node: yaml.MappingNode, path: str) -> tuple[dict, dict]:
    """The top level as plain data, each section's items with their lines; duplicates refused."""
    data: dict[str, Any] = {}
    lines: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key in data:
            raise MapError(f"{path}:{key_node.start_mark.line + 1}: key {key!r} appears twice")
        data[key] = yaml.safe_load(yaml.serialize(value_node))
        lines[key] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            seen = {}
            for k, _ in value_node.value:
                if k.value in seen:
                    raise MapError(f"{path}:{k.start_mark.line + 1}: {key}: {k.value!r} appears twice (first on line {seen[k.value]})")
                seen[k.value] = k.start_mark.line + 1
            lines[f"{key}."] = seen
        elif isinstance(value_node, yaml.SequenceNode):
            lines[f"{key}."] = [item.start_mark.line + 1 for item in value_node.value]
    return data, lines


def _build(data: dict, lines: dict, source: str) -> Mapping:
    m = Mapping(source=source)
    for key in data:
        if key not in KEYS:
            raise m.error(lines.get(key, 0), f"unknown key {key!r}; known keys: {', '.join(KEYS)}")
    version = data.get("version", 1)
    if version != 1:
        raise m.error(lines.get("version", 0), f"version {version!r} is not supported (expected 1)")
    m.match = _choice(m, data, lines, "match", MATCH, "name")
    m.on_mismatch = _choice(m, data, lines, "on_mismatch", ON_MISMATCH, "error")
    m.rename = parse_rename(m, data.get("rename") or {}, lines)
    m.layers = parse_layers(m, data.get("layers") or {}, lines)
    m.merge = parse_merge(m, data.get("merge") or {}, lines)
    m.tensors = parse_tensors(m, data.get("tensors") or {}, lines)
    for section in ("skip", "keep", "freeze", "fold", "adapt_input"):
        setattr(m, section, parse_globs(m, section, data.get(section) or [], lines))
    m.flatten = parse_flatten(m, data.get("flatten") or {}, lines)
    if data.get("labels") is not None:
        m.labels = parse_labels(m, data["labels"], lines)
    return m


def _choice(m: Mapping, data: dict, lines: dict, key: str, allowed: tuple, default: str) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise m.error(lines.get(key, 0), f"{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


