"""Running a PyTorch network natively, tracing its layers, exporting it to ONNX.

``torch`` is imported inside the functions that use it. Arrays in and out are
numpy; module outputs (a tensor, a tuple, a dict) are flattened in order.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import sys
import warnings
from typing import Any, Iterator

import numpy as np

from ..errors import SurgeryError, fail, first_line

# Module types whose presence means the network computes channels-first.
_SPATIAL = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
            "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "BatchNorm3d")


def is_module(obj: Any) -> bool:
    """Whether ``obj`` is a live ``torch.nn.Module`` (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def sniff_archive(path: str) -> str | None:
    """``"torchscript"`` or ``"exported_program"`` for those archives (by the format registry), else None."""
    from ..errors import SurgeryError
    from ..formats import detect

    try:
        name = detect(path)
    except SurgeryError:
        return None
    return name if name in ("torchscript", "exported_program") else None


def load_archive(path: str, kind: str) -> Any:
    """A TorchScript module or an ExportedProgram from its archive."""
    import torch

    try:
        if kind == "torchscript":
            return torch.jit.load(path, map_location="cpu")
        return torch.export.load(path)
    except Exception as exc:
        raise fail(path, f"cannot load this {kind} archive: {first_line(exc)}") from None


def load_weights(module: Any, path: str) -> str:
    """Load a checkpoint into a live module; returns how it was loaded.

    A torch ``state_dict`` or a ``.safetensors`` file is loaded strictly, as
    it is, so what runs is exactly what the file holds; any other format goes
    through ``surgery.load_into`` (mapping and layout conversion).
    """
    import torch

    lowered = path.lower()
    try:
        if lowered.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        elif lowered.endswith((".pt", ".pth", ".bin", ".ckpt")):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            return _load_into(module, path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        module.load_state_dict(state, strict=True)
    except SurgeryError:
        raise
    except Exception as exc:
        raise fail(path, f"cannot load it into the factory's network: {first_line(exc)}") from None
    return "state_dict (strict)"


def _load_into(module: Any, path: str) -> str:
    from ..live import load_into

    load_into(module, path)
    return "surgery.load_into"


class TorchRunner:
    """A ``torch.nn.Module``, TorchScript module or ExportedProgram, run on CPU in eval mode."""

    framework = "torch"

    def __init__(self, model: Any, label: str) -> None:
        import torch

        self.program = model if isinstance(model, torch.export.ExportedProgram) else None
        self.module = self.program.module() if self.program is not None else model
        if self.program is None:
            self.module.eval()
        self.label = label
        self.scripted = isinstance(self.module, torch.jit.ScriptModule)
        self.data_format = "channels_first" if self._spatial() else None

    def _spatial(self) -> bool:
        for sub in self.module.modules():
            name = getattr(sub, "original_name", None) or type(sub).__name__
            if name in _SPATIAL:
                return True
        if self.program is not None:
            return any("conv" in str(n.target) for n in self.program.graph.nodes)
        return False

    def input_specs(self) -> list[tuple[str, tuple[int | None, ...] | None, Any]]:
        """Inputs by name; shapes only where the archive recorded them (an ExportedProgram)."""
        if self.program is not None:
            names = [s.arg.name for s in self.program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
            args = list(_flat_tensors(getattr(self.program, "example_inputs", None) or ()))
            if len(args) == len(names):
                return [(n, tuple(a.shape), _np_dtype(a)) for n, a in zip(names, args)]
            return [(n, None, np.float32) for n in names]
        return [(n, None, np.float32) for n in self._arg_names()]

    def _arg_names(self) -> list[str]:
        if self.scripted:
            return [a.name for a in self.module.forward.schema.arguments[1:]]
        params = inspect.signature(self.module.forward).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]

    def run(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """The module's outputs for ``feeds`` (passed positionally, in input order)."""
        import torch

        args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values())
        try:
            with torch.no_grad():
                out = self.module(*args)
        except Exception as exc:
            raise SurgeryError(f"{self.label}: the network failed on inputs "
                               f"{_shapes(feeds)}: {first_line(exc)}") from None
        return list(_flatten_outputs(out))

    def trace(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray | None, np.ndarray]]:
        """``(module path, first input, output)`` of every leaf module, in the order they ran."""
        if self.scripted or self.program is not None:
            raise SurgeryError(f"{self.label}: per-layer outputs need a live nn.Module (use --factory)")
        seen: list[tuple[str, np.ndarray | None, np.ndarray]] = []
        handles = []
        for name, sub in self.module.named_modules():
            if name and not any(True for _ in sub.children()):
                handles.append(sub.register_forward_hook(_recorder(name, seen)))
        try:
            self.run(feeds)
        finally:
            for h in handles:
                h.remove()
        return seen

    def layer_params(self, name: str) -> dict[str, Any]:
        """Canonical params (numpy) and arithmetic attributes of one module, for the report's hints."""
        sub = self.module.get_submodule(name)
        info: dict[str, Any] = {"kind": type(sub).__name__}
        info.update({k: v.detach().numpy() for k, v in sub.named_parameters(recurse=False)})
        info.update({k: v.detach().numpy() for k, v in sub.named_buffers(recurse=False) if v.is_floating_point()})
        if hasattr(sub, "eps"):
            info["eps"] = float(sub.eps)
        return info

    def export_onnx(self, path: str, feeds: dict[str, np.ndarray]) -> str:
        """Write the network as ONNX; returns which exporter did it.

        The dynamo exporter (``torch.export``) is the default and maintained one;
        a TorchScript module can only go through the TorchScript exporter, which
        is also the fallback when ``torch.export`` cannot capture a module.
        """
        import torch

        args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values())
        names = list(feeds)
        if self.program is not None:
            return _export(lambda: torch.onnx.export(self.program, f=path, dynamo=True), "dynamo (ExportedProgram)")
        if self.scripted:
            return _export(lambda: torch.onnx.export(self.module, args, path, dynamo=False, input_names=names),
                           "TorchScript exporter (dynamo=False)")
        try:
            return _export(lambda: torch.onnx.export(self.module, args, path, dynamo=True, input_names=names),
                           "dynamo (torch.export)")
        except SurgeryError as first:
            try:
                how = _export(lambda: torch.onnx.export(self.module, args, path, dynamo=False, input_names=names),
                              "TorchScript exporter (dynamo=False)")
            except SurgeryError:
                raise first from None
            return f"{how}, after torch.export failed: {first}"


def _export(call: Any, how: str) -> str:
    # The exporters print progress on stdout, log and warn freely; stdout is the report's.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            call()
    except Exception as exc:
        raise SurgeryError(f"ONNX export failed: {first_line(exc)}") from None
    finally:
        quiet.setLevel(level)
    return how


def _recorder(name: str, seen: list) -> Any:
    def hook(module: Any, args: tuple, output: Any) -> None:
        first = next(_flat_tensors(args), None)
        out = next(_flat_tensors(output), None)
        if out is not None:
            seen.append((name, None if first is None else first.detach().numpy().copy(), out.detach().numpy().copy()))
    return hook


def _flat_tensors(obj: Any) -> Iterator[Any]:
    if hasattr(obj, "detach"):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _flat_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _flat_tensors(item)


def _flatten_outputs(out: Any, prefix: str = "output") -> Iterator[tuple[str, np.ndarray]]:
    if hasattr(out, "detach"):
        yield prefix, out.detach().numpy()
    elif isinstance(out, dict):
        for key, item in out.items():
            yield from _flatten_outputs(item, f"{prefix}.{key}")
    elif isinstance(out, (list, tuple)):
        for i, item in enumerate(out):
            yield from _flatten_outputs(item, f"{prefix}.{i}")


def _np_dtype(tensor: Any) -> Any:
    return np.dtype(str(tensor.dtype).removeprefix("torch.")).type


def _shapes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
