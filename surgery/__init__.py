"""surgery: move trained weights between networks and frameworks, with proof.

Importing this package imports numpy, yaml and click, and no framework:
each format imports torch, TensorFlow or ONNX inside the functions that need it.

Example:
    >>> import surgery
    >>> out = surgery.transplant("old.pt", "new.pt", mapping="map.yaml")  # doctest: +SKIP
    >>> surgery.save(out, "new.pt")                                       # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import StrictError, convert, diff, freeze, load, load_into, plan, save, transplant
from .proof.check import check
from .errors import FormatError, MapError, PlanError, SurgeryError
from .graph import Layer, LayerGraph, Param
from .proof.verify import verify

__all__ = [
    "FormatError", "Layer", "LayerGraph", "MapError", "Param", "PlanError", "StrictError", "SurgeryError",
    "check", "convert", "diff", "freeze", "load", "load_into", "plan", "save", "transplant", "verify",
]
