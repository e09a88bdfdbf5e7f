"""surgery's own CLI as one rank of a ``torchrun`` job, with each shard's writer recorded.

``torchrun ... ranks_cli.py convert SRC OUT --max-shard-size SIZE``: every rank runs the real CLI;
the only change is that ``write_part`` first appends the part's file name (and offset, for a part of
one file) to ``$SURGERY_TEST_LOG/rank<R>`` (which rank wrote which part), and raises on the rank
``$SURGERY_TEST_FAIL_RANK`` names (a rank that fails while the others succeed).
"""

from __future__ import annotations

import os

from surgery import parallel
from surgery.errors import SurgeryError

_write = parallel.write_part


def _recorded(work, tensors: list) -> object:
    rank = os.environ["RANK"]
    if os.environ.get("SURGERY_TEST_FAIL_RANK") == rank:
        raise SurgeryError(f"{work.name}: made to fail on rank {rank}")
    with open(os.path.join(os.environ["SURGERY_TEST_LOG"], f"rank{rank}"), "a", encoding="utf-8") as f:
        f.write(os.path.basename(work.path) + ("" if work.offset is None else f"@{work.offset}") + "\n")
    return _write(work, tensors)


parallel.write_part = _recorded

if __name__ == "__main__":
    from surgery.cli import main

    main()
