"""Atomic writes, hashing and progress.

Every output is written to a temporary name beside its target and renamed over
it when complete, so a crash or ``kill -9`` at any moment leaves the old target
or the complete new one. A writer holds an advisory lock (``flock``) on its
temporary file or folder while it lives; the kernel drops the lock when the
process dies, which is how the next writer of the same target tells what a
killed writer left behind (and removes it) from what a live one is writing.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import sys
import tempfile
import time
from typing import IO, TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from .errors import FormatError, SurgeryError

try:
    import fcntl
except ImportError:  # Windows: no flock, so nothing left behind can be told apart from a live write
    fcntl = None

if TYPE_CHECKING:
    from .graph import Span
    from .dtypes import DType

_CHUNK = 1 << 20
# A writer locks its temporary file right after creating it, before writing a byte: an empty, unlocked
# one younger than this may be a live writer's in that instant, so it is left alone.
_GRACE_SECONDS = 10.0
# copy_file_range cannot serve these pairs of files (other filesystems on old kernels, special files).
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``target``; on success move it over ``target``.

    The caller writes the temporary path. On normal exit it is fsynced and
    renamed over the target, so a crash at any moment leaves the old target or
    the complete new one; on an exception it is removed. What killed writers
    of the same target left behind is removed first (``sweep_stale``).
    """
    target = os.path.abspath(os.fspath(target))
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    sweep_stale(folder, f".{name}.*.tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f"{suffix}.tmp", dir=folder)
    try:
        hold(fd)
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)  # releases the lock, after the rename


def hold(fd: int) -> None:
    """Lock a temporary file or folder as being written by this process (released when ``fd`` closes or it dies)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[None]:
    """Hold ``folder``'s lock: writers of a multi-file set in one folder take turns.

    A set's writer may then remove files a killed writer of the set left, knowing
    no live one is about to name them in its index.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        hold(fd)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(target: str) -> Iterator[str]:
    """Yield a temporary folder beside ``target``; on success put it at ``target`` in one step.

    The caller fills the folder (and fsyncs its files). On normal exit it takes the target's place:
    where the kernel can swap two paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``) the new folder
    and the old one trade places in one step, so the target is never missing; elsewhere the old one
    is renamed aside first (``.NAME.old.XXXXXXXX/previous``), and a kill between the two renames is
    repaired by the next write of the same target (``recover_folder``). The old folder is removed
    last. On an exception the temporary folder is removed.
    """
    parent, name = os.path.split(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    recover_folder(parent, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        hold(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)   # mkdtemp's 0700 is for the temporary name, not the output
        yield tmp
        fsync_path(tmp)
        _put_folder(tmp, os.path.join(parent, name), parent, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _put_folder(tmp: str, target: str, parent: str, name: str) -> None:
    if not os.path.lexists(target):
        os.replace(tmp, target)
    elif exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)   # the old folder, now here; a kill before this leaves it to the next sweep
    else:
        old = tempfile.mkdtemp(prefix=f".{name}.old.", dir=parent)
        fd = os.open(old, os.O_RDONLY)
        try:
            hold(fd)   # a live writer's: not to be restored by another's recover_folder
            os.replace(target, os.path.join(old, "previous"))
            os.replace(tmp, target)
        finally:
            os.close(fd)
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(parent)


def recover_folder(parent: str, name: str) -> None:
    """Undo what a killed folder write left: the old folder put back if the new one never arrived, the rest removed."""
    target = os.path.join(parent, name)
    if not os.path.isdir(parent):
        return
    with folder_lock(parent):
        for old in sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.old.????????"))):
            previous = os.path.join(old, "previous")
            if _abandoned(old) and os.path.isdir(previous) and not os.path.lexists(target):
                os.replace(previous, target)
                fsync_path(parent)
                with contextlib.suppress(OSError):
                    os.rmdir(old)
        sweep_stale(parent, f".{glob.escape(name)}.old.????????")
        sweep_stale(parent, f".{glob.escape(name)}.????????")


def exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the system or the file system cannot.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):   # a C library without it (glibc < 2.28, musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):   # an old kernel, a file system that cannot
        return False
    raise OSError(code, os.strerror(code), b)


def sweep_stale(folder: str, pattern: str) -> list[str]:
    """Remove the temporary files and folders matching ``pattern`` in ``folder`` that no live writer holds.

    A ``kill -9`` cannot be caught, so a killed writer's temporary file stays;
    the next writer of the same target removes it here. Returns what it removed.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
        if not _abandoned(path):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):  # another writer swept it first
                os.unlink(path)
        removed.append(path)
    return removed


def _abandoned(path: str) -> bool:
    """Whether no live writer holds ``path``: its lock is free, and it is not a just-created empty one."""
    if fcntl is None or os.path.islink(path):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        empty = not os.listdir(path) if os.path.isdir(path) else os.fstat(fd).st_size == 0
        if empty and time.time() - os.fstat(fd).st_mtime < _GRACE_SECONDS:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # locked: a live writer's
        return False
    finally:
        os.close(fd)


_NO_SPACE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file system's or the process's file-size limit)",
}


@contextlib.contextmanager
def full_disk_is_an_error(target: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, a quota or a file-size limit met while writing ``target`` into one line naming it.

    The writers are atomic, so by the time the error leaves here the temporary
    file is gone and the old target is unchanged; the message says so.
    """
    try:
        yield
    except Exception as e:
        code = _no_space(e)
        if code is None:
            raise
        raise SurgeryError(f"{os.fspath(target)}: {_NO_SPACE[code]} while writing it; nothing was "
                           "written and any previous file is unchanged") from None


def _no_space(error: Exception) -> int | None:
    """The errno of a full disk behind ``error``: an OSError's own, or the one a C++ writer
    (TensorFlow, HDF5) quotes in its message, which is all they pass on."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return error.errno
    text = str(error)
    return next((code for code in _NO_SPACE if os.strerror(code) in text), None)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: one inode, or (for a file not yet written) one resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def progress(total: int, *, desc: str, unit: str = "B", quiet: bool = False):
    """A tqdm bar on stderr when stderr is a terminal; a silent stand-in otherwise."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=disable, file=sys.stderr, leave=False)


def span_loader(path: str, offset: int, nbytes: int, dtype: "DType",
                shape: Sequence[int]) -> Callable[[], np.ndarray]:
    """A loader that reads one tensor's bytes from a file span into a fresh buffer.

    A plain read keeps peak memory at one tensor: pages of a long-lived mmap
    would count towards the process's resident size until unmapped. Used for
    safetensors and for the records of a PyTorch zip checkpoint. The row's numpy
    type is resolved only when the data is read (a header read imports no ``ml_dtypes``).
    """
    def load() -> np.ndarray:
        buf = np.empty(nbytes, dtype=np.uint8)
        with open(path, "rb") as f:
            f.seek(offset)
            got = f.readinto(memoryview(buf))
        if got != nbytes:
            raise FormatError(f"{path}: file ended after {got} of {nbytes} bytes of a tensor (truncated?)")
        return buf.view(dtype.numpy).reshape(shape)

    return load


def copy_span(span: "Span", out: IO[bytes]) -> None:
    """Append a span of another file (all its pieces, in order) to ``out`` (a file opened for writing),
    then call ``span.done``.

    The bytes go file to file in the kernel (``os.copy_file_range``), never through user
    space, as ``cp`` copies; where the kernel cannot, they are read and written in blocks.
    """
    out.flush()
    for piece in span.pieces():
        _copy_piece(piece, out)
    if span.done is not None:
        span.done()


def _copy_piece(span: "Span", out: IO[bytes]) -> None:
    start = out.tell()
    done = 0
    with open(span.path, "rb") as src:
        if hasattr(os, "copy_file_range"):
            done = _kernel_copy(src.fileno(), out.fileno(), span, start)
        src.seek(span.offset + done)
        out.seek(start + done)
        while done < span.nbytes:
            block = src.read(min(_CHUNK * 8, span.nbytes - done))
            if not block:
                raise FormatError(f"{span.path}: file ended {span.nbytes - done} bytes before a tensor did (truncated?)")
            out.write(block)
            done += len(block)
    out.seek(start + span.nbytes)


def _kernel_copy(src: int, dst: int, span: "Span", start: int) -> int:
    """Bytes of the span copied by copy_file_range: all, or as many as it took before it could not go on."""
    done = 0
    while done < span.nbytes:
        try:
            n = os.copy_file_range(src, dst, span.nbytes - done, span.offset + done, start + done)
        except OSError as e:
            if e.errno in _NO_KERNEL_COPY:
                return done
            raise
        if n == 0:   # the source ended: the block copy names the file
            return done
        done += n
    return done
