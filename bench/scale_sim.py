"""`make bench`: a 1 TB-class checkpoint on a cluster, simulated on this machine (``docs/scale.md``).

1. **The checkpoint**: a PyTorch Distributed Checkpoint with the tensor shapes of Llama 3.1 405B in
   bf16 (811 GB), laid out as an FSDP job of ``--trainer-ranks`` ranks saves it: each tensor cut
   along its first axis into one chunk per rank, rank r's chunks as ``torch.save`` records in
   ``__r_0.distcp``, ``.metadata`` built with DCP's own classes. The records are written by
   ``torch.save`` under ``torch.serialization.skip_data`` from fake tensors, so their data are
   holes: 811 GB apparent, a few MB on disk, and reading them costs no disk time.
2. **The plan at full scale**: ``surgery convert ckpt hf/model.safetensors --max-shard-size 5GB
   --dry-run --json --jobs R`` for R ranks (8, 32, 64): what each rank reads, writes and holds,
   from the metadata alone, and how long planning the whole checkpoint takes.
3. **The work, measured**: the same conversion run for real on a slice of the same checkpoint
   (``--slice-layers`` transformer layers of the same shapes, chunked the same way; a few GB of
   output) by one process and by ``--jobs 2``, twice each in the order 1, 2, 2, 1: wall time until the
   output is on disk, the largest process's peak RSS against the dry run's prediction, and each
   process's throughput (the mean of its two runs).
4. **The estimate**: time for the full checkpoint on R ranks = each rank's bytes / the measured
   per-process rate, plus the measured start-up; valid while the filesystem's aggregate bandwidth
   keeps up with R processes (the sparse input makes the reading free here: the rate is the
   write path's and the CPU's, an upper bound on what a rank reading real data gets).

Usage: ``.venv/bin/python bench/scale_sim.py [--slice-layers 2] [--trainer-ranks 8] [--workdir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import run_once, surgery_cmd, this_checkout  # noqa: E402

GB = 10**9
# Llama 3.1 405B (its config.json): the shapes of a 1 TB-class checkpoint
HIDDEN, INTERMEDIATE, LAYERS, VOCAB, HEADS, KV_HEADS = 16384, 53248, 126, 128256, 128, 8
SHARD = "5GB"          # what Hugging Face publishes such a model in
SLICE_SHARD = "1GB"    # the slice's shards: enough of them to split between two processes
RANKS = (8, 32, 64)
ORDER = (1, 2, 2, 1)   # the slice's runs: processes of each


def shapes(layers: int, ends: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """The state_dict of a Llama with the 405B's widths and ``layers`` layers (``ends``: embedding, norm, head)."""
    kv = HIDDEN // HEADS * KV_HEADS
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))] if ends else []
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj.weight", (kv, HIDDEN)),
                (p + "self_attn.v_proj.weight", (kv, HIDDEN)), (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
                (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)), (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
                (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
                (p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,))]
    if ends:
        out += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return out


def sparse_dcp(folder: str, tensors: list[tuple[str, tuple[int, ...]]], ranks: int) -> int:
    """Write a DCP folder of ``tensors`` (bf16) as ``ranks`` FSDP ranks save it, data as holes; returns its bytes."""
    import warnings

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)
    from torch.serialization import skip_data

    os.makedirs(folder)
    fake = FakeTensorMode()
    files = [open(os.path.join(folder, f"__{r}_0.distcp"), "wb") for r in range(ranks)]
    entries, storage, total = {}, {}, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fqn, shape in tensors:
            rows = -(-shape[0] // ranks)   # FSDP2's Shard(0): equal rows, the last ranks' chunks shorter or none
            chunks = []
            for r in range(ranks):
                start, n = r * rows, min(rows, shape[0] - r * rows)
                if n <= 0:
                    continue
                offsets, sizes = torch.Size([start] + [0] * (len(shape) - 1)), torch.Size([n, *shape[1:]])
                with fake:
                    chunk = torch.empty(sizes, dtype=torch.bfloat16)
                f = files[r]
                at = f.tell()
                with skip_data(materialize_fake_tensors=True):
                    torch.save(chunk, f)
                storage[MetadataIndex(fqn, offsets, len(chunks))] = _StorageInfo(os.path.basename(f.name), at, f.tell() - at)
                chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=sizes))
                total += chunk.numel() * 2
            entries[fqn] = TensorStorageMetadata(TensorProperties(dtype=torch.bfloat16), torch.Size(shape), chunks)
    for f in files:
        f.close()
    meta = Metadata(entries, planner_data={fqn: (fqn,) for fqn in entries}, storage_data=storage)
    import pickle

    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(meta, f)
    return total


def on_disk(folder: str) -> int:
    return sum(os.stat(os.path.join(folder, n)).st_blocks * 512 for n in os.listdir(folder))


def apparent(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))


def dry_run(ckpt: str, out: str, shard: str, processes: int) -> tuple[dict, float]:
    cmd = [*surgery_cmd(), "convert", ckpt, out, "--max-shard-size", shard, "--dry-run", "--json"]
    if processes > 1:
        cmd += ["--jobs", str(processes)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"bench: dry run failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), seconds


def check_output(ckpt: str, out: str) -> str:
    """The output set names every tensor of the slice with its shape, and its files hold exactly what the index says."""
    sys.path.insert(0, os.path.dirname(HERE))
    import surgery

    src = {k: (p.shape, p.dtype) for k, p in surgery.load(ckpt).tensors()}
    got = {k: (p.shape, p.dtype) for k, p in surgery.load(os.path.join(out, "model.safetensors.index.json")).tensors()}
    if src != got:
        sys.exit(f"bench: the output differs from the source: {sorted(set(src) ^ set(got))[:5]}")
    return f"{len(got)} tensors, names, shapes and dtypes as the source's"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slice-layers", type=int, default=2)
    parser.add_argument("--trainer-ranks", type=int, default=8)
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    this_checkout()
    work = args.workdir or tempfile.mkdtemp(prefix="surgery-scale-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    os.makedirs(work, exist_ok=True)
    try:
        report(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(work: str, args: argparse.Namespace) -> None:
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M} {platform.node()}, {os.cpu_count()} cores, work in {work}")
    full, part = os.path.join(work, "full"), os.path.join(work, "slice")
    start = time.perf_counter()
    full_bytes = sparse_dcp(full, shapes(LAYERS), args.trainer_ranks)
    built = time.perf_counter() - start
    print(f"full checkpoint: {len(shapes(LAYERS))} tensors, {full_bytes / GB:.1f} GB of tensors as {args.trainer_ranks} "
          f"FSDP ranks save them ({apparent(full) / GB:.1f} GB apparent, {on_disk(full) / 2**20:.1f} MiB on disk), "
          f"built in {built:.1f} s")

    print(f"\n## the plan at full scale: convert ... --max-shard-size {SHARD} --dry-run --jobs R (metadata only)")
    print(f"{'ranks':>5} {'dry run s':>9} {'shards/rank':>12} {'reads/rank GB':>14} {'writes/rank GB':>15} {'peak/rank GB':>13}")
    plans = {}
    for ranks in RANKS:
        plan, seconds = dry_run(full, os.path.join(work, "hf", "model.safetensors"), SHARD, ranks)
        plans[ranks] = plan
        shares = plan["processes"]
        parts = [s["parts"] for s in shares]
        reads = [s["read_bytes"] / GB for s in shares]
        writes = [s["write_bytes"] / GB for s in shares]
        peak = max(s["peak_bytes"] for s in shares) / GB
        print(f"{ranks:>5} {seconds:>9.2f} {min(parts):>5}-{max(parts):<6} {min(reads):>6.1f}-{max(reads):<7.1f} "
              f"{min(writes):>7.1f}-{max(writes):<7.1f} {peak:>13.2f}")
    largest = plans[RANKS[0]]["largest_tensor"]
    print(f"largest tensor {largest['name']}: {largest['bytes'] / GB:.2f} GB; "
          f"peak terms: {'; '.join(plans[RANKS[0]]['peak_terms'])}")

    slice_bytes = sparse_dcp(part, shapes(args.slice_layers, ends=False), args.trainer_ranks)
    print(f"\n## the work, measured: a slice of {args.slice_layers} layers of the same shapes, {slice_bytes / GB:.1f} GB, "
          f"-> sharded safetensors ({SLICE_SHARD} shards), output on this machine's disk, caches dropped")
    print(f"{'processes':>9} {'wall s':>7} {'to disk s':>9} {'CPU s':>6} {'peak RSS GiB':>13} {'predicted GiB':>14} "
          f"{'MB/s per process':>17}")
    rates: dict[int, list[float]] = {1: [], 2: []}
    loads: dict[int, list[float]] = {1: [], 2: []}   # CPU seconds per second per process
    for jobs in ORDER:   # 1, 2, 2, 1: a disk slower early or late in the run hits both alike
        out = os.path.join(work, f"out{jobs}")
        cmd = [*surgery_cmd(), "convert", part, os.path.join(out, "model.safetensors"), "--max-shard-size", SLICE_SHARD,
               "-q", *(["--jobs", str(jobs)] if jobs > 1 else [])]
        plan, _ = dry_run(part, os.path.join(out, "model.safetensors"), SLICE_SHARD, jobs)
        predicted = max([s["peak_bytes"] for s in plan["processes"]] or [plan["peak_tensor_bytes"]])
        seconds, synced, rss = run_once(f"--jobs {jobs}", cmd, out, True, work)
        busy = cpu_seconds(os.path.join(work, "rss.txt"))
        checked = check_output(part, out)
        rates[jobs].append(slice_bytes / synced / jobs)
        loads[jobs].append(busy / seconds / jobs)
        print(f"{jobs:>9} {seconds:>7.2f} {synced:>9.2f} {busy:>6.1f} {rss / 1024:>13.2f} {predicted / 2**30:>14.2f} "
              f"{rates[jobs][-1] / 1e6:>17.0f}   ({checked})", flush=True)
        shutil.rmtree(out)
    rate = {jobs: statistics.mean(r) for jobs, r in rates.items()}
    load = {jobs: statistics.mean(r) for jobs, r in loads.items()}
    print(f"mean of each: one process {rate[1] / 1e6:.0f} MB/s; two {rate[2] / 1e6:.0f} MB/s each; "
          f"two take {rate[1] / (2 * rate[2]):.2f}x the time of one")
    startup = startup_seconds(part, work)
    print(f"start-up (imports, reading the slice's metadata, planning): {startup:.2f} s")

    print(f"\n## the estimate for the full {full_bytes / GB:.0f} GB, from the rates above (each rank at the rate one "
          "process measured alone; the filesystem must sustain ranks x rate)")
    print(f"{'ranks':>5} {'GB/rank':>8} {'minutes':>8} {'aggregate GB/s needed':>22}")
    for ranks in RANKS:
        busiest = max(s["read_bytes"] for s in plans[ranks]["processes"])
        minutes = (busiest / rate[1] + startup) / 60
        print(f"{ranks:>5} {busiest / GB:>8.1f} {minutes:>8.1f} {ranks * rate[1] / GB:>22.1f}")
    together = 2 * rate[2] / rate[1]
    if load[1] >= 0.8:
        verdict = f"one process kept its core {load[1]:.0%} busy: the core, not the disk, set its pace"
    elif together >= 1.3:
        verdict = (f"one process kept its core only {load[1]:.0%} busy: the disk served two writers faster than "
                   "one (it is waiting on writes, not working)")
    else:
        verdict = f"one process kept its core {load[1]:.0%} busy: the disk sets the pace"
    print(f"two processes on this machine's one disk ran at {rate[2] / rate[1]:.2f}x the rate of one each "
          f"({together:.2f}x together): {verdict}")


def cpu_seconds(report: str) -> float:
    """User + system CPU seconds of the job and its children, from ``/usr/bin/time -v``'s report."""
    total = 0.0
    with open(report) as f:
        for line in f:
            if "User time (seconds)" in line or "System time (seconds)" in line:
                total += float(line.rsplit(":", 1)[1])
    return total


def startup_seconds(ckpt: str, work: str) -> float:
    """A dry run of the slice, end to end: what each rank spends before its first byte."""
    return min(dry_run(ckpt, os.path.join(work, "x", "model.safetensors"), SLICE_SHARD, 1)[1] for _ in range(3))


if __name__ == "__main__":
    main()
