"""surgery: move trained weights between networks and frameworks, with proof.

Importing this package imports numpy, yaml and click, and no framework:
each format imports torch, TensorFlow or ONNX inside the functions that need it.

Example:
    >>> import surgery
    >>> out = surgery.transplant("old.pt", "new.pt", mapping="map.yaml")  # doctest: +SKIP
    >>> surgery.save(out, "new.pt")                                       # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

# Public name -> the module that defines it. Resolved on first use (PEP 562), so
# `import surgery` and `surgery --help` load neither numpy's users nor any framework.
_EXPORTS = {
    "load": "api", "plan": "api", "transplant": "api", "save": "api", "convert": "api", "diff": "api",
    "convert_plan": "api", "load_into": "api", "freeze": "api", "StrictError": "api",
    "check": "proof.check", "verify": "proof.verify",
    "SurgeryError": "errors", "FormatError": "errors", "MapError": "errors", "PlanError": "errors",
    "Layer": "graph", "LayerGraph": "graph", "Param": "graph",
}

__all__ = [
    "FormatError", "Layer", "LayerGraph", "MapError", "Param", "PlanError", "StrictError", "SurgeryError",
    "__version__", "check", "convert", "convert_plan", "diff", "freeze", "load", "load_into", "plan", "save", "transplant", "verify",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'surgery' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .api import StrictError, convert, convert_plan, diff, freeze, load, load_into, plan, save, transplant
    from .errors import FormatError, MapError, PlanError, SurgeryError
    from .graph import Layer, LayerGraph, Param
    from .proof.check import check
    from .proof.verify import verify
