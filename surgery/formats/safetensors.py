"""safetensors: single files and shard sets, read lazily, written in a stream.

The format is an 8-byte little-endian header length, a JSON header
(``name -> {dtype, shape, data_offsets}``, plus ``__metadata__``), then the raw
bytes. It is parsed here with the standard library, so reading needs neither
torch nor the ``safetensors`` package, and every claim of the header is
checked against the file before any data is trusted.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, Iterator

import numpy as np

from .. import dtypes
from ..errors import fail
from ..graph import LayerGraph, Param, tied_aliases
from ..io import span_loader
from .shard_index import read_shard_index
from ..kinds import graph_of_params

SUFFIXES = (".safetensors",)
INDEX_SUFFIX = ".safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
_ALIGN = 8


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
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_count(o) for o in offsets) or not offsets[0] <= offsets[1]):
        raise fail(path, f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
    expected = math.prod(shape) * dtypes.BY_SAFETENSORS[code].numpy.itemsize
    if offsets[1] - offsets[0] != expected:
        raise fail(path, f"tensor {name!r}: shape {shape} of {code} needs {expected} bytes "
                         f"but data_offsets span {offsets[1] - offsets[0]}")
    if offsets[1] > data_size:
        raise fail(path, f"tensor {name!r}: data_offsets end at {offsets[1]}, past the end of the "
                         f"{data_size}-byte data section (truncated?)")


def _is_count(value: Any) -> bool:
    """A JSON non-negative integer; ``true`` is an int to Python, not to the safetensors format."""
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
            entry["shape"], dtype.name, span_loader(path, start + begin, end - begin, dtype.numpy, entry["shape"]),
            key=name, ident=(os.path.realpath(path), begin),
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
    for key, param in _stored(graph):
        if max_shard_size and shards[-1] and size + param.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append((key, param))
        size += param.nbytes
    return shards


def _stored(graph: LayerGraph) -> Iterator[tuple[str, Param]]:
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


def write(graph: LayerGraph, path: str, *, metadata: dict[str, str] | None = None, **_: Any) -> None:
    """Write every tensor of ``graph`` to one safetensors file, one tensor in memory at a time."""
    meta = {"format": "pt", **(metadata or {}), **aliases(graph)}
    write_file(path, list(_stored(graph)), meta)


def write_file(path: str, tensors: list[tuple[str, Param]], metadata: dict[str, str]) -> None:
    """Stream ``tensors`` into ``path``: header from shapes first, then each tensor's bytes."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key, param in tensors:
        header[key] = {"dtype": dtypes.get(param.dtype).safetensors, "shape": list(param.shape),
                       "data_offsets": [offset, offset + param.nbytes]}
        offset += param.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % _ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, param in tensors:
            arr = np.ascontiguousarray(param.read())
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
        f.flush()
        os.fsync(f.fileno())


def shard_names(path: str, count: int) -> tuple[list[str], str]:
    """``model.safetensors`` -> (``model-00001-of-00003.safetensors``..., ``model.safetensors.index.json``)."""
    stem = path[: -len(".safetensors")] if path.endswith(".safetensors") else path
    names = [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    return names, stem + INDEX_SUFFIX


def write_sharded(graph: LayerGraph, path: str, max_shard_size: int) -> list[str]:
    """Write shards of at most ``max_shard_size`` bytes plus the standard index; returns the files written.

    Each shard is written atomically; the index is written last, so a crash leaves
    either the old index or a new one whose shards are all complete.
    """
    from ..io import atomic_path

    shards = plan_shards(graph, max_shard_size)
    names, index_path = shard_names(path, len(shards))
    weight_map: dict[str, str] = {}
    tied = aliases(graph)
    for name, tensors in zip(names, shards):
        with atomic_path(name) as tmp:
            write_file(tmp, tensors, {"format": "pt"})
        weight_map.update({key: os.path.basename(name) for key, _ in tensors})
    index = {"metadata": {"total_size": sum(p.nbytes for s in shards for _, p in s), **({"aliases": tied} if tied else {})},
             "weight_map": weight_map}
    with atomic_path(index_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
    return [*names, index_path]
