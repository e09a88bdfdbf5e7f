"""TensorFlow checkpoints (``prefix.index`` + ``prefix.data-NNNNN-of-MMMMM``): the format's face.

Reading is ``reader.py`` (TF2 object-graph and TF1 name-scoped checkpoints,
through TensorFlow's own ``CheckpointReader``); writing is ``writer.py``. Writing
makes several files, so ``write`` is atomic by itself (``MULTI_FILE``): it writes
into a temporary folder beside the target, then renames the data files and,
last, the index over the target. See docs/tensorflow.md.
"""

from __future__ import annotations

import os
from typing import Any

from ...graph import LayerGraph
from .reader import INDEX, OBJECT_GRAPH, prefix_of, read_prefix

SUFFIXES = (".index",)
MULTI_FILE = True  # write() takes the final path and makes its own files atomically

__all__ = ["SUFFIXES", "MULTI_FILE", "OBJECT_GRAPH", "sniff", "read", "write"]


def sniff(path: str) -> bool:
    """An ``.index`` file, or a bare prefix with an ``.index`` beside it (no TF import)."""
    if os.path.isdir(path):
        return False
    return path.endswith(INDEX) or os.path.isfile(path + INDEX)


def read(path: str, *, include_optimizer: bool = False, **_: Any) -> LayerGraph:
    """Read a checkpoint's variables into a lazy LayerGraph, in canonical layout.

    Args:
        path: the prefix (``model.ckpt``) or its index (``model.ckpt.index``).
        include_optimizer: keep optimizer state and counters, as ``unknown`` layers.

    Raises:
        FormatError: a missing, truncated or unreadable index or data file.
    """
    return read_prefix(prefix_of(path), shown=path, format="tf_checkpoint", include_optimizer=include_optimizer)


def write(graph: LayerGraph, path: str, **_: Any) -> None:
    """Write ``graph`` as a TensorFlow checkpoint at prefix ``path`` (``path`` minus ``.index``).

    A graph read from a TF checkpoint or SavedModel (its *template*) is written
    under the template's keys, and every other entry of the template (optimizer
    state, counters, the object graph) is copied unchanged, so the result
    restores wherever the template did. Any other graph becomes a
    ``tf.train.Checkpoint`` of variables named ``<layer>/<keras variable>``,
    in native Keras layout. ``path`` is the final target: the files appear
    only when complete (see ``writer.atomic_prefix``).

    Raises:
        FormatError: a layer of the graph has no place in the template.
    """
    from . import writer

    writer.write(graph, prefix_of(path), shown=path)
