"""The dtype table: one row per element type, as plain data.

Inside surgery a tensor is a numpy array. Types numpy lacks (bfloat16, the
float8 family) are the ``ml_dtypes`` types, which numpy can transpose, slice
and cast like any other, so nothing is ever widened silently.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

from .errors import SurgeryError


class DType(NamedTuple):
    name: str          # surgery's own name, also the torch attribute name
    safetensors: str   # the code in a safetensors header
    numpy: np.dtype    # the element type of the numpy array holding the data


def _row(name: str, code: str, np_type: object) -> DType:
    return DType(name, code, np.dtype(np_type))


TABLE: tuple[DType, ...] = (
    _row("float64", "F64", np.float64),
    _row("float32", "F32", np.float32),
    _row("float16", "F16", np.float16),
    _row("bfloat16", "BF16", ml_dtypes.bfloat16),
    _row("float8_e4m3fn", "F8_E4M3", ml_dtypes.float8_e4m3fn),
    _row("float8_e5m2", "F8_E5M2", ml_dtypes.float8_e5m2),
    _row("float8_e4m3fnuz", "F8_E4M3FNUZ", ml_dtypes.float8_e4m3fnuz),
    _row("float8_e5m2fnuz", "F8_E5M2FNUZ", ml_dtypes.float8_e5m2fnuz),
    _row("float8_e8m0fnu", "F8_E8M0", ml_dtypes.float8_e8m0fnu),
    _row("complex64", "C64", np.complex64),
    _row("int64", "I64", np.int64),
    _row("int32", "I32", np.int32),
    _row("int16", "I16", np.int16),
    _row("int8", "I8", np.int8),
    _row("uint64", "U64", np.uint64),
    _row("uint32", "U32", np.uint32),
    _row("uint16", "U16", np.uint16),
    _row("uint8", "U8", np.uint8),
    _row("bool", "BOOL", np.bool_),
)

BY_NAME = {d.name: d for d in TABLE}
BY_SAFETENSORS = {d.safetensors: d for d in TABLE}
BY_NUMPY = {d.numpy: d for d in TABLE}

FLOATING = frozenset(d.name for d in TABLE if d.name.startswith(("float", "bfloat")))


def get(name: str) -> DType:
    """The row for a surgery dtype name; raises SurgeryError for an unknown one."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise SurgeryError(f"unknown dtype {name!r}; known: {', '.join(BY_NAME)}") from None


def of_array(arr: np.ndarray) -> str:
    """The surgery dtype name of a numpy array."""
    try:
        return BY_NUMPY[arr.dtype].name
    except KeyError:
        raise SurgeryError(f"numpy dtype {arr.dtype} has no surgery equivalent") from None


def itemsize(name: str) -> int:
    return get(name).numpy.itemsize


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
