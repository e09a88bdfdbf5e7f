"""`make bench`: each hostile corpus file through the CLI, its wall time and peak memory, against a baseline.

Issue 11 asks that every bad file be refused in under 2 s and 200 MB: a lying header
must not make surgery allocate what it claims. Each case runs the same commands the
corpus test runs (``inspect``, then ``convert``; ``transplant --map`` for a map) in a
fresh process, and ``os.wait4`` gives that process's own peak RSS. The baseline is
``surgery inspect`` of a valid file of the same format family, measured in the same run,
so the ratio shows what the bad file costs beyond reading a good one.

Usage: ``.venv/bin/python bench/hostile.py``
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile.test_corpus import CASES, _entry  # noqa: E402

LIMIT_S, LIMIT_MB = 2.0, 200
TORCH = ROOT / "fixtures" / "torch"
FIX = ROOT / "fixtures"
# A valid file of each format family: what reading a good one costs (its framework's import included).
BASELINE = {"st": TORCH / "cnn_source.safetensors", "pt": TORCH / "cnn_source.pt", "ts": TORCH / "cnn_source.pt",
            "h5": FIX / "keras" / "vgg.h5", "keras": FIX / "keras" / "vgg.keras", "onnx": FIX / "onnx" / "cnn.onnx",
            "tf": FIX / "tf" / "tf2" / "ckpt.index", "map": FIX / "torch" / "cnn_source.pt"}



def measure(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB and exit code of one CLI run in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "surgery.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def commands(path: pathlib.Path, tmp: str) -> list[list[str]]:
    if path.name.startswith("map_"):
        src = str(TORCH / "cnn_source.pt")
        return [["transplant", src, src, "--map", str(path), "-o", f"{tmp}/out.pt"]]
    entry = str(_entry(path))
    return [["inspect", entry], ["convert", entry, f"{tmp}/out.safetensors"]]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = {family: measure(["inspect", str(path)])[:2] for family, path in BASELINE.items()}
        print("baselines (surgery inspect of a valid file of the family): "
              + ", ".join(f"{f} {s:.2f} s {mb:.0f} MB" for f, (s, mb) in base.items()))
        print(f"{'file':36s} {'command':10s} {'exit':>4s} {'s':>6s} {'x base':>7s} {'MB':>6s} {'x base':>7s}")
        worst_s = worst_mb = worst_ratio = 0.0
        over = []
        for path in CASES:
            base_s, base_mb = base[path.name.split("_")[0]]
            for args in commands(path, tmp):
                seconds, mb, code = measure(args)
                worst_s, worst_mb, worst_ratio = max(worst_s, seconds), max(worst_mb, mb), max(worst_ratio, mb / base_mb)
                if seconds > LIMIT_S or mb > LIMIT_MB or code != 2:
                    over.append(f"{path.name} {args[0]}: exit {code}, {seconds:.2f} s, {mb:.0f} MB")
                print(f"{path.name:36s} {args[0]:10s} {code:4d} {seconds:6.2f} {seconds / base_s:7.2f} "
                      f"{mb:6.0f} {mb / base_mb:7.2f}")
    print(f"{len(CASES)} files: slowest {worst_s:.2f} s, largest {worst_mb:.0f} MB; at most {worst_ratio:.2f}x the "
          f"memory of reading a valid file of the same family; limits {LIMIT_S} s, {LIMIT_MB} MB")
    print("over a limit or not exit 2: " + ("; ".join(over) if over else "none"))


if __name__ == "__main__":
    main()
