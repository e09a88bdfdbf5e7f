"""Keras HDF5 weight files, read and written through h5py alone (no TensorFlow, no Keras).

Three layouts share the ``.h5`` suffix:

- ``keras3``: Keras 3 ``.weights.h5`` (also ``model.weights.h5`` inside a ``.keras``):
  ``layers/<class_snake>[_N]/vars/0..n``, nested ``layers/`` for sub-models,
  ``cell/vars`` for RNNs, ``query_dense/vars`` ... for attention; a subclassed
  model's layers under their attribute names (``tree.py`` walks those). Variables
  are numbered, not named: names come from the class's variable order. Datasets
  no layer takes (a ``.keras``'s optimizer state) are named in ``graph.left_out``.
- ``legacy``: ``model.save("x.h5")``: ``model_weights/<layer>/<weight name>``
  with ``layer_names`` / ``weight_names`` attributes and a ``model_config``.
- ``legacy_weights``: the same tree at the root, from legacy ``save_weights``.

Writing takes a template (the graph's own file, or ``template=``) and replaces
the data of every dataset that a layer of the graph fills.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import numpy as np

from ... import dtypes, sandbox
from . import layers as keras_layers
from . import native as keras_native
from .. import template_of
from . import config as keras_config
from . import tree as keras_tree
from .tree import H5Layer
from ...errors import SurgeryError, fail
from ...graph import Layer, LayerGraph, Param

SUFFIXES = (".h5", ".hdf5")
TEMPLATE = "a Keras .h5"   # written over one of these (its structure kept): formats.template_of
_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff(path: str) -> bool:
    """An HDF5 file (by its signature), or an ``.h5``/``.hdf5`` name."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        if f.read(8) == _MAGIC:
            return True
    return path.lower().endswith(SUFFIXES)


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - depends on the install
        raise SurgeryError("reading Keras .h5 files needs h5py: pip install 'surgery[h5]'") from None
    return h5py


def opener_for(path: str) -> Callable[[], Any]:
    """A callable opening ``path`` read-only as an ``h5py.File``, once its size is checked."""
    def open_checked() -> Any:
        with open(path, "rb") as f:
            head = f.read(4096)
            check_size(head, os.fstat(f.fileno()).st_size, path)
        return _h5py().File(path, "r")
    return open_checked


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_size(head: bytes, size: int, path: str) -> None:
    """Refuse an HDF5 file whose size is not the end of file its superblock records.

    Bytes inserted or appended shift every address after them, and the HDF5 library
    can then spin for ever following a heap that is not there (the fuzzer found one:
    reading ``layer_names`` never returned). A truncated file the library refuses itself.
    """
    eof = _superblock_eof(head)
    if eof is not None and eof > size:
        raise fail(path, f"truncated: the HDF5 file is {size} bytes but its superblock says {eof}")
    if eof is not None and eof < size:
        raise fail(path, f"damaged: the HDF5 file is {size} bytes but its superblock says {eof} (bytes inserted "
                         "or appended)")


def _superblock_eof(head: bytes) -> int | None:
    """The end-of-file address a superblock (version 0 to 3) records, base address added; None if unreadable."""
    for start in (0, 512, 1024, 2048):
        if head[start:start + 8] != _SIGNATURE or len(head) < start + 48:
            continue
        version = head[start + 8]
        if version in (0, 1):
            size = head[start + 13]
            first = start + (24 if version == 0 else 28)
        elif version in (2, 3):
            size = head[start + 9]
            first = start + 12
        else:
            return None
        if size not in (2, 4, 8) or len(head) < first + 3 * size:
            return None
        base, eof = (int.from_bytes(head[first + k * size:first + (k + 1) * size], "little") for k in (0, 2))
        return base + eof
    return None


def read(path: str, *, config: dict | None = None, opener: Callable[[], Any] | None = None,
         **options: Any) -> LayerGraph:
    """Read a Keras HDF5 weight file into a lazy LayerGraph.

    Args:
        path: the file (shown in messages; opened unless ``opener`` is given).
        config: the model's Keras config (``{"class_name": ..., "config": {...}}``), when
            the caller has one (a ``.keras`` archive). A legacy ``.h5`` carries its own.
        opener: opens the HDF5 file (used for the copy inside a ``.keras`` zip).

    Raises:
        FormatError: not HDF5, or not a layout Keras writes.
    """

    opener = opener or opener_for(path)
    sandbox.vetted(path, lambda: _structure(path, config, opener, walk_chunks=True), library="libhdf5",
                   cpu_seconds=sandbox.cpu_budget(os.path.getsize(path)))
    layout, model_config, entries, layers, left_out = _structure(path, config, opener)
    graph = LayerGraph(layers, path=path, format="h5",
                       meta={"h5": {"layout": layout, "entries": {e.name: e for e in entries}}})
    graph.left_out.update(left_out)
    if left_out:
        graph.notes.append(f"{len(left_out)} tensors are not layer variables (optimizer state...): see left_out")
    if model_config:
        keras_config.apply_config(graph, model_config)
    else:
        graph.notes.append("no model config: variable names inferred from each layer's class and count")
    return graph


def _structure(path: str, config: dict | None, opener: Callable[[], Any], *, walk_chunks: bool = False) -> tuple:
    """Everything ``read`` asks of libhdf5: the layout, the config, the layers and what is left out.

    ``walk_chunks`` also reads where each chunk of a chunked dataset is, as reading its data will:
    the sandboxed pass does it, so that a damaged chunk index fails there.
    """
    try:
        with opener() as f:
            layout = _layout(f, path)
            model_config = config or _model_config(f, path)
            specs = keras_config.layer_specs(model_config) if model_config else []
            entries = _keras3_entries(f, specs) if layout == "keras3" else _legacy_entries(f, layout, specs)
            layers = [_to_layer(f, e, path, opener) for e in entries]
            left_out: dict[str, str] = {}
            _left_out(f, entries, left_out)
            if walk_chunks:
                for entry in entries:
                    for ds_path in entry.datasets.values():
                        _walk_chunks(f[ds_path])
    except SurgeryError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:  # h5py: RuntimeError for damaged structure
        raise fail(path, f"not a readable Keras HDF5 file ({type(e).__name__}: {e})") from None
    return layout, model_config, entries, layers, left_out


def _walk_chunks(ds: Any) -> None:
    if ds.chunks:
        for i in range(ds.id.get_num_chunks()):
            ds.id.get_chunk_info(i)


def _layout(f: Any, path: str) -> str:
    if "model_weights" in f:
        return "legacy"
    if "layer_names" in f.attrs:
        return "legacy_weights"
    if "layers" in f or "vars" in f:
        return "keras3"
    raise fail(path, "HDF5 file without Keras weights (no layers/, vars/ or model_weights/ group)")


def _model_config(f: Any, path: str) -> dict | None:
    raw = f.attrs.get("model_config")
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise fail(path, f"model_config attribute is not JSON ({e})") from None


def _attr_list(group: Any, name: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in group.attrs.get(name, [])]


def _keras3_entries(f: Any, specs: list) -> list[H5Layer]:
    """Layers of a Keras 3 file: by the config's paths where it names a class surgery knows,
    then by walking what the config does not describe (custom blocks, subclassed models)."""
    entries: list[H5Layer] = []
    described = set()
    for spec in specs:
        if spec.path not in f:
            continue
        if spec.class_name in keras_layers.VARIABLE_ORDER or spec.class_name in _GROUPED:
            described.add(spec.path)
            entries.append(_spec_entry(f, spec))
        else:                    # a custom layer: its variables and the layers it owns, by the tree
            described.add(spec.path)
            entries += keras_tree.walk_layer(f, spec.path, spec.name)
    entries += keras_tree.walk(f, skip=described.__contains__)
    return [e for e in entries if e.datasets]


_GROUPED = ("MultiHeadAttention", "Bidirectional")


def _spec_entry(f: Any, spec: Any) -> H5Layer:
    if spec.class_name == "MultiHeadAttention":
        return keras_tree.attention_entry(f, spec.path, spec.name, spec.config)
    if spec.class_name == "Bidirectional":
        return keras_tree.bidirectional_entry(f, spec.path, spec.name, spec.config)
    group = f[spec.path]
    count = len(group["cell/vars"] if "cell/vars" in group else group.get("vars", {}))
    order = _variable_order(spec.class_name, spec.config, count)
    return keras_tree.own_entry(f, spec.path, spec.name, spec.class_name, spec.config, order)


def _variable_order(class_name: str | None, config: dict | None, count: int) -> tuple[str, ...]:
    order = keras_layers.VARIABLE_ORDER.get(class_name or "", ())
    cfg = config or {}
    if class_name in ("BatchNormalization", "LayerNormalization") and count < len(order):
        if {"scale", "center"} & set(cfg):
            drop = {v for v, key in (("gamma", "scale"), ("beta", "center")) if cfg.get(key, True) is False}
        else:
            # Which of gamma/beta is absent is only in the config; without one, assume
            # scale=False (the usual choice before a ReLU). attrs["assumed"] says so.
            drop = {"gamma"} if len(order) - count == 1 else {"gamma", "beta"}
        return tuple(v for v in order if v not in drop)
    return order


def _left_out(f: Any, entries: list[H5Layer], left_out: dict[str, str]) -> None:
    """Name every dataset of a Keras 3 file that no layer took, with the reason."""
    taken = {ds for e in entries for ds in e.datasets.values()}
    found: list[str] = []
    f.visititems(lambda name, obj: found.append(name) if hasattr(obj, "shape") else None)
    for name in found:
        if name not in taken:
            top = name.split("/", 1)[0]
            left_out[name] = keras_tree.NOT_LAYERS.get(top, "a variable of no layer surgery recognises")


def _legacy_entries(f: Any, layout: str, specs: list) -> list[H5Layer]:
    """Layers of a legacy file: ``layer_names`` in order, each with its ``weight_names``."""
    root = f["model_weights"] if layout == "legacy" else f
    by_name = {s.name: s for s in specs}
    entries: dict[str, H5Layer] = {}
    for top in _attr_list(root, "layer_names"):
        group = root[top]
        weight_names = _attr_list(group, "weight_names")
        nested = {s.name for s in specs if s.parents and s.parents[0] == top}
        owners = {_legacy_owner(w, top, nested) for w in weight_names}
        for weight in weight_names:
            owner = _legacy_owner(weight, top, nested) if len(owners) > 1 or nested else top
            spec = by_name.get(owner)
            entry = entries.setdefault(owner, H5Layer(owner, spec.class_name if spec else None,
                                                    config=spec.config if spec else None))
            entry.datasets[keras_layers.var_name(weight, owner)] = f"{root.name.strip('/')}/{top}/{weight}".lstrip("/")
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(entries.values(), key=lambda e: order.get(e.name, len(order)))


def _legacy_owner(weight: str, top: str, nested: set[str]) -> str:
    """The layer a legacy weight name belongs to: ``c1/kernel:0`` in group ``m`` -> ``c1``."""
    parts = weight.split(":")[0].split("/")[:-1]
    parts = [p for p in parts if not p.endswith("_cell") and p not in keras_layers.MHA_PARTS]
    for part in reversed(parts):
        if part in nested:
            return part
    return parts[-1] if parts else top


def _to_layer(f: Any, entry: H5Layer, path: str, opener: Callable[[], Any]) -> Layer:
    variables = {var: _param(_dataset(f, ds, path), ds, path, opener) for var, ds in entry.datasets.items()}
    if entry.class_name in ("DepthwiseConv1D", "DepthwiseConv2D") and "depthwise_kernel" in variables:
        variables["kernel"] = variables.pop("depthwise_kernel")   # tf.keras 2 spelling
    layer = keras_layers.to_layer(entry.name, entry.class_name, variables, entry.config)
    if entry.class_from:
        layer.attrs["kind_from"] = entry.class_from
    return layer


# Deflate, the strongest filter h5py ships, packs at most about 1032 bytes into one.
_MAX_RATIO = 1032


def _dataset(f: Any, ds_path: str, path: str) -> Any:
    """The dataset at ``ds_path``, checked before a byte of it is read.

    It must be a dataset of this file, with its data in this file (HDF5 lets a
    dataset keep its bytes in another file, which a hostile file would point at
    anything readable), and its declared size must fit in what the file can hold
    (all of it when contiguous; ``_MAX_RATIO`` times it when chunked, which may be
    compressed): a header may declare terabytes at the cost of a few bytes.
    """
    h5py = _h5py()
    link = f.get(ds_path, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise fail(path, f"{ds_path} links to another file ({link.filename}); refused")
    ds = f[ds_path]
    if not isinstance(ds, h5py.Dataset):
        raise fail(path, f"{ds_path} is a {type(ds).__name__.lower()}, where a weight dataset was expected")
    if ds.external or ds.is_virtual:
        raise fail(path, f"dataset {ds_path} keeps its data in other files; refused")
    room = f.id.get_filesize() * (_MAX_RATIO if ds.chunks else 1)  # only chunked data can be compressed
    if ds.nbytes > room:
        raise fail(path, f"dataset {ds_path} declares shape {list(ds.shape)} of {ds.dtype} ({ds.nbytes} bytes), "
                         "more than the file can hold (truncated or lying header?)")
    return ds


def _param(ds: Any, ds_path: str, path: str, opener: Callable[[], Any]) -> Param:
    dtype = _dtype(ds, ds_path, path)

    def load() -> np.ndarray:
        try:
            with opener() as f:
                arr = f[ds_path][()]
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise fail(path, f"cannot read dataset {ds_path} ({type(e).__name__}: {e})") from None
        return np.asarray(arr).view(dtypes.get(dtype).numpy) if dtype == "bfloat16" else np.asarray(arr)

    return Param(ds.shape, dtype, load, key=ds_path)


def _dtype(ds: Any, ds_path: str, path: str) -> str:
    if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        return "bfloat16"
    try:
        return dtypes.from_numpy(ds.dtype).name
    except (SurgeryError, TypeError):
        raise fail(path, f"dataset {ds_path} has dtype {ds.dtype}, which surgery does not know") from None


def write(graph: LayerGraph, path: str, *, template: str | None = None, **options: Any) -> None:
    """Write ``graph``'s tensors into a copy of a Keras HDF5 file with the same structure.

    Args:
        graph: canonical layers; each one whose name is a layer of the template is written.
        path: the output file.
        template: the HDF5 file whose structure to copy; defaults to ``graph.path``
            when the graph was read from an HDF5 file.

    Raises:
        SurgeryError: no template, or a tensor whose shape the template does not take.
    """
    template = template_of(graph, "h5", template, path, options, TEMPLATE)
    target = graph if graph.format == "h5" and graph.path == template else read(template)
    shutil.copyfile(template, path)
    with _h5py().File(path, "r+") as f:
        fill(f, graph, target, path)


def fill(f: Any, graph: LayerGraph, target: LayerGraph, path: str) -> int:
    """Overwrite, in an open writable HDF5 file, the datasets of every layer of ``graph`` found in ``target``.

    Returns the number of datasets written.
    """
    entries: dict[str, H5Layer] = target.meta["h5"]["entries"]
    written = 0
    for layer in graph:
        entry = entries.get(layer.name)
        if entry is None:
            continue
        native = keras_native.to_native(layer, entry.class_name, {**(entry.config or {}), **_shape_hints(entry, f)})
        if "depthwise_kernel" in entry.datasets and "kernel" in native and "depthwise_kernel" not in native:
            native["depthwise_kernel"] = native.pop("kernel")
        for var, ds_path in entry.datasets.items():
            if var in native:
                _store(f, ds_path, native[var], path, layer.name)
                written += 1
    return written


def _shape_hints(entry: H5Layer, f: Any) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    if "alpha" in entry.datasets:
        hints["alpha_shape"] = list(f[entry.datasets["alpha"]].shape)
    return hints


def _store(f: Any, ds_path: str, param: Param, path: str, layer: str) -> None:
    ds = f[ds_path]
    arr = param.read()
    if tuple(arr.shape) != tuple(ds.shape):
        if arr.size != int(np.prod(ds.shape)) or [d for d in arr.shape if d != 1] != [d for d in ds.shape if d != 1]:
            raise fail(path, f"layer {layer!r}: {ds_path} takes shape {list(ds.shape)}, got {list(arr.shape)}",
                       SurgeryError)
        arr = arr.reshape(ds.shape)
    if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        ds[...] = np.asarray(arr, dtypes.get("bfloat16").numpy).view(np.uint16)
    else:
        ds[...] = np.asarray(arr).astype(ds.dtype, copy=False)
