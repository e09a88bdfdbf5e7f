"""The fuzz campaigns' summaries: printed after the run, and written to ``$FUZZ_REPORT`` (``make fuzz``)."""

from __future__ import annotations

import json
import os

import pytest

SUMMARIES: list[dict] = []
COLUMNS = ("format", "seconds", "inputs", "read", "refused", "bug", "distinct_bugs", "slowest_read_s",
           "most_memory_mb")


@pytest.fixture
def fuzz_summaries() -> list[dict]:
    return SUMMARIES


def table() -> str:
    rows = [COLUMNS, *([str(s[c]) for c in COLUMNS] for s in SUMMARIES)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def pytest_terminal_summary(terminalreporter) -> None:
    if not SUMMARIES:
        return
    terminalreporter.write_sep("-", "fuzz campaigns")
    terminalreporter.write_line(table())
    report = os.environ.get("FUZZ_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as f:
            json.dump(SUMMARIES, f, indent=2)
        terminalreporter.write_line(f"summary written to {report}")
