"""Let a C library parse an untrusted file in a forked child first, with limits on CPU and memory.

Some formats are parsed by a C library that trusts the file (libhdf5): a damaged file can crash
it, loop in it, or make it allocate gigabytes before it reports an error, and no check of ours
before it can rule that out. ``vetted`` runs the same parse in a child process forked from this
one, with a budget of CPU (``cpu_budget``) and ``MEMORY`` of new address space; only when the child
finished (with the file read or refused) does the caller parse it in its own process, where the
same library then takes the same steps on the same bytes. A child that crashed, ran out of time or
memory, or hung is turned into one ``FormatError`` line.

Where ``os.fork`` does not exist (Windows) the parse runs in-process, unguarded.
"""

from __future__ import annotations

import os
import select
import signal
import time
import warnings
from typing import Callable

from . import errors
from .errors import SurgeryError, fail

MEMORY = 160 << 20       # address space the child may add to what it inherits
WALL_SECONDS = 60        # a child blocked without spending CPU (a lock held across the fork)


def cpu_budget(size: int) -> int:
    """CPU seconds for parsing the structure of a file of ``size`` bytes: 1, and 2 more per 100 MB.

    Measured: a 270 MB EfficientNet-B7 (1,040 weights) takes 0.8 s (budget 6 s), a VGG 0.1 s;
    a small damaged file that loops is refused after 1 s, within the 2 s a bad file may take.
    """
    return 1 + (2 * size) // 100_000_000


def vetted(path: str, parse: Callable[[], object], *, library: str, cpu_seconds: int) -> None:
    """Run ``parse()`` in a limited child; raise what it raised, or a ``FormatError`` if it did not finish.

    ``parse`` should do everything the real read will ask of the library (open, walk, read
    attributes) and nothing costly that it will not (the tensors' data).
    """
    if not hasattr(os, "fork"):
        return
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():   # Python 3.12 warns of fork in a threaded process: the child only parses
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:   # the child: never returns, never runs the parent's atexit or flushes its buffers
        os.close(read_end)
        _child(parse, write_end, cpu_seconds)
    os.close(write_end)
    try:
        answer, status, timed_out = _wait(pid, read_end)
    finally:
        os.close(read_end)
    if answer:
        name, _, message = answer.decode("utf-8", "replace").partition("\n")
        cls = getattr(errors, name, None)
        raise (cls if isinstance(cls, type) and issubclass(cls, SurgeryError) else errors.FormatError)(message)
    if timed_out:
        raise fail(path, f"damaged: {library} did not finish reading its structure in {WALL_SECONDS} s")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):   # SIGKILL: the hard CPU limit, one second later
            raise fail(path, f"damaged: {library} was still reading its structure after {cpu_seconds} s of CPU")
        raise fail(path, f"damaged: {library} crashed reading it ({signal.Signals(sig).name})")
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise fail(path, f"damaged: {library} wanted more than {MEMORY >> 20} MB of memory to read its structure")


def _child(parse: Callable[[], object], out: int, cpu_seconds: int) -> None:
    code = 0
    try:
        _silence()
        _limit(cpu_seconds)
        try:
            parse()
        except SurgeryError as e:
            if "memory allocation failed" in str(e):   # libhdf5's words when the cap stops it
                code = 3
            else:
                _answer(out, type(e).__name__, str(e))
        except MemoryError:
            code = 3
        except BaseException as e:   # noqa: BLE001 - a stray exception is the reader's bug, shown as such
            _answer(out, "FormatError", f"{type(e).__name__}: {e}")
    finally:
        os._exit(code)


def _answer(out: int, name: str, message: str) -> None:
    data = f"{name}\n{message}".encode("utf-8", "replace")
    while data:
        data = data[os.write(out, data):]


def _silence() -> None:
    """Nothing the child or its library prints (a crash report, an error stack) reaches the user's terminal."""
    import faulthandler

    faulthandler.disable()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def _limit(cpu_seconds: int) -> None:
    """Cap the child's CPU time, and its address space at what it inherited plus ``MEMORY`` (Linux)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:   # no /proc (macOS): the CPU limit still holds
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + MEMORY
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _wait(pid: int, fd: int) -> tuple[bytes, int, bool]:
    """The child's answer (an error, or nothing), its exit status, and whether it was killed at ``WALL_SECONDS``."""
    deadline = time.monotonic() + WALL_SECONDS
    chunks = []
    timed_out = False
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            timed_out = True
            break
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks), status, timed_out
