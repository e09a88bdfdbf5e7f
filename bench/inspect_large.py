"""Headers only: `surgery inspect` and `transplant --dry-run` of a 100 GB sharded safetensors checkpoint.

The shards are sparse files (a real header, then a hole the size of the data),
so the benchmark needs 100 GB of address space on disk but almost no blocks.
Figures are printed against `python -c "import surgery"` measured in the same
run: the part of the time that is surgery's start-up, not the checkpoint's size.

    .venv/bin/python bench/inspect_large.py [--gb 100] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARD_TENSORS = 40
SIDE = 8192  # bf16 (8192, 8192): 128 MiB per tensor


def make(folder: str, gb: float) -> int:
    """Sparse shards of 5 GiB (40 bf16 tensors each) plus the standard index; returns the tensor count."""
    per_shard = SHARD_TENSORS * SIDE * SIDE * 2
    shards = max(1, round(gb * 2**30 / per_shard))
    weight_map = {}
    for s in range(1, shards + 1):
        name = f"model-{s:05d}-of-{shards:05d}.safetensors"
        header, offset = {}, 0
        for t in range(SHARD_TENSORS):
            key = f"model.layers.{(s - 1) * SHARD_TENSORS + t}.mlp.weight"
            header[key] = {"dtype": "BF16", "shape": [SIDE, SIDE], "data_offsets": [offset, offset + SIDE * SIDE * 2]}
            offset += SIDE * SIDE * 2
            weight_map[key] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + offset)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": shards * per_shard}, "weight_map": weight_map}, f)
    return shards * SHARD_TENSORS


def timed(cmd: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=100.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    bindir = os.path.dirname(sys.executable)
    surgery = shutil.which("surgery", path=bindir) or "surgery"
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    folder = tempfile.mkdtemp(prefix="large-", dir=os.path.join(HERE, "data"))
    try:
        count = make(folder, args.gb)
        base = timed([sys.executable, "-c", "import surgery"])
        inspect = timed([surgery, "inspect", folder, "--json"])
        plan = timed([surgery, "transplant", folder, os.path.join(folder, "model.safetensors.index.json"),
                      "-o", os.path.join(folder, "out.safetensors"), "--dry-run", "--json"])
        print(f"{args.gb:.0f} GB sharded safetensors, {count} bf16 tensors (sparse files), median of 5 runs")
        print(f"  python -c 'import surgery'        {base:6.2f} s   1.00x")
        print(f"  surgery inspect FOLDER --json     {inspect:6.2f} s   {inspect / base:.2f}x")
        print(f"  surgery transplant ... --dry-run  {plan:6.2f} s   {plan / base:.2f}x")
        print(f"  target 'well under a second':     {'PASS' if inspect < 1.0 else 'MISS'}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
