"""The fuzz harness: write each mutant to disk, have a worker process read it, judge the outcome.

A mutant must be read, or refused with one ``SurgeryError`` line naming the
file. Anything else is a bug: another exception, a crash of the process, a read
slower than ``TIME_LIMIT`` or one growing the process by more than
``MEMORY_LIMIT`` (the per-file limits of docs/SECURITY.md). Each bug is kept with
the mutation that made it and a copy of the files, so it can be replayed and
turned into a corpus file; distinct bugs (by type and place) are counted once.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIME_LIMIT = float(os.environ.get("FUZZ_TIME_LIMIT", "2"))        # seconds for one read
MEMORY_LIMIT = int(os.environ.get("FUZZ_MEMORY_MB", "200")) << 20  # growth of the worker's peak RSS
HANG = 30.0               # a read still running after this is killed as a hang
CRASHES = pathlib.Path(os.environ.get("FUZZ_CRASH_DIR", pathlib.Path(tempfile.gettempdir()) / "surgery-fuzz-crashes"))


@dataclass(frozen=True)
class Mutant:
    """Files derived from a valid fixture by named edits; ``entry`` is the one handed to the reader."""

    fixture: str
    edits: tuple[str, ...]
    files: dict[str, bytes] = field(repr=False, compare=False, hash=False)
    entry: str

    def __repr__(self) -> str:  # what a bug report shows: enough to redo the mutation
        return f"Mutant({self.fixture}: {'; '.join(self.edits) or 'unchanged'})"

    def write(self, folder: pathlib.Path) -> pathlib.Path:
        for name, data in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder / self.entry


class Worker:
    """A ``tests.fuzz.worker`` child process, restarted after it crashes, hangs or is flagged for memory.

    An ordinary exception leaves the process sound, so it is kept: a restart costs the frameworks' import.
    """

    def __init__(self, warm_up: list[pathlib.Path]) -> None:
        self.warm_up = warm_up
        self.log = tempfile.NamedTemporaryFile(prefix="surgery-fuzz-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker"], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        for fixture in self.warm_up:  # frameworks imported before any read is timed; each fixture must read
            answer = self._ask(fixture, fixture.name.split(".")[0], timeout=300)
            if answer["outcome"] != "read":
                raise RuntimeError(f"the valid fixture {fixture} does not read: {answer}")

    def read(self, path: pathlib.Path) -> dict:
        """The worker's verdict on ``path``; a dead or hung worker is a bug, and is replaced."""
        if self.proc is None:
            self.start()
        answer = self._ask(path, path.name.split(".")[0], timeout=HANG)
        if answer.get("rss_growth", 0) > MEMORY_LIMIT:
            self.stop()   # peak RSS only grows: a fresh process measures the next read from a clean start
        return answer

    def _ask(self, path: pathlib.Path, stem: str, timeout: float) -> dict:
        assert self.proc and self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps({"path": str(path), "stem": stem}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return {"outcome": "bug", "kind": "hang", "error": f"no answer after {timeout:.0f} s", "where": "hang"}
        line = self.proc.stdout.readline()
        return json.loads(line) if line else self._died()

    def _died(self) -> dict:
        code = self.proc.wait() if self.proc else None
        self.proc = None
        tail = pathlib.Path(self.log.name).read_text(errors="replace")[-2000:]
        return {"outcome": "bug", "kind": "crash", "error": f"the reading process died (exit code {code})",
                "where": f"crash {code}", "traceback": tail}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        """Stop for good, and remove the log kept for crash reports."""
        self.stop()
        self.log.close()
        os.unlink(self.log.name)


@dataclass
class Campaign:
    """One format's fuzz run: counts every outcome and keeps one example of each distinct bug."""

    name: str
    worker: Worker
    folder: pathlib.Path
    counts: dict[str, int] = field(default_factory=lambda: {"read": 0, "refused": 0, "bug": 0})
    bugs: dict[str, dict] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    slowest: float = 0.0
    most_memory: int = 0

    def run(self, mutant: Mutant) -> None:
        case = self.folder / f"case{sum(self.counts.values())}"
        case.mkdir()
        try:
            path = mutant.write(case)
            answer = self.worker.read(path)
            if answer["outcome"] != "bug" and answer["seconds"] > TIME_LIMIT:
                answer = self.worker.read(path)   # slow once may be a busy machine; slow twice is the reader
            self._judge(mutant, answer, case)
        finally:
            shutil.rmtree(case, ignore_errors=True)

    def _judge(self, mutant: Mutant, answer: dict, case: pathlib.Path) -> None:
        seconds, memory = answer.get("seconds", 0.0), answer.get("rss_growth", 0)
        self.slowest, self.most_memory = max(self.slowest, seconds), max(self.most_memory, memory)
        if answer["outcome"] != "bug" and seconds > TIME_LIMIT:
            answer = {**answer, "outcome": "bug", "kind": "slow", "where": "slow",
                      "error": f"took {seconds:.1f} s (limit {TIME_LIMIT:g} s)"}
        elif answer["outcome"] != "bug" and memory > MEMORY_LIMIT:
            answer = {**answer, "outcome": "bug", "kind": "memory", "where": "memory",
                      "error": f"grew by {memory >> 20} MB (limit {MEMORY_LIMIT >> 20} MB)"}
        self.counts[answer["outcome"]] += 1
        if answer["outcome"] == "bug":
            signature = f"{answer['error'].split(':')[0]} at {answer.get('where', '?')}"
            if signature not in self.bugs:
                self.bugs[signature] = {**answer, "mutant": repr(mutant), "kept": str(self._keep(case, signature))}

    def _keep(self, case: pathlib.Path, signature: str) -> pathlib.Path:
        """A copy of the files that made a bug, to replay and to add to tests/hostile/corpus."""
        keep = CRASHES / self.name / f"bug{len(self.bugs)}"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(case, keep, symlinks=True)
        (keep / "BUG.txt").write_text(signature + "\n")
        return keep

    def summary(self) -> dict:
        return {"format": self.name, "seconds": round(time.perf_counter() - self.started, 1),
                "inputs": sum(self.counts.values()), **self.counts, "distinct_bugs": len(self.bugs),
                "slowest_read_s": round(self.slowest, 3), "most_memory_mb": self.most_memory >> 20}

    def report(self) -> str:
        lines = [f"{len(self.bugs)} distinct bug(s) reading {self.name} mutants:"]
        for signature, bug in self.bugs.items():
            lines += [f"- {signature}", f"    {bug['mutant']}", f"    {bug['error']}", f"    files: {bug['kept']}"]
            if bug.get("traceback"):
                lines += ["    " + line for line in bug["traceback"].strip().splitlines()[-8:]]
        return "\n".join(lines)
