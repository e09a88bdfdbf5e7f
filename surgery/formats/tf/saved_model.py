"""TensorFlow SavedModel folders (``saved_model.pb`` + ``variables/``): their variables.

A SavedModel keeps its variables in ``variables/variables.{index,data-*}``, a
TF2 object-graph checkpoint, so reading is ``tf_checkpoint``'s reader with the
folder as the name. The graph in ``saved_model.pb`` is not read: layer kinds
come from variable names and ranks, as for any TF checkpoint.

Writing a SavedModel would mean re-tracing the model's functions, which needs
the model's code; surgery writes a TF checkpoint instead (``write`` says so).
"""

from __future__ import annotations

import os
from typing import Any

from ...errors import fail
from ...graph import LayerGraph
from . import reader as tf_checkpoint

SUFFIXES: tuple[str, ...] = ()
PROTO = "saved_model.pb"


def folder_of(path: str) -> str:
    """The SavedModel folder of a path given as the folder or its ``saved_model.pb``."""
    return os.path.dirname(path) if os.path.basename(path) == PROTO else path


def sniff(path: str) -> bool:
    """A folder holding ``saved_model.pb`` (or that file itself)."""
    return os.path.isfile(os.path.join(folder_of(path), PROTO))


def read(path: str, *, include_optimizer: bool = False, **_: Any) -> LayerGraph:
    """Read a SavedModel's variables into a lazy LayerGraph, in canonical layout.

    Raises:
        FormatError: no ``saved_model.pb``, or a missing or broken ``variables/`` checkpoint.
    """
    folder = folder_of(path)
    if not os.path.isfile(os.path.join(folder, PROTO)):
        raise fail(path, f"not a SavedModel: no {PROTO} in it")
    prefix = os.path.join(folder, "variables", "variables")
    if not os.path.isfile(prefix + tf_checkpoint.INDEX):
        raise fail(path, "SavedModel has no variables/variables.index (a model without weights?)")
    return tf_checkpoint.read_prefix(prefix, shown=path, format="saved_model", include_optimizer=include_optimizer)


def write(graph: LayerGraph, path: str, **_: Any) -> None:
    """Not supported: raises FormatError pointing at the TF checkpoint writer."""
    raise fail(path, "writing a SavedModel is not supported (it needs the model's code); "
                     "write a TensorFlow checkpoint instead (a path ending in .index)")
