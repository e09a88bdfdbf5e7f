"""safetensors: single files and shard sets, read lazily, written in a stream.

The format is an 8-byte little-endian header length, a JSON header
(``name -> {dtype, shape, data_offsets}``, plus ``__metadata__``), then the raw
bytes. It is parsed here with the standard library, so reading needs neither
torch nor the ``safetensors`` package, and every claim of the header is
checked against the file before any data is trusted.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import struct
from typing import Any, Iterator

import numpy as np

from .. import dtypes
from ..errors import fail
from ..graph import LayerGraph, Param, Span, tied_aliases
from ..io import copy_span, span_loader
from .shard_index import read_shard_index
from ..kinds import graph_of_params
from ..parts import Part, WriteParts, runs

SUFFIXES = (".safetensors",)
INDEX_SUFFIX = ".safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
_ALIGN = 8
COPIES_SPANS = True   # write_file copies a param's unchanged bytes file to file (graph.Span)
SPLITS = True   # several processes can write its parts (surgery.parts, surgery.parallel)


def sniff(path: str) -> bool:
    if os.path.isdir(path):
        return False
    if path.endswith(INDEX_SUFFIX) or path.endswith(SUFFIXES):
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < MAX_HEADER


def read(path: str, **_: Any) -> LayerGraph:
    """Read a safetensors file or ``*.safetensors.index.json`` shard set, headers only."""
    if path.endswith(INDEX_SUFFIX):
        params, metadata = _read_index(path)
    else:
        params, metadata = _read_file(path)
    notes = _restore_aliases(path, params, metadata)
    graph = graph_of_params(params, natural_order=True, path=path, format="safetensors")
    graph.meta["metadata"] = metadata
    graph.notes.extend(notes)
    return graph


def read_header(path: str) -> tuple[dict[str, dict], dict[str, str], int]:
    """The checked header: ``(tensors, metadata, data start)``; raises FormatError on any lie."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise fail(path, f"truncated: {size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER:
            raise fail(path, f"header length {length} is absurd (limit {MAX_HEADER}); not a safetensors file?")
        if 8 + length > size:
            raise fail(path, f"header length {length} runs past the end of the {size}-byte file (truncated?)")
        raw = f.read(length)
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(path, f"header is not valid JSON ({e})") from None
    except _Duplicate as e:
        raise fail(path, f"header names tensor {e.args[0]!r} twice (which one is meant cannot be known)") from None
    if not isinstance(header, dict):
        raise fail(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise fail(path, "__metadata__ must map strings to strings")
    start = 8 + length
    for name, entry in header.items():
        _check_entry(path, name, entry, size - start)
    _check_overlaps(path, header)
    return header, metadata, start


def _check_entry(path: str, name: str, entry: Any, data_size: int) -> None:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise fail(path, f"tensor {name!r}: entry needs dtype, shape and data_offsets")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str) or code not in dtypes.BY_SAFETENSORS:
        raise fail(path, f"tensor {name!r}: unknown dtype {code!r}")
    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(is_count(o) for o in offsets) or not offsets[0] <= offsets[1]):
        raise fail(path, f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
    expected = math.prod(shape) * dtypes.BY_SAFETENSORS[code].itemsize
    if offsets[1] - offsets[0] != expected:
        raise fail(path, f"tensor {name!r}: shape {shape} of {code} needs {expected} bytes "
                         f"but data_offsets span {offsets[1] - offsets[0]}")
    if offsets[1] > data_size:
        raise fail(path, f"tensor {name!r}: data_offsets end at {offsets[1]}, past the end of the "
                         f"{data_size}-byte data section (truncated?)")


def is_count(value: Any) -> bool:
    """A non-negative integer, as a header (JSON) or a metadata pickle gives one; ``True`` is not one."""
    return type(value) is int and value >= 0


def _check_overlaps(path: str, header: dict[str, dict]) -> None:
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], n) for n, e in header.items() if e["data_offsets"][0] < e["data_offsets"][1])
    for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
        if begin < end:
            raise fail(path, f"tensors {name!r} and {other!r} overlap in the data section")


def _read_file(path: str) -> tuple[dict[str, Param], dict[str, str]]:
    header, metadata, start = read_header(path)
    params = {}
    for name, entry in header.items():
        dtype = dtypes.BY_SAFETENSORS[entry["dtype"]]
        begin, end = entry["data_offsets"]
        params[name] = Param(
            entry["shape"], dtype.name, span_loader(path, start + begin, end - begin, dtype, entry["shape"]),
            key=name, ident=(os.path.realpath(path), begin), span=Span(path, start + begin, end - begin),
        )
    return params, metadata


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are unique: ``json`` alone keeps the last of two, silently."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _read_index(path: str) -> tuple[dict[str, Param], dict[str, str]]:
    index = read_shard_index(path, "safetensors shard index")
    params: dict[str, Param] = {}
    metadata: dict[str, str] = {}
    for shard, shard_path in index.shards.items():
        shard_params, shard_meta = _read_file(shard_path)
        metadata.update(shard_meta)
        for name, param in shard_params.items():
            if index.weight_map.get(name) == shard:
                params[name] = param
    tied = index.metadata.get("aliases") or {}
    metadata.update({str(k): str(v) for k, v in tied.items()})
    missing = [n for n in index.weight_map if n not in params]
    if missing:
        raise fail(path, f"{len(missing)} tensors listed in the index are not in their shard, e.g. {missing[0]!r}")
    return params, metadata


def _restore_aliases(path: str, params: dict[str, Param], metadata: dict[str, str]) -> list[str]:
    """Tied tensors saved once: ``metadata[alias] = kept`` (as ``safetensors.torch.save_model`` does)."""
    notes = []
    for alias, kept in metadata.items():
        if alias not in params and kept in params:
            params[alias] = params[kept]
            notes.append(f"{alias} is tied to {kept} (stored once)")
    return notes


def plan_shards(graph: LayerGraph, max_shard_size: int | None) -> list[list[tuple[str, Param]]]:
    """Split the stored (non-alias) tensors into shards of at most ``max_shard_size`` bytes."""
    shards: list[list[tuple[str, Param]]] = [[]]
    size = 0
    for key, param in stored(graph):
        if max_shard_size and shards[-1] and size + param.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append((key, param))
        size += param.nbytes
    return shards


def stored(graph: LayerGraph) -> Iterator[tuple[str, Param]]:
    seen: set = set()
    for key, param in graph.tensors():
        if param.ident is not None:
            if param.ident in seen:
                continue
            seen.add(param.ident)
        yield key, param


def aliases(graph: LayerGraph) -> dict[str, str]:
    """``alias -> kept`` for every tensor that shares storage with an earlier one."""
    return tied_aliases(graph.tensors())


def write(graph: LayerGraph, path: str, *, metadata: dict[str, str] | None = None, target: str | None = None,
          write_parts: "WriteParts | None" = None, processes: int = 1, **_: Any) -> None:
    """Write every tensor of ``graph`` to one safetensors file, one tensor in memory at a time.

    ``write_parts``, when given, writes the file's data in parts instead of this
    process (``surgery.parallel``): the header fixes every tensor's offset before a
    byte of data is read, so this process writes the header and sizes the file, and
    each run of tensors (``run_work``) is written in place by one of ``processes``
    processes. ``target`` is the file the user named (``path`` is its temporary
    name), for messages.
    """
    tensors, meta = list(stored(graph)), _single_metadata(graph, metadata)
    if write_parts is None:
        write_file(path, tensors, meta)
        return
    header = header_bytes(tensors, meta)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + sum(p.nbytes for _, p in tensors))   # to disk with the rest, by the caller's rename
    write_parts(run_work(path, tensors, len(header), processes, target=target))


RUNS_PER_PROCESS = 4   # runs of one file per process: a process that finishes early takes another


def run_work(path: str, tensors: list[tuple[str, Param]], start: int, processes: int, *,
               target: str | None = None) -> list[Part]:
    """One file's tensors (data from offset ``start``) cut into runs of about equal bytes, each a part written in place."""
    out, offset = [], start
    for keys, nbytes in runs([(k, p.nbytes) for k, p in tensors], max(processes, 1) * RUNS_PER_PROCESS):
        out.append(Part(path, keys, nbytes, offset, target, kind="run"))
        offset += nbytes
    return out


def _single_metadata(graph: LayerGraph, metadata: dict[str, str] | None = None) -> dict[str, str]:
    return {"format": "pt", **(metadata or {}), **aliases(graph)}


def header_bytes(tensors: list[tuple[str, Param]], metadata: dict[str, str]) -> bytes:
    """The length prefix and JSON header of a file holding ``tensors`` in this order, padded to 8 bytes."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, param in tensors:
        header[key] = {"dtype": dtypes.get(param.dtype).safetensors, "shape": list(param.shape),
                       "data_offsets": [offset, offset + param.nbytes]}
        offset += param.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def write_file(path: str, tensors: list[tuple[str, Param]], metadata: dict[str, str]) -> None:
    """Stream ``tensors`` into ``path``: header from shapes first, then each tensor's bytes.

    A tensor whose bytes lie unchanged in a file (``param.span``) is copied file to file
    in the kernel; the others are read and written one at a time.
    """
    with open(path, "wb") as f:
        f.write(header_bytes(tensors, metadata))
        _write_data(f, tensors)


def write_into(path: str, offset: int, tensors: list[tuple[str, Param]]) -> None:
    """Write ``tensors``' bytes, in order, into the existing file ``path`` from ``offset`` (one part of a split write)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        _write_data(f, tensors)


def _write_data(f: Any, tensors: list[tuple[str, Param]]) -> None:
    """Each tensor's bytes at ``f``'s position in turn, then to disk."""
    for key, param in tensors:
        if param.span is not None:
            copy_span(param.span, f)
            continue
        arr = np.ascontiguousarray(param.read())
        f.write(memoryview(arr.reshape(-1).view(np.uint8)))
    f.flush()
    os.fsync(f.fileno())


def shard_names(path: str, count: int, generation: int = 1) -> tuple[list[str], str]:
    """``model.safetensors`` -> (``model-00001-of-00003.safetensors``..., ``model.safetensors.index.json``).

    A later ``generation`` tags the shard names (``model-00001-of-00003.2.safetensors``):
    the names a new set takes while an old set still holds the plain ones.
    """
    stem = _stem(path)
    tag = f".{generation}" if generation > 1 else ""
    names = [f"{stem}-{i:05d}-of-{count:05d}{tag}.safetensors" for i in range(1, count + 1)]
    return names, stem + INDEX_SUFFIX


def _stem(path: str) -> str:
    return path[: -len(".safetensors")] if path.endswith(".safetensors") else path


def free_shard_names(path: str, count: int) -> list[str]:
    """The first generation of shard names of which no file exists yet: writing them overwrites nothing."""
    generation = 1
    while any(os.path.lexists(name) for name in shard_names(path, count, generation)[0]):
        generation += 1
    return shard_names(path, count, generation)[0]


def shard_files(path: str) -> list[str]:
    """The files beside ``path`` named as shards of it, of any count and generation (what a new set replaces)."""
    folder, stem = os.path.split(os.path.abspath(_stem(path)))
    if not os.path.isdir(folder):
        return []
    pattern = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}(\.\d+)?\.safetensors")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if pattern.fullmatch(f))


def write_sharded(graph: LayerGraph, path: str, max_shard_size: int, *,
                  write_parts: "WriteParts | None" = None) -> list[str]:
    """Write shards of at most ``max_shard_size`` bytes plus the standard index; returns the files written.

    The new shards take names no existing file has (``free_shard_names``), so
    the old index keeps naming the old, untouched shards until the new index is
    renamed over it: that rename commits the set. Only then are the old shards
    removed. A kill at any moment leaves the old set or the new one, each whole;
    the shards and temporary files of a killed write are removed by the next.

    ``write_parts``, when given, writes the shards instead of this process:
    it gets ``(file, keys)`` for each and returns once all are written, or raises
    (``surgery.parallel`` hands them to worker processes or ranks). Whoever writes
    them, the index is written here, last; a failure removes the new shards.
    """
    from ..io import atomic_path, folder_lock, sweep_stale

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    shards = plan_shards(graph, max_shard_size)
    _, index_path = shard_names(path, len(shards))
    with folder_lock(folder):
        stem = glob.escape(os.path.basename(_stem(path)))
        sweep_stale(folder, f".{stem}-*-of-*.safetensors.*.tmp")
        sweep_stale(folder, f".{stem}{INDEX_SUFFIX}.*.tmp")
        _remove_shards_but(path, _named_shards(index_path))
        names = free_shard_names(path, len(shards))
        try:
            if write_parts is None:
                for name, tensors in zip(names, shards):
                    write_shard(name, tensors)
            else:
                write_parts(shard_work(names, shards))
        except BaseException:
            for name in names:  # not yet named by any index: nobody's data
                if os.path.lexists(name):
                    os.unlink(name)
            raise
        with atomic_path(index_path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(_index_text(graph, shards, names))
        _remove_shards_but(path, names)
    return [*names, index_path]


def shard_work(names: list[str], shards: list[list[tuple[str, Param]]]) -> list[Part]:
    """The shards of ``plan_shards`` under their file names, as the processes of a split write get them."""
    return [Part(name, [key for key, _ in tensors], sum(p.nbytes for _, p in tensors))
            for name, tensors in zip(names, shards)]


def write_shard(path: str, tensors: list[tuple[str, Param]]) -> None:
    """One shard of a sharded set, written atomically under its final name."""
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        write_file(tmp, tensors, {"format": "pt"})


def _named_shards(index_path: str) -> list[str]:
    """The shard files an existing index names; every shard-named file when there is no readable index."""
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(os.path.dirname(index_path), name) for name in set(weight_map.values())]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):  # not ours to judge: remove nothing
        return shard_files(index_path[: -len(INDEX_SUFFIX)])


def _remove_shards_but(path: str, keep: list[str]) -> None:
    """Remove the files named as shards of ``path`` (any count, any generation) but ``keep``."""
    for name in set(shard_files(path)) - {os.path.abspath(k) for k in keep}:
        os.unlink(name)


def _index_text(graph: LayerGraph, shards: list[list[tuple[str, Param]]], names: list[str]) -> str:
    tied = aliases(graph)
    weight_map = {key: os.path.basename(name) for name, tensors in zip(names, shards) for key, _ in tensors}
    index = {"metadata": {"total_size": sum(p.nbytes for s in shards for _, p in s), **({"aliases": tied} if tied else {})},
             "weight_map": weight_map}
    return json.dumps(index, indent=2)


def planned_parts(graph: LayerGraph, path: str, *, processes: int, max_shard_size: int | None = None) -> list[Part]:
    """The parts a write split across ``processes`` would hand out (its shards, or the runs of one file)."""
    if max_shard_size:
        shards = plan_shards(graph, max_shard_size)
        return shard_work(shard_names(path, len(shards))[0], shards)
    tensors = list(stored(graph))
    return run_work(path, tensors, len(header_bytes(tensors, _single_metadata(graph))), processes)


def planned_files(graph: LayerGraph, path: str, *, max_shard_size: int | None = None,
                  **_: Any) -> list[tuple[str, int, int, bool]]:
    """``(file, bytes, tensors, exact)`` that ``write`` (or ``write_sharded``) would make: exact, from shapes alone."""
    if not max_shard_size:
        tensors = list(stored(graph))
        size = len(header_bytes(tensors, _single_metadata(graph))) + sum(p.nbytes for _, p in tensors)
        return [(path, size, len(tensors), True)]
    shards = plan_shards(graph, max_shard_size)
    names, index_path = shard_names(path, len(shards))
    files = [(name, len(header_bytes(tensors, {"format": "pt"})) + sum(p.nbytes for _, p in tensors), len(tensors), True)
             for name, tensors in zip(names, shards)]
    return [*files, (index_path, len(_index_text(graph, shards, names).encode()), 0, True)]
