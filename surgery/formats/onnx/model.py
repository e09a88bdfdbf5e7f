"""ONNX models (``.onnx``), with or without external data.

Read: the initializers (and the tensors of ``Constant`` nodes, in the main graph, in
``If``/``Loop``/``Scan`` bodies and in model-local functions), each attributed to the node that consumes it, which
also gives the layer kind (``Conv`` -> conv, ``Gemm``/``MatMul`` -> dense,
``LSTM``/``GRU`` -> rnn with PyTorch gate orders...). External data is
validated up front (inside the model's folder, within the file) and read
lazily, memory-mapped. Write: the initializers of a template model are
replaced in place, converted back to each one's ONNX layout; the graph is
untouched and external data stays external.

Which node makes which layer is ``scan``; the layout rules are in ``slots``, external
data in ``external``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
from typing import Any, Iterator

import numpy as np

from .. import template_of
from ...errors import SurgeryError, fail
from ...io import atomic_path, folder_lock
from ...graph import Layer, LayerGraph, Param
from ...kinds import fold_attention_outputs
from .external import TMP_SUFFIX, ExternalCopies, Source, generation_stem, np_dtype, surgery_dtype
from .scan import LayerSpec, all_initializers, scan_model
from .slots import Slot

SUFFIXES = (".onnx",)
TEMPLATE = "an ONNX model"   # written over one of these (its structure kept): formats.template_of

def sniff(path: str) -> bool:
    """An ``.onnx`` file; parsing the protobuf to be sure would cost a full read."""
    return os.path.isfile(path) and path.lower().endswith(SUFFIXES)


def read(path: str, **options: Any) -> LayerGraph:
    """Read an ONNX model's initializers as canonical layers, lazily.

    Raises:
        FormatError: unparsable or truncated file, external data outside the
            model's folder or past the end of its file.
    """
    _, specs, source, notes, left_out = scan_model(path)
    layers = {}
    for spec in specs:
        layer = Layer(spec.name, spec.kind, attrs=dict(spec.attrs))
        for role, (slot, k) in spec.roles.items():
            layer.params[role] = _param(source, slot, k)
        layers[layer.name] = layer
    fold_attention_outputs(layers)  # out_proj belongs to its attention layer, as in a state_dict
    graph = LayerGraph(layers.values(), path=path, format="onnx", meta={"external_data": sorted(
        {os.path.relpath(f, source.folder) for f, _, _ in source.external.values()})})
    graph.notes.extend(notes)
    graph.left_out.update(left_out)
    return graph


def _param(source: Source, slot: Slot, k: int) -> Param:
    piece = slot.pieces[k]
    tensor = slot.tensor
    ident = tensor.name if len(slot.pieces) == 1 else (tensor.name, k)
    return Param(
        piece.shape, surgery_dtype(tensor), lambda: piece.fwd(source.load(tensor)),
        key=tensor.name, layout=piece.layout, ident=ident,
    )


MULTI_FILE = True   # the model and its external data files: write() commits them itself


def write(graph: LayerGraph, path: str, *, template: str | None = None, **options: Any) -> None:
    """Write ``graph``'s tensors into a copy of an ONNX template model, at ``path``.

    External data stays external: the template's data files are copied beside the output with the
    new tensors patched in, under names no existing file has (``ExternalCopies``), then the model is
    renamed into place. That rename is the commit: until then the old model at ``path`` reads its old,
    untouched data. The data files it named that the new one does not are removed after it, unless
    another model in the folder names them. ONNX writes in one folder take turns (a lock on it), so
    whatever a killed write left (a data file no model names, a temporary copy) is removed by the next.

    Args:
        graph: canonical tensors, named as ``read(template)`` names them.
        path: the output file.
        template: the model whose graph is kept; default ``graph.path`` when
            ``graph`` was read from an ONNX file.

    Raises:
        FormatError: no template, a tensor the template lacks, a shape or dtype
            that differs from the template's initializer.
    """
    template = template_of(graph, "onnx", template, path, options, TEMPLATE)
    final = os.path.abspath(path)
    folder = os.path.dirname(final)
    os.makedirs(folder, exist_ok=True)
    with folder_lock(folder):
        _sweep_data(folder, final)
        superseded = _data_files(final) if os.path.isfile(final) else set()
        written: list[str] = []
        try:
            with atomic_path(final) as tmp:
                written = _write_model(graph, tmp, final, template)
        except BaseException:
            for file in written:   # renamed to new names, but never named by a model on disk
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(file)
            raise
        for file in sorted(superseded - set(written) - _named_by_others(folder, final)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file)


def _write_model(graph: LayerGraph, path: str, final: str, template: str) -> list[str]:
    """The model into ``path``, its data files to their new names beside ``final``; returns those files."""
    model, specs, source, _, _ = scan_model(template)
    where = _where(graph, template, specs)
    inits = {slot.tensor.name: slot.tensor for slot, _ in where.values()}  # initializers and Constant tensors
    copies = ExternalCopies(source, os.path.dirname(final), template, final)
    with copies:
        for name, native in _natives(graph, template, where, source):  # one initializer at a time
            if name in source.external:
                copies.patch(name, native)
            else:
                _replace_internal(inits[name], native)
        for tensor in all_initializers(model):
            copies.relocate(tensor)
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
    return [out for _, out in copies.tmps.values()]


def _data_files(model: str) -> set[str] | None:
    """The external data files a model on disk names (real paths); None when it cannot be read."""
    try:
        return {file for file, _, _ in scan_model(model)[2].external.values()}
    except SurgeryError:
        return None


def _named_by_others(folder: str, final: str) -> set[str]:
    """Every data file another model in ``folder`` names; if one cannot be read, every file of the folder."""
    named: set[str] = set()
    for other in glob.glob(os.path.join(glob.escape(folder), "*.onnx")):
        if os.path.abspath(other) == final:
            continue
        files = _data_files(other)
        if files is None:   # cannot tell what it names: remove nothing
            return {os.path.realpath(os.path.join(folder, f)) for f in os.listdir(folder)}
        named |= files
    return named


def _sweep_data(folder: str, final: str) -> None:
    """Remove what a killed write of ``final`` left: temporary copies, and its superseded data files.

    A superseded file is a generation sibling (``x.onnx.data``, ``x.onnx.gen2.data``) of a data file
    the model at ``final`` names that no model in the folder names any more: a kill between the
    commit and the removal. The caller holds the folder's lock, so no live write is in progress.
    """
    for tmp in glob.glob(os.path.join(glob.escape(folder), f"*{TMP_SUFFIX}")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    mine = _data_files(final) if os.path.isfile(final) else None
    if not mine:
        return
    named = mine | _named_by_others(folder, final)
    stems = {generation_stem(os.path.relpath(f, folder)) for f in mine}
    for path in glob.glob(os.path.join(glob.escape(folder), "**", "*"), recursive=True):
        real = os.path.realpath(path)
        if os.path.isfile(path) and real not in named and generation_stem(os.path.relpath(path, folder)) in stems:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _where(graph: LayerGraph, template: str, specs: list[LayerSpec]) -> dict[str, tuple[Slot, int]]:
    """Canonical key -> (slot, piece) of the template; refuses keys the template lacks."""
    where = {Layer(s.name).key(role): (slot, k) for s in specs for role, (slot, k) in s.roles.items()}
    unknown = [key for key, _ in graph.tensors() if key not in where]
    if unknown:
        raise fail(template, f"the ONNX template has no tensor for {', '.join(unknown[:5])}"
                   + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    return where


def _natives(graph: LayerGraph, template: str, where: dict[str, tuple[Slot, int]],
             source: Source) -> Iterator[tuple[str, np.ndarray]]:
    """``(initializer name, native array)`` for every initializer the graph gives a value for."""
    new = dict(graph.tensors())
    slots = {id(slot): slot for slot, _ in where.values()}
    keys = {(id(slot), k): key for key, (slot, k) in where.items()}
    written: dict[str, tuple[str, str]] = {}   # initializer -> (sha256 of what was written, for which key)
    for sid, slot in slots.items():
        if not any(keys[(sid, k)] in new for k in range(len(slot.pieces))):
            continue
        pieces = []
        for k, piece in enumerate(slot.pieces):
            key = keys[(sid, k)]
            arr = new[key].read() if key in new else piece.fwd(source.load(slot.tensor))
            if tuple(arr.shape) != piece.shape or arr.dtype != np_dtype(slot.tensor):
                raise fail(template, f"{key}: ONNX initializer {slot.tensor.name!r} needs "
                           f"{surgery_dtype(slot.tensor)}{list(piece.shape)}, got {arr.dtype}{list(arr.shape)}")
            pieces.append(arr)
        native = np.ascontiguousarray(slot.back(pieces))
        digest = hashlib.sha256(native.reshape(-1).view(np.uint8)).hexdigest()
        first = written.setdefault(slot.tensor.name, (digest, keys[(sid, 0)]))
        if first[0] != digest:
            raise fail(template, f"{first[1]} and {keys[(sid, 0)]} are one stored tensor {slot.tensor.name!r} in the "
                                 "ONNX template (the exporter kept equal values once) but now differ; export the "
                                 "destination with distinct values, or write a PyTorch or safetensors output")
        if first[1] == keys[(sid, 0)]:
            yield slot.tensor.name, native


def _replace_internal(tensor: Any, arr: np.ndarray) -> None:
    from onnx import numpy_helper

    tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))


