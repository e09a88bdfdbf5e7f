"""The cage a C library's parse runs in first: each way a parse can go wrong becomes one FormatError line."""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from surgery import sandbox
from surgery.errors import FormatError, MapError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the cage needs fork")


def _vet(parse, cpu_seconds=1):
    sandbox.vetted("bad.h5", parse, library="libdemo", cpu_seconds=cpu_seconds)


def test_a_parse_that_finishes_passes_and_leaves_the_parent_untouched():
    seen = []
    _vet(lambda: seen.append(1))
    assert seen == []   # it ran in the child


def test_a_crash_is_one_line():
    with pytest.raises(FormatError, match=r"^bad.h5: damaged: libdemo crashed reading it \(SIGSEGV\)$"):
        _vet(lambda: ctypes.string_at(0))


def test_a_loop_is_stopped_by_the_cpu_budget():
    def spin():
        while True:
            pass

    started = time.monotonic()
    with pytest.raises(FormatError, match=r"still reading its structure after 1 s of CPU"):
        _vet(spin)
    assert time.monotonic() - started < 30


def test_a_huge_allocation_is_refused_not_made():
    with pytest.raises(FormatError, match=r"wanted more than 160 MB of memory"):
        _vet(lambda: bytearray(1 << 30))


def test_a_child_blocked_without_cpu_is_killed_at_the_wall_limit(monkeypatch):
    monkeypatch.setattr(sandbox, "WALL_SECONDS", 1)
    with pytest.raises(FormatError, match=r"did not finish reading its structure in 1 s"):
        _vet(lambda: time.sleep(30))


def test_the_childs_refusal_is_raised_as_it_was():
    def refuse():
        raise MapError("map.yaml: line 3: nope")

    with pytest.raises(MapError, match=r"^map.yaml: line 3: nope$"):
        _vet(refuse)


def test_a_stray_exception_is_named():
    def stray():
        raise KeyError("layer_names")

    with pytest.raises(FormatError, match=r"^KeyError: 'layer_names'$"):
        _vet(stray)


def test_the_budget_grows_with_the_file():
    assert sandbox.cpu_budget(10_000) == 1
    assert sandbox.cpu_budget(270_000_000) == 6
