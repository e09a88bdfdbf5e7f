"""A live ``torch.nn.Module`` as a LayerGraph, weights copied into it, layers frozen.

Importing this module imports torch; ``surgery.load_into`` imports it only when
it is handed a torch module.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

import torch

from ..errors import SurgeryError
from ..formats.torch.common import dtype_name, to_numpy, to_tensor
from ..graph import LayerGraph, Param
from ..kinds import group, torch_class_kind

def _kind(module: torch.nn.Module) -> str | None:
    """A live module's kind from its class or a base class (``kinds.TORCH_MODULE_KINDS``)."""
    return torch_class_kind(cls.__name__ for cls in type(module).__mro__)


def _attrs(module: torch.nn.Module) -> dict[str, Any]:
    attrs = {}
    for name in ("eps", "momentum", "groups"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)):
            attrs[name] = value
    for name in ("padding", "stride", "dilation"):
        value = getattr(module, name, None)
        if isinstance(value, (tuple, str)):
            attrs[name] = list(value) if isinstance(value, tuple) else value
    return attrs


def graph_of(module: torch.nn.Module) -> LayerGraph:
    """The module's state as a LayerGraph whose params read the live tensors."""
    state = module.state_dict(keep_vars=True)
    params = {k: Param(t.shape, dtype_name(t.dtype), lambda t=t: to_numpy(t.detach()), key=k)
              for k, t in state.items()}
    layers = group(params)
    modules = dict(module.named_modules())
    for layer in layers:
        owner = modules.get(layer.name)
        if owner is not None and _kind(owner):
            layer.kind = _kind(owner)
            layer.attrs.pop("kind_from", None)
            layer.attrs.update(_attrs(owner))
        layer.frozen = bool(layer.params) and owner is not None and not any(p.requires_grad for p in owner.parameters())
    return LayerGraph(layers, path=None, format="live-torch")


def assign(module: torch.nn.Module, values: dict[str, Any]) -> None:
    """Copy ``full name -> numpy array`` into the module's tensors in place."""
    state = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, arr in values.items():
            target = state[key]
            value = to_tensor(arr)
            if tuple(value.shape) != tuple(target.shape):
                raise SurgeryError(f"{key}: value has shape {list(value.shape)}, module expects {list(target.shape)}")
            target.copy_(value.to(target.dtype))


def set_attrs(module: torch.nn.Module, graph: LayerGraph) -> list[str]:
    """Apply ``layer.attrs["set"]`` of a transplant's graph (the source's BatchNorm eps); returns what was set."""
    done = []
    named = dict(module.named_modules())
    for layer in graph:
        wanted = layer.attrs.get("set") or {}
        owner = named.get(layer.name)
        for key in ("eps", "momentum"):  # both in PyTorch's meaning already
            if key in wanted and owner is not None and hasattr(owner, key):
                setattr(owner, key, float(wanted[key]))
                done.append(f"{layer.name}: {key} = {wanted[key]}")
    return done


def _hold_eval(module: torch.nn.Module, _inputs: Any) -> None:
    # A frozen BatchNorm normalises with its running statistics and never updates them,
    # whatever mode the rest of the network is in (what timm's freeze achieves).
    module.training = False


def freeze(module: torch.nn.Module, globs: Iterable[str]) -> list[str]:
    """Freeze every submodule whose name matches a glob; returns the names frozen.

    Parameters get ``requires_grad=False``; BatchNorm layers inside also stop
    updating their running statistics (they stay in eval mode during training).
    """
    globs = list(globs)
    named = dict(module.named_modules())
    for g in globs:
        if not any(fnmatch.fnmatchcase(n, g) for n in named if n):
            raise SurgeryError(f"freeze: {g!r} matches no submodule of {type(module).__name__}")
    frozen = [n for n in named if n and any(fnmatch.fnmatchcase(n, g) for g in globs)]
    for name in frozen:
        for sub in named[name].modules():
            for p in sub.parameters(recurse=False):
                p.requires_grad_(False)
            if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and not getattr(sub, "_surgery_frozen", False):
                sub.register_forward_pre_hook(_hold_eval)
                sub._surgery_frozen = True
                sub.eval()
    return frozen
