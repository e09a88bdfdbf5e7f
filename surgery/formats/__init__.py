"""The format registry: a plain dict from format name to module, resolved lazily.

Every format module has the same face:

- ``SUFFIXES``: file suffixes it claims (``(".safetensors",)``).
- ``sniff(path) -> bool``: whether the file or folder is of this format, by
  content where content tells (magic bytes, zip members), by suffix otherwise.
  It must not import a framework.
- ``read(path, **options) -> LayerGraph``: headers only; data stays lazy.
- ``write(graph, path, **options) -> None``: writes ``path`` (the caller has
  already made it a temporary file in the target's folder), unless the module
  sets ``MULTI_FILE = True``: then it gets the final path and makes its several
  files atomically itself.

Optional, for ``--dry-run`` (``estimate.plan_write``): ``planned_files(graph, path,
max_shard_size=None)`` -> ``[(file, bytes, tensors, exact)]``; ``WRITE_COPIES``, the
copies of one tensor the writer holds; ``TEMPLATE``, what the writer copies its
structure from (``template_of``). ``COPIES_SPANS = True``: the writer copies a param's
``span`` (bytes unchanged in a file) file to file instead of reading it.

Modules import their framework inside ``read``/``write``, never at import time.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from types import ModuleType
from typing import Any

from ..errors import FormatError, SurgeryError
from ..graph import LayerGraph

# Order matters: ``detect`` asks each module's ``sniff`` in this order.
FORMATS: dict[str, str] = {
    "safetensors": "surgery.formats.safetensors",
    "keras": "surgery.formats.keras.archive",
    "h5": "surgery.formats.keras.h5",
    "torchscript": "surgery.formats.torch.torchscript",
    "exported_program": "surgery.formats.torch.exported_program",
    "torch": "surgery.formats.torch.state_dict",
    "tf_checkpoint": "surgery.formats.tf.checkpoint",
    "saved_model": "surgery.formats.tf.saved_model",
    "dcp": "surgery.formats.torch.dcp",
    "zero": "surgery.formats.torch.zero",
    "folder": "surgery.formats.folder",
    "onnx": "surgery.formats.onnx.model",
}


def zip_names(path: str) -> list[str] | None:
    """The member names of a zip file, or None when ``path`` is not a readable zip.

    For sniffing: a damaged archive raises anything from ``BadZipFile`` to
    ``UnicodeDecodeError`` in ``zipfile``; here any of them just means "not this format".
    """
    if not os.path.isfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except Exception:  # noqa: BLE001 - a sniff must never fail, whatever the damage
        return None


def module(name: str) -> ModuleType:
    """The module of a registered format."""
    try:
        return importlib.import_module(FORMATS[name])
    except KeyError:
        raise FormatError(f"unknown format {name!r}; known: {', '.join(FORMATS)}") from None


def detect(path: str | os.PathLike) -> str:
    """The name of the format of ``path``, by content first, then by suffix."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.exists(path + ".index"):  # a TF checkpoint named by its prefix
            return "tf_checkpoint"
        raise FormatError(f"{path}: no such file or folder")
    for name in FORMATS:
        try:
            if module(name).sniff(path):
                return name
        except OSError:  # unreadable for this sniff's purposes: not this format
            continue
    raise FormatError(f"{path}: not a checkpoint surgery can read (known formats: {', '.join(FORMATS)})")


# Formats that are written under another format's suffix: a TorchScript archive is usually a `.pt`.
ALSO_WRITTEN_AS = {"torchscript": "torch"}


def for_output(path: str | os.PathLike, *, like: str | None = None) -> str:
    """The format to write ``path`` in, from its suffix.

    ``like`` is the format the graph was read from: a TorchScript graph written to
    a ``.pt`` stays TorchScript, instead of becoming a bare state_dict.
    """
    path = os.fspath(path)
    lowered = path.lower()
    if path.endswith(("/", os.sep)) or (os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))):
        return "dcp"   # a folder named as a folder (trailing slash), or an existing DCP folder
    for name in FORMATS:
        if any(lowered.endswith(s) for s in module(name).SUFFIXES):
            return like if like and ALSO_WRITTEN_AS.get(like) == name else name
    raise FormatError(f"{path}: cannot tell the output format from its name")


def template_of(graph: LayerGraph, name: str, template: str | None, path: str, options: dict[str, Any],
                what: str) -> str:
    """The file a writer copies its structure (graph, config, file layout) from.

    ``template=`` if given, else the graph's own file when it was read in this
    format. ``options["target"]`` is the final output name, used in the error
    instead of the temporary file being written.
    """
    template = template or (graph.path if graph.format == name else None)
    if not template:
        shown = options.get("target") or path
        raise FormatError(f"{shown}: writing {what} needs one to copy the structure from; "
                          "transplant into an existing one, or pass template=")
    return template


def read(path: str | os.PathLike, *, format: str | None = None, **options: Any) -> LayerGraph:
    """Read any checkpoint into a lazy LayerGraph.

    A refusal names the file: one raised deep inside a reader (a layout rule, a
    Keras layer) that does not is given the file's name in front.
    """
    path = os.fspath(path)
    name = format or detect(path)
    try:
        return module(name).read(path, **options)
    except SurgeryError as e:
        if path in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None
