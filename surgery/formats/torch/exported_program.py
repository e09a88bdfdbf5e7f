"""ExportedProgram archives (``.pt2``, ``torch.export.save``): weights and architecture.

Recognised by content: a zip with ``<name>/archive_format`` saying ``pt2`` and
a ``<name>/models/`` folder, as torch 2.13 writes it. Read with
``torch.export.load``, which rebuilds an FX graph from JSON (no pickled code).
The graph signature names every parameter and buffer; the ``nn_module_stack``
metadata of the nodes that use them gives each its module and class
(``Conv2d``, ``Linear``...), hence the layer kind; the first node that uses a
layer gives its place in the order.

Write: the template program's ``state_dict`` (and constants) are overwritten
in place and the program saved again with ``torch.export.save``.
"""

from __future__ import annotations

import zipfile
from typing import Any

from .. import template_of, zip_names
from ...errors import fail
from ...graph import Layer, LayerGraph, tied_notes
from ...kinds import TORCH_MODULE_KINDS, fold_attention_outputs, infer_kind, split_key
from .common import tensor_param
from .torchscript import replace_tensors

SUFFIXES = (".pt2",)
TEMPLATE = "an ExportedProgram (.pt2)"   # written over one of these (its structure kept): formats.template_of

# aten op -> {attribute: (argument index, default)}; the arguments that change the arithmetic.
_CONV = {"stride": (3, 1), "padding": (4, 0), "dilation": (5, 1), "groups": (6, 1)}
OP_ATTRS: dict[str, dict[str, tuple[int, Any]]] = {
    "conv1d": _CONV, "conv2d": _CONV, "conv3d": _CONV,
    "batch_norm": {"momentum": (6, 0.1), "eps": (7, 1e-5)},
    "_native_batch_norm_legit_no_training": {"momentum": (5, 0.1), "eps": (6, 1e-5)},
    "layer_norm": {"eps": (4, 1e-5)},
}


def sniff(path: str) -> bool:
    """A zip holding ``<name>/archive_format`` = ``pt2`` and a ``<name>/models/`` folder."""
    names = zip_names(path)
    if names is None:
        return False
    fmt = [n for n in names if n.count("/") == 1 and n.endswith("/archive_format")]
    has_models = any(n.split("/")[1:2] == ["models"] for n in names)
    if not (fmt and has_models):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(fmt[0]).strip() == b"pt2"
    except Exception:  # noqa: BLE001 - a damaged member: not this format
        return False


def load(path: str) -> Any:
    """``torch.export.load``; any failure becomes a FormatError naming the file."""
    import torch

    if not sniff(path):
        raise fail(path, "not an ExportedProgram archive (a .pt2 zip as torch.export.save writes)")
    try:
        return torch.export.load(path)
    except Exception as exc:  # deserialisation raises many types; all mean a bad archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(path, f"torch.export.load could not read this archive: {first}") from None


def _tensors(program: Any) -> dict[str, Any]:
    """Every parameter and buffer, by its module path, in graph-signature order."""
    from torch.export.graph_signature import InputKind

    out = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target is not None:
            store = program.state_dict if spec.target in program.state_dict else program.constants
            out[spec.target] = (spec.arg.name, store[spec.target])
    return out


def _weights(program: Any) -> set[str]:
    """The names of the program's parameters (not buffers)."""
    return set(program.graph_signature.parameters)


def _usage(program: Any) -> dict[str, tuple[int, str, str, dict[str, Any]]]:
    """Placeholder name -> (index of first node using it, module path, class name, arithmetic attrs)."""
    usage: dict[str, tuple[int, str, str, dict[str, Any]]] = {}
    for i, node in enumerate(program.graph.nodes):
        if node.op != "call_function":
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path, cls = stack[-1] if stack else ("", "")
        attrs = _op_attrs(node)
        for arg in node.all_input_nodes:
            if arg.op == "placeholder" and arg.name not in usage:
                usage[arg.name] = (i, str(path), str(cls).rsplit(".", 1)[-1], attrs)
    return usage


def _op_attrs(node: Any) -> dict[str, Any]:
    op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    table = OP_ATTRS.get(op, {})
    attrs = {}
    for name, (index, default) in table.items():
        value = node.args[index] if index < len(node.args) else node.kwargs.get(name, default)
        attrs[name] = list(value) if isinstance(value, (tuple, list)) else value
    return attrs


def read(path: str, **options: Any) -> LayerGraph:
    """Read an ExportedProgram's parameters and buffers as layers in graph order.

    Raises:
        FormatError: not a ``.pt2`` ExportedProgram, or one torch cannot load.
    """
    program = load(path)
    usage = _usage(program)
    layers: dict[str, Layer] = {}
    order: dict[str, int] = {}
    for target, (arg, tensor) in _tensors(program).items():
        name, role = split_key(target)
        index, module_path, cls, attrs = usage.get(arg, (len(program.graph.nodes), "", "", {}))
        layer = layers.setdefault(name, Layer(name))
        layer.params[role] = tensor_param(target, tensor)
        if module_path == name:  # the op belongs to this layer's own module (not a parent's functional call)
            layer.kind = TORCH_MODULE_KINDS.get(cls, layer.kind)
            layer.attrs.update(attrs)
        order[name] = min(order.get(name, index), index)
    fold_attention_outputs(layers)
    weights = _weights(program)
    for layer in layers.values():
        if layer.kind == "unknown":
            layer.kind = infer_kind(layer.name, layer.params)
        own = [program.state_dict[layer.key(r)] for r in layer.params if layer.key(r) in weights]
        layer.frozen = bool(own) and not any(t.requires_grad for t in own)
    ordered = sorted(layers.values(), key=lambda layer: order[layer.name])
    return LayerGraph(ordered, path=path, format="exported_program", meta={"notes": tied_notes(LayerGraph(ordered).tensors())})


def write(graph: LayerGraph, path: str, *, template: str | None = None, **options: Any) -> None:
    """Save a copy of the template program with ``graph``'s tensors as its weights.

    Args:
        graph: canonical tensors named as ``read(template)`` names them.
        template: the ``.pt2`` whose graph is kept; default ``graph.path`` when
            ``graph`` was read from one.

    Raises:
        FormatError: no template, or a tensor it lacks or holds with another shape/dtype.
    """
    import torch

    template = template_of(graph, "exported_program", template, path, options, TEMPLATE)
    program = load(template)
    live = {target: tensor for target, (_, tensor) in _tensors(program).items()}
    replace_tensors(template, live, graph, _weights(program))
    torch.export.save(program, path)
