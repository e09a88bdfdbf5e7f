"""Streaming a graph into a writer: read-ahead and per-tensor watching.

A writer asks for tensors one at a time. ``streamed`` returns the same graph
whose params (1) report each array they read to a callback (progress, NaN
counts, hashes) and (2) read the next tensor, in graph order, on a worker
thread while the writer handles the current one. At most one tensor is read
ahead, so peak memory stays near two tensors; file reads and numpy release the
GIL, so on two cores reading and writing overlap.

With ``on_copy``, a param whose bytes lie unchanged in a file keeps its ``span``,
so a writer of raw bytes copies it file to file without reading it (and reports
it to ``on_copy``); it is then never read ahead. Without, spans are dropped and
every tensor is read (and reported to ``on_read``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np

from .graph import Layer, LayerGraph, Param, Span

OnRead = Callable[[str, np.ndarray], None]
OnCopy = Callable[[str, int], None]


class ReadAhead:
    """Loads the tensor after the one just asked for, on one worker thread."""

    def __init__(self, loads: dict[str, Callable[[], np.ndarray]], order: list[str]) -> None:
        self._loads = loads
        self._next = dict(zip(order, order[1:]))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surgery-read")
        self._pending: tuple[str, Future] | None = None

    def get(self, key: str) -> np.ndarray:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            arr = pending[1].result()
        else:
            if pending is not None:  # the writer went out of order: drop the guess, keep memory bounded
                pending[1].cancel()
            arr = self._loads[key]()
        following = self._next.get(key)
        if following is not None:
            self._pending = (following, self._pool.submit(self._loads[following]))
        return arr

    def close(self) -> None:
        if self._pending is not None:
            self._pending[1].cancel()
        self._pool.shutdown(wait=True)


def streamed(graph: LayerGraph, on_read: OnRead, on_copy: OnCopy | None = None,
             read: Iterable[str] = ()) -> tuple[LayerGraph, ReadAhead]:
    """The same graph whose params read ahead and report each array to ``on_read``.

    With ``on_copy``, a param with a span keeps it (a raw-bytes writer copies it file to file
    and reports it there), except the keys in ``read``. Close the returned ReadAhead when the
    writer is done.
    """
    read = set(read)
    loads: dict[str, Callable[[], np.ndarray]] = {}
    spans: dict[str, Span] = {}
    order: list[str] = []
    seen: set = set()
    for key, param in graph.tensors():
        loads[key] = _reporting(param, key, on_read)
        if on_copy is not None and key not in read and param.span is not None:
            spans[key] = param.span._replace(done=lambda k=key, n=param.nbytes: on_copy(k, n))
        elif param.ident is None or param.ident not in seen:  # a tied alias is not read again
            order.append(key)
            seen.add(param.ident)
    ahead = ReadAhead(loads, order)
    layers = []
    for layer in graph:
        params = {role: Param(p.shape, p.dtype, lambda k=layer.key(role): ahead.get(k), key=p.key,
                              layout=p.layout, ident=p.ident, span=spans.get(layer.key(role)))
                  for role, p in layer.params.items()}
        layers.append(Layer(layer.name, layer.kind, params, layer.attrs, layer.frozen))
    return LayerGraph(layers, path=graph.path, format=graph.format, meta=graph.meta), ahead


def read_ahead(tensors: list[tuple[str, Param]]) -> tuple[list[tuple[str, Param]], ReadAhead]:
    """The same tensors, each read on a worker thread while the one before it is written.

    A param with a ``span`` keeps it (a raw-bytes writer copies it file to file) and is
    not read ahead. Close the returned ReadAhead when the writer is done.
    """
    order = [key for key, param in tensors if param.span is None]
    ahead = ReadAhead({key: param.read for key, param in tensors}, order)
    out = [(key, Param(p.shape, p.dtype, lambda k=key: ahead.get(k), key=p.key, layout=p.layout, ident=p.ident,
                       span=p.span)) for key, p in tensors]
    return out, ahead


def _reporting(param: Param, key: str, on_read: OnRead) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        arr = param.read()
        on_read(key, arr)
        return arr

    return load
