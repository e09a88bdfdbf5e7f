"""A live ``keras.Model`` as a canonical LayerGraph: read its weights, set them, freeze layers.

Keras is imported only by the functions that build or run models; these
functions take a model the caller already built, so they only touch its
layers and variables, converting at the boundary with ``keras_layers``.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Iterator

import numpy as np

from .. import dtypes
from ..formats.keras import layers as keras_layers
from ..formats.keras import native as keras_native
from ..errors import SurgeryError
from ..graph import Layer, LayerGraph, Param


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


# Classes whose sub-layers (an RNN's cell, attention's EinsumDense projections) are part of one canonical layer.
_UNITS = (*keras_layers.VARIABLE_ORDER, "MultiHeadAttention", "Bidirectional")


def named_layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(name, layer)`` for every layer holding weights, named as the Keras file readers name it.

    Models inside the model are flattened (their layers keep their own names); a layer that
    owns layers (a block, an encoder layer) names them ``block/inner``, as ``.weights.h5`` does.
    """
    for layer in getattr(model, "layers", []):
        if _is_model(layer):
            yield from named_layers(layer, prefix)
            continue
        name = prefix + layer.name
        inner = [] if type(layer).__name__ in _UNITS else _sublayers(layer)
        if not inner or _variables(layer):
            yield name, layer
        for sub in inner:
            yield from named_layers(_Holder(sub), f"{name}/")


class _Holder:
    """One layer seen as a container of one layer, so ``named_layers`` recurses uniformly."""

    def __init__(self, layer: Any) -> None:
        self.layers = [layer]


def _sublayers(layer: Any) -> list[Any]:
    # Keras 3 has no public list of the layers a layer tracks; its own saving walks this one.
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _variables(layer: Any) -> dict[str, Any]:
    """The layer's variables by Keras name; a layer owning layers contributes only its own."""
    if type(layer).__name__ == "Bidirectional":
        return {f"{side}/{v.path.rsplit('/', 1)[-1]}": v for side, inner in
                (("forward", layer.forward_layer), ("backward", layer.backward_layer)) for v in inner.weights}
    owned = set() if type(layer).__name__ in _UNITS else {id(v) for s in _sublayers(layer) for v in s.weights}
    return {keras_layers.var_name(v.path, layer.name): v for v in layer.weights if id(v) not in owned}


def _param(var: Any) -> Param:
    dtype = dtypes.get(str(var.dtype)).name
    return Param(tuple(var.shape), dtype, lambda: np.asarray(var.numpy()), key=var.path)


def graph_of(model: Any) -> LayerGraph:
    """The live model's weighted layers as a canonical graph (lazy: reads variables on ``read()``)."""
    layers = []
    for name, layer in named_layers(model):
        variables = _variables(layer)
        if not variables:
            continue
        canonical = keras_layers.to_layer(name, type(layer).__name__,
                                          {k: _param(v) for k, v in variables.items()}, layer.get_config())
        canonical.frozen = not layer.trainable
        layers.append(canonical)
    graph = LayerGraph(layers, path=None, format="live-keras")
    _apply_config(model, graph)
    return graph


def _apply_config(model: Any, graph: LayerGraph) -> None:
    """What only the architecture tells (which Dense follows a Flatten, in which order), as for a ``.keras`` file."""
    import keras

    from ..formats.keras import config as keras_config

    try:
        config = keras.saving.serialize_keras_object(model)
    except Exception as e:  # noqa: BLE001 - a custom layer that cannot serialise: say so, go on without
        graph.notes.append(f"the model's config could not be read ({type(e).__name__}: {e}); "
                           "Flatten orders must be given with the map's `flatten:`")
        return
    keras_config.apply_config(graph, config)
    for name, layer in named_layers(model):  # the live flags win over the serialised ones
        if name in graph:
            graph[name].frozen = not layer.trainable


def _grouped(model: Any, values: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Accept ``{layer: {role: array}}`` or flat ``{"layer.role": array}``."""
    names = sorted((name for name, _ in named_layers(model)), key=len, reverse=True)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
            continue
        owner = next((n for n in names if key.startswith(n + ".")), None)
        if owner is None:
            raise SurgeryError(f"{key}: no layer of the Keras model {model.name!r} owns this tensor")
        out.setdefault(owner, {})[key[len(owner) + 1:]] = value
    return out


def assign(model: Any, values: dict[str, Any]) -> None:
    """Set canonical values (``{layer: {role: array}}`` or ``{"layer.role": array}``) into the model's variables.

    Roles not given keep the layer's current values; each layer is converted to
    Keras' layout with ``keras_native.to_native`` and assigned variable by variable.

    Raises:
        SurgeryError: unknown layer or role, or a shape the variable does not take.
    """
    by_name = dict(named_layers(model))
    current = graph_of(model)
    for name, roles in _grouped(model, values).items():
        if name not in current:
            raise SurgeryError(f"{name}: not a weighted layer of the Keras model {model.name!r}")
        layer, live = current[name], by_name[name]
        unknown = set(roles) - set(layer.params)
        if unknown:
            raise SurgeryError(f"{name}: roles {sorted(unknown)} not in {sorted(layer.params)}")
        params = {r: Param.from_array(np.asarray(roles[r]), key=f"{name}.{r}") if r in roles else p
                  for r, p in layer.params.items()}
        native = keras_native.to_native(Layer(name, layer.kind, params, layer.attrs), type(live).__name__,
                                        live.get_config())
        for var_name, var in _variables(live).items():
            if var_name in native:
                _set(var, native[var_name].read(), name)


def _set(var: Any, arr: np.ndarray, layer: str) -> None:
    if tuple(arr.shape) != tuple(var.shape):
        if arr.size != int(np.prod(var.shape)):
            raise SurgeryError(f"{layer}: {var.path} takes shape {list(var.shape)}, got {list(arr.shape)}")
        arr = arr.reshape(tuple(var.shape))
    var.assign(arr.astype(dtypes.get(str(var.dtype)).numpy))


def freeze(model: Any, globs: Iterable[str]) -> list[str]:
    """Set ``trainable=False`` on every layer whose name matches a glob; returns their names."""
    patterns = list(globs)
    frozen = []
    for name, layer in named_layers(model):
        if any(fnmatch.fnmatchcase(name, g) for g in patterns):
            layer.trainable = False
            frozen.append(name)
    return frozen


def set_attrs(model: Any, graph: LayerGraph) -> list[str]:
    """Apply ``layer.attrs["set"]`` (eps, PyTorch-meaning momentum) of a transplant's graph; returns what was set."""
    done = []
    for name, live in named_layers(model):
        layer = graph.layers.get(name)
        wanted = (layer.attrs.get("set") or {}) if layer is not None else {}
        if "eps" in wanted and hasattr(live, "epsilon"):
            live.epsilon = float(wanted["eps"])
            done.append(f"{live.name}: epsilon = {live.epsilon}")
        if "momentum" in wanted and hasattr(live, "momentum"):
            live.momentum = 1.0 - float(wanted["momentum"])
            done.append(f"{live.name}: momentum = {live.momentum}")
    return done
