"""The dtype table: one row per element type, as plain data.

Inside surgery a tensor is a numpy array. Types numpy lacks (bfloat16, the
float8 family) are the ``ml_dtypes`` types, which numpy can transpose, slice
and cast like any other, so nothing is ever widened silently.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .errors import SurgeryError


class DType:
    """One element type: surgery's name, its safetensors code, and its numpy element type.

    The numpy type is resolved on first use: the bfloat16 and float8 rows are
    ``ml_dtypes`` types, and importing ``ml_dtypes`` costs most of a second, which
    every command would pay at start-up if the table resolved it eagerly.
    """

    __slots__ = ("name", "safetensors", "_spec", "_numpy", "itemsize")

    def __init__(self, name: str, safetensors: str, spec: str, itemsize: int | None = None) -> None:
        self.name = name              # surgery's own name, also the torch attribute name
        self.safetensors = safetensors  # the code in a safetensors header
        self._spec = spec             # "numpy:float32" or "ml_dtypes:bfloat16"
        self._numpy: np.dtype | None = None
        # bytes per element: given for the ml_dtypes rows, so sizing a header never imports ml_dtypes
        self.itemsize = itemsize if itemsize is not None else self.numpy.itemsize

    @property
    def numpy(self) -> np.dtype:
        """The element type of the numpy array holding the data."""
        if self._numpy is None:
            package, attr = self._spec.split(":")
            module = np if package == "numpy" else __import__(package)
            self._numpy = np.dtype(getattr(module, attr))
        return self._numpy

    @property
    def extension(self) -> bool:
        """True for the types numpy lacks, which ``ml_dtypes`` provides."""
        return self._spec.startswith("ml_dtypes:")

    def __repr__(self) -> str:
        return f"DType({self.name!r}, {self.safetensors!r}, {self._spec!r})"


TABLE: tuple[DType, ...] = (
    DType("float64", "F64", "numpy:float64"),
    DType("float32", "F32", "numpy:float32"),
    DType("float16", "F16", "numpy:float16"),
    DType("bfloat16", "BF16", "ml_dtypes:bfloat16", 2),
    DType("float8_e4m3fn", "F8_E4M3", "ml_dtypes:float8_e4m3fn", 1),
    DType("float8_e5m2", "F8_E5M2", "ml_dtypes:float8_e5m2", 1),
    DType("float8_e4m3fnuz", "F8_E4M3FNUZ", "ml_dtypes:float8_e4m3fnuz", 1),
    DType("float8_e5m2fnuz", "F8_E5M2FNUZ", "ml_dtypes:float8_e5m2fnuz", 1),
    DType("float8_e8m0fnu", "F8_E8M0", "ml_dtypes:float8_e8m0fnu", 1),
    DType("complex64", "C64", "numpy:complex64"),
    DType("int64", "I64", "numpy:int64"),
    DType("int32", "I32", "numpy:int32"),
    DType("int16", "I16", "numpy:int16"),
    DType("int8", "I8", "numpy:int8"),
    DType("uint64", "U64", "numpy:uint64"),
    DType("uint32", "U32", "numpy:uint32"),
    DType("uint16", "U16", "numpy:uint16"),
    DType("uint8", "U8", "numpy:uint8"),
    DType("bool", "BOOL", "numpy:bool_"),
)

BY_NAME = {d.name: d for d in TABLE}
BY_SAFETENSORS = {d.safetensors: d for d in TABLE}

FLOATING = frozenset(d.name for d in TABLE if d.name.startswith(("float", "bfloat")))


def from_numpy(np_dtype: Any) -> DType:
    """The row for a numpy element type; raises SurgeryError when surgery has none.

    An ml_dtypes element type can only be met once ``ml_dtypes`` is imported, so its
    rows are only resolved then.
    """
    np_dtype = np.dtype(np_dtype)
    extensions = "ml_dtypes" in sys.modules
    for row in TABLE:
        if (extensions or not row.extension) and row.numpy == np_dtype:
            return row
    raise SurgeryError(f"numpy dtype {np_dtype} has no surgery equivalent")


def get(name: str) -> DType:
    """The row for a surgery dtype name; raises SurgeryError for an unknown one."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise SurgeryError(f"unknown dtype {name!r}; known: {', '.join(BY_NAME)}") from None


def of_array(arr: np.ndarray) -> str:
    """The surgery dtype name of a numpy array."""
    return from_numpy(arr.dtype).name


def itemsize(name: str) -> int:
    """Bytes per element (from the table: sizing a header imports no ``ml_dtypes``)."""
    return get(name).itemsize


def is_floating(name: str) -> bool:
    return name in FLOATING


_CHUNK = 1 << 22  # elements converted at a time, so a bfloat16 tensor is never widened whole


def nonfinite(arr: np.ndarray) -> tuple[int, int]:
    """``(NaN count, Inf count)`` of an array; (0, 0) for integer and boolean types.

    ml_dtypes types (bfloat16, float8) are converted to float32 a chunk at a time,
    which holds every value they can.
    """
    if arr.dtype.kind in "biu":
        return 0, 0
    flat = arr.reshape(-1)
    nan = inf = 0
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        part = part if part.dtype.kind in "fc" else part.astype(np.float32)
        if np.isfinite(part).all():  # the common case: one pass, no counting
            continue
        nan += int(np.count_nonzero(np.isnan(part)))
        inf += int(np.count_nonzero(np.isinf(part)))
    return nan, inf
