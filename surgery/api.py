"""The Python API. Every CLI command is one call to a function here."""

from __future__ import annotations

import os
from typing import Any, Iterable

from . import formats
from .apply import Transplant, save, transplant_graphs, write_report
from .formats.footprint import refuse_overwrite
from .compare import DiffReport, diff as _diff
from .errors import SurgeryError
from .estimate import WritePlan, plan_write
from .graph import LayerGraph
from .mapping import load_map
from .pairing import make_plan
from .plans import Plan, StrictError

Source = "str | os.PathLike | LayerGraph"


def load(path: "str | os.PathLike | LayerGraph", *, unsafe_pickle: bool = False, format: str | None = None,
         allow_globals: Iterable[str] = ()) -> LayerGraph:
    """Read any checkpoint into a lazy LayerGraph (headers only).

    Example:
        >>> g = surgery.load("model.safetensors")   # doctest: +SKIP
        >>> g["features.0"].params["weight"].shape  # doctest: +SKIP
        (64, 3, 7, 7)
    """
    if isinstance(path, LayerGraph):
        return path
    options: dict[str, Any] = {"unsafe_pickle": True} if unsafe_pickle else {}
    if allow_globals:
        options["allow_globals"] = list(allow_globals)  # PyTorch pickles only; other readers ignore it
    return formats.read(path, format=format, **options)


def plan(src: Any, dst: Any, mapping: Any = None, *, freeze: Iterable[str] = (), match: str | None = None,
         unsafe_pickle: bool = False) -> Plan:
    """Pair two checkpoints (paths or graphs) without reading any tensor data.

    Raises:
        MapError, PlanError, FormatError: with a message naming the file, layer or map line.
    """
    mapping = load_map(mapping)  # a bad map is refused before any checkpoint is opened
    return make_plan(load(src, unsafe_pickle=unsafe_pickle), load(dst, unsafe_pickle=unsafe_pickle),
                     mapping, freeze=freeze, match=match)


def transplant(src: Any, dst: Any, mapping: Any = None, *, freeze: Iterable[str] = (), strict: bool = True,
               match: str | None = None, unsafe_pickle: bool = False, output: "str | os.PathLike | None" = None,
               dry_run: bool = False, verify: bool = False, factory: str | None = None, input_shape: Any = None,
               max_shard_size: int | None = None, report: "str | os.PathLike | None" = None,
               quiet: bool = True, probe: bool = False) -> Transplant:
    """Plan and apply: the destination with the source's weights; written to ``output`` if given.

    Args:
        strict: refuse (``StrictError``, nothing written) when the plan leaves a decision
            open: a destination tensor left as initialised, a source tensor copied nowhere,
            an assumed layout, an ambiguous pair. ``False`` accepts all of them
            (``--allow-partial``), recorded in the report and the sidecar.
        output: write the result here (atomically) and ``output.surgery.json`` beside it.
            None: return the lazy result; write it later with ``save``.
        dry_run: plan only: no tensor data is read, nothing is written. With ``output``,
            ``result.write_plan`` predicts the files, bytes and peak memory of the write.
        verify: after writing, prove the output computes what ``src`` computed
            (``result.proof`` is the VerifyReport, also recorded in the sidecar).
        report: also write the report as JSON here, with a sha256 of each copied tensor.
        probe: settle ambiguous pairs and assumed flatten orders by running both networks
            layer by layer (the source from its file; the destination from its file or
            ``factory``); the evidence goes into the report and the sidecar.

    Raises:
        StrictError: ``strict`` and the plan leaves a decision open; it carries the plan.
        MapError, PlanError, FormatError: bad map, impossible pair, unreadable file.

    Example:
        >>> surgery.transplant("vgg16.h5", "vgg.pt", mapping="map.yaml", output="port.pt")  # doctest: +SKIP
    """
    if output is not None and not isinstance(src, LayerGraph):
        refuse_overwrite(src, output, max_shard_size=max_shard_size)  # before any work: never write over the source
    mapping = load_map(mapping)  # a bad map is refused before any checkpoint is opened
    src_graph, dst_graph = load(src, unsafe_pickle=unsafe_pickle), load(dst, unsafe_pickle=unsafe_pickle)
    evidence = []
    if probe:
        mapping, evidence = _probe(src_graph, dst_graph, mapping, factory=factory, input_shape=input_shape,
                                   freeze=freeze, match=match)
    try:
        result = transplant_graphs(src_graph, dst_graph, mapping, freeze=freeze, strict=strict, match=match)
    except StrictError as exc:
        exc.plan.probed = evidence
        raise
    result.plan.probed = evidence
    settled = {s: e for e in evidence for s in [*e.settled.get("layers", {}), *e.settled.get("flatten", {})]}
    for pair in result.plan.pairs:
        if pair.source in settled:
            pair.rule = f"--probe: {settled[pair.source].summary()}"
    if dry_run and output is not None:
        result.write_plan = plan_write(result.graph, output, max_shard_size=max_shard_size,
                                       sources=(result.plan.src, result.plan.dst))
    if dry_run or output is None:
        return result
    save(result, output, max_shard_size=max_shard_size, quiet=quiet, tensor_hashes=report is not None)
    if verify:
        result.proof = verify_transplant(result, factory=factory, input_shape=input_shape)
    if report is not None:
        write_report(result, report)
    return result


def _probe(src: LayerGraph, dst: LayerGraph, mapping: Any, **options: Any) -> tuple[Any, list]:
    """The map with what running both networks settles (``proof/probe.py``), and the evidence."""
    from .proof.probe import probe

    return probe(src, dst, mapping, **options)


def diff(a: Any, b: Any, *, unsafe_pickle: bool = False) -> DiffReport:
    """Compare two checkpoints tensor by tensor."""
    return _diff(load(a, unsafe_pickle=unsafe_pickle), load(b, unsafe_pickle=unsafe_pickle))


def convert(src: Any, out: "str | os.PathLike", *, max_shard_size: int | None = None, quiet: bool = True,
            unsafe_pickle: bool = False, jobs: int = 1, ranks: bool = False) -> list[str]:
    """Write the same weights in another format, under canonical names and layout.

    Returns the files written. The format comes from ``out``'s suffix.

    Args:
        jobs: worker processes that write the output: each shard of a sharded safetensors
            one (``max_shard_size``), each run of tensors of a single safetensors file, or
            each data file of a DCP folder, read, converted and written by one; the index
            (the file's header, the DCP's ``.metadata``) is written by this process, which
            commits the output last.
        ranks: this process is one rank of a ``torchrun`` job (``torch.distributed``, gloo):
            the ranks split the shards or parts, rank 0 commits. Every rank must call
            ``convert`` with the same arguments; rank 0 returns the files, the others ``[]``.
            Not automatic in the API: a script that converts on rank 0 only would wait forever.

    Example:
        >>> surgery.convert("pytorch_model.bin", "model.safetensors")  # doctest: +SKIP
        >>> surgery.convert("ckpt/step-1000/", "hf/model.safetensors", max_shard_size=5 * 10**9, jobs=4)  # doctest: +SKIP
    """
    if jobs > 1 or ranks:
        _splittable(out, "under torchrun" if ranks else f"--jobs {jobs}")
    if ranks:
        return _convert_by_ranks(src, out, max_shard_size=max_shard_size, quiet=quiet, unsafe_pickle=unsafe_pickle)
    if not isinstance(src, LayerGraph):
        refuse_overwrite(src, out, max_shard_size=max_shard_size)  # before any work: never write over the source
    graph = load(src, unsafe_pickle=unsafe_pickle)
    split = None
    if jobs > 1:
        from .parallel import Workers, source_of

        split = Workers(graph, source_of(graph, unsafe_pickle), jobs)
    return save(graph, out, max_shard_size=max_shard_size, quiet=quiet, source=graph.path, split=split)


def _splittable(out: "str | os.PathLike", how: str) -> None:
    """Refuse, before any work, a split write of an output that is not split."""
    if getattr(formats.module(formats.for_output(os.fspath(out))), "SPLITS", False):
        return
    raise SurgeryError(f"{os.fspath(out)}: {how} splits the writing of a safetensors output (one file, or its "
                       "shards with --max-shard-size) or of a DCP folder (one data file per process) between "
                       "processes: name such an output, or run it as one process")


def _convert_by_ranks(src: Any, out: "str | os.PathLike", *, max_shard_size: int | None, quiet: bool,
                      unsafe_pickle: bool) -> list[str]:
    from .parallel import Ranks

    def read() -> LayerGraph:
        if not isinstance(src, LayerGraph):
            refuse_overwrite(src, out, max_shard_size=max_shard_size)
        return load(src, unsafe_pickle=unsafe_pickle)

    team = Ranks()
    try:
        graph = team.agree(read)
        if not team.leads:
            team.follow()
            return []
        return team.lead(lambda split: save(graph, out, max_shard_size=max_shard_size, quiet=quiet,
                                            source=graph.path, split=split))
    finally:
        team.close()


def convert_plan(src: Any, out: "str | os.PathLike", *, max_shard_size: int | None = None,
                 unsafe_pickle: bool = False, processes: int = 1) -> WritePlan:
    """What ``convert`` would write (files, bytes, tensors) and the memory it would need, from headers alone.

    Raises the errors ``convert`` would raise before writing (unknown output format, the
    source as output, a write the output format refuses). With ``processes`` (``jobs``,
    or the ranks of a ``torchrun`` job), also each process's share and peak memory.

    Example:
        >>> print(surgery.convert_plan("ckpt/step-1000", "hf/model.safetensors", max_shard_size=5 * 10**9))  # doctest: +SKIP
    """
    if processes > 1:
        _splittable(out, f"splitting the work across {processes} processes")
    graph = load(src, unsafe_pickle=unsafe_pickle)
    if graph.path:
        refuse_overwrite(graph.path, out)
    return plan_write(graph, out, max_shard_size=max_shard_size, processes=processes)


def verify_transplant(result: Transplant, *, factory: str | None = None, input_shape: Any = None,
                      rtol: float = 1e-4, atol: float = 1e-5) -> Any:
    """Prove a saved transplant's output computes what its source computed; the verdict goes into its record.

    Returns the VerifyReport (``bool(report)`` is the verdict). Layers are compared too,
    so a mismatch names the first layer that diverges.
    """
    from .apply import write_record
    from .proof.verify import verify

    if result.output is None:
        raise SurgeryError("verify: save the transplant first (surgery.save)")
    report = verify(result.output, against=result.plan.src.path, factory=factory, input_shape=input_shape,
                    rtol=rtol, atol=atol, layers=True, pairs=f"{result.output}.surgery.json")
    result.verify = report.to_dict()
    write_record(result, result.output)
    return report


def load_into(model: Any, path: Any, mapping: Any = None, *, freeze: Iterable[str] = (), strict: bool = True,
              unsafe_pickle: bool = False) -> Transplant:
    """Copy a checkpoint's weights into a live ``torch.nn.Module`` (or ``keras.Model``) and freeze layers.

    Returns the Transplant, whose plan says what was copied and what was not.

    Example:
        >>> surgery.load_into(net, "vgg16.h5", mapping="map.yaml", freeze=["features.*"])  # doctest: +SKIP
    """
    from . import live

    return live.load_into(model, path, mapping, freeze=freeze, strict=strict, unsafe_pickle=unsafe_pickle)


def freeze(model: Any, globs: Iterable[str]) -> list[str]:
    """Freeze a live model's layers by glob (``requires_grad=False`` / ``trainable=False``)."""
    from . import live

    return live.freeze(model, globs)


__all__ = ["load", "plan", "transplant", "save", "convert", "convert_plan", "diff", "verify_transplant", "load_into", "freeze", "StrictError"]
