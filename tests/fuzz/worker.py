"""The process a fuzz campaign reads its mutants in: ``python -m tests.fuzz.worker``.

A reader fed a hostile file may do worse than raise: a C library can abort or
crash the process, loop forever, or allocate gigabytes. Reading in a child
process keeps the test run alive through all of those, and turns each into a
reported bug: the parent sees the child die, time out, or grow.

Protocol: one JSON line per request on stdin (``{"path": ...}``), one JSON line
per answer on stdout (``{"outcome": "read" | "refused" | "bug", ...}``). Anything the
frameworks print goes to stderr, which the parent keeps for crash reports.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

import numpy as np


def materialise(path: str) -> int:
    """Read ``path`` as the CLI does (detect, read, render ``inspect``) and read every tensor; returns the count."""
    import surgery
    from surgery.render import inspect_text

    graph = surgery.load(path)
    inspect_text(graph, tensors=True)
    count = 0
    for key, param in graph.tensors():
        arr = param.read()
        span = param.span   # what a raw writer would copy file to file instead of reading: the same bytes
        if span is not None and _span_bytes(span) != np.ascontiguousarray(arr).tobytes():
            raise AssertionError(f"{key}: its span's bytes differ from what reading it gives")
        count += 1
    return count


def _span_bytes(span) -> bytes:
    out = bytearray()
    for piece in span.pieces():
        with open(piece.path, "rb") as f:
            f.seek(piece.offset)
            out += f.read(piece.nbytes)
    return bytes(out)


def judge(path: str, stem: str) -> dict:
    """Read one file: read, refused with a good one-line message, or a bug with its traceback."""
    from surgery.errors import SurgeryError

    try:
        return {"outcome": "read", "tensors": materialise(path)}
    except SurgeryError as e:
        message = str(e)
        if stem not in message or "\n" in message.strip():
            return {"outcome": "bug", "kind": "message", "error": f"SurgeryError: {message}",
                    "why": "a refusal must be one line naming the file"}
        return {"outcome": "refused", "error": message}
    except BaseException as e:  # noqa: BLE001 - anything else escaping a reader is what we hunt
        return {"outcome": "bug", "kind": "exception", "error": f"{type(e).__name__}: {e}"[:500],
                "where": _where(e), "traceback": traceback.format_exc()[-4000:]}


def _where(exc: BaseException) -> str:
    """The innermost frame inside surgery (else the innermost one): where the bug is to be fixed."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}surgery{os.sep}" in f.filename] or frames
    frame = ours[-1] if ours else None
    return f"{os.path.relpath(frame.filename)}:{frame.lineno} {frame.name}" if frame else "?"


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    # The answer channel is a private copy of stdout: frameworks that print on fd 1 land on stderr instead.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    for line in sys.stdin:
        request = json.loads(line)
        before, start = _max_rss(), time.perf_counter()
        answer = judge(request["path"], request["stem"])
        answer.update(seconds=time.perf_counter() - start, rss_growth=_max_rss() - before)
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
