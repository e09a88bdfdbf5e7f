"""surgery's own CLI as one rank of a ``torchrun`` job, with each shard's writer recorded.

``torchrun ... ranks_cli.py convert SRC OUT --max-shard-size SIZE``: every rank runs the real CLI;
the only change is that ``write_shard`` first appends the shard's name to ``$SURGERY_TEST_LOG/rank<R>``
(which rank wrote which shard), and raises on the rank ``$SURGERY_TEST_FAIL_RANK`` names (a rank
that fails while the others succeed).
"""

from __future__ import annotations

import os

from surgery import parallel
from surgery.errors import SurgeryError

_write = parallel.write_shard


def _recorded(path: str, tensors: list) -> None:
    rank = os.environ["RANK"]
    if os.environ.get("SURGERY_TEST_FAIL_RANK") == rank:
        raise SurgeryError(f"{path}: made to fail on rank {rank}")
    with open(os.path.join(os.environ["SURGERY_TEST_LOG"], f"rank{rank}"), "a", encoding="utf-8") as f:
        f.write(os.path.basename(path) + "\n")
    _write(path, tensors)


parallel.write_shard = _recorded

if __name__ == "__main__":
    from surgery.cli import main

    main()
