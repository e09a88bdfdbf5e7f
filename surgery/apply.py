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
from typing import Any, Iterable

import numpy as np

from . import dtypes, formats, settings
from ._version import __version__
from .errors import SurgeryError
from .graph import Layer, LayerGraph
from .formats.footprint import refuse_overwrite
from .io import atomic_path, full_disk_is_an_error, progress, sha256_file
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
         quiet: bool = True, source: str | None = None, tensor_hashes: bool = False) -> list[str]:
    """Write a graph (or a transplant's output) atomically; returns the files written.

    A conversion (a graph, not a transplant) copies tensors whose bytes pass unchanged
    file to file where the writer stores raw bytes (safetensors). A transplant also
    gets ``PATH.surgery.json``: the source's sha256, the map,
    the pairs, the frozen layers, NaN/Inf counts of the copied tensors and, with
    ``tensor_hashes``, the sha256 of each copied tensor. The source is hashed on a
    second thread while the output is written.
    """
    path = os.fspath(path)
    result = obj if isinstance(obj, Transplant) else None
    graph = result.graph if result else obj
    template = graph.path if graph.format == "onnx" else None  # an ONNX output writes its template's data files
    for origin in filter(None, [source, result and result.plan.src.path]):
        refuse_overwrite(origin, path, max_shard_size=max_shard_size, like=graph.format, template=template)
    name = formats.for_output(path, like=graph.format)
    copied = set(result.plan.copies()) if result else set()
    src_hash = _hash_in_background(result.plan.src.path if result else None)
    bar = progress(graph.nbytes, desc=f"writing {os.path.basename(path)}", quiet=quiet)

    def on_read(key: str, arr: np.ndarray) -> None:
        bar.update(arr.nbytes)
        if result is not None and key in copied:
            stats = {"nonfinite": sum(dtypes.nonfinite(arr))}
            if tensor_hashes:
                stats["sha256"] = hashlib.sha256(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)).hexdigest()
            result.stats[key] = stats

    # A conversion checks nothing per tensor: bytes that pass unchanged are copied file to file,
    # where the writer stores raw bytes.
    copies = result is None and getattr(formats.module(name), "COPIES_SPANS", False)
    on_copy = (lambda key, nbytes: bar.update(nbytes)) if copies else None
    watched, ahead = streamed(graph, on_read, on_copy)
    try:
        with bar, full_disk_is_an_error(path):
            written = _write(watched, path, name, max_shard_size)
    finally:
        ahead.close()
    if result is not None:
        result.output = path
        result.source_sha256 = src_hash.result()
        with full_disk_is_an_error(f"{path}.surgery.json"):
            written.append(write_record(result, path))
    return written


def _write(graph: LayerGraph, path: str, name: str, max_shard_size: int | None) -> list[str]:
    module = formats.module(name)
    if name == "safetensors" and max_shard_size:
        return module.write_sharded(graph, path, max_shard_size)
    if getattr(module, "MULTI_FILE", False):  # writes its several files atomically itself
        module.write(graph, path)
    else:
        with atomic_path(path) as tmp:
            module.write(graph, tmp, target=path)
    return [path]


def _hash_in_background(path: str | None) -> Future:
    """The sha256 of a source file, computed on its own thread (hashlib releases the GIL)."""
    if not path or not os.path.exists(path):
        done: Future = Future()
        done.set_result(None)
        return done
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surgery-hash")
    future = pool.submit(sha256_file, path)
    pool.shutdown(wait=False)
    return future


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
