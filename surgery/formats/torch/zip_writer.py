"""``torch.save`` without holding the model in memory.

``torch.save`` pickles every tensor first and copies storages into the zip
after, so it needs them all in memory. Here each tensor of the graph is an
untouched ``torch.empty`` placeholder (address space, no resident pages);
``torch.serialization.skip_data`` writes the archive with holes where the
bytes go; then each hole is filled from the graph, one tensor at a time, and
the CRC-32 of each record is patched into the zip headers, so the file is
what ``torch.save`` would have written, byte for byte where it matters.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from ...errors import SurgeryError
from ...graph import Param

_LOCAL = struct.Struct("<IHHHHHIIIHH")      # local file header, 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory header, 46 bytes


def save(obj: Any, path: str, fill: dict[int, Param]) -> None:
    """``torch.save(obj, path)`` where storages keyed in ``fill`` (by ``_cdata``) get their bytes from Params."""
    import torch

    order = _storage_order(obj)
    # Through a Python file, so that a full disk surfaces as OSError(ENOSPC), not as torch's RuntimeError.
    with torch.serialization.skip_data(), open(path, "wb") as f:
        torch.save(obj, f)
    spans = data_records(path)
    if len(spans) != len(order):
        raise SurgeryError(f"{path}: torch wrote {len(spans)} storages, expected {len(order)}")
    crcs = {}
    with open(path, "r+b") as f:
        for index, (cdata, storage) in enumerate(order):
            offset, size, name = spans[index]
            data = _bytes(fill[cdata].read()) if cdata in fill else _storage_bytes(storage)
            if len(data) != size:
                raise SurgeryError(f"{path}: record {name} holds {size} bytes, the tensor has {len(data)}")
            f.seek(offset)
            f.write(data)
            crcs[name] = zlib.crc32(data)
    _patch_crcs(path, crcs)


def _storage_order(obj: Any) -> list[tuple[int, Any]]:
    """The storages of ``obj`` in the order ``torch.save`` numbers them (first appearance while pickling)."""
    import torch

    seen: dict[int, Any] = {}

    class Recorder(pickle.Pickler):
        def persistent_id(self, item: Any) -> Any:
            if isinstance(item, torch.storage.TypedStorage) or torch.is_storage(item):
                storage = item._untyped_storage if isinstance(item, torch.storage.TypedStorage) else item
                seen.setdefault(storage._cdata, storage)
                return ("storage", str(storage._cdata))
            return None

    Recorder(io.BytesIO(), protocol=2).dump(obj)
    return list(seen.items())


def data_records(path: str) -> list[tuple[int, int, str]]:
    """``(data offset, size, name)`` of the ``*/data/N`` records, by N."""
    found = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            m = re.search(r"/data/(\d+)$", info.filename)
            if m:
                f.seek(info.header_offset)
                header = _LOCAL.unpack(f.read(_LOCAL.size))
                offset = info.header_offset + _LOCAL.size + header[9] + header[10]
                found[int(m.group(1))] = (offset, info.file_size, info.filename)
    return [found[i] for i in sorted(found)]


def _patch_crcs(path: str, crcs: dict[str, int]) -> None:
    """Write each record's CRC-32 into its local and central headers (skip_data leaves them zero)."""
    with zipfile.ZipFile(path) as z:
        infos = {info.filename: info for info in z.infolist() if info.filename in crcs}
        central = z.start_dir
    with open(path, "r+b") as f:
        for name, info in infos.items():
            f.seek(info.header_offset + 14)
            f.write(struct.pack("<I", crcs[name]))
        f.seek(central)
        while True:
            head = f.read(_CENTRAL.size)
            if len(head) < _CENTRAL.size or head[:4] != b"PK\x01\x02":
                break
            fields = _CENTRAL.unpack(head)
            name = f.read(fields[10]).decode("utf-8")
            if name in crcs:
                here = f.tell()
                f.seek(here - fields[10] - _CENTRAL.size + 16)
                f.write(struct.pack("<I", crcs[name]))
                f.seek(here)
            f.seek(fields[11] + fields[12], 1)


def _bytes(arr: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _storage_bytes(storage: Any) -> memoryview:
    import torch

    return memoryview(torch.empty(0, dtype=torch.uint8).set_(storage).numpy())
