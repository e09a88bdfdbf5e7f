"""TensorFlow checkpoints: ``prefix.index`` + ``prefix.data-NNNNN-of-MMMMM``.

Two kinds are read, both through TensorFlow's own ``CheckpointReader``:

- TF2 object-graph checkpoints (``tf.train.Checkpoint``): keys are object paths
  (``model/_functional/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE``). The
  ``_CHECKPOINTABLE_OBJECT_GRAPH`` proto gives each variable's own name
  (``sequential/conv1/kernel``), which names the layers; the model's name is
  stripped so layers read as Keras names them (``conv1``).
- TF1 name-scoped checkpoints (``tf.compat.v1.train.Saver``): keys are variable
  names (``conv1/weights``); TF1 roles are renamed to Keras ones
  (``weights`` -> ``kernel``, ``biases`` -> ``bias``).

Optimizer state (TF1 slots ``<var>/Adam``, TF2 ``optimizer/...`` and slot
variables) and counters (``global_step``, ``save_counter``...) are not layers:
they are left out unless ``include_optimizer=True``, and counted in the notes.

Every tensor the file holds is a layer param or named in ``graph.left_out``.
The format's face (``sniff``, ``read``, ``write``) is ``checkpoint.py``; writing is
``writer.py``. See docs/tensorflow.md.
"""

from __future__ import annotations

import glob
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import dtypes
from ..keras import layers as keras_layers
from ...errors import fail, first_line
from ...graph import Layer, LayerGraph, Param, natural_key
from .index import check_index

INDEX = ".index"
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# The footer magic of the LevelDB-style table TF's tensor bundle index uses.
_TABLE_MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)
_FOOTER = 48
_OPTIMIZER_EDGES = frozenset({"optimizer", "_optimizer"})
_COUNTERS = frozenset({"global_step", "beta1_power", "beta2_power", "save_counter"})
_TF1_ROLES = {
    "weights": "kernel", "biases": "bias",
    "depthwise_weights": "depthwise_kernel", "pointwise_weights": "pointwise_kernel",
}
# Keras keeps an RNN's weights in a cell sub-layer; the layer is the RNN.
_CELL = re.compile(r"^(lstm|gru|simple_rnn)_cell(_\d+)?$")
# A TF1 cell's scope: ``rnn/lstm_cell/kernel``, ``rnn/basic_lstm_cell/kernel``, ``multi_rnn_cell/cell_0/...``.
_TF1_CELL = re.compile(r"(^|/)(\w*_cell(_\d+)?|cell_\d+)/")


@dataclass
class CheckpointVariable:
    """One tensor of a checkpoint and the name surgery gives it."""

    key: str                 # the checkpoint key
    layer: str               # readable layer name (``conv1``)
    var: str                 # Keras variable name in that layer (``kernel``)
    shape: tuple[int, ...]
    dtype: str
    weight: bool = True      # False for optimizer state and counters


def prefix_of(path: str | os.PathLike) -> str:
    """The checkpoint prefix of a path given as ``prefix`` or ``prefix.index``."""
    path = os.fspath(path)
    return path[: -len(INDEX)] if path.endswith(INDEX) else path


def read_prefix(prefix: str, *, shown: str, format: str, include_optimizer: bool = False) -> LayerGraph:
    """Read the checkpoint at ``prefix``; ``shown`` names it in errors and ``graph.path``."""
    reader = open_reader(prefix, shown)
    entries, notes, left_out = scan(reader, shown)
    layers = [_layer(name, group, reader, prefix) for name, group in _by_layer(entries, weights=True).items()]
    extra = [e for e in entries if not e.weight]
    if include_optimizer:
        layers += [_raw_layer(name, group, reader, prefix) for name, group in _by_layer(extra, weights=False).items()]
    elif extra:
        notes.append(f"left out {len(extra)} optimizer/counter variables (include_optimizer=True keeps them)")
        left_out.update({e.key: "optimizer state or counter (include_optimizer=True keeps it)" for e in extra})
    graph = LayerGraph(layers, path=shown, format=format, meta={"tf_prefix": prefix})
    graph.notes.extend(notes)
    graph.left_out.update(left_out)
    return graph


def open_reader(prefix: str, shown: str) -> Any:
    """A ``CheckpointReader`` for ``prefix``, after checking its files exist and look whole."""
    _check_files(prefix, shown)
    tf = import_tf()
    check_index(prefix, shown)   # TensorFlow aborts the process on some damaged entries
    try:
        return tf.train.load_checkpoint(prefix)
    except Exception as e:  # TF raises OpError, ValueError, IndexError... for bad files
        raise fail(shown, f"not a readable TensorFlow checkpoint ({first_line(e)})") from None


def _check_files(prefix: str, shown: str) -> None:
    index = prefix + INDEX
    if not os.path.isfile(index):
        raise fail(shown, f"no checkpoint index {index}")
    with open(index, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(size - 8, 0))
        tail = f.read(8)
    if size < _FOOTER or tail != _TABLE_MAGIC:
        raise fail(index, f"truncated or not a TensorFlow checkpoint index ({size} bytes, no table footer)")
    shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    if not shards:
        raise fail(f"{prefix}.data-00000-of-00001", f"missing: the data file of checkpoint {index}")
    total = int(shards[0].rsplit("-of-", 1)[1])
    for i in range(total):
        shard = f"{prefix}.data-{i:05d}-of-{total:05d}"
        if not os.path.isfile(shard):
            raise fail(shard, f"missing: data shard {i + 1} of {total} of checkpoint {index}")


def scan(reader: Any, shown: str) -> tuple[list[CheckpointVariable], list[str], dict[str, str]]:
    """Every numeric tensor of a checkpoint as an CheckpointVariable, in model order where known; notes; what is left out."""
    shapes = reader.get_variable_to_shape_map()
    types = reader.get_variable_to_dtype_map()
    numeric = [k for k in shapes if types[k].name in dtypes.BY_NAME]
    notes = []
    skipped = [k for k in shapes if k not in numeric]
    left_out = {k: "the object graph (names, not weights)" if k == OBJECT_GRAPH else
                f"not numeric ({types[k].name})" for k in skipped}
    skipped = [k for k in skipped if k != OBJECT_GRAPH]
    if skipped:
        notes.append(f"left out {len(skipped)} non-numeric tensors ({', '.join(sorted(skipped)[:3])}...)")
    if OBJECT_GRAPH in shapes:
        names, more = _tf2_names(reader, numeric, shown)
        notes += more
        left_out.update({k: "the same variable tracked a second time" for k in numeric if k not in names})
    else:
        names = _tf1_names(numeric)
    entries = []
    for key, (name, weight) in names.items():
        layer, var = _split(name, tf1=OBJECT_GRAPH not in shapes)
        entries.append(CheckpointVariable(key, layer, var, tuple(shapes[key]), types[key].name, weight))
    return entries, notes, left_out


def _tf1_names(keys: list[str]) -> dict[str, tuple[str, bool]]:
    """TF1: the key is the variable name; a slot is named ``<variable>/<slot>``."""
    present = set(keys)
    out = {}
    for key in sorted(keys, key=natural_key):
        parent = key.rpartition("/")[0]
        state = (
            key in _COUNTERS or key.endswith("_power") or parent in present
            or key.startswith("optimizer/") or ".OPTIMIZER_SLOT" in key
        )
        out[key] = (key, not state)
    return out


def _tf2_names(reader: Any, keys: list[str], shown: str) -> tuple[dict[str, tuple[str, bool]], list[str]]:
    """TF2: name each model variable from the object graph; the rest keep their key path."""
    graph = _object_graph(reader, shown)
    paths = _model_paths(graph)
    node_of, full_name = {}, {}
    for node_id, node in enumerate(graph.nodes):
        for attr in node.attributes:
            node_of[attr.checkpoint_key] = node_id
            full_name[node_id] = attr.full_name
    order = {node_id: i for i, node_id in enumerate(paths)}
    model = sorted((k for k in keys if node_of.get(k) in paths), key=lambda k: order[node_of[k]])
    names, notes = _readable(model, node_of, full_name, paths, reader.get_variable_to_shape_map())
    out = {k: (names[k], True) for k in model if k in names}
    for key in keys:
        if key not in out and key not in model:  # model keys without a name are duplicates: dropped
            out[key] = (key.removesuffix(VALUE_SUFFIX), False)
    return out, notes


def _object_graph(reader: Any, shown: str) -> Any:
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH))
    except Exception as e:
        if "less bytes" in str(e):  # TF's words for a data file cut short
            raise fail(shown, "its data file is shorter than the index says (truncated?): the object graph "
                              f"{OBJECT_GRAPH} runs past its end") from None
        raise fail(shown, f"{OBJECT_GRAPH} is not a valid object graph ({first_line(e)})") from None
    return graph


def _model_paths(graph: Any) -> dict[int, list[str]]:
    """Breadth-first object paths from the root, not entering optimizers or counters.

    A model variable is also reachable through the optimizer (Keras 3 keeps
    ``optimizer/_trainable_variables``); what matters is that it can be
    reached without it. Slot variables are reachable only through the optimizer.
    """
    paths: dict[int, list[str]] = {0: []}
    queue = [0]
    while queue:
        node_id = queue.pop(0)
        for child in graph.nodes[node_id].children:
            if child.local_name in _OPTIMIZER_EDGES or child.local_name == "save_counter":
                continue
            if child.node_id not in paths:
                paths[child.node_id] = paths[node_id] + [child.local_name]
                queue.append(child.node_id)
    return paths


def _readable(
    keys: list[str], node_of: dict[str, int], full_name: dict[int, str], paths: dict[int, list[str]],
    shapes: dict[str, list[int]],
) -> tuple[dict[str, str], list[str]]:
    """Variable names (``conv1/kernel``) for model keys: their own names if unambiguous, else object paths."""
    notes: list[str] = []
    seen: dict[str, str] = {}
    ambiguous = False
    for key in keys:
        name = full_name.get(node_of[key], "")
        # One Keras path tracked twice (a Keras export) has one shape; anything else is a clash.
        if not name or (name in seen and ("/" not in name or shapes[key] != shapes[seen[name]])):
            ambiguous = True
            break
        if name in seen:
            continue  # a Keras export tracks each variable twice under one path name
        seen[name] = key
    if ambiguous:
        notes.append("variable names are missing or clash: layers are named by object path")
        return {k: "/".join(_leaf(p) for p in paths[node_of[k]]) for k in keys}, notes
    dropped = len(keys) - len(seen)
    if dropped:
        notes.append(f"left out {dropped} variables tracked twice under the same name")
    names = {key: name for name, key in seen.items()}
    root = _model_name(names, node_of, paths)
    if root:
        notes.append(f"stripped the model name {root!r} from layer names")
        names = {k: n[len(root) + 1:] for k, n in names.items()}
    return names, notes


def _leaf(local_name: str) -> str:
    # Keras 3 tracks Dense/EinsumDense kernels as ``_kernel`` (its LoRA wrapper).
    return "kernel" if local_name == "_kernel" else local_name


def _model_name(names: dict[str, str], node_of: dict[str, int], paths: dict[int, list[str]]) -> str:
    """The first name component shared by every variable when it is a model's name, not an object path."""
    firsts = {n.split("/", 1)[0] for n in names.values()}
    if len(firsts) != 1 or any(n.count("/") < 2 for n in names.values()):
        return ""
    first = firsts.pop()
    if any(first in paths[node_of[k]] for k in names):
        return ""
    return first


def _split(name: str, *, tf1: bool) -> tuple[str, str]:
    """``block/conv1/kernel`` -> (``block/conv1``, ``kernel``).

    RNN cells fold into their layer (``lstm/lstm_cell/kernel`` -> ``lstm``,
    ``kernel``) and attention parts stay in the variable name
    (``mha/query/kernel`` -> ``mha``, ``query/kernel``), as keras_layers expects.
    """
    parts = name.split("/")
    if len(parts) == 1:
        return name, name
    cut = -2 if len(parts) >= 3 and parts[-2] in keras_layers.MHA_PARTS else -1
    layer, var = parts[:cut], "/".join(parts[cut:])
    if tf1:
        var = _TF1_ROLES.get(var, var)
    if len(layer) >= 2 and _CELL.match(layer[-1]):
        layer = layer[:-1]
    return "/".join(layer), var


def _by_layer(entries: list[CheckpointVariable], *, weights: bool) -> dict[str, list[CheckpointVariable]]:
    groups: dict[str, list[CheckpointVariable]] = {}
    for entry in entries:
        if entry.weight == weights:
            groups.setdefault(entry.layer, []).append(entry)
    return groups


def _native(entry: CheckpointVariable, reader: Any, prefix: str) -> Param:
    """A lazy param in the file's own layout; reading errors name the data file and key."""

    def load() -> np.ndarray:
        try:
            return np.asarray(reader.get_tensor(entry.key))
        except Exception as e:
            raise fail(f"{prefix}.data-*", f"tensor {entry.key}: {first_line(e)} (truncated data file?)") from None

    return Param(entry.shape, entry.dtype, load, key=entry.key)


def _raw_layer(name: str, group: list[CheckpointVariable], reader: Any, prefix: str) -> Layer:
    return Layer(name, "unknown", {e.var: _native(e, reader, prefix) for e in group})


def _layer(name: str, group: list[CheckpointVariable], reader: Any, prefix: str) -> Layer:
    variables = {e.var: _native(e, reader, prefix) for e in group}
    if "recurrent_kernel" not in variables and any(_TF1_CELL.search(e.key) for e in group):
        # A TF1 RNN cell (tf.nn.rnn_cell.LSTMCell, GRUCell...) keeps one kernel over [input; state] in its
        # own gate order: no Keras or PyTorch role describes it, so it passes through, marked unknown.
        layer = keras_layers.to_layer(name, "TF1RNNCell", variables)
        layer.attrs["layout_note"] = "a TF1 RNN cell: one kernel over [input; state], TF1 gate order"
        return layer
    return keras_layers.to_layer(name, _class_hint(name, variables), variables)


def _class_hint(name: str, variables: dict[str, Param]) -> str | None:
    """A checkpoint has no layer classes; Keras' default names tell the two whose kernels look like Conv's."""
    kernel = variables.get("kernel")
    if kernel is None or set(variables) - {"kernel", "bias"} or len(kernel.shape) not in (3, 4, 5):
        return None
    last = name.rpartition("/")[2].lower()
    rank = len(kernel.shape) - 2
    if "depthwise" in last:
        return f"DepthwiseConv{rank}D"
    if "transpose" in last or "deconv" in last:
        return f"Conv{rank}DTranspose"
    return None


def import_tf() -> Any:
    """TensorFlow, imported with its logging silenced: nothing but surgery's own words on the terminal."""
    from ...quiet import quiet_tensorflow

    return quiet_tensorflow()
