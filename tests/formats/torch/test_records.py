"""``torch.save`` records and DCP metadata read without torch (``records``), against torch's own saving.

Each record is written by ``torch.save`` into the middle of a file (as DCP places its chunks) and
read back by ``records.read_record``; the tensor must equal what torch saved, element for element.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from surgery.formats.torch import records
from tests.conftest import raw

ml_dtypes = pytest.importorskip("ml_dtypes")


def _placed(tmp_path, obj, junk: int = 37) -> tuple[str, int, int]:
    """``obj`` torch.saved between ``junk`` bytes before and after, as a chunk sits in a .distcp file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path = str(tmp_path / "data.distcp")
    with open(path, "wb") as f:
        f.write(os.urandom(junk))
        f.write(buffer.getbuffer())
        f.write(os.urandom(junk))
    return path, junk, buffer.getbuffer().nbytes


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


@pytest.mark.parametrize("make", [
    lambda: torch.randn(5, 7),
    lambda: torch.randn(6, 4).to(torch.bfloat16),
    lambda: torch.randint(-9, 9, (3, 2, 2), dtype=torch.int64),
    lambda: torch.tensor(3.5),
    lambda: torch.zeros(0, 4),
    lambda: torch.randn(8, 9).t()[2:5],           # a strided view of a larger storage, at an offset
    lambda: torch.randn(4, 4, dtype=torch.float16)[1:, ::2],
], ids=["float32", "bfloat16", "int64", "scalar", "empty", "transposed view", "float16 strided"])
def test_a_record_reads_as_torch_saved_it(make, tmp_path):
    torch.manual_seed(0)
    tensor = make()
    got = records.read_record(*_placed(tmp_path, tensor))
    want = _numpy(tensor)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(raw(np.ascontiguousarray(got)), raw(np.ascontiguousarray(want)))


class _Boom:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_record_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path, offset, length = _placed(tmp_path, {"w": _Boom(str(marker))})
    with pytest.raises(pickle.UnpicklingError, match="system is not something this file may name"):
        records.read_record(path, offset, length)
    assert not marker.exists()


def test_a_record_that_is_not_one_tensor_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not one tensor"):
        records.read_record(*_placed(tmp_path, {"a": torch.ones(2)}))


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    import zipfile

    buffer = io.BytesIO()
    torch.save(torch.arange(10, dtype=torch.float32), buffer)
    lying = io.BytesIO()
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(lying, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):   # the size (10,) becomes (12,): BININT1 10, TUPLE1
                assert data.count(b"K\x0a\x85") == 1
                data = data.replace(b"K\x0a\x85", b"K\x0c\x85")
            out.writestr(info.filename, data)
    path = tmp_path / "lying.distcp"
    path.write_bytes(lying.getvalue())
    with pytest.raises(ValueError, match="outside its storage"):
        records.read_record(str(path), 0, len(lying.getvalue()))


def test_reading_a_dcp_imports_no_torch(tmp_path):
    import torch.distributed.checkpoint as dcp
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": {"w": torch.randn(3, 4), "b": torch.randn(4).bfloat16()}, "step": 1},
                 checkpoint_id=str(tmp_path / "ckpt"))
    code = ("import sys, surgery; g = surgery.load(sys.argv[1]); [p.read() for _, p in g.tensors()]; "
            "print(sorted(k for k, _ in g.tensors()), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "['b', 'w'] False"
