import os

import pytest

from surgery.errors import SurgeryError
from surgery.io import atomic_path, refuse_overwrite


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_output_equal_to_source_is_refused(tmp_path):
    src = tmp_path / "a.pt"
    src.write_bytes(b"x")
    os.symlink(src, tmp_path / "b.pt")
    with pytest.raises(SurgeryError, match="output is the source file"):
        refuse_overwrite(src, tmp_path / "b.pt")
    refuse_overwrite(src, tmp_path / "c.pt")


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    import sys

    from surgery.io import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with progress(1000, desc="writing") as bar:
        bar.update(1000)
    assert bar.disable and capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not progress(1000, desc="writing").disable
    assert progress(1000, desc="writing", quiet=True).disable
