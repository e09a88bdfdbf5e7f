"""What a write would make and what it would need, predicted from headers alone (``--dry-run``).

The files and their sizes come from the output format's own ``planned_files`` (the
same sharding and header code the writer runs: exact for safetensors; about, for
formats whose framework adds its own framing), or else one file of the tensors' bytes.
Peak memory follows from how ``apply.save`` streams: the tensor being written, the
next one read ahead (``stream.ReadAhead``), the copies the writer makes of one tensor
(``WRITE_COPIES``) and what a reader holds beside the tensor it assembles
(``graph.meta["read_overhead"]``: DCP chunks). The interpreter and the libraries
come on top; ``bench/`` measures both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import formats
from .graph import LayerGraph, Param
from .render import size

READ_AHEAD = 1   # tensors read ahead of the one being written (stream.ReadAhead)


@dataclass
class PlannedFile:
    path: str
    nbytes: int
    tensors: int
    exact: bool = True


@dataclass
class WritePlan:
    """A write predicted: the files with their sizes, the bytes read, the tensor memory held at once."""

    output: str
    format: str
    files: list[PlannedFile]
    read_bytes: int
    largest: tuple[str, int]                    # the largest tensor written: name, bytes
    peak_bytes: int                             # tensor data held at once, at most
    peak_terms: list[str] = field(default_factory=list)   # what adds up to it
    processes: list["ProcessShare"] = field(default_factory=list)   # with the work split: each process's share

    @property
    def write_bytes(self) -> int:
        return sum(f.nbytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "format": self.format, "read_bytes": self.read_bytes,
                "write_bytes": self.write_bytes, "files": [vars(f) for f in self.files],
                "largest_tensor": {"name": self.largest[0], "bytes": self.largest[1]},
                "peak_tensor_bytes": self.peak_bytes, "peak_terms": self.peak_terms,
                "processes": [vars(p) for p in self.processes]}

    def __str__(self) -> str:
        from .render import write_plan_text

        return write_plan_text(self)


@dataclass
class ProcessShare:
    """What one process of a split write reads, writes and holds (``--jobs``, ``torchrun`` ranks)."""

    parts: int   # the parts dealt to it: shards, runs of one file, or DCP data files
    read_bytes: int
    write_bytes: int
    peak_bytes: int


def plan_write(graph: LayerGraph, path: str | os.PathLike, *, max_shard_size: int | None = None,
               sources: Iterable[LayerGraph] = (), processes: int = 1) -> WritePlan:
    """Predict writing ``graph`` to ``path`` without reading a tensor or writing a byte.

    Args:
        sources: the graphs the tensors are read from (a transplant's source and destination),
            for what their readers hold beside a tensor; ``graph`` itself when omitted.
        processes: the write split across this many processes (the format's parts, dealt by
            ``surgery.parallel.assign`` as the ranks of a ``torchrun`` job get them; a
            ``--jobs`` pool hands them out as workers come free, to the same effect).

    Raises:
        FormatError: the output cannot be written (unknown format, a write that would be refused).
    """
    path = os.fspath(path)
    name = formats.for_output(path, like=graph.format)
    module = formats.module(name)
    if hasattr(module, "TEMPLATE"):   # the write's own refusal when there is nothing to copy the structure from
        formats.template_of(graph, name, None, path, {}, module.TEMPLATE)
    sharded = name == "safetensors" and max_shard_size
    split = getattr(module, "SPLITS", False) and processes > 1
    if hasattr(module, "planned_files"):
        files = [PlannedFile(*f) for f in module.planned_files(graph, path, max_shard_size=max_shard_size if sharded else None,
                                                               processes=processes if split else 1)]
    else:
        files = [PlannedFile(path, graph.nbytes, sum(1 for _ in graph.tensors()), exact=False)]
    copied = getattr(module, "COPIES_SPANS", False)   # unchanged bytes go file to file (``apply.save``): no memory
    peak, largest, terms = _memory(list(graph.tensors()), name, module, [*sources, graph], copied)
    shares = _shares(graph, files, path, name, max_shard_size if sharded else None, processes, module, [*sources, graph],
                     copied) if split else []
    return WritePlan(path, name + (" (sharded)" if sharded else ""), files, graph.nbytes, largest, peak, terms, shares)


def _shares(graph: LayerGraph, files: list[PlannedFile], path: str, name: str, max_shard_size: int | None,
            processes: int, module: Any, sources: list[LayerGraph], copied: bool) -> list[ProcessShare]:
    """Each process's parts, bytes and peak memory when ``processes`` split a write (the format's
    ``planned_parts``, dealt as ``surgery.parallel.assign`` deals them); what no part writes (an index,
    a header, ``.metadata``) is process 0's."""
    from .parallel import assign

    sizes = {f.path: f.nbytes for f in files}
    parts = module.planned_parts(graph, path, processes=processes, max_shard_size=max_shard_size)

    def written(part: Any) -> int:
        return part.nbytes if part.kind == "run" else sizes[part.path]

    lead = sum(sizes.values()) - sum(written(p) for p in parts)
    table = dict(graph.tensors())
    shares = []
    for i, dealt in enumerate(assign(parts, processes)):
        tensors = [(k, table[k]) for part in dealt for k in part.keys]
        peak = _memory(tensors, name, module, sources, copied)[0]
        shares.append(ProcessShare(len(dealt), sum(p.nbytes for p in dealt),
                                   sum(written(p) for p in dealt) + (lead if i == 0 else 0), peak))
    return shares


def _memory(tensors: list[tuple[str, Param]], name: str, module: Any, sources: list[LayerGraph],
            copied: bool) -> tuple[int, tuple[str, int], list[str]]:
    """Peak tensor memory writing ``tensors``, the largest tensor read, and the terms that add up to it."""
    read = [(k, p.nbytes) for k, p in tensors if not (copied and p.copyable)]
    terms = []
    if copied and len(read) < len(tensors):
        terms.append(f"{len(tensors) - len(read)} tensors copied file to file, never in memory")
    if not read:
        return 0, ("-", 0), terms
    largest = max(read, key=lambda t: t[1])
    held = min(1 + READ_AHEAD, len(read))
    copies = getattr(module, "WRITE_COPIES", 0)
    overhead = max(g.meta.get("read_overhead", 0) for g in sources)
    terms.append(f"{held} x the largest tensor read (one written, one read ahead)")
    if copies:
        terms.append(f"{copies} x it serialised by the {name} writer")
    if overhead:
        terms.append(f"{size(overhead)} of chunks held while one tensor is assembled")
    return (held + copies) * largest[1] + overhead, largest, terms
