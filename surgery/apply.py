"""Carrying out a plan: the output graph, streamed writes, the sidecar record.

``apply_plan`` builds the output graph without reading data: the destination's
layers, with each planned tensor replaced by its lazy recipe. ``save`` streams
it into the writer one tensor at a time, hashing each copied tensor and
counting non-finite values on the way, then writes ``OUT.surgery.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from . import dtypes, formats, settings
from ._version import __version__
from .errors import SurgeryError, fail
from .graph import Layer, LayerGraph, Param
from .formats.footprint import refuse_overwrite
from .io import atomic_path, full_disk_is_an_error, progress
from .stream import streamed
from .pairing import make_plan
from .plans import Plan, StrictError


@dataclass
class Transplant:
    """The result of a transplant: the plan and the output graph (lazy until saved)."""

    plan: Plan
    graph: LayerGraph
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)   # destination tensor -> sha256, non-finite count
    output: str | None = None
    source_sha256: str | None = None
    verify: dict[str, Any] | None = None
    proof: Any = None          # the VerifyReport of ``transplant(verify=True)``
    write_plan: Any = None     # the WritePlan of ``transplant(dry_run=True, output=...)``

    @property
    def warnings(self) -> list[str]:
        bad = [f"{k}: {s['nonfinite']} NaN/Inf values copied" for k, s in self.stats.items() if s.get("nonfinite")]
        return self.plan.warnings + bad

    def to_dict(self) -> dict[str, Any]:
        out = self.plan.to_dict()
        for pair in out["pairs"]:
            for t in pair["tensors"]:
                t.update(self.stats.get(t["destination"], {}))
        out["warnings"] = self.warnings
        out["output"] = self.output
        out["verify"] = self.verify
        return out

    def __str__(self) -> str:
        from .render import plan_text

        return plan_text(self.plan, warnings=self.warnings)


def transplant_graphs(src: LayerGraph, dst: LayerGraph, mapping: Any = None, *, freeze: Iterable[str] = (),
                      strict: bool = False, match: str | None = None) -> Transplant:
    """Plan and apply between two graphs already read: the destination with the source's weights, lazily.

    Raises:
        StrictError: with ``strict=True`` (the default), when the plan leaves a decision open.
    """
    plan = make_plan(src, dst, mapping, freeze=freeze, match=match)
    if not plan.strict_ok:
        if strict:
            raise StrictError(plan)
        plan.allow_partial = True  # recorded in the report and the sidecar
    return apply_plan(plan)


def apply_plan(plan: Plan) -> Transplant:
    """The destination graph with every planned tensor replaced; frozen flags set."""
    copies = plan.copies()
    frozen = set(plan.frozen)
    settings = _settings(plan)
    layers = []
    for layer in plan.dst:
        params = {role: copies[layer.key(role)].param if layer.key(role) in copies else p
                  for role, p in layer.params.items()}
        attrs = dict(layer.attrs)
        if layer.name in settings:
            attrs["set"] = settings[layer.name]
        layers.append(Layer(layer.name, layer.kind, params, attrs, frozen=layer.name in frozen))
    graph = LayerGraph(layers, path=plan.dst.path, format=plan.dst.format, meta=dict(plan.dst.meta))
    return Transplant(plan, graph)


def _settings(plan: Plan) -> dict[str, dict[str, Any]]:
    """Source settings a destination that carries its configuration should take (normalisation eps, momentum).

    A destination written as ``.keras`` or a live module gets them; a bare
    state_dict cannot hold them, and the plan's warnings say so.
    """
    out = {}
    for pair in plan.pairs:
        src = plan.source_layer(pair.source)
        if src.kind not in ("batch_norm", "layer_norm"):
            continue
        known = {k: v for k, v in src.attrs.items() if k not in src.attrs.get("assumed", ())}
        for name in pair.destinations:  # set only what the source records: an assumed default is only reported
            theirs = settings.effective(plan.dst[name])
            wanted = {k: known[k] for k in ("eps", "momentum") if k in known and known[k] != theirs.get(k)}
            if wanted:
                out[name] = wanted
    return out


def save(obj: "Transplant | LayerGraph", path: str | os.PathLike, *, max_shard_size: int | None = None,
         quiet: bool = True, source: str | None = None, tensor_hashes: bool = False,
         split: Callable[..., None] | None = None) -> list[str]:
    """Write a graph (or a transplant's output) atomically; returns the files written.

    Tensors whose bytes pass unchanged are copied file to file where the writer stores
    raw bytes (safetensors). A transplant also gets ``PATH.surgery.json``: the source's
    sha256, the map, the pairs, the frozen layers, NaN/Inf counts of the copied tensors
    and, with ``tensor_hashes``, the sha256 of each copied tensor. The source is read
    once more on a second thread while the output is written: it is hashed, and the
    copied tensors that never pass through this process are counted and hashed from
    the same bytes.

    ``split`` writes the parts of an output whose format ``SPLITS`` (a safetensors file's
    runs of tensors or its shards, a DCP folder's data files) in other processes
    (``surgery.parallel``): it is called with the parts and a progress callback, returns
    each part's result, and says how many processes share them (``split.processes``).
    """
    path = os.fspath(path)
    result = obj if isinstance(obj, Transplant) else None
    graph = result.graph if result else obj
    template = graph.path if graph.format == "onnx" else None  # an ONNX output writes its template's data files
    for origin in filter(None, [source, result and result.plan.src.path]):
        refuse_overwrite(origin, path, max_shard_size=max_shard_size, like=graph.format, template=template)
    name = formats.for_output(path, like=graph.format)
    copied = set(result.plan.copies()) if result else set()
    copies = getattr(formats.module(name), "COPIES_SPANS", False)
    spans = {k: p.span for k, p in graph.tensors() if k in copied} if copies else {}
    # a tensor in pieces across files (DCP rows) is counted piece by piece; its sha256 (``tensor_hashes``)
    # needs its bytes in order, so then it is read instead, and examined as it is read
    pieced = {k for k, span in spans.items() if span is not None and span.more} if tensor_hashes else set()
    spanned = {k: p for k, p in graph.tensors() if spans.get(k) is not None and k not in pieced}
    examined = _in_background(examine, result.plan.src.path if result else None, spanned, tensor_hashes)
    bar = progress(graph.nbytes, desc=f"writing {os.path.basename(path)}", quiet=quiet)

    def on_read(key: str, arr: np.ndarray) -> None:
        bar.update(arr.nbytes)
        if result is not None and key in copied:
            stats = {"nonfinite": sum(dtypes.nonfinite(arr))}
            if tensor_hashes:
                stats["sha256"] = hashlib.sha256(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)).hexdigest()
            result.stats[key] = stats

    on_copy = (lambda key, nbytes: bar.update(nbytes)) if copies else None
    watched, ahead = streamed(graph, on_read, on_copy, read=pieced)
    try:
        with bar, full_disk_is_an_error(path):
            parts = (lambda work: split(work, bar.update)) if split else None
            written = _write(watched, path, name, max_shard_size, parts, getattr(split, "processes", 1))
    finally:
        ahead.close()
    if result is not None:
        result.output = path
        result.source_sha256, stats = examined.result()
        stats.update(result.stats)
        result.stats = {k: stats[k] for k, _ in graph.tensors() if k in stats}   # in the destination's order
        with full_disk_is_an_error(f"{path}.surgery.json"):
            written.append(write_record(result, path))
    return written


def _write(graph: LayerGraph, path: str, name: str, max_shard_size: int | None,
           write_parts: Callable[..., list] | None = None, processes: int = 1) -> list[str]:
    module = formats.module(name)
    if name == "safetensors" and max_shard_size:
        return module.write_sharded(graph, path, max_shard_size, write_parts=write_parts)
    split = {"write_parts": write_parts, "processes": processes} if write_parts else {}
    if split and not getattr(module, "SPLITS", False):
        raise SurgeryError(f"{path}: a {name} output is not written by several processes")
    if getattr(module, "MULTI_FILE", False):  # writes its several files atomically itself
        module.write(graph, path, **split)
    else:
        with atomic_path(path) as tmp:
            module.write(graph, tmp, target=path, **split)
    return [path]


def _in_background(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` on a thread of its own (hashlib and file reads release the GIL)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surgery-source")
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def examine(path: str | None, spanned: dict[str, Param], tensor_hashes: bool) -> tuple[str | None, dict[str, dict]]:
    """The sha256 of the source ``path`` (a file, or a folder's files in sorted order), and the
    stats of each tensor in ``spanned`` (NaN/Inf count, its sha256 with ``tensor_hashes``) from its bytes.

    The source is read once, front to back: a span inside it is examined from the same bytes
    that are hashed; a span elsewhere (a shard of an index) is read on its own afterwards.
    """
    watched: dict[str, dict[tuple[int, int, str], list[str]]] = {}
    for key, param in spanned.items():
        for piece in param.span.pieces():   # a tensor's NaN/Inf count is its pieces' sum
            watched.setdefault(os.path.realpath(piece.path), {}).setdefault((piece.offset, piece.nbytes, param.dtype),
                                                                            []).append(key)
    files = []
    if path and os.path.isdir(path):
        files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    elif path and os.path.exists(path):
        files = [path]
    digest = hashlib.sha256()
    stats: dict[str, dict] = {}
    for p in files:
        _scan(p, watched.pop(os.path.realpath(p), {}), digest, stats, tensor_hashes)
    for p, spans in watched.items():
        _scan(p, spans, None, stats, tensor_hashes)
    return (digest.hexdigest() if files else None), stats


_BLOCK = 8 << 20


def _scan(path: str, spans: dict[tuple[int, int, str], list[str]], digest: Any, stats: dict[str, dict],
          tensor_hashes: bool) -> None:
    """Read ``path`` (all of it into ``digest``, or only its spans when ``digest`` is None), examining each span."""
    buf = memoryview(bytearray(_BLOCK))
    with open(path, "rb") as f:
        pos = 0
        overlapping = []
        for span in sorted(spans):
            offset, nbytes, dtype = span
            if offset < pos or digest is None:
                overlapping.append(span)
                continue
            _pour(f, path, offset - pos, buf, digest)
            _examine_span(f, path, span, spans[span], buf, digest, stats, tensor_hashes)
            pos = offset + nbytes
        if digest is not None:
            _pour(f, path, None, buf, digest)
        for span in overlapping:   # a span that shares bytes with another: read again, not hashed twice
            f.seek(span[0])
            _examine_span(f, path, span, spans[span], buf, None, stats, tensor_hashes)


def _pour(f: Any, path: str, nbytes: int | None, buf: memoryview, digest: Any) -> None:
    """Feed the next ``nbytes`` (or the rest of the file) into ``digest``."""
    while nbytes is None or nbytes > 0:
        n = f.readinto(buf[:_BLOCK if nbytes is None else min(_BLOCK, nbytes)])
        if not n:
            if nbytes is None:
                return
            raise fail(path, f"file ended {nbytes} bytes before a tensor began (truncated?)")
        digest.update(buf[:n])
        if nbytes is not None:
            nbytes -= n


def _examine_span(f: Any, path: str, span: tuple[int, int, str], keys: list[str], buf: memoryview, digest: Any,
                  stats: dict[str, dict], tensor_hashes: bool) -> None:
    _, nbytes, dtype = span
    np_dtype = dtypes.get(dtype).numpy
    block = _BLOCK - _BLOCK % np_dtype.itemsize
    own = hashlib.sha256() if tensor_hashes else None
    bad = 0
    while nbytes > 0:
        n = f.readinto(buf[:min(block, nbytes)])
        if not n or n % np_dtype.itemsize:
            raise fail(path, f"file ended {nbytes} bytes before the tensor {keys[0]} did (truncated?)")
        part = buf[:n]
        for h in (digest, own):
            if h is not None:
                h.update(part)
        bad += sum(dtypes.nonfinite(np.frombuffer(part, dtype=np_dtype)))
        nbytes -= n
    for key in keys:   # a piece of a tensor adds to what its other pieces counted
        entry = stats.setdefault(key, {"nonfinite": 0})
        entry["nonfinite"] += bad
        if own is not None:
            entry["sha256"] = own.hexdigest()   # whole tensors only: one in pieces is read with tensor_hashes


def write_record(result: Transplant, path: str) -> str:
    """Write ``PATH.surgery.json`` for a later ``check``/``verify``."""
    src = result.plan.src
    record = {
        **result.to_dict(),
        "surgery": __version__,
        "source": {"path": src.path, "format": src.format, "sha256": result.source_sha256},
        "destination": {"path": result.plan.dst.path, "format": result.plan.dst.format},
    }
    record_path = f"{path}.surgery.json"
    with atomic_path(record_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, default=str)
    return record_path


def write_report(obj: "Transplant | Plan", path: str | os.PathLike) -> str:
    """The report as JSON (``--report``), written atomically; returns its path."""
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj.to_dict(), f, indent=2, default=str)
    return path


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"512MiB"`` -> 536870912; bare numbers are bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper()
    number = s.rstrip("KMGTIB")
    unit = s[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise SurgeryError(f"size {text!r} is not a size like 5GB or 512MiB") from None
    if value <= 0:
        raise SurgeryError(f"size {text!r} must be positive")
    return int(value)
