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


def test_reading_a_bfloat16_header_imports_no_ml_dtypes_and_reading_its_data_does(tmp_path):
    from safetensors.numpy import save_file

    ml_dtypes = __import__("ml_dtypes")
    save_file({"w": np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3)}, str(tmp_path / "a.safetensors"))
    code = ("import sys, surgery; g = surgery.load(sys.argv[1]); p = g.state()['w']; "
            "before = 'ml_dtypes' in sys.modules; a = p.read(); "
            "print(p.shape, p.dtype, before, 'ml_dtypes' in sys.modules, a.astype('float32').tolist())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.safetensors")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "(2, 3) bfloat16 False True [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]"
