"""The parts of a write that several processes share (``surgery.parallel`` writes them).

A part is a file name, tensor keys and, for a run of one file, where the run
starts: never tensors. The process that writes a part reads those tensors from
its own reading of the source. Three kinds:

- ``shard``: a whole shard of a sharded safetensors output, written atomically;
- ``run``: tensors written in place, from ``offset``, into a safetensors file the
  leading process has already given its header and size;
- ``records``: a DCP data file (``__<i>_0.distcp``) of ``torch.save`` records, one
  per tensor, whose places come back to the leading process for ``.metadata``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Part(NamedTuple):
    """One part of a split write: its file, the keys it holds in order, their bytes."""

    path: str
    keys: list[str]
    nbytes: int
    offset: int | None = None    # a ``run``: where in ``path`` its first tensor's bytes go
    target: str | None = None    # the output the user named, when ``path`` is a temporary name
    kind: str = "shard"

    @property
    def name(self) -> str:
        """The file to name in messages."""
        return self.target or self.path


WriteParts = Callable[[list[Part]], list[Any]]   # writes the parts elsewhere; each part's result, in order


def runs(sizes: list[tuple[str, int]], count: int) -> list[tuple[list[str], int]]:
    """``(key, bytes)`` in order, cut into at most ``count`` runs of about equal bytes: ``(keys, bytes)`` each.

    A run ends with the tensor that brings it to its share (total / ``count``), so a
    run holds less than its share plus its last tensor; one large tensor makes
    fewer, larger runs.
    """
    share = max(1, -(-sum(n for _, n in sizes) // max(count, 1)))
    out: list[tuple[list[str], int]] = []
    keys: list[str] = []
    size = 0
    for key, nbytes in sizes:
        keys.append(key)
        size += nbytes
        if size >= share:
            out.append((keys, size))
            keys, size = [], 0
    if keys:
        out.append((keys, size))
    return out
