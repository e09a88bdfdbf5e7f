"""Bidirectional LSTM/GRU and dense-form EinsumDense: the Keras layer and the PyTorch layer filled
from surgery's canonical tensors compute the same on one input; writing back gives Keras its values."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

from surgery.formats.keras import layers as keras_layers  # noqa: E402
from surgery.formats.keras import native as keras_native  # noqa: E402
from surgery.graph import Param  # noqa: E402


def _canonical(layer):
    if isinstance(layer, keras.layers.Bidirectional):
        variables = {f"{side}/{v.path.rsplit('/', 1)[-1]}": v for side, inner in
                     (("forward", layer.forward_layer), ("backward", layer.backward_layer)) for v in inner.weights}
    else:
        variables = {keras_layers.var_name(v.path): v for v in layer.weights}
    params = {k: Param.from_array(np.asarray(v.numpy()), key=v.path) for k, v in variables.items()}
    return keras_layers.to_layer(layer.name, type(layer).__name__, params, layer.get_config()), variables


def _fill(module, canonical) -> None:
    state = {role: torch.from_numpy(np.ascontiguousarray(p.read())) for role, p in canonical.params.items()}
    module.load_state_dict(state, strict=True)


@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_bidirectional_rnn_matches_torch(rnn):
    keras.utils.set_random_seed(3)
    layer = keras.layers.Bidirectional(getattr(keras.layers, rnn)(5, return_sequences=True), name=f"bi_{rnn}")
    x = np.random.default_rng(0).normal(size=(2, 12, 3)).astype("float32")
    expected = np.asarray(layer(x))
    canonical, variables = _canonical(layer)
    assert canonical.kind == rnn.lower() and canonical.attrs.get("layout_known", True)
    module = getattr(torch.nn, rnn)(3, 5, batch_first=True, bidirectional=True)
    _fill(module, canonical)
    got = module(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"Bidirectional({rnn}) vs torch")
    native = keras_native.to_native(canonical, "Bidirectional", layer.get_config())
    assert sorted(native) == sorted(variables)
    for name, var in variables.items():
        np.testing.assert_allclose(native[name].read(), np.asarray(var.numpy()), atol=1e-6, err_msg=name)


def test_dense_form_einsum_matches_torch_linear():
    keras.utils.set_random_seed(4)
    layer = keras.layers.EinsumDense("abc,cd->abd", output_shape=(4, 6), bias_axes="d", name="proj")
    x = np.random.default_rng(1).normal(size=(2, 4, 5)).astype("float32")
    expected = np.asarray(layer(x))
    canonical, variables = _canonical(layer)
    assert canonical.kind == "dense"
    module = torch.nn.Linear(5, 6)
    _fill(module, canonical)
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), expected, atol=1e-5)
    native = keras_native.to_native(canonical, "EinsumDense", layer.get_config())
    for name, var in variables.items():
        np.testing.assert_array_equal(native[name].read(), np.asarray(var.numpy()), err_msg=name)


def test_other_einsum_equations_are_marked_not_guessed():
    layer = keras.layers.EinsumDense("abc,cde->abde", output_shape=(4, 2, 3), bias_axes="de", name="heads")
    layer.build((2, 4, 5))
    canonical, _ = _canonical(layer)
    assert canonical.kind == "unknown"
    assert canonical.attrs["layout_known"] is False and "EinsumDense" in canonical.attrs["layout_note"]


def test_per_position_prelu_is_marked():
    layer = keras.layers.PReLU(name="pp")
    layer.build((None, 4, 4, 3))
    canonical, _ = _canonical(layer)
    assert canonical.attrs["layout_known"] is False


def test_unused_variables_are_kept_not_dropped():
    kernel = Param.from_array(np.ones((3, 2), "float32"), key="k")
    extra = Param.from_array(np.ones((3, 1), "float32"), key="lora_a")
    layer = keras_layers.to_layer("fc", "Dense", {"kernel": kernel, "lora_kernel_a": extra})
    assert layer.params["lora_kernel_a"] is extra and layer.attrs["untranslated"] == ["lora_kernel_a"]
    assert layer.kind == "unknown" and layer.attrs["layout_known"] is False


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_conv_lstm_is_passed_through_marked(tmp_path, suffix):
    """ConvLSTM2D has no PyTorch layer: all its tensors are kept, in Keras layout, marked for a decision."""
    from surgery import formats

    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((2, 5, 5, 3)), keras.layers.ConvLSTM2D(4, 3, name="clstm")])
    path = tmp_path / f"clstm{suffix}"
    model.save(path) if suffix == ".keras" else model.save_weights(path)
    layer = formats.read(str(path))["clstm"]
    assert layer.kind == "unknown" and layer.attrs["layout_known"] is False
    assert sorted(p.shape for p in layer.params.values()) == sorted(tuple(v.shape) for v in model.weights)


def test_a_merge_mode_other_than_concat_is_said_and_the_weights_stay_exact():
    """merge_mode='sum': PyTorch concatenates the directions; summing its two halves gives Keras' output."""
    from surgery import settings
    from surgery.kinds import graph_of_params

    keras.utils.set_random_seed(5)
    layer = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), merge_mode="sum", name="bi")
    x = np.random.default_rng(2).normal(size=(2, 6, 3)).astype("float32")
    expected = np.asarray(layer(x))
    canonical, _ = _canonical(layer)
    module = torch.nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    _fill(module, canonical)
    halves = module(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(halves[..., :4] + halves[..., 4:], expected, atol=1e-4)
    dst = graph_of_params({f"rnn.{k}": Param.from_array(v.numpy(), key=k) for k, v in module.state_dict().items()})
    (warning,) = [w for w in settings.setting_warnings(canonical, [dst["rnn"]]) if "merge_mode" in w]
    assert "the source sums its two directions (merge_mode='sum')" in warning
