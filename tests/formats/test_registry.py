import shutil
import zipfile

import pytest

import surgery
from surgery import formats
from surgery.errors import FormatError
from tests.conftest import FIXTURES, TORCH


@pytest.mark.parametrize("path,name", [
    (TORCH / "cnn_source.pt", "torch"), (TORCH / "legacy.pt", "torch"), (TORCH / "cnn_source.safetensors", "safetensors"),
    (TORCH / "hf_sharded", "folder"), (FIXTURES / "torchscript" / "tiny.ts", "torchscript"),
    (FIXTURES / "torchscript" / "tiny.pt2", "exported_program"), (FIXTURES / "onnx" / "cnn.onnx", "onnx"),
    (FIXTURES / "keras" / "vgg.keras", "keras"), (FIXTURES / "keras" / "vgg.h5", "h5"),
])
def test_detect_by_content(path, name):
    assert formats.detect(path) == name


def test_detect_ignores_a_misleading_suffix(tmp_path):
    disguised = tmp_path / "weights.bin"
    shutil.copy(FIXTURES / "torchscript" / "tiny.ts", disguised)
    assert formats.detect(disguised) == "torchscript"
    renamed = tmp_path / "model.pt"
    shutil.copy(TORCH / "cnn_source.safetensors", renamed)
    assert formats.detect(renamed) == "safetensors"


def test_torchscript_written_to_pt_stays_torchscript(tmp_path):
    out = tmp_path / "scripted.pt"
    surgery.save(surgery.load(FIXTURES / "torchscript" / "tiny.ts"), out)
    assert formats.detect(out) == "torchscript"
    assert any("/code/" in n for n in zipfile.ZipFile(out).namelist())


def test_unknown_file_is_refused(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(FormatError, match="notes.txt: not a checkpoint surgery can read"):
        formats.detect(junk)
    with pytest.raises(FormatError, match="cannot tell the output format"):
        formats.for_output(tmp_path / "out.xyz")


def test_folder_with_a_tensorflow_checkpoint(tmp_path):
    alone = surgery.load(FIXTURES / "tf" / "tf2")
    assert alone.format == "tf_checkpoint" and "conv1" in alone
    for name in ("ckpt.index", "ckpt.data-00000-of-00001"):
        shutil.copy(FIXTURES / "tf" / "tf2" / name, tmp_path / name.replace("ckpt", "ckpt-7"))
        shutil.copy(FIXTURES / "tf" / "tf2" / name, tmp_path / name.replace("ckpt", "ckpt-3"))
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-7"\nall_model_checkpoint_paths: "ckpt-3"\n')
    latest = surgery.load(tmp_path)
    assert latest.path.endswith("ckpt-7.index") and set(latest.layers) == set(alone.layers)
