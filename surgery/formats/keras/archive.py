"""Keras 3 ``.keras`` archives: a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``.

Reading parses ``config.json`` as plain JSON (no layer is deserialised, no code
from the file runs, which is stricter than Keras' own ``safe_mode``): the
config gives each layer's class, execution order, ``trainable`` flag, the
attributes that change the arithmetic, and the shapes around every
``Flatten``. The weights come from the archived ``model.weights.h5`` through
``h5``. Writing copies the archive with new weights, ``trainable`` set from
each layer's ``frozen`` flag and, where ``layer.attrs["set"]`` asks, epsilon.

This module also holds the config walking that legacy ``.h5`` files
(which carry the same config as an attribute) share.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from .. import template_of, zip_names
from ...errors import fail
from ...graph import LayerGraph

SUFFIXES = (".keras",)
_WEIGHTS = "model.weights.h5"
_MODELS = ("Functional", "Sequential", "Model")
# Layers that neither mix positions nor change the order of a flattened feature map.
_TRANSPARENT = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "ActivityRegularization",
    "Identity", "Masking",
}


@dataclass
class Spec:
    """One leaf layer of a Keras model config."""

    name: str
    class_name: str
    config: dict            # the layer's own ``config``
    outer: dict             # the whole entry (``inbound_nodes``, ``build_config``)
    path: str               # its group in a Keras 3 ``.weights.h5``
    parents: tuple[str, ...]
    frozen: bool
    index: int              # position among its container's layers


def snake(name: str) -> str:
    """Keras' ``to_snake_case``: ``Conv2DTranspose`` -> ``conv2d_transpose``, ``PReLU`` -> ``p_re_lu``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def layer_specs(model_config: dict) -> list[Spec]:
    """Every leaf layer of a model config, in the config's (execution) order, nested models flattened."""
    specs: list[Spec] = []
    _walk(model_config, "", (), False, specs)
    return specs


def _walk(model: dict, path: str, parents: tuple[str, ...], frozen: bool, out: list[Spec]) -> None:
    used: dict[str, int] = {}
    inner = model.get("config", {})
    frozen = frozen or inner.get("trainable") is False
    for index, entry in enumerate(inner.get("layers", [])):
        cls = entry.get("class_name", "")
        cfg = entry.get("config", {})
        base = snake(cls)
        used[base] = used.get(base, -1) + 1          # Keras' _get_unique_name: x, x_1, x_2...
        group = base if used[base] == 0 else f"{base}_{used[base]}"
        child = f"{path}/layers/{group}" if path else f"layers/{group}"
        name = cfg.get("name") or entry.get("name") or group
        if cls in _MODELS or "layers" in cfg:
            _walk(entry, child, (*parents, name), frozen, out)
            continue
        out.append(Spec(name, cls, cfg, entry, child, parents, frozen or cfg.get("trainable") is False, index))


def apply_config(graph: LayerGraph, model_config: dict) -> None:
    """Set frozen flags and the Flatten facts the config tells on a graph read with it."""
    specs = layer_specs(model_config)
    for spec in specs:
        if spec.name in graph:
            graph[spec.name].frozen = spec.frozen
    for dense, facts in flatten_facts(specs, graph.notes).items():
        if dense in graph:
            graph[dense].attrs["flatten"] = facts
    graph.meta["keras_config"] = model_config


def _input_shape(spec: Spec) -> list | None:
    build = spec.outer.get("build_config") or {}
    if build.get("input_shape"):
        return list(build["input_shape"])[1:]
    nodes = spec.outer.get("inbound_nodes") or []
    try:
        return list(nodes[0]["args"][0]["config"]["shape"])[1:]
    except (IndexError, KeyError, TypeError):
        return None


def _predecessor(spec: Spec, siblings: dict[tuple, Spec], ordered: list[Spec]) -> Spec | None:
    nodes = spec.outer.get("inbound_nodes")
    if nodes:
        node = nodes[0]
        try:
            name = node["args"][0]["config"]["keras_history"][0] if isinstance(node, dict) else node[0][0]
        except (IndexError, KeyError, TypeError):
            return None
        return siblings.get((spec.parents, name))
    if nodes is None:   # Sequential: the previous layer of the same container
        before = [s for s in ordered if s.parents == spec.parents and s.index < spec.index]
        return before[-1] if before else None
    return None


def flatten_facts(specs: list[Spec], notes: list[str]) -> dict[str, dict]:
    """For each Dense fed by a Flatten of a feature map: the map's shape and the order it was flattened in.

    Returns ``{dense name: {"shape": [...], "order": "HWC", "via": [layer names]}}``,
    ``shape`` listing the sizes in ``order``. ``Reshape`` keeps memory order and is
    looked through; ``Permute`` changes the order.
    """
    siblings = {(s.parents, s.name): s for s in specs}
    facts: dict[str, dict] = {}
    for dense in (s for s in specs if s.class_name == "Dense"):
        flat = _skip_back(_predecessor(dense, siblings, specs), siblings, specs, _TRANSPARENT)
        if flat is None or flat.class_name != "Flatten":
            continue
        found = _flatten_order(flat, siblings, specs)
        if isinstance(found, str):
            notes.append(f"{dense.name}: follows Flatten {flat.name!r} but {found}; "
                         f"give `flatten: {{{dense.name}: {{shape: [...], source_order: HWC}}}}` in the map")
        elif found:
            facts[dense.name] = found
    return facts


def _skip_back(spec: Spec | None, siblings: dict, ordered: list[Spec], skip: set[str]) -> Spec | None:
    while spec is not None and spec.class_name in skip:
        spec = _predecessor(spec, siblings, ordered)
    return spec


def _flatten_order(flat: Spec, siblings: dict, ordered: list[Spec]) -> dict | str | None:
    chain: list[Spec] = []
    node = _predecessor(flat, siblings, ordered)
    while node is not None and (node.class_name in _TRANSPARENT or node.class_name in ("Reshape", "Permute")):
        chain.append(node)
        node = _predecessor(node, siblings, ordered)
    base = _input_shape(chain[-1] if chain else flat)
    if not base or any(d is None for d in base):
        return "its input shape is not in the config"
    if len(base) < 2 or (len(base) == 2 and not (node and re.search("Conv|Pool", node.class_name))):
        return None     # a vector or a sequence: flattened the same way in both frameworks
    spatial = "DHW"[-(len(base) - 1):]
    first = (node.config.get("data_format") if node else None) == "channels_first"
    letters = "C" + spatial if first else spatial + "C"
    sizes = dict(zip(letters, base))
    reshaped = False
    for step in reversed(chain):
        if step.class_name == "Permute" and reshaped:
            return "a Permute follows a Reshape, so the axes it moves have no names surgery can follow"
        if step.class_name == "Permute":
            letters = "".join(letters[d - 1] for d in step.config.get("dims", []))
        reshaped = reshaped or step.class_name == "Reshape"
    if flat.config.get("data_format") == "channels_first" and len(letters) > 2:
        if reshaped:
            return "a Reshape feeds a channels_first Flatten"
        letters = letters[1:] + letters[0]
    return {"shape": [int(sizes[a]) for a in letters], "order": letters,
            "via": [s.name for s in reversed(chain)] + [flat.name]}


def sniff(path: str) -> bool:
    """A zip holding ``config.json`` and ``model.weights.h5``."""
    names = set(zip_names(path) or ())
    return "config.json" in names and (_WEIGHTS in names or path.lower().endswith(SUFFIXES))


def read_config(path: str) -> tuple[dict, dict]:
    """The parsed ``config.json`` and ``metadata.json`` of a ``.keras`` archive."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            metadata = json.loads(z.read("metadata.json")) if "metadata.json" in z.namelist() else {}
            if _WEIGHTS not in z.namelist():
                raise fail(path, f"no {_WEIGHTS} in the archive (sharded Keras weights are not supported)")
    except (zipfile.BadZipFile, OSError) as e:
        raise fail(path, f"not a readable .keras zip ({e})") from None
    except KeyError:
        raise fail(path, "a .keras archive without config.json") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise fail(path, f"config.json is not JSON ({e})") from None
    if not isinstance(config, dict) or "config" not in config:
        raise fail(path, "config.json does not describe a Keras model (no 'config' key)")
    return config, metadata


@contextmanager
def _weights_in_zip(path: str) -> Iterator[Any]:
    import h5py

    try:
        with zipfile.ZipFile(path) as z, z.open(_WEIGHTS) as member, h5py.File(member, "r") as f:
            yield f
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError) as e:  # a damaged member or HDF5
        raise fail(path, f"damaged archive: {e}") from None


def read(path: str, **options: Any) -> LayerGraph:
    """Read a ``.keras`` archive: weights, classes, order, frozen flags and attributes, running no code.

    Raises:
        FormatError: not a zip, no config.json or weights, malformed JSON or HDF5.
    """
    from . import h5

    config, metadata = read_config(path)
    graph = h5.read(path, config=config, opener=lambda: _weights_in_zip(path))
    graph.format = "keras"
    graph.meta["keras"] = {"metadata": metadata}
    return graph


def write(graph: LayerGraph, path: str, *, template: str | None = None, **options: Any) -> None:
    """Write ``graph`` as a copy of a ``.keras`` archive with new weights, trainable flags and eps.

    Args:
        graph: canonical layers; those named like a layer of the template are written,
            ``frozen`` becomes ``trainable: false``, ``attrs["set"]["eps"]`` the ``epsilon``.
        path: the output archive.
        template: the ``.keras`` whose architecture to keep; defaults to ``graph.path``.
    """
    from . import h5

    template = template_of(graph, "keras", template, path, options, "a .keras model")
    target = graph if graph.format == "keras" and graph.path == template else read(template)
    config, _ = read_config(template)
    _set_config(config, graph)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as tmp:
        weights = os.path.join(tmp, _WEIGHTS)
        with zipfile.ZipFile(template) as z, z.open(_WEIGHTS) as src, open(weights, "wb") as dst:
            shutil.copyfileobj(src, dst)
        import h5py

        with h5py.File(weights, "r+") as f:
            h5.fill(f, graph, target, path)
        _rezip(template, path, {"config.json": json.dumps(config).encode(), _WEIGHTS: weights})


def _set_config(config: dict, graph: LayerGraph) -> None:
    for spec in layer_specs(config):
        layer = graph.layers.get(spec.name)
        if layer is None:
            continue
        spec.config["trainable"] = not layer.frozen
        wanted = layer.attrs.get("set") or {}
        if "eps" in wanted and "epsilon" in spec.config:
            spec.config["epsilon"] = float(wanted["eps"])
        if "momentum" in wanted and "momentum" in spec.config:
            spec.config["momentum"] = round(1.0 - float(wanted["momentum"]), 10)   # PyTorch meaning in attrs


def _rezip(template: str, path: str, replace: dict[str, Any]) -> None:
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            new = replace.get(info.filename)
            if new is None:
                dst.writestr(info, src.read(info.filename))
            elif isinstance(new, bytes):
                dst.writestr(info, new)
            else:
                dst.write(new, info.filename, compress_type=info.compress_type)
