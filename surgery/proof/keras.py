"""Running a Keras 3 model natively, tracing its layers, exporting it to ONNX.

Keras (and TensorFlow under it) is imported inside the functions that use it.
Models load with ``safe_mode=True``: no lambda or pickled code from a file runs.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from typing import Any

import numpy as np

from ..errors import SurgeryError, fail, first_line
from ..layouts import kernel_axes

# Keras role name -> canonical (PyTorch) role name, for the report's hints.
_ROLES = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
          "moving_variance": "running_var", "bias": "bias", "embeddings": "weight"}


def _keras() -> Any:
    from ..quiet import quiet_keras

    return quiet_keras()


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a live ``keras.Model`` (without importing keras)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def is_whole_model(path: str) -> bool:
    """Whether a file holds a whole Keras model (``.keras``, or an ``.h5`` with ``model_config``)."""
    lowered = path.lower()
    if lowered.endswith(".keras"):
        return True
    if not lowered.endswith((".h5", ".hdf5")) or lowered.endswith(".weights.h5"):
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError as exc:
        raise fail(path, f"not a readable HDF5 file ({first_line(exc)})") from None


def load_model(path: str) -> Any:
    """A whole Keras model (``.keras`` or legacy ``.h5``), loaded in safe mode."""
    keras = _keras()
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise fail(path, f"cannot load it as a Keras model: {first_line(exc)}") from None


def load_weights(model: Any, path: str) -> str:
    """Load weights into a live Keras model; returns how."""
    if path.lower().endswith((".weights.h5", ".h5")):
        try:
            model.load_weights(path)
        except Exception as exc:
            raise fail(path, f"cannot load its weights into the factory's model: {first_line(exc)}") from None
        return "keras load_weights"
    from ..live import load_into

    load_into(model, path)
    return "surgery.load_into"


class KerasRunner:
    """A Keras model run with ``training=False``."""

    framework = "keras"

    def __init__(self, model: Any, label: str) -> None:
        self.model = model
        self.label = label
        formats = [getattr(layer, "data_format", None) for layer in _layers(model)]
        self.data_format = next((f for f in formats if f), None)

    def input_specs(self) -> list[tuple[str, tuple[int | None, ...] | None, Any]]:
        """Inputs from the model's own signature (``model.inputs``)."""
        try:
            inputs = self.model.inputs
        except (AttributeError, ValueError):
            return []
        return [(getattr(t, "name", f"input_{i}"), tuple(t.shape), np.dtype(t.dtype).type)
                for i, t in enumerate(inputs or [])]

    def run(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """The model's outputs for ``feeds`` (in input order)."""
        keras = _keras()
        try:
            out = _call(self.model, feeds)
        except Exception as exc:
            raise SurgeryError(f"{self.label}: the model failed on inputs "
                               f"{[list(a.shape) for a in feeds.values()]}: {first_line(exc)}") from None
        names = list(getattr(self.model, "output_names", None) or [])
        outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
        if len(names) != len(outs):
            names = [f"output.{i}" for i in range(len(outs))]
        return [(n, np.asarray(keras.ops.convert_to_numpy(o))) for n, o in zip(names, outs)]

    def trace(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray | None, np.ndarray]]:
        """``(layer name, input, output)`` of every layer, in the model's order."""
        keras = _keras()
        layers = [layer for layer in _layers(self.model) if type(layer).__name__ != "InputLayer"]
        try:
            probes = [t for layer in layers for t in (_first(layer.input), _first(layer.output))]
            probe = keras.Model(self.model.inputs, probes)
        except Exception as exc:
            raise SurgeryError(f"{self.label}: cannot read per-layer outputs of this model "
                               f"(a functional or Sequential model with an Input is needed): {first_line(exc)}") from None
        values = _call(probe, feeds)
        values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in values]
        return [(layer.name, values[2 * i], values[2 * i + 1]) for i, layer in enumerate(layers)]

    def layer_params(self, name: str) -> dict[str, Any]:
        """Canonical params (numpy) and arithmetic attributes of one layer, for the report's hints."""
        layer = self.model.get_layer(name)
        info: dict[str, Any] = {"kind": type(layer).__name__}
        for weight in layer.weights:
            role = weight.name.split("/")[-1].split(":")[0]
            arr = np.asarray(weight.numpy())
            if role == "kernel":
                arr = np.transpose(arr, kernel_axes(arr.ndim))
            info[_ROLES.get(role, role)] = arr
        if hasattr(layer, "epsilon"):
            info["eps"] = float(layer.epsilon)
        return info

    def export_onnx(self, path: str, feeds: dict[str, np.ndarray]) -> str:
        """Keras 3's own ONNX export; with the TensorFlow backend it needs ``tf2onnx``."""
        self.run(feeds)  # Keras exports only a model that has been called
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                self.model.export(path, format="onnx")
        except ImportError as exc:
            raise SurgeryError(f"Keras ONNX export is unavailable here ({first_line(exc)})") from None
        except Exception as exc:
            raise SurgeryError(f"Keras ONNX export failed: {first_line(exc)}") from None
        return "keras model.export(format='onnx')"


def _call(model: Any, feeds: dict[str, np.ndarray]) -> Any:
    arrays = list(feeds.values())
    with warnings.catch_warnings():
        # Keras warns when one input arrives bare rather than in a list; both work.
        warnings.simplefilter("ignore", UserWarning)
        return model(arrays if len(arrays) > 1 else arrays[0], training=False)


def _layers(model: Any) -> list[Any]:
    return list(getattr(model, "layers", []))


def _first(tensor: Any) -> Any:
    return tensor[0] if isinstance(tensor, (list, tuple)) else tensor
