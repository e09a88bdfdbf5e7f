"""Atomic writes, hashing and progress."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import tempfile
from typing import IO, TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from .errors import FormatError, SurgeryError

if TYPE_CHECKING:
    from .graph import Span

_CHUNK = 1 << 20
# copy_file_range cannot serve these pairs of files (other filesystems on old kernels, special files).
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``target``; on success move it over ``target``.

    The caller writes the temporary path (file or folder). On normal exit it is
    fsynced and renamed over the target, so a crash at any moment leaves the old
    target or the complete new one; on an exception it is removed.
    """
    target = os.path.abspath(os.fspath(target))
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=f"{suffix}.tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (both must exist to be the same)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _checkpoint_file(path: str | os.PathLike) -> str:
    """A TF checkpoint is named by its prefix or its ``.index``: compare the index file."""
    path = os.fspath(path)
    return path if path.endswith(".index") or not os.path.exists(path + ".index") else path + ".index"


def refuse_overwrite(src: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse to write over a source: the source is never opened for writing."""
    if same_file(_checkpoint_file(src), _checkpoint_file(out)):
        raise SurgeryError(f"{out}: output is the source file; choose another output (-o)")


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, or of every file in a folder in sorted order."""
    digest = hashlib.sha256()
    paths = [os.fspath(path)]
    if os.path.isdir(path):
        paths = sorted(
            os.path.join(root, f) for root, _, files in os.walk(path) for f in files
        )
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def progress(total: int, *, desc: str, unit: str = "B", quiet: bool = False):
    """A tqdm bar on stderr when stderr is a terminal; a silent stand-in otherwise."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=disable, file=sys.stderr, leave=False)


def span_loader(path: str, offset: int, nbytes: int, np_dtype: np.dtype,
                shape: Sequence[int]) -> Callable[[], np.ndarray]:
    """A loader that reads one tensor's bytes from a file span into a fresh buffer.

    A plain read keeps peak memory at one tensor: pages of a long-lived mmap
    would count towards the process's resident size until unmapped. Used for
    safetensors and for the records of a PyTorch zip checkpoint.
    """
    def load() -> np.ndarray:
        buf = np.empty(nbytes, dtype=np.uint8)
        with open(path, "rb") as f:
            f.seek(offset)
            got = f.readinto(memoryview(buf))
        if got != nbytes:
            raise FormatError(f"{path}: file ended after {got} of {nbytes} bytes of a tensor (truncated?)")
        return buf.view(np_dtype).reshape(shape)

    return load


def copy_span(span: "Span", out: IO[bytes]) -> None:
    """Append a span of another file to ``out`` (a file opened for writing), then call ``span.done``.

    The bytes go file to file in the kernel (``os.copy_file_range``), never through user
    space, as ``cp`` copies; where the kernel cannot, they are read and written in blocks.
    """
    out.flush()
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
    if span.done is not None:
        span.done()


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
