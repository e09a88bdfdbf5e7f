"""Which files a checkpoint consists of, and which files writing an output replaces or removes.

``refuse_overwrite`` compares the two before anything is written: the source is never written over,
whether the output names it directly, through a symlink, a hard link or ``./``, or would replace or
remove one of its shards, data files or external data, or the folder holding it.
"""

from __future__ import annotations

import glob
import os
from typing import Callable

from ..errors import FormatError, SurgeryError
from ..io import same_file
from . import detect, for_output


def refuse_overwrite(src: str | os.PathLike, out: str | os.PathLike, *, max_shard_size: int | None = None,
                     like: str | None = None, template: str | None = None) -> None:
    """Refuse an output that would write over, or remove, any file the source reads.

    Args:
        like: the format the output graph was read in (a TorchScript graph stays TorchScript).
        template: the ONNX model an ONNX output copies, whose external data it writes beside the output.

    Raises:
        SurgeryError: naming the output and, when it is not the source file itself, the file it would hit.
    """
    src, out = os.fspath(src), os.fspath(out)
    sources = source_files(src)
    outputs = output_files(out, max_shard_size=max_shard_size, like=like, template=template)
    for written in outputs:
        hit = next((read for read in sources if same_file(written, read)), None)
        if hit is None:
            continue
        if written == outputs[0] and hit == sources[0]:
            raise SurgeryError(f"{out}: output is the source file; choose another output (-o)")
        raise SurgeryError(f"{out}: writing it would replace or remove {hit}, a file of the source {src}; "
                           "choose another output (-o)")


def source_files(path: str) -> list[str]:
    """Every file a checkpoint is read from, its main file first (an unreadable path stands for itself)."""
    if path.endswith(".index.json"):  # a shard set, safetensors or PyTorch
        return _shard_set(path)
    try:
        name = detect(path)
    except FormatError:
        return [path]
    return _SOURCES.get(name, lambda p: [p])(path)


def output_files(path: str, *, max_shard_size: int | None = None, like: str | None = None,
                 template: str | None = None) -> list[str]:
    """Every existing or future file that writing ``path`` replaces or removes, its main file first."""
    try:
        name = for_output(path, like=like)
    except FormatError:
        return [path]
    if name == "safetensors" and max_shard_size:
        return _sharded_output(path)
    if name == "onnx" and template:
        return _onnx_output(path, template)
    return _OUTPUTS.get(name, lambda p: [p])(path)


def _shard_set(index: str) -> list[str]:
    """An ``*.index.json`` and the shards it names (checked to lie inside its folder)."""
    from .shard_index import read_shard_index

    return [index, *read_shard_index(index).shards.values()]


def _tf_files(path: str) -> list[str]:
    """A TF checkpoint's index and its data files (of any shard count: a write removes the others)."""
    from .tf.reader import INDEX, prefix_of

    prefix = prefix_of(path)
    return [prefix + INDEX, *sorted(glob.glob(glob.escape(prefix) + ".data-*"))]


def _folder_files(path: str) -> list[str]:
    """A folder and everything under it (a DCP checkpoint, a SavedModel: read whole, replaced whole)."""
    path = os.fspath(path).rstrip("/\\") or os.sep
    if not os.path.isdir(path):
        return [path]
    return [path, *sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files)]


def _saved_model(path: str) -> list[str]:
    from .tf.saved_model import folder_of

    return _folder_files(folder_of(path))


def _model_folder(path: str) -> list[str]:
    from .folder import resolve

    target = resolve(path)
    return _folder_files(path) if target == path else source_files(target)


def _onnx_source(path: str) -> list[str]:
    from .onnx.scan import scan_model

    source = scan_model(path)[2]
    return [path, *sorted({file for file, _, _ in source.external.values()})]


def _sharded_output(path: str) -> list[str]:
    """The index and every shard-named file beside it: a new set is written under free names, the rest removed."""
    from .safetensors import shard_files, shard_names

    return [shard_names(path, 1)[1], *shard_files(path)]


def _onnx_output(path: str, template: str) -> list[str]:
    """The model and the external data files it gets beside it (copies of the template's, patched)."""
    from .onnx.external import ExternalCopies
    from .onnx.scan import scan_model

    source = scan_model(template)[2]
    copies = ExternalCopies(source, os.path.dirname(os.path.abspath(path)), template, path)
    return [path, *(final for _, final in copies.tmps.values())]


_SOURCES: dict[str, Callable[[str], list[str]]] = {
    "tf_checkpoint": _tf_files,
    "saved_model": _saved_model,
    "dcp": _folder_files,
    "zero": _folder_files,
    "folder": _model_folder,
    "onnx": _onnx_source,
}

_OUTPUTS: dict[str, Callable[[str], list[str]]] = {
    "tf_checkpoint": _tf_files,
    "dcp": _folder_files,
}
