"""Fault tests: the real CLI in a subprocess, killed mid-write, starved of disk, or aimed at its own source.

``make test`` runs the short kill tests (20 MB writes); ``make faults`` (``pytest -m faults``) runs the
long ones (~200 MB writes, at least 50 kills for each safetensors output), which are skipped otherwise.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "faults" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long fault test: run it with make faults (pytest -m faults)")
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(skip)


def surgery_command(*args: object) -> list[str]:
    """The command line of the worktree's own CLI (``python -m surgery.cli``)."""
    return [sys.executable, "-m", "surgery.cli", *map(str, args)]


def child_env() -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout's ``surgery`` first on the path, TF quiet."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def surgery(*args: object, **options: Any) -> subprocess.CompletedProcess:
    """Run the CLI to completion, capturing its output as text."""
    return subprocess.run(surgery_command(*args), capture_output=True, text=True, timeout=600, env=child_env(),
                          **options)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and exactly one line on stderr, with no traceback, holding every one of ``words``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}, stderr: {result.stderr[-800:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {result.stderr[-800:]}"
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in the error line: {lines[0]}"
    return lines[0]
