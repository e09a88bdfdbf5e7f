"""PyTorch Distributed Checkpoint folders (``.metadata`` + ``__<rank>_<n>.distcp``), as FSDP, torchtitan,
torchtune and Megatron's ``torch_dist`` write them: read, tensor by tensor, chunk by chunk.

The metadata says every tensor's global shape, dtype and the chunks it is split in, and
where each chunk's bytes are (file, offset, length). ``inspect`` reads only that. A
tensor's data is assembled when it is read: each chunk is one ``torch.save`` record,
loaded with ``weights_only=True`` from its byte range, so memory stays near one tensor.

Own code where torch's would not do: ``FileSystemReader.read_metadata`` unpickles
``.metadata`` with plain ``pickle`` (a file from elsewhere could run code), so it is
read here with an unpickler that admits only the checkpoint's own metadata classes;
and ``torch.distributed.checkpoint.load`` fills a whole state_dict at once. Writing is
done here too, streamed (``write``), in the layout ``torch.distributed.checkpoint.load``
reads back.

Trainer checkpoints nest the model under ``model`` (``model.layer.weight``); the rest
(``optim``/``optimizer`` state, ``lr_scheduler``, ``dataloader``, step counters) is
named in ``graph.left_out``.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

from ...errors import fail, first_line
from ...graph import LayerGraph, Param
from ...kinds import graph_of_params
from .common import dtype_name, to_numpy

SUFFIXES: tuple[str, ...] = ()   # a folder: recognised by its .metadata
METADATA = ".metadata"
MODEL_KEYS = ("model", "module")   # where trainers put the model's state_dict
# The globals a DCP .metadata pickle may name: its own record classes and torch's plain values.
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": None,   # any class of that module
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": None,
    "torch.serialization": {"_get_layout"},
    "torch": {"Size", "strided", "contiguous_format", "channels_last", "preserve_format", "sparse_coo"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


def sniff(path: str) -> bool:
    """A folder holding ``.metadata`` (DCP's index of the whole checkpoint)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA))


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        allowed = _ALLOWED.get(module, set())
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module in _ALLOWED and allowed is None) or name in (allowed or ()) or is_dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata class")


def read_metadata(path: str) -> Any:
    """The checkpoint's ``Metadata``, unpickled with only DCP's own classes admitted."""
    meta_path = os.path.join(path, METADATA)
    try:
        with open(meta_path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except Exception as e:  # noqa: BLE001 - any damage: one line naming the file
        raise fail(meta_path, f"not a readable DCP metadata file ({type(e).__name__}: {first_line(e)})") from None


def read(path: str, **_: Any) -> LayerGraph:
    """Read a DCP folder's model tensors as a lazy LayerGraph, from the metadata alone."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = read_metadata(path)
    paths = getattr(meta, "planner_data", None) or {}
    tensors = {fqn: m for fqn, m in meta.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
    roots = {(paths.get(fqn) or (fqn.split(".")[0],))[0] for fqn in tensors}
    model = next((k for k in MODEL_KEYS if k in roots), None)
    params, left_out = {}, {}
    for fqn, entry in tensors.items():
        if model is not None and not fqn.startswith(model + "."):
            left_out[fqn] = f"not under {model!r} (optimizer state, scheduler, counters...)"
            continue
        key = fqn[len(model) + 1:] if model else fqn
        params[key] = _param(path, meta, fqn, entry)
    graph = graph_of_params(params, path=path, format="dcp")
    graph.left_out.update(left_out)
    others = [fqn for fqn in meta.state_dict_metadata if fqn not in tensors]
    if others:
        graph.notes.append(f"{len(others)} non-tensor entries (pickled values: {', '.join(others[:3])}...) not read")
    if model:
        graph.notes.append(f"the model's tensors are under {model!r}; {len(left_out)} other tensors left out")
    return graph


def _param(folder: str, meta: Any, fqn: str, entry: Any) -> Param:
    shape = tuple(entry.size)
    dtype = dtype_name(entry.properties.dtype)
    storage = {tuple(index.offset or ()): info for index, info in meta.storage_data.items() if index.fqn == fqn}
    for chunk in entry.chunks:
        info = storage.get(tuple(chunk.offsets))
        if info is None:
            raise fail(folder, f"{fqn}: chunk at {list(chunk.offsets)} has no storage entry in {METADATA}")
        if getattr(info, "transform_descriptors", None):
            raise fail(folder, f"{fqn}: chunks stored through {info.transform_descriptors} (compressed or "
                               "extension-encoded) are not supported")
        if not os.path.isfile(os.path.join(folder, info.relative_path)):
            raise fail(folder, f"{fqn}: its data file {info.relative_path} is missing")

    def load() -> np.ndarray:
        from ... import dtypes

        out = np.empty(shape, dtypes.get(dtype).numpy)
        for chunk in entry.chunks:
            info = storage[tuple(chunk.offsets)]
            piece = _read_chunk(os.path.join(folder, info.relative_path), info.offset, info.length, fqn)
            where = tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))
            out[where] = piece.reshape(tuple(chunk.sizes))
        return out

    return Param(shape, dtype, load, key=fqn)


def _read_chunk(path: str, offset: int, length: int, fqn: str) -> np.ndarray:
    import torch

    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise fail(path, f"{fqn}: the file ends {length - len(data)} bytes before this chunk does (truncated?)")
    try:
        tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise fail(path, f"{fqn}: not a readable chunk ({type(e).__name__}: {first_line(e)})") from None
    return to_numpy(tensor)


MULTI_FILE = True   # a folder: written beside the target, then renamed over it


def write(graph: LayerGraph, path: str, **_: Any) -> None:
    """Write the graph as a DCP folder that ``torch.distributed.checkpoint.load`` reads into a model's state_dict.

    One process writes one data file, ``__0_0.distcp``: each tensor one ``torch.save`` record appended
    in turn (one tensor in memory at a time), then ``.metadata``. Keys are the canonical state_dict
    names, at the top level (load into ``model.state_dict()``). The folder appears only when complete.
    """
    import shutil
    import tempfile

    target = path.rstrip("/\\")
    parent = os.path.dirname(os.path.abspath(target))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)   # mkdtemp's 0700 is for the temporary name, not the checkpoint
    try:
        _write_into(graph, tmp, target)
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old.", dir=parent)
            os.rename(target, os.path.join(old, "previous"))
        os.rename(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_into(graph: LayerGraph, folder: str, target: str) -> None:
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    from ...io import fsync_path
    from .common import to_tensor

    entries, storage, planner = {}, {}, {}
    data_name = "__0_0.distcp"
    with open(os.path.join(folder, data_name), "wb") as f:
        for key, param in graph.tensors():
            tensor = to_tensor(param.read())
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            offset = f.tell()
            f.write(buffer.getbuffer())
            origin = torch.Size([0] * tensor.dim())
            entries[key] = TensorStorageMetadata(TensorProperties(dtype=tensor.dtype), tensor.shape,
                                                 [ChunkStorageMetadata(offsets=origin, sizes=tensor.shape)])
            storage[MetadataIndex(key, origin, 0)] = _StorageInfo(data_name, offset, f.tell() - offset)
            planner[key] = (key,)
        f.flush()
        os.fsync(f.fileno())
    meta = Metadata(entries, planner_data=planner, storage_data=storage)
    with open(os.path.join(folder, METADATA), "wb") as f:
        pickle.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(folder)
