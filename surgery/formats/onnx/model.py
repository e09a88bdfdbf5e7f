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

import hashlib
import os
from typing import Any, Iterator

import numpy as np

from .. import template_of
from ...errors import fail
from ...graph import Layer, LayerGraph, Param
from ...kinds import fold_attention_outputs
from .external import ExternalCopies, Source, atomic_target, np_dtype, surgery_dtype
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


def write(graph: LayerGraph, path: str, *, template: str | None = None, target: str | None = None, **options: Any) -> None:
    """Write ``graph``'s tensors into a copy of an ONNX template model.

    Args:
        graph: canonical tensors, named as ``read(template)`` names them.
        path: the output file (usually a temporary file beside the target).
        template: the model whose graph is kept; default ``graph.path`` when
            ``graph`` was read from an ONNX file.
        target: the final output path, when ``path`` is a temporary file.

    Raises:
        FormatError: no template, a tensor the template lacks, a shape or dtype
            that differs from the template's initializer.
    """
    template = template_of(graph, "onnx", template, path, {"target": target, **options}, TEMPLATE)
    model, specs, source, _, _ = scan_model(template)
    where = _where(graph, template, specs)
    inits = {slot.tensor.name: slot.tensor for slot, _ in where.values()}  # initializers and Constant tensors
    final = target or atomic_target(path) or path
    with ExternalCopies(source, os.path.dirname(os.path.abspath(path)), template, final) as copies:
        for name, native in _natives(graph, template, where, source):  # one initializer at a time
            if name in source.external:
                copies.patch(name, native)
            else:
                _replace_internal(inits[name], native)
        for tensor in all_initializers(model):
            copies.relocate(tensor)
        with open(path, "wb") as f:
            f.write(model.SerializeToString())


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


