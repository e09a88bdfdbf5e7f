"""TorchScript archives (``torch.jit.save``): weights and architecture.

Recognised by content: a zip with a ``<name>/code/`` folder (a plain
``state_dict`` zip has none). Read with ``torch.jit.load(map_location="cpu")``,
which compiles the archive's TorchScript code (its own restricted language,
not pickled Python objects): that code defines the module but no Python runs.
The module hierarchy gives the layers, in registration order, and each
submodule's ``original_name`` (``Conv2d``, ``Linear``...) its kind.

Write: the template archive (the file the graph was read from) is loaded, its
parameters and buffers are overwritten in place, and it is saved again, so
the result is the same program with new weights.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

from .. import template_of, zip_names
from ...errors import fail
from ...graph import Layer, LayerGraph, tied_notes
from ...kinds import TORCH_MODULE_KINDS, fold_attention_outputs, infer_kind
from .common import dtype_name, is_code_member, tensor_param, to_tensor

SUFFIXES = (".ts", ".torchscript")
TEMPLATE = "a TorchScript archive"   # written over one of these (its structure kept): formats.template_of

# Attributes that change a layer's arithmetic, copied when the module has them.
ATTRS = ("eps", "momentum", "groups", "stride", "padding", "dilation", "padding_idx",
         "hidden_size", "num_layers", "bidirectional", "batch_first", "num_heads")


def sniff(path: str) -> bool:
    """A zip whose members include ``<name>/code/``: TorchScript's compiled source."""
    return any(is_code_member(n) for n in zip_names(path) or ())


def load(path: str) -> Any:
    """``torch.jit.load`` on CPU; any failure becomes a FormatError naming the file."""
    import torch

    if not sniff(path):
        raise fail(path, "not a TorchScript archive (a zip with a code/ folder, as torch.jit.save writes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 nudges towards torch.export
            return torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError, ValueError, zip errors...: all mean a bad archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(path, f"torch.jit.load could not read this TorchScript archive: {first}") from None


def read(path: str, **options: Any) -> LayerGraph:
    """Read a TorchScript archive's parameters and buffers as layers in registration order.

    Raises:
        FormatError: not a TorchScript archive, or one torch cannot load.
    """
    module = load(path)
    layers = layers_of_modules(module.named_modules(), lambda m: m.original_name)
    return LayerGraph(layers, path=path, format="torchscript", meta={"notes": tied_notes(LayerGraph(layers).tensors())})


def layers_of_modules(named_modules: Iterable[tuple[str, Any]], class_name) -> list[Layer]:
    """One layer per module that owns tensors; root tensors each become a layer of their own."""
    layers = []
    for name, mod in named_modules:
        weights = [t for _, t in mod.named_parameters(recurse=False) if t is not None]
        own = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        own = [(role, t) for role, t in own if t is not None]
        if not own:
            continue
        if not name:  # tensors on the root module: no layer to belong to
            layers.extend(Layer(role, "unknown", {"": tensor_param(role, t)}) for role, t in own)
            continue
        params = {role: tensor_param(f"{name}.{role}", t) for role, t in own}
        kind = TORCH_MODULE_KINDS.get(class_name(mod)) or infer_kind(name, params)
        attrs = {a: _plain(getattr(mod, a)) for a in ATTRS if _has(mod, a)}
        frozen = bool(weights) and not any(t.requires_grad for t in weights)
        layers.append(Layer(name, kind, params, attrs, frozen=frozen))
    by_name = {layer.name: layer for layer in layers}
    fold_attention_outputs(by_name)  # nn.MultiheadAttention's out_proj is part of it, as in a state_dict
    return list(by_name.values())


def _has(mod: Any, attr: str) -> bool:
    try:
        value = getattr(mod, attr)
    except Exception:  # scripted modules raise RuntimeError for attributes they do not carry
        return False
    return isinstance(value, (int, float, bool, str, tuple, list))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def replace_tensors(origin: str, live: dict[str, Any], graph: LayerGraph, weights: set[str]) -> None:
    """Copy every tensor of ``graph`` into the matching live tensor, checking shape and dtype.

    Parameters (``weights``) of a frozen layer are saved with ``requires_grad=False``,
    the others with ``True``, so the archive carries the freeze.
    """
    import torch

    unknown = [key for key, _ in graph.tensors() if key not in live]
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise fail(origin, f"the template has no tensor named {', '.join(unknown[:5])}{more}")
    with torch.no_grad():
        for key, param in graph.tensors():
            target, arr = live[key], param.read()
            new = to_tensor(arr)
            if tuple(new.shape) != tuple(target.shape) or new.dtype != target.dtype:
                raise fail(origin, f"{key}: the template holds {dtype_name(target.dtype)}"
                           f"{list(target.shape)}, the graph gives {param.dtype}{list(param.shape)}")
            target.copy_(new)
    for layer in graph:
        for role in layer.params:
            if layer.key(role) in weights:
                live[layer.key(role)].requires_grad_(not layer.frozen)


def write(graph: LayerGraph, path: str, *, template: str | None = None, **options: Any) -> None:
    """Save a copy of the template archive with ``graph``'s tensors in place of its own.

    Args:
        graph: canonical tensors named as ``read(template)`` names them.
        template: the archive whose program is kept; default ``graph.path``
            when ``graph`` was read from a TorchScript archive.

    Raises:
        FormatError: no template, or a tensor it lacks or holds with another shape/dtype.
    """
    import torch

    template = template_of(graph, "torchscript", template, path, options, TEMPLATE)
    module = load(template)
    live = {}
    for layer in layers_of_modules(module.named_modules(), lambda m: m.original_name):
        for role in layer.params:
            live[layer.key(role)] = _live(module, layer.key(role))
    weights = {name for name, _ in module.named_parameters()}
    replace_tensors(template, live, graph, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, path)


def _live(module: Any, key: str) -> Any:
    """The live tensor a dotted name points at in a scripted module."""
    owner, _, name = key.rpartition(".")
    mod = module
    for part in filter(None, owner.split(".")):
        mod = getattr(mod, part)
    return getattr(mod, name)
