"""Writing TensorFlow checkpoints: over a template's keys, or fresh; several files, atomically.

The format's face (``tf_checkpoint.write``) calls ``write`` here; reading stays
in ``reader``. TensorFlow is imported only inside the functions.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

from ..keras import native as keras_native
from ...errors import fail
from ...graph import Layer, LayerGraph, Param
from ...io import fsync_path, hold, sweep_stale
from .reader import INDEX, import_tf, open_reader, prefix_of, scan


def write(graph: LayerGraph, prefix: str, *, shown: str) -> None:
    """Write ``graph`` at ``prefix``: like its template checkpoint when it has one, else fresh."""
    template = template_prefix(graph)
    with atomic_prefix(prefix) as tmp:
        if template:
            _write_like(graph, template, tmp, shown=shown)
        else:
            _write_fresh(graph, tmp)
        _spread(tmp, free_shard_count(prefix))


def template_prefix(graph: LayerGraph) -> str | None:
    """The checkpoint prefix a graph read from a TF checkpoint or SavedModel came from, if still there."""
    prefix = graph.meta.get("tf_prefix")
    if not prefix and graph.path and graph.format == "tf_checkpoint":
        prefix = prefix_of(graph.path)
    elif not prefix and graph.path and graph.format == "saved_model":
        prefix = os.path.join(graph.path, "variables", "variables")
    if graph.format in ("tf_checkpoint", "saved_model") and prefix and os.path.isfile(prefix + INDEX):
        return prefix
    return None


def _write_like(graph: LayerGraph, template: str, tmp: str, *, shown: str) -> None:
    reader = open_reader(template, template)
    entries, _, _ = scan(reader, template)
    where = {(e.layer, e.var): e.key for e in entries}
    shapes = {(e.layer, e.var): e.shape for e in entries}
    tensors: dict[str, Any] = {}
    for layer in graph:
        for var, arr in _native_arrays(layer, _hints(layer.name, shapes)).items():
            key = where.get((layer.name, var))
            if key is None:
                raise fail(shown, f"layer {layer.name!r} variable {var!r} has no key in the template "
                                  f"checkpoint {template}; write another format to add layers")
            tensors[key] = arr
    for key in reader.get_variable_to_shape_map():
        if key not in tensors:
            tensors[key] = reader.get_tensor(key)
    _save(tmp, tensors)


def _hints(layer: str, shapes: dict[tuple[str, str], tuple[int, ...]]) -> dict[str, Any]:
    """What the native layout depends on, read off the template's own shapes."""
    hints: dict[str, Any] = {}
    depthwise = shapes.get((layer, "depthwise_kernel"))
    if depthwise:
        hints["depth_multiplier"] = depthwise[-1]
    query = shapes.get((layer, "query/kernel"))
    if query and len(query) == 3:
        hints["num_heads"] = query[1]
    return hints


def _write_fresh(graph: LayerGraph, tmp: str) -> None:
    """A ``tf.train.Checkpoint(layers={...})`` whose nested dicts follow the ``/`` in the names."""
    tf = import_tf()
    tree: dict[str, Any] = {}
    for layer in graph:
        for var, arr in _native_arrays(layer).items():
            name = f"{layer.name}/{var}" if var and var != layer.name else layer.name
            *scopes, leaf = [p for p in name.split("/") if p]
            node = tree
            for scope in scopes:
                node = node.setdefault(scope, {})
                if not isinstance(node, dict):
                    raise fail(tmp, f"{name}: {scope!r} is both a variable and a scope")
            node[leaf] = tf.Variable(arr, name=name, trainable=False)
    tf.train.Checkpoint(layers=tree).write(tmp)


def _native_arrays(layer: Layer, config: dict | None = None) -> dict[str, np.ndarray]:
    """A canonical layer's Keras variables, read into memory."""
    native = keras_native.to_native(layer, None, config)
    return {var: value.read() if isinstance(value, Param) else np.asarray(value) for var, value in native.items()}


def _save(prefix: str, tensors: dict[str, Any]) -> None:
    tf = import_tf()
    names = list(tensors)
    values = [tf.constant(tensors[n]) for n in names]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=values)


def free_shard_count(prefix: str) -> int:
    """The smallest data-shard count no file beside ``prefix`` uses (1 unless an old checkpoint is there).

    The index names its data files only through their count
    (``prefix.data-00000-of-00002``). New data files under a count the old
    checkpoint does not use overwrite nothing the old index reads, so the old
    checkpoint stays whole until the new index is renamed over the old one.
    """
    used = {name.rsplit("-of-", 1)[-1] for name in glob.glob(glob.escape(prefix) + ".data-*-of-*")}
    count = 1
    while f"{count:05d}" in used:
        count += 1
    return count


def _spread(prefix: str, count: int) -> None:
    """Rewrite the one-shard checkpoint at ``prefix`` as ``count`` data shards, entries dealt in turn.

    TensorFlow's own ``MergeV2Checkpoints`` joins the parts, as its sharded
    saver does. A shard needs an entry, so a checkpoint of fewer entries than
    ``count`` stays in one shard, and its commit then renames data over data.
    """
    if count == 1:
        return
    reader = open_reader(prefix, prefix)
    keys = sorted(reader.get_variable_to_shape_map())
    if len(keys) < count:
        return
    tf = import_tf()
    parts = [f"{prefix}.part{i}" for i in range(count)]
    for i, part in enumerate(parts):
        _save(part, {key: reader.get_tensor(key) for key in keys[i::count]})
    for name in glob.glob(glob.escape(prefix) + ".*"):
        if not name.startswith(f"{prefix}.part"):
            os.unlink(name)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=prefix, delete_old_dirs=False)


@contextlib.contextmanager
def atomic_prefix(prefix: str) -> Iterator[str]:
    """Yield a temporary prefix in a new folder beside ``prefix``; on success move its files over.

    Data shards move first, under names the old checkpoint does not use
    (``free_shard_count``), and the index last: that rename commits, so a kill
    at any moment leaves the old checkpoint or the new one, each whole. On an
    exception the temporary folder is removed and the target is untouched; a
    folder left by a killed writer is removed by the next one (``sweep_stale``).
    """
    target = os.path.abspath(prefix)
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    sweep_stale(folder, f".{glob.escape(name)}.*.tmp")
    tmpdir = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    lock = os.open(tmpdir, os.O_RDONLY)
    try:
        hold(lock)
        tmp = os.path.join(tmpdir, "ckpt")
        yield tmp
        _commit(tmp, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        os.close(lock)


def _commit(tmp: str, target: str) -> None:
    shards = sorted(glob.glob(glob.escape(tmp) + ".data-*"))
    moved = [target + shard[len(tmp):] for shard in shards]
    for name in (*shards, tmp + INDEX):
        fsync_path(name)
    for src, dst in zip(shards, moved):
        os.replace(src, dst)
    fsync_path(os.path.dirname(target))  # the data files are in place before the index that names them
    os.replace(tmp + INDEX, target + INDEX)
    for stale in glob.glob(glob.escape(target) + ".data-*-of-*"):
        if stale not in moved:  # shards of an old checkpoint with another shard count
            os.unlink(stale)
    fsync_path(os.path.dirname(target))


