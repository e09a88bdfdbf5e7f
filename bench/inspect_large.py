"""Headers only: `surgery inspect` and `--dry-run` of a 100 GB sharded safetensors checkpoint and a 100 GB DCP.

The shards are sparse files (a real header, then a hole the size of the data),
so the benchmark needs 100 GB of address space on disk but almost no blocks.
The DCP is 8 ranks' files (sparse) with a real ``.metadata``: every tensor in
8 row chunks, one per rank, as FSDP over 8 ranks saves it.
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
sys.path.insert(0, HERE)
from run import surgery_cmd, this_checkout  # noqa: E402
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


def make_dcp(folder: str, gb: float, ranks: int = 8) -> int:
    """A DCP folder of bf16 (8192, 8192) tensors in ``ranks`` row chunks each; returns the tensor count."""
    import pickle

    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    os.makedirs(folder)
    count = max(1, round(gb * 2**30 / (SIDE * SIDE * 2)))
    rows, record = SIDE // ranks, SIDE // ranks * SIDE * 2 + 1600   # a chunk's bytes and torch.save's framing
    entries, storage = {}, {}
    for t in range(count):
        name = f"model.layers.{t}.mlp.weight"
        chunks = []
        for rank in range(ranks):
            offsets = torch.Size([rank * rows, 0])
            chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=torch.Size([rows, SIDE])))
            storage[MetadataIndex(name, offsets, rank)] = _StorageInfo(f"__{rank}_0.distcp", t * record, record)
        entries[name] = TensorStorageMetadata(TensorProperties(dtype=torch.bfloat16), torch.Size([SIDE, SIDE]), chunks)
    for rank in range(ranks):
        with open(os.path.join(folder, f"__{rank}_0.distcp"), "wb") as f:
            f.truncate(count * record)
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(Metadata(entries, planner_data={n: tuple(n.split(".", 1)) for n in entries}, storage_data=storage), f)
    return count


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
    this_checkout()
    surgery = surgery_cmd()
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    folder = tempfile.mkdtemp(prefix="large-", dir=os.path.join(HERE, "data"))
    try:
        count = make(folder, args.gb)
        base = timed([sys.executable, "-c", "import surgery"])
        inspect = timed([*surgery, "inspect", folder, "--json"])
        plan = timed([*surgery, "transplant", folder, os.path.join(folder, "model.safetensors.index.json"),
                      "-o", os.path.join(folder, "out.safetensors"), "--dry-run", "--json"])
        dcp = os.path.join(folder, "dcp")
        dcp_count = make_dcp(dcp, args.gb)
        dcp_inspect = timed([*surgery, "inspect", dcp, "--json"])
        dcp_plan = timed([*surgery, "convert", dcp, os.path.join(folder, "hf", "model.safetensors"),
                          "--max-shard-size", "5GB", "--dry-run", "--json"])
        torch_base = timed([sys.executable, "-c", "import torch.distributed.checkpoint"])
        print(f"{args.gb:.0f} GB sharded safetensors, {count} bf16 tensors (sparse files), median of 5 runs")
        print(f"  python -c 'import surgery'        {base:6.2f} s   1.00x")
        print(f"  surgery inspect FOLDER --json     {inspect:6.2f} s   {inspect / base:.2f}x")
        print(f"  surgery transplant ... --dry-run  {plan:6.2f} s   {plan / base:.2f}x")
        print(f"  target 'well under a second':     {'PASS' if inspect < 1.0 else 'MISS'}")
        print(f"{args.gb:.0f} GB DCP, {dcp_count} bf16 tensors in 8 row chunks each, 8 rank files (sparse), median of 5")
        print(f"  python -c 'import torch.distributed.checkpoint'  {torch_base:6.2f} s   1.00x")
        print(f"  surgery inspect DCP --json                       {dcp_inspect:6.2f} s   {dcp_inspect / torch_base:.2f}x")
        print(f"  surgery convert DCP hf/ --max-shard-size 5GB --dry-run  {dcp_plan:6.2f} s   {dcp_plan / torch_base:.2f}x")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
