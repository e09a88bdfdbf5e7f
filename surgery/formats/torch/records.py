"""DCP's pickles read without torch: its ``.metadata`` and its chunks' ``torch.save`` records.

Reading a DCP folder needs no torch: ``.metadata`` is a pickle of a few record classes of
``torch.distributed.checkpoint`` and of plain torch values (``torch.Size``, dtypes, layouts),
and each chunk is a ``torch.save`` archive (a zip: ``data.pkl`` naming one storage, the
storage's raw bytes in ``data/<key>``, stored uncompressed). Here both pickles are read by
unpicklers whose every global is a stand-in defined in this module: a record that keeps
what it was given, a dtype that is a name. No class of the file's choosing is ever built
and nothing it names is imported, so a hostile file can fail to load, never run code.
Importing torch (seconds, and a few hundred MiB) is left to the writer of DCP, which must
pickle torch's own classes.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import struct
import zipfile
from typing import Any, NamedTuple

import numpy as np

from ... import dtypes

_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
                     "torch.distributed.checkpoint.planner")
# torch's storage classes as a torch.save pickle names them, and the dtype each holds
_STORAGES = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
             "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
             "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
             "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2"}


class Record:
    """A stand-in for one of DCP's record classes: keeps its arguments and its pickled state as attributes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state   # TensorProperties pickles a tuple: (dtype, layout, requires_grad, memory format, pinned)
            if type(self).__name__ == "TensorProperties" and isinstance(state, tuple) and state:
                self.dtype = state[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__})"


_RECORDS: dict[str, type] = {}


def _record(name: str) -> type:
    if name not in _RECORDS:
        _RECORDS[name] = type(name, (Record,), {})
    return _RECORDS[name]


class Dtype(str):
    """``torch.float32`` as the name ``torch.float32`` (``common.dtype_name`` strips the prefix)."""


class Size(tuple):
    """``torch.Size``."""


def _layout(name: Any) -> str:
    return str(name)


def _path(*parts: Any) -> str:
    """``pathlib.PosixPath('/', 'tmp', 'ckpt')`` (where a checkpoint was saved) as the string it names."""
    return "/".join(str(p) for p in parts).replace("//", "/")


class _Unpickler(pickle.Unpickler):
    """Admits no class of the file's choosing: every global resolves to a stand-in here, or is refused."""

    refusal = "is not something this file may name"

    def find_class(self, module: str, name: str) -> Any:
        found = self._stand_in(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} {self.refusal}")
        return found

    def _stand_in(self, module: str, name: str) -> Any:
        if module == "torch" and name == "Size":
            return Size
        if module == "torch" and name in dtypes.BY_NAME:
            return Dtype(f"torch.{name}")
        if module == "torch" and name in ("strided", "contiguous_format", "channels_last", "preserve_format",
                                          "sparse_coo"):
            return f"torch.{name}"
        if module == "torch.serialization" and name == "_get_layout":
            return _layout
        if module == "collections" and name == "OrderedDict":
            return dict
        return None


class _MetadataUnpickler(_Unpickler):
    refusal = "is not a DCP metadata class"

    def _stand_in(self, module: str, name: str) -> Any:
        if module in _METADATA_MODULES and name.isidentifier():
            return _record(name)
        if module in ("pathlib",) and name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"):
            return _path
        if module == "builtins" and name in ("set", "frozenset", "slice"):
            return {"set": set, "frozenset": frozenset, "slice": slice}[name]
        return super()._stand_in(module, name)


def load_metadata(f: Any) -> Any:
    """A DCP ``.metadata`` pickle as records (``state_dict_metadata``, ``storage_data``, ``planner_data``)."""
    data = f.read()
    _check_memo(data)
    return _MetadataUnpickler(io.BytesIO(data)).load()


_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def _check_memo(data: bytes) -> None:
    """Refuse a pickle that stores into its memo far past what it has built.

    Python's unpickler grows its memo to the index a ``PUT`` names: one op naming slot 700
    million makes it allocate gigabytes (and take minutes). A pickler numbers its memo in
    order, so no index may exceed the count of opcodes before it. Scanned with pickletools,
    which builds nothing.
    """
    for count, (op, arg, pos) in enumerate(pickletools.genops(data)):
        if op.name in _PUTS and isinstance(arg, int) and arg > count:
            raise pickle.UnpicklingError(f"a memo index of {arg} at byte {pos}, after {count} opcodes")


def kind(record: Any) -> str:
    """The class name a record (a stand-in, or torch's own object) was pickled as."""
    return type(record).__name__


# --- torch.save records --------------------------------------------------------------------------

class _StorageRef(NamedTuple):
    key: str
    dtype: str
    numel: int


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _StorageRef, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(int(d) for d in size), tuple(int(s) for s in stride))


class _StorageType:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


class _RecordUnpickler(_Unpickler):
    def _stand_in(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        return super()._stand_in(module, name)

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _, numel = pid[1:]
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else str(storage_type).removeprefix("torch.")
        if dtype not in dtypes.BY_NAME:
            raise pickle.UnpicklingError(f"a storage of unknown type {storage_type!r:.60}")
        return _StorageRef(str(key), dtype, int(numel))


class _Window(io.RawIOBase):
    """``length`` bytes of an open file from ``start``, as a file of their own (for ``zipfile``)."""

    def __init__(self, f: Any, start: int, length: int) -> None:
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.length - self.pos)
        n = left if n is None or n < 0 else min(n, left)
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class Located(NamedTuple):
    """A ``torch.save`` record's one tensor: its description and where its storage's bytes start in the file."""

    tensor: _TensorRef
    data_at: int
    itemsize: int
    extent: int   # elements of the storage the tensor reaches, from its offset


def locate(f: Any, offset: int, length: int) -> Located:
    """Find the one tensor of the ``torch.save`` record at ``[offset, offset + length)`` of the open file ``f``.

    Raises ValueError (or zipfile/pickle errors) for anything else; the caller names the chunk.
    """
    window = _Window(f, offset, length)
    with zipfile.ZipFile(window) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ValueError("no data.pkl in the record")
        prefix = pkl[: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() not in (b"little", b""):
            raise ValueError("a big-endian record")
        pickled = archive.read(pkl)
        _check_memo(pickled)
        tensor = _RecordUnpickler(io.BytesIO(pickled)).load()
        if not isinstance(tensor, _TensorRef):
            raise ValueError(f"the record holds {type(tensor).__name__}, not one tensor")
        info = archive.getinfo(f"{prefix}data/{tensor.storage.key}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError("a compressed storage")
        window.seek(info.header_offset)
        local = window.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError("a damaged zip entry")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        data_at = offset + info.header_offset + 30 + name_len + extra_len
    itemsize = dtypes.get(tensor.storage.dtype).itemsize
    if tensor.storage.numel * itemsize > info.file_size:
        raise ValueError(f"its storage says {tensor.storage.numel} elements, the record holds {info.file_size} bytes")
    extent = 1 + sum((d - 1) * s for d, s in zip(tensor.shape, tensor.stride)) if all(tensor.shape) else 0
    if tensor.offset < 0 or tensor.offset + extent > tensor.storage.numel or any(s < 0 for s in tensor.stride):
        raise ValueError("the tensor reaches outside its storage")
    if data_at + (tensor.offset + extent) * itemsize > offset + length:
        raise ValueError("the tensor's bytes reach past the end of its record")
    return Located(tensor, data_at, itemsize, extent)


def read_record(path: str, offset: int, length: int) -> np.ndarray:
    """The one tensor a ``torch.save`` archive at ``[offset, offset + length)`` of ``path`` holds.

    Raises ValueError (or zipfile/pickle errors) for anything else; the caller names the chunk.
    """
    with open(path, "rb") as f:
        found = locate(f, offset, length)
        tensor, extent, itemsize = found.tensor, found.extent, found.itemsize
        f.seek(found.data_at + tensor.offset * itemsize)
        raw = f.read(extent * itemsize)
    if len(raw) != extent * itemsize:
        raise ValueError("the file ends inside the record (truncated?)")
    np_dtype = dtypes.get(tensor.storage.dtype).numpy
    flat = np.frombuffer(raw, dtype=np_dtype)
    if not extent:
        return np.empty(tensor.shape, np_dtype)
    strides = tuple(s * itemsize for s in tensor.stride)
    return np.lib.stride_tricks.as_strided(flat, shape=tensor.shape, strides=strides)


def record_bytes(path: str, offset: int, length: int) -> tuple[int, int, str, tuple[int, ...]] | None:
    """Where the record's tensor lies in ``path`` exactly as it reads (C order): ``(offset, bytes, dtype, shape)``;
    None when its elements are not one contiguous run of its storage (a strided view)."""
    with open(path, "rb") as f:
        found = locate(f, offset, length)
    tensor = found.tensor
    contiguous, step = True, 1
    for d, s in reversed(list(zip(tensor.shape, tensor.stride))):
        if d != 1 and s != step:
            contiguous = False
        step *= d
    if not contiguous:
        return None
    numel = math.prod(tensor.shape)
    return (found.data_at + tensor.offset * found.itemsize, numel * found.itemsize, tensor.storage.dtype,
            tuple(tensor.shape))
