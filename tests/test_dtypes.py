"""The dtype table against numpy and ml_dtypes themselves."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from surgery import dtypes


def test_every_itemsize_is_numpys():
    """Sizes as a header read gets them (in a fresh process, before any numpy type is resolved)."""
    code = "from surgery import dtypes; print(*(dtypes.itemsize(row.name) for row in dtypes.TABLE))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    for row, size in zip(dtypes.TABLE, out, strict=True):
        assert int(size) == np.dtype(row.numpy).itemsize, row.name


def test_sizes_from_a_header_import_no_ml_dtypes():
    code = ("import sys; from surgery import dtypes; "
            "print([dtypes.itemsize(n) for n in ('bfloat16', 'float8_e4m3fn')], 'ml_dtypes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[2, 1] False"
