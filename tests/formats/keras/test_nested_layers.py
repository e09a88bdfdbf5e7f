"""Oracle: every variable of the live Keras model is in surgery's graph of its file, with equal values.

The fixtures (fixtures/keras_nested_fixtures.py) hold layers Keras 3 stores away from
``layers/<class>``: a subclassed model's attribute layers, blocks owning layers, an
encoder layer owning a MultiHeadAttention, a Sequential inside a Functional model,
a Bidirectional LSTM and an EinsumDense. Keras itself loads each file; each of its
variables is converted to canonical layout on its own (by its true class) and
compared with the tensor surgery read from the file, key by key.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import FIXTURES

keras = pytest.importorskip("keras")

from fixtures import keras_nested_fixtures as nested  # noqa: E402  (needs keras and the repo root on the path)
from surgery.formats.keras import h5, layers as keras_layers  # noqa: E402
from surgery.formats.keras import archive  # noqa: E402
from surgery.graph import Param  # noqa: E402

FOLDER = FIXTURES / "keras_nested"


def _live(name: str, suffix: str):
    keras.backend.clear_session()   # Keras' auto names (dense, dense_1) count per session, as when it was saved
    if suffix == ".keras":
        nested._classes()   # registers the custom classes; load_model stays in safe mode
        return keras.saving.load_model(FOLDER / f"{name}.keras")
    model = getattr(nested, name)(seed=99)   # other weights than the file's: load_weights must replace them
    model.load_weights(FOLDER / f"{name}.weights.h5")
    return model


def _all_layers(model):
    # Keras has no public walk over nested layers; _flatten_layers is what its own saving uses.
    return {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=True)}


def _units(model, graph) -> dict[str, tuple]:
    """Graph layer name -> (live layer, its variables by Keras name), found by the live layers' names."""
    by_last = {name.rsplit("/", 1)[-1]: name for name in graph.layers}
    units = {}
    for live in _all_layers(model).values():
        if live.name not in by_last or not live.weights:
            continue
        if isinstance(live, keras.layers.Bidirectional):
            variables = {f"{side}/{v.path.rsplit('/', 1)[-1]}": v for side, inner in
                         (("forward", live.forward_layer), ("backward", live.backward_layer)) for v in inner.weights}
        else:
            variables = {keras_layers.var_name(v.path): v for v in live.weights}
        units[by_last[live.name]] = (live, variables)
    return units


@pytest.mark.parametrize("name", ["subclassed", "functional"])
@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_every_live_variable_is_read_with_its_value(name, suffix):
    path = FOLDER / f"{name}{suffix}"
    graph = archive.read(str(path)) if suffix == ".keras" else h5.read(str(path))
    model = _live(name, suffix)
    units = _units(model, graph)
    covered = {id(v) for _, variables in units.values() for v in variables.values()}
    missing = [v.path for v in model.weights if id(v) not in covered]
    assert not missing, f"{path.name}: Keras variables in no layer of surgery's graph: {missing}"
    assert sorted(units) == sorted(graph.layers), f"{path.name}: layers differ"
    for layer_name, (live, live_vars) in units.items():
        variables = {k: Param.from_array(np.asarray(v.numpy()), key=v.path) for k, v in live_vars.items()}
        expected = keras_layers.to_layer(layer_name, type(live).__name__, variables, live.get_config())
        got = graph[layer_name]
        assert got.kind == expected.kind or got.attrs.get("layout_known") is False, f"{layer_name}: kind"
        if got.attrs.get("layout_known") is False:       # passed through in Keras layout: compare natively
            expected = keras_layers.to_layer(layer_name, "Unknown", {k: v for k, v in variables.items()}, None)
            assert sorted(p.shape for p in got.params.values()) == sorted(p.shape for p in expected.params.values())
            continue
        assert sorted(got.params) == sorted(expected.params), f"{path.name}: {layer_name}: roles differ"
        for role, param in expected.params.items():
            np.testing.assert_array_equal(got.params[role].read(), param.read(),
                                          err_msg=f"{path.name}: {layer_name}.{role} ({param.key})")


def test_layer_names_are_the_keras_names_not_the_attributes():
    graph = h5.read(str(FOLDER / "subclassed.weights.h5"))
    assert "head-1" in graph and "head_1" not in graph
    assert {"blk/block_conv", "blk/block_bn", "enc/self_attention", "conv1", "named"} <= set(graph.layers)
    assert len(graph) == 12


def test_a_class_told_by_shapes_says_so():
    graph = h5.read(str(FOLDER / "subclassed.weights.h5"))
    assert "shapes" in graph["conv1"].attrs["kind_from"]
    assert graph["conv1"].kind == "conv2d" and graph["conv1"].params["weight"].shape == (4, 3, 3, 3)


@pytest.mark.parametrize("name", ["subclassed", "functional"])
def test_a_live_model_is_named_as_its_file(name):
    """``load_into`` pairs a file with a live model by name: both sides must name nested layers alike."""
    from surgery.live import keras as live

    graph = archive.read(str(FOLDER / f"{name}.keras"))
    model = _live(name, ".keras")
    live_graph = live.graph_of(model)
    assert list(live_graph.layers) == [n for n in live_graph.layers if n in graph] and \
        sorted(live_graph.layers) == sorted(graph.layers)
    for key, param in live_graph.tensors():
        np.testing.assert_array_equal(graph.state()[key].read(), param.read(), err_msg=key)
