import os
import pathlib

import pytest

from surgery.errors import SurgeryError
from surgery.formats.footprint import refuse_overwrite
from surgery.io import atomic_path


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


def test_a_killed_writers_temporary_file_is_swept_by_the_next_write(tmp_path):
    """A temporary file no process holds is what a kill left: the next write of the target removes it."""
    target = tmp_path / "out.bin"
    stale = tmp_path / ".out.bin.abcd1234.tmp"
    stale.write_bytes(b"half a write")
    with atomic_path(target) as tmp:
        assert not stale.exists(), "the stale temporary file should be gone before the new write starts"
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_a_live_writers_temporary_file_is_not_swept(tmp_path):
    """The lock a writer holds on its temporary file keeps another writer of the same target off it."""
    from surgery.io import sweep_stale

    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"being written")
        assert sweep_stale(str(tmp_path), ".out.bin.*.tmp") == []
        assert os.path.exists(tmp)
    assert target.read_bytes() == b"being written"


def test_a_full_disk_is_one_line_naming_the_output(tmp_path):
    import errno

    from surgery.io import full_disk_is_an_error

    target = tmp_path / "out.bin"
    for code, words in [(errno.ENOSPC, "no space left"), (errno.EFBIG, "file too large"), (errno.EDQUOT, "disk quota")]:
        with pytest.raises(SurgeryError, match=f"out.bin: {words}") as caught:
            with full_disk_is_an_error(target):
                raise OSError(code, os.strerror(code))
        assert "\n" not in str(caught.value)
    with pytest.raises(PermissionError):  # any other OSError is not a full disk: it goes on as it was
        with full_disk_is_an_error(target):
            raise PermissionError(errno.EACCES, "denied")


def test_a_full_disk_quoted_by_a_cpp_writer_is_one_line_too():
    """TensorFlow and HDF5 pass on only the strerror text of a failed write."""
    import errno

    from surgery.io import full_disk_is_an_error

    with pytest.raises(SurgeryError, match="out.ckpt: no space left"):
        with full_disk_is_an_error("out.ckpt"):
            raise RuntimeError(f"SaveV2: /tmp/x.tempstate1; {os.strerror(errno.ENOSPC)} [Op:SaveV2]")
    with pytest.raises(RuntimeError, match="unrelated"):
        with full_disk_is_an_error("out.ckpt"):
            raise RuntimeError("unrelated")


def _span_copy(tmp_path, payload: bytes, span_args, monkeypatch=None, fail_errno=None):
    import errno as _errno

    from surgery.graph import Span
    from surgery.io import copy_span

    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    if fail_errno is not None:
        def refuse(*_):
            raise OSError(fail_errno, _errno.errorcode[fail_errno])
        monkeypatch.setattr(os, "copy_file_range", refuse)
    copied = []
    with open(tmp_path / "out.bin", "wb") as f:
        f.write(b"head")
        copy_span(Span(str(src), *span_args, done=lambda: copied.append(True)), f)
        f.write(b"tail")
    return (tmp_path / "out.bin").read_bytes(), copied


def test_copy_span_appends_the_bytes_in_place(tmp_path):
    payload = os.urandom(3 << 20)
    out, copied = _span_copy(tmp_path, payload, (1000, 2 << 20))
    assert out == b"head" + payload[1000:1000 + (2 << 20)] + b"tail" and copied == [True]


def test_copy_span_falls_back_to_reading_where_the_kernel_cannot(tmp_path, monkeypatch):
    import errno

    payload = os.urandom(1 << 20)
    out, copied = _span_copy(tmp_path, payload, (10, 5000), monkeypatch, fail_errno=errno.EXDEV)
    assert out == b"head" + payload[10:5010] + b"tail" and copied == [True]


def test_copy_span_of_a_truncated_file_names_it(tmp_path):
    from surgery.errors import FormatError

    with pytest.raises(FormatError, match=r"src\.bin: file ended 100 bytes before a tensor did"):
        _span_copy(tmp_path, b"x" * 1000, (500, 600))


def _folder(path, content: bytes) -> None:
    path.mkdir()
    (path / "data").write_bytes(content)


def test_atomic_folder_swaps_the_new_folder_in_and_sweeps_what_kills_left(tmp_path):
    from surgery.io import atomic_folder

    target = tmp_path / "ckpt"
    _folder(target, b"old")
    _folder(tmp_path / ".ckpt.abcd1234", b"a killed write's half")   # unlocked: a kill left it
    with atomic_folder(str(target)) as tmp:
        assert not (tmp_path / ".ckpt.abcd1234").exists()
        (pathlib.Path(tmp) / "data").write_bytes(b"new")
        assert (target / "data").read_bytes() == b"old"
    assert (target / "data").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_a_live_folder_writers_temporary_folder_is_not_swept(tmp_path):
    from surgery.io import atomic_folder, recover_folder

    with atomic_folder(str(tmp_path / "ckpt")) as tmp:
        (pathlib.Path(tmp) / "data").write_bytes(b"being written")
        recover_folder(str(tmp_path), "ckpt")   # another writer of the same target starting
        assert (pathlib.Path(tmp) / "data").exists()
    assert (tmp_path / "ckpt" / "data").read_bytes() == b"being written"


def test_an_old_folder_a_kill_left_aside_is_put_back_by_the_next_write(tmp_path):
    """Without RENAME_EXCHANGE a kill between the two renames leaves no folder at the target."""
    from surgery.io import atomic_folder

    (tmp_path / ".ckpt.old.abcd1234").mkdir()
    _folder(tmp_path / ".ckpt.old.abcd1234" / "previous", b"old")
    seen = []
    with pytest.raises(RuntimeError):
        with atomic_folder(str(tmp_path / "ckpt")):
            seen.append((tmp_path / "ckpt" / "data").read_bytes())
            raise RuntimeError("the write failed")
    assert seen == [b"old"] and (tmp_path / "ckpt" / "data").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_exchange_swaps_two_folders_or_says_it_cannot(tmp_path, monkeypatch):
    from surgery import io as surgery_io

    _folder(tmp_path / "a", b"A")
    _folder(tmp_path / "b", b"B")
    if surgery_io.exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        assert (tmp_path / "a" / "data").read_bytes() == b"B" and (tmp_path / "b" / "data").read_bytes() == b"A"
        with pytest.raises(FileNotFoundError):   # an error other than "cannot" is raised, not taken for "cannot"
            surgery_io.exchange(str(tmp_path / "a"), str(tmp_path / "missing"))
    else:
        assert (tmp_path / "a" / "data").read_bytes() == b"A"
    monkeypatch.setattr(surgery_io.sys, "platform", "win32")
    assert surgery_io.exchange(str(tmp_path / "a"), str(tmp_path / "b")) is False
    assert (tmp_path / "a" / "data").exists()
