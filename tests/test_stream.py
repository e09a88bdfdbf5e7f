import threading

import numpy as np
import pytest

from surgery.errors import FormatError
from surgery.graph import Param
from surgery.stream import ReadAhead, streamed
from surgery.kinds import graph_of_params


def test_read_ahead_in_and_out_of_order():
    calls = []  # (key, thread that read it)
    b_read = threading.Event()

    def loader(key):
        def load():
            calls.append((key, threading.current_thread().name))
            if key == "b":
                b_read.set()
            return np.full(2, ord(key[-1]), dtype=np.float32)
        return load

    order = ["a", "b", "c", "d"]
    ahead = ReadAhead({k: loader(k) for k in order}, order)
    try:
        assert ahead.get("a")[0] == ord("a")
        assert b_read.wait(5), "b was not read ahead while the writer handled a"
        assert ahead.get("b")[0] == ord("b")
        assert ahead.get("d")[0] == ord("d")   # out of order: the guess ("c") is dropped, "d" read directly
        assert ahead.get("c")[0] == ord("c")
    finally:
        ahead.close()
    readers = dict(calls)
    assert readers["a"] == threading.main_thread().name and readers["b"].startswith("surgery-read")
    assert readers["d"] == threading.main_thread().name  # the writer read it itself
    assert sorted({k for k, _ in calls}) == order


def test_errors_of_a_read_ahead_reach_the_writer():
    def broken():
        raise FormatError("x.safetensors: truncated")

    ahead = ReadAhead({"a": lambda: np.zeros(1), "b": broken}, ["a", "b"])
    try:
        ahead.get("a")
        with pytest.raises(FormatError, match="truncated"):
            ahead.get("b")
    finally:
        ahead.close()


def test_streamed_graph_reports_each_tensor_once_and_skips_tied_aliases():
    shared = Param.from_array(np.arange(4, dtype=np.float32), key="embed.weight", ident="one")
    params = {"embed.weight": shared, "head.weight": shared, "fc.bias": Param.from_array(np.ones(3, np.float32))}
    seen = []
    graph, ahead = streamed(graph_of_params(params), lambda key, arr: seen.append(key))
    try:
        values = {k: p.read() for k, p in graph.tensors() if k != "head.weight"}
    finally:
        ahead.close()
    assert np.array_equal(values["embed.weight"], np.arange(4))
    assert sorted(seen) == ["embed.weight", "fc.bias"]
