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

import io
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
            info = z.getinfo(_WEIGHTS)
            with z.open(_WEIGHTS) as member:
                h5.check_size(member.read(4096), info.file_size, f"{path}:{_WEIGHTS}")
            with _open_member(z, info, path) as member, h5py.File(member, "r") as f:
                yield f
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError) as e:  # a damaged member or HDF5
        raise fail(path, f"damaged archive: {e}") from None


def _open_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> Any:
    """A seekable view of a member: its bytes in the archive itself when stored, as Keras stores them.

    libhdf5 reads a file in small pieces here and there. A zip member object seeks backwards by
    decompressing from its start again (even when stored, before Python 3.12): reading the
    structure of a 270 MB EfficientNet-B7 took 89 s of CPU that way, and 0.8 s from the bytes.
    """
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:   # deflated or encrypted
        return z.open(info)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {info.filename}")
    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    if start + info.file_size > os.path.getsize(path):
        raise zipfile.BadZipFile(f"{info.filename} runs past the end of the archive")
    return _Window(path, start, info.file_size)


class _Window(io.RawIOBase):
    """Read-only file object over ``size`` bytes of a file from ``start``."""

    def __init__(self, path: str, start: int, size: int) -> None:
        super().__init__()
        self._file = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), max(0, self._size - self._pos))
        if want == 0:
            return 0
        self._file.seek(self._start + self._pos)
        got = self._file.readinto(memoryview(buffer)[:want])
        self._pos += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


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
