"""Running an ONNX model: ONNX Runtime on CPU, the ``onnx`` reference evaluator,
and every intermediate tensor marked as an output (Polygraphy's "mark all").

``onnx`` and ``onnxruntime`` are imported inside the functions that use them.
Every array in and out is numpy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import SurgeryError, fail, first_line
from ..formats.onnx.scopes import module_path

# ONNX Runtime's type strings -> numpy, for the inputs it declares.
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def load_model(path: str) -> Any:
    """The ``onnx.ModelProto`` of ``path``, checked; external data loaded from its folder."""
    import onnx

    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
        raise fail(path, f"not a valid ONNX model ({type(exc).__name__}: {first_line(exc)})") from None
    return model




class OnnxRunner:
    """An ONNX model run by ONNX Runtime on CPU.

    Args:
        path: the ``.onnx`` file.
        label: how reports name it.
    """

    framework = "onnx"
    # ONNX operators are channels-first, but a converted Keras graph may take
    # NHWC inputs and transpose inside; verify fits inputs by their declared shapes.
    data_format = None

    def __init__(self, path: str, label: str | None = None) -> None:
        self.path = os.fspath(path)
        self.label = label or f"onnxruntime ({os.path.basename(self.path)})"
        self.model = load_model(self.path)
        self._session = _session(self.model.SerializeToString(), self.path)

    def input_specs(self) -> list[tuple[str, tuple[int | None, ...] | None, Any]]:
        """``(name, shape with None for free dims, numpy dtype)`` per graph input."""
        return [
            (i.name, tuple(d if isinstance(d, int) else None for d in i.shape), _ORT_TYPES.get(i.type, np.float32))
            for i in self._session.get_inputs()
        ]

    def output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """The graph outputs for ``feeds``, in graph order."""
        outs = _run(self._session, feeds, self.path)
        return list(zip(self.output_names(), outs))

    def run_reference(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """The same outputs from ``onnx.reference.ReferenceEvaluator``: a second, independent backend."""
        from onnx.reference import ReferenceEvaluator

        try:
            outs = ReferenceEvaluator(self.model).run(None, feeds)
        except Exception as exc:  # an operator the reference lacks, or a shape error
            raise SurgeryError(f"{self.path}: the ONNX reference evaluator failed: {first_line(exc)}") from None
        return [(name, np.asarray(out)) for name, out in zip(self.output_names(), outs)]

    def trace(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, None, np.ndarray]]:
        """Per-layer outputs in execution order: ``(layer, None, output)``.

        Every node output becomes a graph output; nodes are grouped into the
        module they came from (``torch.onnx`` records it) and a layer's output
        is the last tensor its nodes produce.
        """
        marked, owners = mark_all(self.model)
        session = _session(marked.SerializeToString(), self.path)
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, _run(session, feeds, self.path)))
        last: dict[str, str] = {}
        for tensor, layer in owners:
            last.pop(layer, None)  # re-insert so dict order is the order of each layer's last node
            last[layer] = tensor
        return [(layer, None, np.asarray(values[t])) for layer, t in last.items() if t in values]


def _session(data: bytes, path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise fail(path, f"ONNX Runtime cannot load it: {first_line(exc)}") from None


def _run(session: Any, feeds: dict[str, np.ndarray], path: str) -> list[np.ndarray]:
    try:
        return [np.asarray(o) for o in session.run(None, feeds)]
    except Exception as exc:  # wrong input names, shapes or dtypes
        raise SurgeryError(f"{path}: ONNX Runtime failed to run it: {first_line(exc)}") from None


def mark_all(model: Any) -> tuple[Any, list[tuple[str, str]]]:
    """A copy of ``model`` with every node output marked as a graph output.

    Returns the copy and ``(tensor, layer)`` for every node output that has a
    layer, in node (topological) order.
    """
    import onnx

    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    present = {o.name for o in marked.graph.output}
    owners = []
    for node in marked.graph.node:
        layer = node_layer(node)
        for tensor in node.output:
            if not tensor:
                continue
            if tensor not in present:
                # No type: ORT infers it, as Polygraphy's mark-all relies on.
                marked.graph.output.append(onnx.ValueInfoProto(name=tensor))
                present.add(tensor)
            if layer:
                owners.append((tensor, layer))
    return marked, owners


def node_layer(node: Any) -> str:
    """The module path a node belongs to, as the exporter recorded it; "" for the root; else the node's name."""
    path = module_path(node)
    return node.name if path is None else path
