"""What verify needs of a network it runs: the ``Runner`` protocol its backends implement.

One backend per framework (``proof/torch.py``, ``proof/keras.py``, ``proof/onnx.py``),
imported on first use; ``verify.py`` sees only this protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

InputSpec = tuple[str, "tuple[int | None, ...] | None", Any]   # name, declared shape, numpy scalar type
Output = tuple[str, np.ndarray]
# One traced layer: its name, its input (None where the backend cannot see it), its output.
Trace = tuple[str, "np.ndarray | None", np.ndarray]


class Runner(Protocol):
    """A network surgery can feed and run, natively or through ONNX Runtime."""

    framework: str              # "torch", "keras", "onnx"
    label: str                  # how reports name it (a path, or "factory ... + weights")
    data_format: str | None     # "channels_first", "channels_last", or None when it has no spatial input

    def input_specs(self) -> list[InputSpec]:
        """The inputs the network declares, in order."""
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> list[Output]:
        """The network's outputs for ``feeds``."""
        ...

    def trace(self, feeds: dict[str, np.ndarray]) -> list[Trace]:
        """Every layer's output for ``feeds``, in execution order (``verify --layers``)."""
        ...


class NativeRunner(Runner, Protocol):
    """A network run by its own framework: it can also describe its layers and export itself to ONNX."""

    def layer_params(self, name: str) -> dict[str, Any]:
        """Canonical params (numpy) and arithmetic attributes of one layer, for the report's hints."""
        ...

    def export_onnx(self, path: str, feeds: dict[str, np.ndarray]) -> str:
        """Export to ONNX at ``path``; returns how (exporter name) for the report."""
        ...
