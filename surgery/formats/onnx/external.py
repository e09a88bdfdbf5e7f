"""ONNX external data: where it may live, how it is read, and how it is written.

A tensor's external data must be a relative path that resolves (symlinks
included) inside the model's folder, within the file's size; this is checked
when the model is read, before any data is. Data is memory-mapped.
Writing copies each data file into the output folder with the new tensors
patched in at the template's offsets, so names and layout stay the same.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import numpy as np

from ... import dtypes
from ...errors import SurgeryError, fail, first_line

_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def np_dtype(tensor: Any) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))


def numel(tensor: Any) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def surgery_dtype(tensor: Any) -> str | None:
    """The surgery dtype of an initializer, or None for types surgery does not carry (strings, int4)."""
    from onnx import helper

    try:
        return dtypes.from_numpy(helper.tensor_dtype_to_np_dtype(tensor.data_type)).name
    except (SurgeryError, KeyError, TypeError, ValueError):
        return None


class Source:
    """Loads initializer data from the model or its external files, checked up front."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.folder = os.path.dirname(os.path.abspath(path))
        self.external: dict[str, tuple[str, int, int]] = {}  # name -> (file, offset, length)

    def check(self, tensor: Any) -> None:
        """Refuse data that lies outside the folder, past a file's end, or short of its shape."""
        expected = numel(tensor) * self._dtype(tensor).itemsize
        if tensor.data_location != _EXTERNAL:
            raw = len(tensor.raw_data)
            if tensor.HasField("raw_data") and raw != expected:
                raise fail(self.path, f"initializer {tensor.name!r} holds {raw} bytes, its shape needs {expected}")
            if not tensor.HasField("raw_data"):
                # Typed fields (float_data...) are parsed with the model already; converting them is the one
                # check of their length that holds for every type, packed 4-bit ones included.
                self.load(tensor)
            return
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        file = self._resolve(tensor.name, location)
        offset = self._count(tensor.name, "offset", info.get("offset", "0"))
        length = self._count(tensor.name, "length", info.get("length", str(expected)))
        size = os.path.getsize(file)
        if length != expected or offset < 0 or offset + length > size:
            raise fail(
                self.path,
                f"initializer {tensor.name!r}: external data {location!r} bytes {offset}..{offset + length} "
                f"do not hold its {expected} bytes (file is {size} bytes)",
            )
        self.external[tensor.name] = (file, offset, length)

    def _dtype(self, tensor: Any) -> np.dtype:
        try:
            return np_dtype(tensor)
        except KeyError:
            raise fail(self.path, f"initializer {tensor.name!r} has data type {tensor.data_type}, "
                                  "which ONNX does not define") from None

    def _count(self, name: str, key: str, value: str) -> int:
        """An external data ``offset`` or ``length``: a decimal count of bytes."""
        if not value.isascii() or not value.isdigit():
            raise fail(self.path, f"initializer {name!r}: external data {key} {value[:40]!r} is not a byte count")
        return int(value)

    def _resolve(self, name: str, location: str) -> str:
        if not location or "\0" in location or os.path.isabs(location) or location.startswith(("/", "\\")):
            raise fail(self.path, f"initializer {name!r}: external data location {location!r} is not a relative path")
        file = os.path.realpath(os.path.join(self.folder, location))
        if os.path.commonpath([file, os.path.realpath(self.folder)]) != os.path.realpath(self.folder):
            raise fail(self.path, f"initializer {name!r}: external data {location!r} points outside the model's folder")
        if not os.path.isfile(file):
            raise fail(self.path, f"initializer {name!r}: external data file {location!r} is missing")
        return file

    def load(self, tensor: Any) -> np.ndarray:
        """The native array of one initializer (memory-mapped when external)."""
        from onnx import numpy_helper

        shape = tuple(tensor.dims)
        if tensor.name in self.external:
            file, offset, _ = self.external[tensor.name]
            dtype = np_dtype(tensor).newbyteorder("<")
            if not shape or 0 in shape:
                return np.fromfile(file, dtype, count=numel(tensor), offset=offset).reshape(shape)
            return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape)
        try:
            return numpy_helper.to_array(tensor)
        except (ValueError, TypeError, KeyError, IndexError) as e:   # typed data that does not fill its dims
            raise fail(self.path, f"initializer {tensor.name!r}: its data does not fit dims {list(shape)} of "
                                  f"type {tensor.data_type} ({first_line(e)})") from None


class ExternalCopies:
    """The template's external data files, copied into the output folder to be patched.

    Each file is copied to a temporary name (``NAME.surgery.tmp``); ``patch`` writes a tensor at the
    template's own offset (sizes are equal, so the layout stays the same); on success every copy is
    renamed to its new name, on an error removed. A new name is never that of an existing file: the
    old model (the template itself, the output being replaced, another model beside it) may be
    reading it until the new model is renamed over it, which is the commit. An output other than the
    template gets data files named after it (``out.onnx.data``); a name taken gets the next free
    generation (``out.onnx.gen2.data``, then the plain name again once it is free), and the
    initializers say so.
    """

    def __init__(self, source: Source, out_folder: str, template: str, final: str) -> None:
        self.source = source
        self.tmps: dict[str, tuple[str, str]] = {}  # source file -> (temporary copy, final name)
        self.locations: dict[str, str] = {}         # source file -> new location, where it had to be renamed
        root = os.path.realpath(source.folder)
        taken: set[str] = set()
        for file in sorted({file for file, _, _ in source.external.values()}):
            rel = os.path.relpath(file, root)
            if not _same(final, template):   # an output's data files are named after it
                rel = _renamed(rel, os.path.basename(template), os.path.basename(final))
            new = free_name(out_folder, rel, taken)
            taken.add(new)
            if new != os.path.relpath(file, root):
                self.locations[file] = new
            out = os.path.join(out_folder, new)
            self.tmps[file] = (f"{out}{TMP_SUFFIX}", out)

    def relocate(self, tensor: Any) -> None:
        """Point an external initializer at the output's own copy of its data file, if it was renamed."""
        file = self.source.external.get(tensor.name, (None,))[0]
        if file in self.locations:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = self.locations[file]

    def __enter__(self) -> "ExternalCopies":
        for file, (tmp, out) in self.tmps.items():
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copyfile(file, tmp)
        return self

    def patch(self, name: str, arr: np.ndarray) -> None:
        file, offset, length = self.source.external[name]
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        if len(data) != length:
            raise fail(self.source.path, f"initializer {name!r}: new data is {len(data)} bytes, not {length}")
        with open(self.tmps[file][0], "r+b") as f:
            f.seek(offset)
            f.write(data)

    def __exit__(self, kind: Any, *_: Any) -> None:
        for tmp, out in self.tmps.values():
            if kind is None:
                os.replace(tmp, out)
            elif os.path.exists(tmp):
                os.unlink(tmp)


def _renamed(rel: str, template: str, final: str) -> str:
    """``model.onnx.data`` for ``out.onnx`` -> ``out.onnx.data``; another name gets the output's name in front."""
    folder, name = os.path.split(rel)
    name = final + name[len(template):] if name.startswith(template) else f"{final}.{name}"
    return os.path.join(folder, name)


TMP_SUFFIX = ".surgery.tmp"


def free_name(folder: str, rel: str, taken: set[str] = frozenset()) -> str:
    """``rel`` if no file has that name in ``folder``, else its first free generation (``x.onnx.gen2.data``)."""
    stem, ext = generation_stem(rel)
    candidates = [rel, f"{stem}{ext}", *(f"{stem}.gen{n}{ext}" for n in range(2, 10_000))]
    for name in candidates:
        if name not in taken and not os.path.lexists(os.path.join(folder, name)):
            return name
    raise fail(folder, f"no free name for external data {rel!r}")


def generation_stem(rel: str) -> tuple[str, str]:
    """``x.onnx.gen2.data`` -> (``x.onnx``, ``.data``): the name without its generation, and its extension."""
    root, ext = os.path.splitext(rel)
    match = re.match(r"^(.*)\.gen\d+$", root)
    return (match.group(1) if match else root), ext


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
