"""`make bench`: DCP -> safetensors, and safetensors -> sharded safetensors, against baselines in the same run.

A synthetic checkpoint of about 1 GB (fp32 (2048, 2048) tensors of 16 MiB, seeded) is made twice:

- as a DCP folder laid out as two ranks write it (``__0_0.distcp`` and ``__1_0.distcp``, each tensor
  split in two row chunks, one per file, ``.metadata`` listing the chunks), the layout FSDP saves;
- as one ``src.safetensors``.

Each job runs in its own process, timed from outside, with its peak RSS from ``/usr/bin/time -v``
(the rusage of that child process; ``run.py``'s wrapper where ``time`` is missing):

DCP -> safetensors
  1. ``cp -r ckpt``: the same bytes copied;
  2. ``surgery convert ckpt out/model.safetensors``;
  3. torch's own ``dcp_to_torch_save(ckpt, out.pt)``;
  4. the plain-PyTorch way to the same output: ``dcp_to_torch_save``, ``torch.load``, ``save_file``.

safetensors -> sharded safetensors (the standard index; issue 12's goal: at most 1.2x ``cp``)
  5. ``cp src.safetensors``;
  6. ``surgery convert src.safetensors out/model.safetensors --max-shard-size 256MB``.

DCP -> sharded safetensors, the work split (``surgery.parallel``)
  7. ``surgery convert ckpt out/model.safetensors --max-shard-size 256MB``: one process;
  8. the same with ``--jobs 2``: two worker processes;
  9. the same under ``torchrun --standalone --nproc-per-node 2``: two ranks (gloo).
  Peak RSS there is the largest single process's (``getrusage`` of the children), not their sum.

Caches, rounds and medians as ``run.py`` (cold data, warm code; round-robin ``--repeat`` times).
Every output is checked tensor by tensor against the generated values, and each surgery job's
``--dry-run`` prediction of its tensor memory is printed beside the peak RSS measured.

Usage: ``.venv/bin/python bench/dcp.py [--size-gb 1.0] [--repeat 3] [--workdir DIR] [--keep] [--warm]``
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pickle
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import SHAPE, MiB, drop_caches, run_once, surgery_cmd, tensor, this_checkout  # noqa: E402

TARGET_RATIO = 1.2   # issue 12: safetensors -> safetensors within 1.2x cp
SHARD = "256MB"
SEED = 7


# --------------------------------------------------------------------------- jobs run in a subprocess

def job_dcp_to_torch_save(ckpt: str, out: str) -> None:
    """torch's own conversion: the whole state_dict loaded in this process, then torch.save."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt, out)


def job_plain(ckpt: str, out: str) -> None:
    """The plain-PyTorch way to safetensors: dcp_to_torch_save, torch.load, safetensors' save_file."""
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    tmp = out + ".pt"
    dcp_to_torch_save(ckpt, tmp)
    save_file(torch.load(tmp, weights_only=True, mmap=True), out)
    os.unlink(tmp)


JOBS = {"dcp_to_torch_save": job_dcp_to_torch_save, "plain": job_plain}


# --------------------------------------------------------------------------- the inputs

def names(count: int) -> list[str]:
    return [f"layers.{i}.weight" for i in range(count)]


def write_dcp(folder: str, count: int) -> None:
    """A DCP folder as two ranks write it: rows [0, n/2) of every tensor in __0_0.distcp, the rest in __1_0.distcp."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    os.makedirs(folder)
    half = SHAPE[0] // 2
    entries, storage = {}, {}
    files = [open(os.path.join(folder, f"__{rank}_0.distcp"), "wb") for rank in range(2)]
    try:
        for i, name in enumerate(names(count)):
            full = torch.from_numpy(tensor(SEED, i))
            chunks = []
            for rank, f in enumerate(files):
                buffer = io.BytesIO()
                torch.save(full[rank * half:(rank + 1) * half].clone(), buffer)
                offsets = torch.Size([rank * half, 0])
                chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=torch.Size([half, SHAPE[1]])))
                storage[MetadataIndex(name, offsets, rank)] = _StorageInfo(f"__{rank}_0.distcp", f.tell(),
                                                                           buffer.getbuffer().nbytes)
                f.write(buffer.getbuffer())
            entries[name] = TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size(SHAPE), chunks)
    finally:
        for f in files:
            f.close()
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(Metadata(entries, planner_data={n: (n,) for n in entries}, storage_data=storage), f)


def write_safetensors(path: str, count: int) -> None:
    """The same tensors in one safetensors file, streamed."""
    nbytes = int(np.prod(SHAPE)) * 4
    header = {n: {"dtype": "F32", "shape": list(SHAPE), "data_offsets": [i * nbytes, (i + 1) * nbytes]}
              for i, n in enumerate(names(count))}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for i in range(count):
            f.write(memoryview(tensor(SEED, i)).cast("B"))


# --------------------------------------------------------------------------- checking outputs

def check(out: str, count: int) -> str:
    """Every generated tensor, bit for bit, in ``out`` (a .pt, a .safetensors, an index, a folder of either)."""
    got = _open(out)
    if sorted(got) != sorted(names(count)):
        raise SystemExit(f"bench: {out} has {len(got)} tensors, expected {count}")
    for i, name in enumerate(names(count)):
        if not np.array_equal(got[name](), tensor(SEED, i)):
            raise SystemExit(f"bench: {out}: {name} differs from the source: the conversion is broken")
    return f"{count} tensors equal"


def _open(out: str) -> dict:
    from safetensors import safe_open

    if os.path.isdir(out):
        index = os.path.join(out, "model.safetensors.index.json")
        files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
        loaders = {}
        for name in files:
            f = safe_open(os.path.join(out, name), framework="numpy")
            loaders.update({k: (lambda f=f, k=k: f.get_tensor(k)) for k in f.keys()})
        return loaders
    import torch

    state = torch.load(out, map_location="cpu", weights_only=True, mmap=True)
    return {k: (lambda v=v: v.numpy()) for k, v in state.items()}


# --------------------------------------------------------------------------- the run

def jobs(w: str, count: int) -> list[tuple[str, list[str], str, str]]:
    """(label, command, output, how to check it: "tensors" or "bytes")."""
    py = [sys.executable, os.path.abspath(__file__), "_job"]
    p = lambda name: os.path.join(w, name)  # noqa: E731
    return [
        ("cp -r ckpt", ["cp", "-r", p("ckpt"), p("out-cp")], p("out-cp"), "bytes"),
        ("surgery DCP->safetensors", [*surgery_cmd(), "convert", p("ckpt"), p("out-dcp/model.safetensors"), "--quiet"],
         p("out-dcp"), "tensors"),
        ("torch dcp_to_torch_save", [*py, "dcp_to_torch_save", p("ckpt"), p("out-torch.pt")], p("out-torch.pt"), "tensors"),
        ("plain dcp_to_torch_save+load+save_file", [*py, "plain", p("ckpt"), p("out-plain.safetensors")],
         p("out-plain.safetensors"), "tensors"),
        ("cp src.safetensors", ["cp", p("src.safetensors"), p("out-cp.safetensors")], p("out-cp.safetensors"), "bytes"),
        ("surgery safetensors->sharded", [*surgery_cmd(), "convert", p("src.safetensors"), p("out-st/model.safetensors"),
                                          "--max-shard-size", SHARD, "--quiet"], p("out-st"), "tensors"),
        ("surgery DCP->sharded", [*surgery_cmd(), "convert", p("ckpt"), p("out-j1/model.safetensors"),
                                  "--max-shard-size", SHARD, "--quiet"], p("out-j1"), "tensors"),
        ("surgery DCP->sharded --jobs 2", [*surgery_cmd(), "convert", p("ckpt"), p("out-j2/model.safetensors"),
                                           "--max-shard-size", SHARD, "--jobs", "2", "--quiet"], p("out-j2"), "tensors"),
        ("torchrun x2 surgery DCP->sharded", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                              "--nproc-per-node", "2", "-m", "surgery.cli", "convert", p("ckpt"),
                                              p("out-r2/model.safetensors"), "--max-shard-size", SHARD, "--quiet"],
         p("out-r2"), "tensors"),
    ]


def predicted_peak(cmd: list[str]) -> float:
    """The tensor memory surgery's --dry-run predicts for this command, in MiB."""
    dry = [c for c in cmd if c != "--quiet"] + ["--dry-run", "--json"]
    out = subprocess.run(dry, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["peak_tensor_bytes"] / MiB


def measure(work: str, count: int, cold: bool, repeat: int) -> list[dict]:
    table = jobs(work, count)
    if not cold:
        for name, cmd, out, _ in table:
            run_once(name, cmd, out, cold, work)
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, *_ in table}
    checks: dict[str, str] = {}
    for round_ in range(repeat):
        for name, cmd, out, how in table:
            runs[name].append(run_once(name, cmd, out, cold, work))
            if round_ == 0:
                checks[name] = check(out, count) if how == "tensors" else f"{_du(out) / 1e9:.2f} GB"
        print(f"  round {round_ + 1}: " + ", ".join(f"{n} {runs[n][-1][0]:.2f} s" for n, *_ in table), flush=True)
    predicted = {name: predicted_peak(cmd) for name, cmd, *_ in table if name.startswith("surgery")}
    return [{"name": name, "seconds": statistics.median(r[0] for r in runs[name]),
             "synced": statistics.median(r[1] for r in runs[name]), "rss": max(r[2] for r in runs[name]),
             "runs": [r[0] for r in runs[name]], "check": checks[name], "predicted": predicted.get(name)}
            for name, *_ in table]


def _du(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def report(results: list[dict], count: int, total_gb: float, mode: str, repeat: int) -> None:
    by = {r["name"]: r for r in results}
    print(f"\n{count} fp32 tensors of 16 MiB, {total_gb:.2f} GB; DCP in 2 files (row chunks); caches: {mode}")
    print(f"seconds: median of {repeat}; +sync: until the output is on disk (surgery fsyncs, cp and torch do not); "
          "peak RSS: the highest run; predicted: surgery --dry-run's tensor memory\n")
    head = f"{'job':40} {'seconds':>8} {'+sync':>7} {'peak RSS MiB':>12} {'predicted':>9}  check"
    print(head)
    print("-" * len(head))
    for r in results:
        pred = f"{r['predicted']:.0f}" if r["predicted"] is not None else "-"
        print(f"{r['name']:40} {r['seconds']:8.2f} {r['synced']:7.2f} {r['rss']:12.0f} {pred:>9}  {r['check']}")
    s, cp, torch_, plain = (by[n] for n in ("surgery DCP->safetensors", "cp -r ckpt", "torch dcp_to_torch_save",
                                             "plain dcp_to_torch_save+load+save_file"))
    print("\nDCP -> safetensors, surgery as a ratio (time; +sync; peak RSS):")
    for base in (cp, torch_, plain):
        print(f"  x {base['name']:38} {s['seconds'] / base['seconds']:5.2f}  {s['synced'] / base['synced']:5.2f}  "
              f"{s['rss'] / max(base['rss'], 1):6.3f}")
    st, cps = by["surgery safetensors->sharded"], by["cp src.safetensors"]
    ok = lambda x: "PASS" if x <= TARGET_RATIO else "MISS"  # noqa: E731
    print(f"\nsafetensors -> sharded safetensors ({SHARD} shards) vs cp: {st['seconds'] / cps['seconds']:.2f}x "
          f"({ok(st['seconds'] / cps['seconds'])}), {st['synced'] / cps['synced']:.2f}x until on disk "
          f"({ok(st['synced'] / cps['synced'])}); goal <= {TARGET_RATIO}x; peak RSS {st['rss']:.0f} MiB")
    one = by["surgery DCP->sharded"]
    print(f"\nDCP -> sharded safetensors ({SHARD} shards), split across processes, as a ratio to one process "
          "(time; +sync; peak RSS of the largest process):")
    for name in ("surgery DCP->sharded --jobs 2", "torchrun x2 surgery DCP->sharded"):
        r = by[name]
        print(f"  {name:38} {r['seconds'] / one['seconds']:5.2f}  {r['synced'] / one['synced']:5.2f}  "
              f"{r['rss'] / max(one['rss'], 1):6.3f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of the checkpoint (default 1.0)")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary folder under bench/data/)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs afterwards")
    ap.add_argument("--repeat", type=int, default=3, help="runs per job; the median is reported (default 3)")
    ap.add_argument("--warm", action="store_true", help="do not drop caches; run each job once unmeasured first")
    args = ap.parse_args(argv)
    this_checkout()

    count = max(2, round(args.size_gb * 1e9 / (int(np.prod(SHAPE)) * 4)))
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    work = args.workdir or tempfile.mkdtemp(prefix="dcp-", dir=os.path.join(HERE, "data"))
    os.makedirs(work, exist_ok=True)
    cold = not args.warm and drop_caches()
    mode = "data cold, code warm" if cold else "warm (each job ran once, unmeasured)"
    print(f"surgery DCP bench {datetime.date.today()} on {platform.node()}: {os.cpu_count()} cores, "
          f"python {platform.python_version()}, workdir {work}")
    try:
        t = time.perf_counter()
        write_dcp(os.path.join(work, "ckpt"), count)
        write_safetensors(os.path.join(work, "src.safetensors"), count)
        os.sync()
        print(f"made ckpt/ (DCP) and src.safetensors in {time.perf_counter() - t:.0f} s", flush=True)
        results = measure(work, count, cold, args.repeat)
        report(results, count, count * int(np.prod(SHAPE)) * 4 / 1e9, mode, args.repeat)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            for name in ("ckpt", "src.safetensors", "rss.txt"):
                path = os.path.join(work, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.unlink(path)
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_job":
        JOBS[sys.argv[2]](*sys.argv[3:5])
    else:
        main()
