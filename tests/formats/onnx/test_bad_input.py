"""Malformed ONNX files: one FormatError naming the file and the problem, never a framework traceback."""

from __future__ import annotations

import os

import numpy as np
import pytest

from surgery.errors import FormatError
from surgery.formats.onnx import model as sonnx


def external_model(folder, location: str, length: int = 48, offset: int = 0):
    """A MatMul model whose weight (4, 3) float32 is external at ``location``."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 3], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight])
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def test_external_data_outside_the_folder(fx):
    path = fx / "onnx" / "evil" / "model.onnx"
    with pytest.raises(FormatError, match=r"model.onnx: initializer 'W': external data '\.\./outside.bin' points outside"):
        sonnx.read(str(path))


def test_absolute_external_location(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.zeros(12, np.float32).tobytes())
    path = external_model(tmp_path, str(tmp_path / "w.bin"))
    with pytest.raises(FormatError, match="is not a relative path"):
        sonnx.read(str(path))


def test_symlink_out_of_the_folder(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.zeros(12, np.float32).tobytes())
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    os.symlink(outside, model_dir / "w.bin")
    path = external_model(model_dir, "w.bin")
    with pytest.raises(FormatError, match="points outside the model's folder"):
        sonnx.read(str(path))


def test_external_data_past_the_end(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.zeros(6, np.float32).tobytes())  # 24 of 48 bytes
    with pytest.raises(FormatError, match=r"initializer 'W': external data 'w.bin' bytes 0..48 .*file is 24 bytes"):
        sonnx.read(str(external_model(tmp_path, "w.bin")))


def test_external_length_disagrees_with_shape(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.zeros(100, np.float32).tobytes())
    with pytest.raises(FormatError, match="do not hold its 48 bytes"):
        sonnx.read(str(external_model(tmp_path, "w.bin", length=40)))


def test_missing_external_file(tmp_path):
    with pytest.raises(FormatError, match="external data file 'w.bin' is missing"):
        sonnx.read(str(external_model(tmp_path, "w.bin")))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_model(fx, tmp_path, keep):
    data = (fx / "onnx" / "cnn.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(FormatError, match=r"cut.onnx: .*(not a valid ONNX model|holds \d+ bytes)"):
        sonnx.read(str(path))


def test_not_onnx_at_all(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(FormatError, match="junk.onnx: not a valid ONNX model"):
        sonnx.read(str(path))
