"""The hostile corpus: every bad file through the real CLI gives exit 2 and one line naming it; no code runs.

The files are made by ``make_corpus.py`` (deterministic, committed). A checkpoint is read
with ``surgery inspect`` and transplanted into a small valid destination (reading every
tensor); a map is given to ``surgery transplant``. Each must end with exit code 2,
exactly one line on stderr naming the file (or its folder), no traceback, and no
output file; the line is the one ``expected.tsv`` gives for it, word for word. The malicious
pickles would create a marker file: it must never appear.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import TORCH

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
MARKER = pathlib.Path("/tmp/surgery-hostile-marker")


def _entry(path: pathlib.Path) -> pathlib.Path:
    """What to hand the CLI: a folder's checkpoint file (an ONNX model, a shard index, a TF prefix) or the file."""
    if not path.is_dir():
        return path
    for pattern in ("*.onnx", "*.index.json", "*.index"):
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    return path


# Read, not refused: their config names code (a Lambda, a custom class) that surgery never runs; their
# weights are plain data. Checked below: nothing runs, and what cannot be known is never paired.
READ_WITHOUT_RUNNING = {"keras_custom_object.keras", "keras_lambda.keras"}
CASES = sorted(p for p in CORPUS.iterdir() if not p.name.startswith(".") and p.name not in READ_WITHOUT_RUNNING)


def _surgery(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "surgery.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env)


def _expected() -> dict[tuple[str, str], str]:
    """``(file, command) -> the exact line``, from ``expected.tsv``."""
    table = {}
    for line in (CORPUS.parent / "expected.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, command, message = line.split("\t")
            table[(name, command)] = "surgery: error: " + message.replace("{corpus}", str(CORPUS))
    return table


EXPECTED = _expected()


def _assert_one_line(result: subprocess.CompletedProcess, name: str, command: str | None = None) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (name, result.returncode, result.stderr[-500:])
    assert len(lines) == 1, (name, result.stderr[-800:])
    assert "Traceback" not in result.stderr and name.split(".")[0] in lines[0], (name, lines[0])
    if command is not None:
        assert lines[0] == EXPECTED[(name, command)], f"{name} ({command}): the message changed:\n{lines[0]}"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_every_bad_file_is_one_line_and_exit_2(path, tmp_path):
    MARKER.unlink(missing_ok=True)
    if path.name.startswith("map_"):
        out = tmp_path / "out.pt"
        result = _surgery("transplant", TORCH / "cnn_source.pt", TORCH / "cnn_source.pt", "--map", path, "-o", out)
        _assert_one_line(result, path.name, "transplant")
        assert not out.exists()
    else:
        entry = _entry(path)
        _assert_one_line(_surgery("inspect", entry), path.name, "inspect")
        out = tmp_path / "out.safetensors"
        result = _surgery("convert", entry, out)   # reads every tensor, or refuses before
        _assert_one_line(result, path.name, "convert")
        assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    assert not MARKER.exists(), f"{path.name}: pickled code ran"


@pytest.mark.parametrize("name", sorted(READ_WITHOUT_RUNNING))
def test_a_keras_file_naming_code_is_read_without_running_it(name):
    import surgery

    MARKER.unlink(missing_ok=True)
    result = _surgery("inspect", CORPUS / name)
    assert result.returncode == 0 and not result.stderr, result.stderr
    graph = surgery.load(CORPUS / name)
    unknown = [layer for layer in graph if layer.kind == "unknown" and layer.params]
    assert all(layer.attrs.get("layout_known") is False for layer in unknown), [l.name for l in unknown]
    assert not MARKER.exists()
