"""A full disk while writing: exit 2, one line naming the output, the old output untouched, nothing left beside it.

A file-size limit (``RLIMIT_FSIZE`` in the child, with ``SIGXFSZ`` ignored so that ``write`` fails with
``EFBIG`` instead of killing the process) stands in for a full file system: it needs no root and no
small mount, and the writer meets the same thing, an ``OSError`` from ``write`` part-way through.
"""

from __future__ import annotations

import hashlib
import pathlib
import resource
import signal
import subprocess

import numpy as np
import pytest

from tests.faults.conftest import assert_one_line_error, child_env, surgery_command

LIMIT = 2 * 2**20   # bytes a file may grow to in the child; the outputs below need about 8 MB


def _limited() -> None:
    """In the child, before exec: files may not grow past ``LIMIT``; a write past it fails instead of killing."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _source(path: pathlib.Path, seed: int) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    save_file({f"layers.{i}.weight": rng.standard_normal((512, 1024), dtype=np.float32) for i in range(4)}, str(path))


def _snapshot(folder: pathlib.Path) -> dict[str, str]:
    """Name -> sha256 of every entry of the folder (a temporary file left behind shows up as a new name)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("target, options", [
    ("model.safetensors", []),
    ("model.safetensors", ["--max-shard-size", "3MB"]),
    ("model.pt", []),
    ("ckpt.index", []),
], ids=["safetensors", "sharded", "torch", "tf"])
def test_a_full_disk_is_one_line_and_leaves_the_old_output(target, options, tmp_path):
    import surgery

    if target.endswith(".index"):
        pytest.importorskip("tensorflow")

    src, out = tmp_path / "new.safetensors", tmp_path / "out"
    out.mkdir()
    _source(src, seed=1)
    _source(tmp_path / "old.safetensors", seed=2)
    shard = surgery.apply.parse_size(options[1]) if options else None
    surgery.convert(str(tmp_path / "old.safetensors"), str(out / target), max_shard_size=shard)
    before = _snapshot(out)

    result = subprocess.run(surgery_command("convert", src, out / target, "-q", *options), capture_output=True,
                            text=True, timeout=300, env=child_env(), preexec_fn=_limited)

    assert_one_line_error(result, str(out / target), "file too large")
    after = _snapshot(out)
    assert sorted(after) == sorted(before), f"left beside the output: {sorted(set(after) - set(before))}"
    changed = [name for name in before if after[name] != before[name]]
    assert not changed, f"changed by the failed write: {changed}"
