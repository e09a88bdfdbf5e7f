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
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from typing import Any, Iterator

from .. import template_of, zip_names
from ...errors import fail
from ...graph import LayerGraph
from . import h5
from .config import layer_specs

SUFFIXES = (".keras",)
TEMPLATE = "a .keras model"   # written over one of these (its structure kept): formats.template_of
_WEIGHTS = "model.weights.h5"
def sniff(path: str) -> bool:
    """A zip holding ``config.json`` and ``model.weights.h5``."""
    names = set(zip_names(path) or ())
    return "config.json" in names and (_WEIGHTS in names or path.lower().endswith(SUFFIXES))


def read_config(path: str) -> tuple[dict, dict]:
    """The parsed ``config.json`` and ``metadata.json`` of a ``.keras`` archive."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(_member(z, "config.json", path))
            metadata = json.loads(_member(z, "metadata.json", path)) if "metadata.json" in z.namelist() else {}
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


JSON_LIMIT = 16 << 20   # a Keras config is kilobytes, a very large model's a few megabytes


def _member(z: zipfile.ZipFile, name: str, path: str) -> bytes:
    """A JSON member, decompressed no further than ``JSON_LIMIT``: a zip bomb is refused, not inflated."""
    with z.open(name) as f:
        data = f.read(JSON_LIMIT + 1)
    if len(data) > JSON_LIMIT:
        raise fail(path, f"{name} inflates past {JSON_LIMIT >> 20} MB (a zip bomb?); a Keras config is far smaller")
    return data


@contextmanager
def _weights_in_zip(path: str) -> Iterator[Any]:
    import h5py

    try:
        with zipfile.ZipFile(path) as z:
            with z.open(_WEIGHTS) as member:
                h5.check_size(member.read(4096), z.getinfo(_WEIGHTS).file_size, f"{path}:{_WEIGHTS}")
            with z.open(_WEIGHTS) as member, h5py.File(member, "r") as f:
                yield f
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError) as e:  # a damaged member or HDF5
        raise fail(path, f"damaged archive: {e}") from None


def read(path: str, **options: Any) -> LayerGraph:
    """Read a ``.keras`` archive: weights, classes, order, frozen flags and attributes, running no code.

    Raises:
        FormatError: not a zip, no config.json or weights, malformed JSON or HDF5.
    """
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
    template = template_of(graph, "keras", template, path, options, TEMPLATE)
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
