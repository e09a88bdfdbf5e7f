"""`make bench`: how long `import surgery` and `surgery --help` take, against `python -c pass` in the same run.

Every command pays its start-up, so it is a figure of its own: the target is
under 0.3 s for both on this machine. Each command runs ``--repeat`` times
(default 15) in a fresh process, round-robin, and the median wall time is
reported, in seconds and as a ratio to the bare interpreter's start-up.

Usage: ``.venv/bin/python bench/startup.py [--repeat 15]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET_S = 0.3
SURGERY = os.path.join(os.path.dirname(sys.executable), "surgery")
JOBS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import surgery": [sys.executable, "-c", "import surgery"],
    "surgery --help": [SURGERY, "--help"] if os.path.exists(SURGERY) else [sys.executable, "-m", "surgery.cli", "--help"],
    "surgery inspect --help": ([SURGERY, "inspect", "--help"] if os.path.exists(SURGERY)
                               else [sys.executable, "-m", "surgery.cli", "inspect", "--help"]),
}


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    for cmd in JOBS.values():
        _time(cmd)  # once unmeasured: the files are in the page cache for every measured run
    runs: dict[str, list[float]] = {name: [] for name in JOBS}
    for _ in range(args.repeat):
        for name, cmd in JOBS.items():
            runs[name].append(_time(cmd))
    base = statistics.median(runs["python -c pass"])
    print(f"start-up, median of {args.repeat} runs (target: under {TARGET_S} s)")
    for name, times in runs.items():
        median = statistics.median(times)
        verdict = "" if name == "python -c pass" else ("  OK" if median < TARGET_S else "  MISS")
        print(f"  {name:<24} {median:6.3f} s  {median / base:5.1f}x python -c pass{verdict}")


if __name__ == "__main__":
    main()
