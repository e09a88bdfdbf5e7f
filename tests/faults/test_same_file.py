"""``OUT == SRC`` is refused however it is spelled: exit 2, one line naming the output, the source untouched.

Spellings: the same path, ``./`` and ``..`` detours, a symlink, a hard link, a symlinked folder; and for
sources of several files, an output that would replace or remove any of them: the index or a shard of
a shard set, a TF checkpoint's index or data file, a folder holding the source (a DCP output is a
folder renamed over the target), or an ONNX model's external data file.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil

import pytest

from tests.conftest import FIXTURES, TF2, TORCH
from tests.faults.conftest import assert_one_line_error, surgery


def _snapshot(folder: pathlib.Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (links followed), to prove nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(folder: pathlib.Path, shown: object, *args: object, cwd: pathlib.Path | None = None) -> None:
    """Run the CLI: one line naming ``shown`` and the source, exit 2, nothing under ``folder`` changed."""
    before = _snapshot(folder)
    result = surgery(*args, cwd=cwd)
    assert_one_line_error(result, str(shown), "source")
    after = _snapshot(folder)
    assert after == before, f"changed or added: {sorted(k for k in after if after[k] != before.get(k))}"


@pytest.fixture
def single(tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copy(TORCH / "cnn_source.safetensors", tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors"


@pytest.mark.parametrize("spelling", ["same", "dot", "dotdot", "symlink", "hardlink", "linked_folder"])
def test_a_single_file_output_that_is_the_source_is_refused(spelling, single):
    folder = single.parent
    out = {"same": single, "dot": "./model.safetensors", "dotdot": f"../{folder.name}/./model.safetensors",
           "symlink": folder / "link.safetensors", "hardlink": folder / "hard.safetensors",
           "linked_folder": folder / "alias" / "model.safetensors"}[spelling]
    if spelling == "symlink":
        os.symlink(single, out)
    elif spelling == "hardlink":
        os.link(single, out)
    elif spelling == "linked_folder":
        os.symlink(folder, folder / "alias")
    src = "model.safetensors" if spelling in ("dot", "dotdot") else single
    _refused(folder, out, "convert", src, out, cwd=folder)


@pytest.fixture
def shard_set(tmp_path: pathlib.Path) -> pathlib.Path:
    """A model folder with ``model.safetensors.index.json`` and its shards."""
    folder = tmp_path / "F"
    shutil.copytree(TORCH / "hf_sharded", folder)
    assert (folder / "model.safetensors.index.json").exists()
    return folder


def test_a_sharded_output_over_the_source_set_is_refused(shard_set):
    out = shard_set / "model.safetensors"
    _refused(shard_set, out, "convert", shard_set / "model.safetensors.index.json", out, "--max-shard-size", "20kB")


def test_a_sharded_output_that_would_remove_the_sources_shards_is_refused(shard_set):
    """The source index has another name but its shards are named as the output's: a new set removes them."""
    os.rename(shard_set / "model.safetensors.index.json", shard_set / "weights.safetensors.index.json")
    out = shard_set / "model.safetensors"
    _refused(shard_set, out, "convert", shard_set / "weights.safetensors.index.json", out, "--max-shard-size", "20kB")


def test_a_model_folder_source_and_a_sharded_output_inside_it_are_refused(shard_set):
    out = shard_set / "model.safetensors"
    _refused(shard_set, out, "convert", shard_set, out, "--max-shard-size", "20kB")


def test_a_folder_output_holding_the_source_is_refused(shard_set):
    """A DCP output (``dir/``) is renamed over the folder, and with it the source's shards."""
    _refused(shard_set.parent, shard_set, "convert", shard_set / "model.safetensors.index.json", f"{shard_set}/")


@pytest.fixture
def tf_checkpoint(tmp_path: pathlib.Path) -> pathlib.Path:
    """A TF checkpoint prefix ``tmp/ckpt`` (``ckpt.index`` + ``ckpt.data-00000-of-00001``)."""
    for file in TF2.parent.glob(TF2.name + ".*"):
        shutil.copy(file, tmp_path / file.name.replace(TF2.name, "ckpt"))
    return tmp_path / "ckpt"


@pytest.mark.parametrize("spelling", ["index", "prefix", "dot", "linked_folder"])
def test_a_tf_checkpoint_output_over_the_source_is_refused(spelling, tf_checkpoint):
    folder = tf_checkpoint.parent
    out = {"index": f"{tf_checkpoint}.index", "prefix": f"{tf_checkpoint}.index",
           "dot": f"{folder}/./ckpt.index", "linked_folder": folder / "alias" / "ckpt.index"}[spelling]
    if spelling == "linked_folder":
        os.symlink(folder, folder / "alias")
    src = tf_checkpoint if spelling == "prefix" else f"{tf_checkpoint}.index"
    _refused(folder, out, "convert", src, out)


def test_a_tf_output_whose_data_file_is_a_link_to_the_sources_is_refused(tf_checkpoint):
    """The output's old data file is a hard link to the source's: the write would remove it."""
    folder = tf_checkpoint.parent
    os.link(f"{tf_checkpoint}.data-00000-of-00001", folder / "out.data-00000-of-00001")
    shutil.copy(f"{tf_checkpoint}.index", folder / "out.index")
    _refused(folder, folder / "out.index", "convert", f"{tf_checkpoint}.index", folder / "out.index")


def test_a_dcp_output_over_the_source_folder_is_refused(tmp_path):
    import surgery as api

    dcp = tmp_path / "dcp"
    api.convert(str(TORCH / "cnn_source.safetensors"), f"{dcp}/")
    _refused(tmp_path, dcp, "convert", dcp, f"{dcp}/")


def test_an_onnx_output_beside_the_sources_external_data_never_writes_over_it(tmp_path):
    """The destination's data file, copied and patched, has the name of the source's beside the output.

    It used to be copied over the source's (and so was refused); an output's data files are now
    named after it (``out.onnx.data``), and never take the name of an existing file.
    """
    src_folder, dst_folder = tmp_path / "src", tmp_path / "dst"
    for folder in (src_folder, dst_folder):
        folder.mkdir()
        for name in ("cnn_ext.onnx", "cnn_ext.onnx.data"):
            shutil.copy(FIXTURES / "onnx" / name, folder / name)
    before = _snapshot(tmp_path)
    result = surgery("transplant", src_folder / "cnn_ext.onnx", dst_folder / "cnn_ext.onnx", "-o",
                     src_folder / "out.onnx")
    assert result.returncode == 0, result.stderr
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that was there changed"
    assert sorted(pathlib.Path(k).name for k in set(after) - set(before)) == [
        "out.onnx", "out.onnx.data", "out.onnx.surgery.json"]
    import onnx

    model = onnx.load(str(src_folder / "out.onnx"))   # with its external data, as ONNX itself resolves it
    onnx.checker.check_model(model)
