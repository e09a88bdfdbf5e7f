"""HDF5 mutants: Keras attributes (layer and weight names, the model config), datasets replaced by ones of
another shape or type, objects removed or moved; then the bytes (superblock, object headers, data)."""

from __future__ import annotations

import io
import json

import numpy as np
from hypothesis import strategies as st

from .common import byte_edit, fixture_bytes, hostile_ints, hostile_text, json_values
from .harness import Mutant

FIXTURES = ("keras/vgg.weights.h5", "keras/vgg.h5", "keras/vgg_legacy_weights.h5")
_DTYPES = ("float32", "float16", "float64", "int8", "uint64", "bool", "complex64", "S4", "V3", "<f4", ">f8")
_SHAPES = ((), (0,), (3,), (1, 1, 1, 1, 1, 1), (2**20, 2**20), (1, 2**40))  # the last two: chunked, no data


def _objects(f) -> list[str]:
    names: list[str] = ["/"]
    f.visit(names.append)
    return names


@st.composite
def _json_edit(draw, config: object) -> tuple[object, str]:
    """One value somewhere inside a JSON tree replaced: a layer's class, name, shape, flag..."""
    path: list = []
    node = config
    while isinstance(node, (dict, list)) and node and draw(st.integers(0, 4)):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    new = draw(json_values(3))
    if not path:
        return new, f"model_config -> {new!r}"
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return config, f"model_config{path} -> {new!r}"[:200]


@st.composite
def _attribute(draw, f, name: str) -> str:
    obj = f[name]
    key = draw(st.sampled_from(sorted({*obj.attrs.keys(), "layer_names", "weight_names", "dtype"})))
    old = obj.attrs.get(key)
    if key == "model_config" and old is not None:
        value, what = draw(_json_edit(json.loads(old)))
        obj.attrs[key] = json.dumps(value)
        return what
    if key in ("layer_names", "weight_names") and old is not None and len(old) and draw(st.booleans()):
        names = [bytes(n) for n in old]
        i = draw(st.integers(0, len(names) - 1))
        names[i] = draw(st.sampled_from([b"", b"missing", names[0], names[i] + b"/x", b"../" + names[i]]))
        obj.attrs[key] = np.array(names)
        return f"{name} attr {key}[{i}] -> {names[i]!r}"
    value = draw(st.one_of(hostile_text, hostile_ints.filter(lambda n: -(2**63) <= n < 2**63),
                           st.lists(hostile_text.map(lambda t: t.encode("utf-8", "replace")), max_size=3),
                           st.sampled_from([np.zeros((2, 2)), np.array([], "S1"), b"\xff\xfe"])))
    obj.attrs[key] = np.array(value) if isinstance(value, list) and value else value
    return f"{name} attr {key} -> {value!r}"[:200]


@st.composite
def _dataset(draw, f, name: str) -> str:
    """A dataset replaced by one of another shape and type (kept under its name)."""
    shape = draw(st.one_of(st.sampled_from(_SHAPES), st.lists(st.integers(0, 5), max_size=4).map(tuple)))
    dtype = draw(st.sampled_from(_DTYPES))
    attrs = dict(f[name].attrs)
    del f[name]
    if shape and max(shape) > 2**16:
        ds = f.create_dataset(name, shape=shape, dtype=dtype, chunks=tuple(1 for _ in shape))
    else:
        ds = f.create_dataset(name, data=np.zeros(shape, dtype=dtype))
    ds.attrs.update(attrs)
    return f"dataset {name} -> {dtype}{list(shape)}"


@st.composite
def h5_edit(draw, f) -> str:
    names = _objects(f)
    name = draw(st.sampled_from(names))
    datasets = [n for n in names if hasattr(f[n], "shape")]
    kind = draw(st.sampled_from(["attribute", "attribute", "dataset", "dataset", "delete", "move", "link"]))
    if kind == "attribute":
        return draw(_attribute(f, name))
    if kind == "dataset" and datasets:
        return draw(_dataset(f, draw(st.sampled_from(datasets))))
    if name == "/":
        return "no edit"
    if kind == "delete":
        del f[name]
        return f"deleted {name}"
    if kind == "move":
        target = draw(st.sampled_from(names)).rstrip("/") + "/moved"
        if target in f or target.startswith(name + "/"):
            return "no edit"
        f.move(name, target)
        return f"moved {name} to {target}"
    import h5py

    del f[name]
    f[name] = draw(st.sampled_from([h5py.SoftLink("/nowhere"), h5py.SoftLink(name),
                                    h5py.ExternalLink("other.h5", "/x")]))
    return f"{name} -> a dangling, looping or external link"


@st.composite
def _attempt(draw, f) -> str:
    """An edit, or a note that h5py would not make it (a value it cannot store): the file is still fuzzed."""
    try:
        return draw(h5_edit(f))
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as e:
        return f"(an edit h5py refused: {type(e).__name__})"


@st.composite
def h5_mutants(draw) -> Mutant:
    """A Keras HDF5 file with 0-3 structural edits, then maybe its bytes edited.

    Damaged bytes reach libhdf5's own parser, which crashes, loops or allocates gigabytes on some:
    surgery reads the structure in a limited child process first (surgery/sandbox.py).
    """
    import h5py

    fixture = draw(st.sampled_from(FIXTURES))
    data = fixture_bytes(fixture)
    edits: list[str] = []
    count = draw(st.integers(0, 3))
    if count:
        buf = io.BytesIO(data)
        with h5py.File(buf, "r+") as f:
            edits = [draw(_attempt(f)) for _ in range(count)]
        data = buf.getvalue()
    if not count or draw(st.integers(0, 3)) == 0:
        data, edit = draw(byte_edit(data, focus=draw(st.sampled_from([None, 2048]))))
        edits.append(edit)
    return Mutant(fixture, tuple(edits), {"fuzzed.h5": data}, "fuzzed.h5")
