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
named in ``graph.left_out``, and kept, byte for byte, when the model is written back
into a trainer checkpoint (``template_for``), as long as it still fits (``check_fits``).
"""

from __future__ import annotations

import io
import math
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import fail, first_line
from ...graph import LayerGraph, Param, Span
from ...io import atomic_folder, recover_folder
from ...kinds import graph_of_params
from ...parts import Part, WriteParts, runs
from ..safetensors import is_count
from . import records
from .common import dtype_name

SUFFIXES: tuple[str, ...] = ()   # a folder: recognised by its .metadata
METADATA = ".metadata"
DATA_FILE = "__0_0.distcp"   # the one data file a single process writes
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


def scan_metadata(path: str) -> Any:
    """The checkpoint's metadata as stand-in records, without importing torch (``records``): for reading."""
    meta_path = os.path.join(path, METADATA)
    try:
        with open(meta_path, "rb") as f:
            meta = records.load_metadata(f)
    except Exception as e:  # noqa: BLE001 - any damage: one line naming the file
        raise fail(meta_path, f"not a readable DCP metadata file ({type(e).__name__}: {first_line(e)})") from None
    problem = _malformed(meta)
    if problem:
        raise fail(meta_path, f"not a readable DCP metadata file ({problem})")
    return meta


def _malformed(meta: Any) -> str | None:
    """What in an unpickled ``Metadata`` is not shaped as DCP writes it (the fields this reader uses), or None."""
    entries, storage = getattr(meta, "state_dict_metadata", None), getattr(meta, "storage_data", None)
    if not isinstance(entries, dict) or not all(isinstance(k, str) for k in entries):
        return "no state_dict_metadata naming the entries"
    if not isinstance(storage, dict):
        return "no storage_data placing the chunks"
    for index, info in storage.items():
        offset = getattr(index, "offset", None)
        if not isinstance(getattr(index, "fqn", None), str) or not (offset is None or isinstance(offset, tuple)):
            return f"a storage key that is not a tensor name and offsets: {index!r:.80}"
    for fqn, entry in entries.items():
        if records.kind(entry) != "TensorStorageMetadata":
            continue
        chunks = getattr(entry, "chunks", None)
        if (not hasattr(getattr(entry, "properties", None), "dtype") or not isinstance(getattr(entry, "size", None), tuple)
                or not isinstance(chunks, list)):
            return f"{fqn}: a tensor entry without its dtype, size and chunks"
        for chunk in chunks:
            if not (isinstance(getattr(chunk, "offsets", None), tuple) and isinstance(getattr(chunk, "sizes", None), tuple)):
                return f"{fqn}: a chunk without offsets and sizes"
    planner = getattr(meta, "planner_data", None)
    if planner is not None and not (isinstance(planner, dict) and all(isinstance(p, (tuple, list)) for p in planner.values())):
        return "planner_data that is not a path for each entry"
    return None


def read(path: str, **_: Any) -> LayerGraph:
    """Read a DCP folder's model tensors as a lazy LayerGraph, from the metadata alone (torch is not imported)."""
    meta = scan_metadata(path)
    tensors = _tensor_entries(meta)
    model = model_root(meta)
    storage: dict[str, dict[tuple[int, ...], Any]] = {}
    for index, info in meta.storage_data.items():
        storage.setdefault(index.fqn, {})[tuple(getattr(index, "offset", None) or ())] = info
    params, left_out, largest_chunk = {}, {}, 0
    for fqn, entry in tensors.items():
        if model is not None and not fqn.startswith(model + "."):
            left_out[fqn] = f"not under {model!r} (optimizer state, scheduler, counters...); kept when written back as DCP"
            continue
        key = fqn[len(model) + 1:] if model else fqn
        params[key] = _param(path, storage.get(fqn, {}), fqn, entry)
        itemsize = params[key].nbytes // max(params[key].numel, 1)
        largest_chunk = max([largest_chunk, *(math.prod(c.sizes) * itemsize for c in entry.chunks)])
    # While a tensor is assembled, one chunk's bytes are held beside it (read, then put in place).
    graph = graph_of_params(params, path=path, format="dcp", meta={"read_overhead": largest_chunk})
    graph.left_out.update(left_out)
    others = [fqn for fqn in meta.state_dict_metadata if fqn not in tensors]
    if others:
        graph.notes.append(f"{len(others)} non-tensor entries (pickled values: {', '.join(others[:3])}...) not read")
    megatron = _megatron_backend(path)
    if megatron:
        stacked = [k for k in params if ".layers." in f".{k}" and params[k].shape]
        graph.meta["megatron"] = megatron
        graph.notes.append(f"a Megatron-Core {megatron} checkpoint: read as its DCP metadata describes it, the "
                           f"transformer layers stacked on a leading layer axis ({len(stacked)} tensors such as "
                           f"{stacked[0] if stacked else '-'}); common.pt (iteration, arguments) is a pickle, not read")
    if model:
        graph.notes.append(f"the model's tensors are under {model!r}; {len(left_out)} other tensors left out, "
                           "and kept with every other entry when written back as DCP")
    return graph


def _megatron_backend(path: str) -> str | None:
    """``torch_dist`` when ``metadata.json`` says Megatron-Core's ``dist_checkpointing`` wrote the folder."""
    import json

    try:
        with open(os.path.join(path, "metadata.json"), encoding="utf-8") as f:
            backend = json.load(f).get("sharded_backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) else None


def _tensor_entries(meta: Any) -> dict[str, Any]:
    return {fqn: m for fqn, m in meta.state_dict_metadata.items() if records.kind(m) == "TensorStorageMetadata"}


def model_root(meta: Any) -> str | None:
    """The key a trainer checkpoint holds the model's state_dict under (``model``), or None for a bare state_dict."""
    paths = getattr(meta, "planner_data", None) or {}
    roots = {(paths.get(fqn) or (fqn.split(".")[0],))[0] for fqn in _tensor_entries(meta)}
    return next((k for k in MODEL_KEYS if k in roots), None)


def _param(folder: str, storage: dict[tuple[int, ...], Any], fqn: str, entry: Any) -> Param:
    """A lazy tensor assembled from its chunks; ``storage`` maps each chunk's offsets to where its bytes are.

    What the metadata claims is checked before anything is read: a shape of counts, chunks that lie
    inside it, do not overlap and cover it exactly, each with a storage entry in an existing file.
    """
    from ... import dtypes

    shape, chunks = _geometry(folder, fqn, entry)
    dtype = dtype_name(entry.properties.dtype)   # present: checked by ``_malformed``
    if dtype not in dtypes.BY_NAME:
        raise fail(folder, f"{fqn}: {METADATA} gives it the dtype {dtype!r}, which surgery does not know")
    for offsets, _ in chunks:
        info = storage.get(offsets)
        if info is None:
            raise fail(folder, f"{fqn}: chunk at {list(offsets)} has no storage entry in {METADATA}")
        if getattr(info, "transform_descriptors", None):
            raise fail(folder, f"{fqn}: chunks stored through {info.transform_descriptors} (compressed or "
                               "extension-encoded) are not supported")
        if not (is_count(getattr(info, "offset", None)) and is_count(getattr(info, "length", None))
                and isinstance(getattr(info, "relative_path", None), str)):
            raise fail(folder, f"{fqn}: the storage entry of its chunk at {list(offsets)} is not a file range")
        if os.path.isabs(info.relative_path) or os.pardir in info.relative_path.replace("\\", "/").split("/"):
            raise fail(folder, f"{fqn}: {METADATA} puts its chunk at {list(offsets)} in {info.relative_path!r:.80}, "
                               "outside the checkpoint's folder")
        if not os.path.isfile(os.path.join(folder, info.relative_path)):
            raise fail(folder, f"{fqn}: its data file {info.relative_path} is missing")

    def load() -> np.ndarray:
        out = np.empty(shape, dtypes.get(dtype).numpy)
        for offsets, sizes in chunks:
            info = storage[offsets]
            path = os.path.join(folder, info.relative_path)
            piece = _read_chunk(path, info.offset, info.length, fqn)
            if piece.shape != sizes or dtypes.of_array(piece) != dtype:
                raise fail(path, f"{fqn}: the chunk at {list(offsets)} holds {dtypes.of_array(piece)}"
                                 f"{list(piece.shape)}, {METADATA} says {dtype}{list(sizes)}")
            out[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))] = piece
        return out

    rows = all(offsets[1:] == (0,) * (len(shape) - 1) and sizes[1:] == shape[1:] for offsets, sizes in chunks)
    span = (lambda: _row_span(folder, storage, chunks, dtype)) if rows else None
    return Param(shape, dtype, load, key=fqn, span=span)


def _row_span(folder: str, storage: dict[tuple[int, ...], Any], chunks: list[tuple[tuple[int, ...], tuple[int, ...]]],
              dtype: str) -> Span | None:
    """Where a tensor saved in whole rows (the chunks of FSDP's ``Shard(0)``, or one chunk) lies in its
    records, in order: its bytes copied file to file by a raw writer. None when a record holds its
    chunk otherwise than as one contiguous run of the dtype the metadata says (then it is read)."""
    pieces = []
    for offsets, sizes in sorted(chunks):
        if not math.prod(sizes):
            continue
        info = storage[offsets]
        path = os.path.join(folder, info.relative_path)
        try:
            found = records.record_bytes(path, info.offset, info.length)
        except Exception:  # noqa: BLE001 (reading the chunk names what is wrong with it)
            return None
        if found is None or found[2] != dtype or found[3] != sizes:
            return None
        pieces.append(Span(path, found[0], found[1]))
    if not pieces:
        return None
    return pieces[0]._replace(more=tuple(pieces[1:]))


def _geometry(folder: str, fqn: str, entry: Any) -> tuple[tuple[int, ...], list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """The tensor's shape and its chunks' ``(offsets, sizes)``, checked to tile the shape exactly."""
    def bad(problem: str) -> Exception:
        return fail(folder, f"{fqn}: {METADATA} {problem}")

    shape = tuple(getattr(entry, "size", None) or ())
    if not all(is_count(d) for d in shape) or math.prod(shape) > 2**50:
        raise bad(f"gives it the shape {list(shape)!r:.80}, not a tensor's")
    chunks = []
    for chunk in getattr(entry, "chunks", None) or []:
        offsets, sizes = tuple(getattr(chunk, "offsets", ())), tuple(getattr(chunk, "sizes", ()))
        if (len(offsets) != len(shape) or len(sizes) != len(shape) or not all(map(is_count, offsets + sizes))
                or any(o + s > d for o, s, d in zip(offsets, sizes, shape))):
            raise bad(f"places a chunk at {list(offsets)!r:.60} of size {list(sizes)!r:.60} outside its shape "
                      f"{list(shape)}")
        chunks.append((offsets, sizes))
    if sum(math.prod(s) for _, s in chunks) != math.prod(shape) or not chunks:
        raise bad(f"gives it chunks of {sum(math.prod(s) for _, s in chunks)} elements in all for a shape of "
                  f"{math.prod(shape)}")
    if len(chunks) > 1 and math.prod(shape):
        starts = np.array([o for o, _ in chunks], dtype=np.int64)
        ends = starts + np.array([s for _, s in chunks], dtype=np.int64)
        overlap = np.all((starts[:, None, :] < ends[None, :, :]) & (starts[None, :, :] < ends[:, None, :]), axis=2)
        np.fill_diagonal(overlap, False)
        empty = np.any(starts == ends, axis=1)
        overlap[empty, :] = overlap[:, empty] = False
        if overlap.any():
            i, j = np.argwhere(overlap)[0]
            raise bad(f"gives it overlapping chunks at {list(chunks[i][0])} and {list(chunks[j][0])}")
    return shape, chunks


def _read_chunk(path: str, offset: int, length: int, fqn: str) -> np.ndarray:
    """One chunk's ``torch.save`` record, read without torch (``records.read_record``)."""
    size = os.path.getsize(path)
    if offset + length > size:
        raise fail(path, f"{fqn}: the file ends {offset + length - size} bytes before this chunk does (truncated?)")
    try:
        return records.read_record(path, offset, length)
    except Exception as e:  # noqa: BLE001
        raise fail(path, f"{fqn}: not a readable chunk ({type(e).__name__}: {first_line(e)})") from None


MULTI_FILE = True   # a folder: written beside the target, then renamed over it
SPLITS = True   # several processes can write its parts (surgery.parts, surgery.parallel)


@dataclass
class Template:
    """A trainer checkpoint written over or read from: its model's tensors (under ``root``) are replaced,
    every other entry is kept (optimizer state, counters, and the model's own non-tensor entries)."""

    folder: str
    meta: Any
    root: str

    def replaced(self) -> dict[str, Any]:
        """The model's tensor entries, by their name in the file."""
        return {fqn: m for fqn, m in _tensor_entries(self.meta).items() if fqn.startswith(self.root + ".")}

    def kept(self) -> list[str]:
        """Every other entry, in the file's order."""
        replaced = self.replaced()
        return [fqn for fqn in self.meta.state_dict_metadata if fqn not in replaced]

    def model_shapes(self) -> dict[str, tuple[int, ...]]:
        start = len(self.root) + 1
        return {fqn[start:]: tuple(m.size) for fqn, m in self.replaced().items()}


def template_for(graph: LayerGraph, target: str) -> Template | None:
    """The trainer checkpoint whose other entries a DCP write keeps, if any.

    The output folder when it already holds one (writing into a trainer checkpoint replaces its
    model and keeps the rest), else the folder the graph was read from when that is one (a
    transplant into a trainer checkpoint, written in place or elsewhere, keeps its state).
    """
    candidates = [target, graph.path if graph.format == "dcp" else None]
    for folder in filter(None, candidates):
        if sniff(folder):
            meta = read_metadata(folder)
            root = model_root(meta)
            if root is not None:
                return Template(folder, meta, root)
    return None


def check_fits(template: Template, graph: LayerGraph, target: str) -> None:
    """Refuse to keep a trainer's state beside a model of other tensor names or shapes: it would not load.

    An optimizer's state is per parameter (``optim.state.<name>.exp_avg`` of the parameter's
    shape, ``param_groups`` naming every parameter), so weights of other names or shapes
    cannot be written beside it and still resume. Nothing is dropped silently: the user
    chooses another output (the weights alone) or removes the folder (replaced whole).
    """
    kept = template.kept()
    old, new = template.model_shapes(), {key: param.shape for key, param in graph.tensors()}
    if not kept or old == new:
        return
    problems = [f"{k} {list(old[k])} -> {list(new[k])}" for k in old if k in new and old[k] != new[k]]
    if missing := [k for k in old if k not in new]:
        problems.append(f"{len(missing)} of its tensors not written ({', '.join(missing[:3])})")
    if added := [k for k in new if k not in old]:
        problems.append(f"{len(added)} tensors it does not have ({', '.join(added[:3])})")
    raise fail(target, f"a trainer checkpoint whose {len(kept)} other entries ({', '.join(kept[:2])}...) fit its "
                       f"own model, not these weights: {'; '.join(problems)}. Nothing written; to keep its optimizer "
                       "state, transplant into it (its names and shapes are kept); for the weights alone, write to "
                       "a new folder, or remove this one to replace it whole")


# What a DCP write holds beside the tensor it is handed: the tensor serialised by torch.save into a buffer.
WRITE_COPIES = 1
# Approximate sizes for --dry-run: torch.save's zip around one tensor's bytes (1.55-1.58 KB in torch 2.13)
# and one entry of the pickled .metadata.
RECORD_OVERHEAD = 1600
METADATA_ENTRY = 200


def planned_files(graph: LayerGraph, path: str, *, processes: int = 1, **_: Any) -> list[tuple[str, int, int, bool]]:
    """``(file, bytes, tensors, exact)`` that ``write`` would make, from shapes and the template's metadata.

    Raises:
        FormatError: the write would be refused (``check_fits``).
    """
    target = os.path.abspath(path.rstrip("/\\"))
    recover_folder(*os.path.split(target))   # a killed write's old folder put back first: it may be the template
    template = template_for(graph, target)
    if template is not None:
        check_fits(template, graph, target)
    parts = data_parts(graph, target, processes) if processes > 1 else []
    files = [(part.path, part.nbytes + RECORD_OVERHEAD * len(part.keys), len(part.keys), False) for part in parts]
    count = 0 if parts else sum(1 for _ in graph.tensors())
    data = 0 if parts else sum(p.nbytes + RECORD_OVERHEAD for _, p in graph.tensors())
    entries = sum(1 for _ in graph.tensors())
    if template is not None:
        kept = set(template.kept())
        data += sum(info.length for index, info in template.meta.storage_data.items() if index.fqn in kept)
        count += sum(1 for fqn in _tensor_entries(template.meta) if fqn in kept)
        entries += len(kept)
    if count or not parts:
        files.append((os.path.join(target, _data_file(len(parts))), data, count, False))
    return [*files, (os.path.join(target, METADATA), entries * METADATA_ENTRY, 0, False)]


def write(graph: LayerGraph, path: str, *, write_parts: WriteParts | None = None, processes: int = 1,
          **_: Any) -> None:
    """Write the graph as a DCP folder that ``torch.distributed.checkpoint.load`` reads into a model's state_dict.

    One process writes one data file, ``__0_0.distcp``: each tensor one ``torch.save`` record appended
    in turn (one tensor in memory at a time), then ``.metadata``. Keys are the canonical state_dict
    names, at the top level (load into ``model.state_dict()``), or, over a trainer checkpoint
    (``template_for``), under its model's key, with every other entry of it (optimizer state,
    counters) copied byte for byte. The folder appears only when complete.

    ``write_parts``, when given, writes the tensors instead of this process (``surgery.parallel``):
    one data file ``__<i>_0.distcp`` per process (``data_parts``), the places of its records coming
    back here; this process copies the kept entries into a file of its own and writes ``.metadata``.

    Raises:
        FormatError: the trainer checkpoint's state does not fit these weights (``check_fits``).
    """
    target = os.path.abspath(path.rstrip("/\\"))
    recover_folder(*os.path.split(target))   # a killed write's old folder put back first: it may be the template
    template = template_for(graph, target)
    if template is not None:
        check_fits(template, graph, target)
    with atomic_folder(target) as tmp:
        if write_parts is None:
            places = [(DATA_FILE, write_records(os.path.join(tmp, DATA_FILE), list(graph.tensors())))]
            kept_file = DATA_FILE   # the kept entries follow the tensors
        else:
            parts = data_parts(graph, tmp, processes, target=target)
            places = [(os.path.basename(p.path), found) for p, found in zip(parts, write_parts(parts))]
            kept_file = _data_file(len(parts))   # a file of this process's own: the parts may be on other ranks
        _write_metadata(graph, tmp, template, places, kept_file)


def planned_parts(graph: LayerGraph, path: str, *, processes: int, **_: Any) -> list[Part]:
    """The data files a write split across ``processes`` would hand out."""
    return data_parts(graph, os.path.abspath(path.rstrip("/\\")), processes)


def _data_file(i: int) -> str:
    return f"__{i}_0.distcp"


def data_parts(graph: LayerGraph, folder: str, processes: int, *, target: str | None = None) -> list[Part]:
    """The data files of a split write: the tensors in runs of about equal bytes, one file per process."""
    sizes = [(key, param.nbytes) for key, param in graph.tensors()]
    return [Part(os.path.join(folder, _data_file(i)), keys, nbytes, target=target, kind="records")
            for i, (keys, nbytes) in enumerate(runs(sizes, processes))]


def write_records(path: str, tensors: list[tuple[str, Param]]) -> list[tuple[str, int, int]]:
    """A data file of one ``torch.save`` record per tensor, one tensor in memory at a time; each record's (key, offset, length)."""
    import torch

    from .common import to_tensor

    places = []
    with open(path, "wb") as f:
        for key, param in tensors:
            buffer = io.BytesIO()
            torch.save(to_tensor(param.read()), buffer)   # read() checks the data against its dtype and shape
            places.append((key, f.tell(), buffer.getbuffer().nbytes))
            f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())
    return places


def _write_metadata(graph: LayerGraph, folder: str, template: Template | None,
                    places: list[tuple[str, list[tuple[str, int, int]]]], kept_file: str) -> None:
    """``.metadata`` for the records at ``places`` (data file, [(key, offset, length)]), and the template's
    kept entries, copied into ``kept_file``."""
    import torch
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    from ...io import fsync_path
    from .common import torch_dtype

    table = dict(graph.tensors())
    entries, storage, planner = {}, {}, {}
    prefix = f"{template.root}." if template else ""
    for relative, found in places:
        for key, offset, length in found:
            param = table[key]
            fqn, shape = prefix + key, torch.Size(param.shape)
            origin = torch.Size([0] * len(shape))
            entries[fqn] = TensorStorageMetadata(TensorProperties(dtype=torch_dtype(param.dtype)), shape,
                                                 [ChunkStorageMetadata(offsets=origin, sizes=shape)])
            storage[MetadataIndex(fqn, origin, 0)] = _storage_info(relative, offset, length)
            planner[fqn] = (template.root, key) if template else (key,)
    if template is not None:
        with open(os.path.join(folder, kept_file), "ab") as f:
            _copy_kept(template, f, kept_file, entries, storage, planner)
            f.flush()
            os.fsync(f.fileno())
    meta = Metadata(entries, planner_data=planner, storage_data=storage)
    with open(os.path.join(folder, METADATA), "wb") as f:
        pickle.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(folder)


def _storage_info(relative: str, offset: int, length: int, like: Any = None) -> Any:
    """Where a record is: its data file, offset and length (``like``'s other fields, such as transforms, kept)."""
    import dataclasses

    from torch.distributed.checkpoint.filesystem import _StorageInfo

    if like is None:
        return _StorageInfo(relative, offset, length)
    return dataclasses.replace(like, relative_path=relative, offset=offset)


def _copy_kept(template: Template, out: Any, relative: str, entries: dict, storage: dict, planner: dict) -> None:
    """Append every record of the template that is not the model's to ``out`` (the data file ``relative``),
    as its bytes are (never unpickled)."""
    paths = template.meta.planner_data or {}
    kept = template.kept()
    for fqn in kept:
        entries[fqn] = template.meta.state_dict_metadata[fqn]
        if fqn in paths:
            planner[fqn] = paths[fqn]
    kept_set = set(kept)
    records = sorted(((info.relative_path, info.offset, index, info) for index, info in template.meta.storage_data.items()
                      if index.fqn in kept_set), key=lambda r: r[:2])
    for source, offset, index, info in records:
        storage[index] = _storage_info(relative, out.tell(), info.length, like=info)
        _copy_span(os.path.join(template.folder, source), offset, info.length, out, index.fqn)


def _copy_span(path: str, offset: int, length: int, out: Any, fqn: str) -> None:
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            block = f.read(min(left, 1 << 20))
            if not block:
                raise fail(path, f"{fqn}: the file ends {left} bytes before this record does (truncated?)")
            out.write(block)
            left -= len(block)
