"""Walking a Keras 3 ``.weights.h5`` tree when no config lists its layers.

A Functional or Sequential model keeps its layers under ``layers/<class_snake>[_N]``;
a subclassed model (and any layer that owns layers: a block, an encoder layer
holding an attention layer) keeps them under its *attribute* names
(``conv1/vars/0``, ``head_1/vars/0``, ``enc/att/query_dense/vars/0``). The layer's
own Keras name is only the ``name`` attribute of its ``vars`` group (``head-1``).
This module finds every layer in such a tree, names it as Keras does (a nested
layer by the chain of names below its model: ``blk/block_conv``), and names its
numbered variables from its class.

The class is read from a Keras auto name (``dense_1`` is a ``Dense``) where there is
one; otherwise it is told from the variables' count and shapes where only one
class fits (``attrs["kind_from"]`` says so); otherwise the layer is ``unknown``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ...graph import natural_key
from ...kinds import KERAS_CLASS_KINDS
from .config import snake
from .layers import VARIABLE_ORDER

MHA_GROUPS = {"query_dense": "query", "key_dense": "key", "value_dense": "value", "output_dense": "attention_output"}
BIDIRECTIONAL_GROUPS = {"forward_layer": "forward", "backward_layer": "backward"}
# Groups that hold no layer of the model (the optimizer beside the layers in a .keras or a legacy .h5).
NOT_LAYERS = {"optimizer": "optimizer state", "optimizer_weights": "optimizer state", "metrics": "metric state",
              "compile_metrics": "metric state"}
_SNAKE_CLASS: dict[str, str] = {}


@dataclass
class H5Layer:
    """One Keras layer found in an HDF5 file: where each of its variables lives."""

    name: str
    class_name: str | None
    datasets: dict[str, str] = field(default_factory=dict)   # Keras variable name -> dataset path
    config: dict | None = None
    class_from: str = ""     # how the class was told when no config says it


def class_of_snake(snake_name: str) -> str | None:
    """``conv2d_1`` -> ``Conv2D``: the class a Keras auto name (or a ``layers/`` group) is made from."""
    if not _SNAKE_CLASS:
        _SNAKE_CLASS.update({snake(c): c for c in (*KERAS_CLASS_KINDS, "Bidirectional", "EinsumDense")})
    return _SNAKE_CLASS.get(snake_name) or _SNAKE_CLASS.get(re.sub(r"_\d+$", "", snake_name))


def group_name(group: Any, fallback: str) -> str:
    """The Keras name a layer group records on its ``vars`` (Keras 3.10+), else ``fallback``."""
    vars_group = group.get("vars") if hasattr(group, "get") else None
    name = vars_group.attrs.get("name") if vars_group is not None else None
    return (name.decode() if isinstance(name, bytes) else name) or fallback


def numbered(vars_group: Any, order: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(variable name, dataset key)`` for ``vars/0..n``, named by ``order`` as far as it goes."""
    keys = sorted(vars_group, key=lambda k: int(k) if k.isdigit() else 1 << 30)
    return [(order[i] if i < len(order) else k, k) for i, k in enumerate(keys)]


def walk(f: Any, skip: Callable[[str], bool] = lambda path: False) -> list[H5Layer]:
    """Every layer of the file's tree with variables, models flattened; ``skip(path)`` leaves a group out."""
    out: list[H5Layer] = []
    _children(f, "", "", out, skip)
    return out


def walk_layer(f: Any, path: str, name: str) -> list[H5Layer]:
    """The layer at ``path`` (named ``name``) and every layer it owns."""
    out: list[H5Layer] = []
    _layer(f, path, "", False, out, lambda p: False, name=name)
    return out


def _children(f: Any, path: str, prefix: str, out: list[H5Layer], skip: Callable[[str], bool]) -> None:
    group = f[path] if path else f
    for child in sorted(group, key=natural_key):
        child_path = f"{path}/{child}".lstrip("/")
        if child == "vars" or (not path and child in NOT_LAYERS) or not hasattr(group[child], "keys"):
            continue
        if child == "layers":       # a model's tracked layers: flattened, named by their own names
            for sub in sorted(group[child], key=natural_key):
                _layer(f, f"{child_path}/{sub}", prefix, True, out, skip)
        else:
            _layer(f, child_path, prefix, False, out, skip)


def _layer(f: Any, path: str, prefix: str, auto: bool, out: list[H5Layer], skip: Callable[[str], bool],
           name: str | None = None) -> None:
    if skip(path):
        return
    group = f[path]
    base = path.rsplit("/", 1)[-1]
    name = name or group_name(group, base)
    if "layers" in group:           # a model inside the model: its layers keep their own names
        _children(f, path, prefix, out, skip)
        return
    full = f"{prefix}{name}"
    cls = class_of_snake(base) if auto else None
    cls = cls or class_of_snake(name)
    if cls == "MultiHeadAttention" or {"query_dense", "key_dense"} <= set(group):
        out.append(attention_entry(f, path, full, None))
        return
    if {"forward_layer", "backward_layer"} <= set(group):
        out.append(bidirectional_entry(f, path, full, None))
        return
    entry = own_entry(f, path, full, cls)
    if entry.datasets:
        out.append(entry)
    _children(f, path, f"{full}/", out, lambda p: skip(p) or p.endswith("/cell"))


def attention_entry(f: Any, path: str, name: str, config: dict | None) -> H5Layer:
    """A MultiHeadAttention: its four EinsumDense sub-layers as ``query/kernel``...``attention_output/bias``."""
    entry = H5Layer(name, "MultiHeadAttention", config=config)
    for sub, part in MHA_GROUPS.items():
        if f"{sub}/vars" in f[path]:
            for var, ds in numbered(f[f"{path}/{sub}/vars"], ("kernel", "bias")):
                entry.datasets[f"{part}/{var}"] = f"{path}/{sub}/vars/{ds}"
    return entry


def bidirectional_entry(f: Any, path: str, name: str, config: dict | None) -> H5Layer:
    """A Bidirectional RNN: each direction's cell variables as ``forward/kernel``...``backward/bias``."""
    entry = H5Layer(name, "Bidirectional", config=config)
    for sub, side in BIDIRECTIONAL_GROUPS.items():
        cell = f"{path}/{sub}/cell/vars"
        if cell in f:
            for var, ds in numbered(f[cell], ("kernel", "recurrent_kernel", "bias")):
                entry.datasets[f"{side}/{var}"] = f"{cell}/{ds}"
    return entry


def own_entry(f: Any, path: str, name: str, cls: str | None, config: dict | None = None,
              order: tuple[str, ...] | None = None) -> H5Layer:
    """A layer's own variables (an RNN's are its cell's), named from its class or, lacking one, its shapes."""
    group = f[path]
    vars_path = f"{path}/cell/vars" if "cell/vars" in group else f"{path}/vars"
    if vars_path not in f:
        return H5Layer(name, cls, config=config)
    # A group where a variable belongs has no shape; the reader refuses it when it takes the variable.
    shapes = [getattr(f[f"{vars_path}/{k}"], "shape", ()) for _, k in numbered(f[vars_path], ())]
    class_from = ""
    if cls is None:
        cls = class_from_shapes(shapes, name, rnn="cell/vars" in group)
        class_from = "variable shapes and the layer name (the file records no class)" if cls else ""
    entry = H5Layer(name, cls, config=config, class_from=class_from)
    for var, ds in numbered(f[vars_path], order if order is not None else VARIABLE_ORDER.get(cls or "", ())):
        entry.datasets[var] = f"{vars_path}/{ds}"
    return entry


def class_from_shapes(shapes: list[tuple], name: str, *, rnn: bool = False) -> str | None:
    """The one Keras class numbered variables of these shapes can belong to, or None when several fit.

    A kernel and a bias whose size is the kernel's last axis is a Dense/Conv; a
    transposed conv is told only by a name holding ``transpose``/``deconv`` (as for TF
    checkpoints). One rank-2 tensor (Dense without bias, or Embedding) is ambiguous.
    """
    ranks = [len(s) for s in shapes]
    lowered = name.lower()
    if rnn and len(shapes) == 3 and ranks[:2] == [2, 2]:
        gates = shapes[0][1] // max(shapes[1][0], 1)
        return {4: "LSTM", 3: "GRU"}.get(gates)
    if len(shapes) == 4 and ranks == [1, 1, 1, 1] and len(set(shapes)) == 1:
        return "BatchNormalization"
    if len(shapes) == 2 and ranks == [1, 1] and shapes[0] == shapes[1]:
        return "LayerNormalization"
    if len(shapes) == 2 and ranks[1] == 1 and 2 <= ranks[0] <= 5:
        kernel, bias = shapes
        transposed = "transpose" in lowered or "deconv" in lowered
        if ranks[0] == 2:
            return "Dense" if bias[0] == kernel[1] else None
        if transposed and bias[0] == kernel[-2]:
            return f"Conv{ranks[0] - 2}DTranspose"
        if not transposed and bias[0] == kernel[-1] and "depthwise" not in lowered:
            return f"Conv{ranks[0] - 2}D"
    return None
