"""surgery: move trained weights between networks and frameworks, with proof.

Importing this package imports numpy, yaml and click, and no framework:
each format imports torch, TensorFlow or ONNX inside the functions that need it.
"""

from __future__ import annotations

from .errors import FormatError, MapError, PlanError, SurgeryError
from .graph import Layer, LayerGraph, Param

__version__ = "0.1.0"

__all__ = [
    "FormatError", "Layer", "LayerGraph", "MapError", "Param", "PlanError", "SurgeryError",
]
